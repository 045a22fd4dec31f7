"""Helpers for the Detectron2 fixture tests: build our model for a fixture folder, run it."""
from __future__ import annotations

import os
from typing import Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(os.path.dirname(REPO), "shared", "fixtures", "detectron2")


def d2_cfg(kind: str):
    """Our config equal to the fixture's Detectron2 config.yaml (read from it, not retyped)."""
    import yaml

    from bcd.config import get_cfg

    d2 = yaml.safe_load(open(os.path.join(FIXTURES, kind, "config.yaml")))["MODEL"]
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.NORM = d2["RESNETS"]["NORM"]
    cfg.MODEL.BACKBONE.FREEZE_AT = d2["BACKBONE"]["FREEZE_AT"]
    cfg.MODEL.RESNETS.DEPTH = d2["RESNETS"]["DEPTH"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = d2["RESNETS"]["STRIDE_IN_1X1"]
    cfg.MODEL.RESNETS.OUT_FEATURES = d2["RESNETS"]["OUT_FEATURES"]
    cfg.MODEL.FPN.IN_FEATURES = d2["FPN"]["IN_FEATURES"]
    cfg.MODEL.FPN.OUT_CHANNELS = d2["FPN"]["OUT_CHANNELS"]
    # Detectron2 INPUT.FORMAT BGR with its BGR mean / std: ours in RGB order
    cfg.MODEL.PIXEL_MEAN = list(d2["PIXEL_MEAN"])[::-1]
    cfg.MODEL.PIXEL_STD = list(d2["PIXEL_STD"])[::-1]
    cfg.MODEL.D2_INPUT_FORMAT = "BGR"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = d2["ANCHOR_GENERATOR"]["SIZES"]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = d2["ANCHOR_GENERATOR"]["ASPECT_RATIOS"]
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    if kind.startswith("retinanet"):
        r = d2["RETINANET"]
        cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
        cfg.MODEL.FPN.TOP_BLOCK = "P6P7"
        cfg.MODEL.FPN.TOP_BLOCK_IN = "res5"
        cfg.MODEL.RETINANET.NUM_CLASSES = r["NUM_CLASSES"]
        cfg.MODEL.RETINANET.NUM_CONVS = r["NUM_CONVS"]
        cfg.MODEL.RETINANET.IN_FEATURES = r["IN_FEATURES"]
        cfg.MODEL.RETINANET.IOU_THRESHOLDS = r["IOU_THRESHOLDS"]
        cfg.MODEL.RETINANET.SMOOTH_L1_BETA = r["SMOOTH_L1_LOSS_BETA"]
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = r["SCORE_THRESH_TEST"]
        cfg.MODEL.RETINANET.NMS_THRESH_TEST = r["NMS_THRESH_TEST"]
        cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST = r["TOPK_CANDIDATES_TEST"]
    else:
        cfg.MODEL.META_ARCHITECTURE = "CascadeMaskRCNN"
        cfg.MODEL.MASK_ON = d2["MASK_ON"]
        cfg.MODEL.FPN.TOP_BLOCK = "P6"
        rpn, rh, bh, mh = d2["RPN"], d2["ROI_HEADS"], d2["ROI_BOX_HEAD"], d2["ROI_MASK_HEAD"]
        for k in ("IN_FEATURES", "IOU_THRESHOLDS", "BATCH_SIZE_PER_IMAGE", "POSITIVE_FRACTION", "NMS_THRESH",
                  "PRE_NMS_TOPK_TEST", "POST_NMS_TOPK_TEST", "PRE_NMS_TOPK_TRAIN", "POST_NMS_TOPK_TRAIN",
                  "BBOX_REG_WEIGHTS"):
            cfg.MODEL.RPN[k] = rpn[k]
        cfg.MODEL.RPN.MIN_SIZE = float(d2["PROPOSAL_GENERATOR"]["MIN_SIZE"])
        for k in ("NUM_CLASSES", "IN_FEATURES", "IOU_THRESHOLDS", "BATCH_SIZE_PER_IMAGE", "POSITIVE_FRACTION",
                  "PROPOSAL_APPEND_GT", "SCORE_THRESH_TEST", "NMS_THRESH_TEST"):
            cfg.MODEL.ROI_HEADS[k] = rh[k]
        for k in ("NUM_FC", "FC_DIM", "POOLER_RESOLUTION", "POOLER_SAMPLING_RATIO", "CLS_AGNOSTIC_BBOX_REG"):
            cfg.MODEL.ROI_BOX_HEAD[k] = bh[k]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = d2["ROI_BOX_CASCADE_HEAD"]["IOUS"]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = d2["ROI_BOX_CASCADE_HEAD"]["BBOX_REG_WEIGHTS"]
        for k in ("NUM_CONV", "CONV_DIM", "POOLER_RESOLUTION", "POOLER_SAMPLING_RATIO", "CLS_AGNOSTIC_MASK"):
            cfg.MODEL.ROI_MASK_HEAD[k] = mh[k]
    return cfg


def load_model(kind: str):
    """Our model for the fixture, weights through the automatic Detectron2 path, fp32, eval."""
    from bcd.engine.checkpoint import Checkpointer
    from bcd.modeling import build_model

    cfg = d2_cfg(kind)
    model = build_model(cfg)
    Checkpointer(model).load(os.path.join(FIXTURES, kind, "model_final.pth"))
    return model.float().eval(), cfg


def reference(kind: str) -> Dict:
    return torch.load(os.path.join(FIXTURES, kind, "reference.pt"), weights_only=True)


def inputs(ref: Dict) -> List[Dict]:
    """Our input dicts (RGB) of the fixture's BGR images, at their own size."""
    out = []
    for img in ref["images_bgr"]:
        out.append({"image": img.flip(0).contiguous(), "height": img.shape[1], "width": img.shape[2]})
    return out


def match_detections(ours, ref_boxes, ref_scores, ref_classes, iou_min: float = 0.99):
    """Greedy one-to-one matching of reference detections (by score) to ours: same class, box
    IoU >= iou_min. Returns (matched pairs [(ref_i, our_j)], box IoUs)."""
    from torchvision.ops import box_iou

    if len(ours.pred_boxes) == 0 or len(ref_boxes) == 0:
        return [], torch.zeros(0)
    iou = box_iou(ref_boxes, ours.pred_boxes)
    iou[ref_classes[:, None] != ours.pred_classes[None, :]] = -1
    used = torch.zeros(iou.shape[1], dtype=torch.bool)
    pairs, ious = [], []
    for i in range(iou.shape[0]):
        row = iou[i].clone()
        row[used] = -1
        # prefer the closest score among near-identical boxes
        cand = torch.where(row >= iou_min)[0]
        if cand.numel() == 0:
            continue
        j = cand[(ours.scores[cand] - ref_scores[i]).abs().argmin()]
        used[j] = True
        pairs.append((i, int(j)))
        ious.append(float(row[j]))
    return pairs, torch.tensor(ious)
