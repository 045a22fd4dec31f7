"""Cascade Mask R-CNN / Mask R-CNN: losses, inference contract, cascade scoring, configs, and a
distillation step with BCD (backbone and FPN switch), CWD, PKD and FGD on a Cascade student."""
from __future__ import annotations

import glob
import math
import os

import pytest
import torch

from bcd.config import get_cfg
from bcd.structures import Instances

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_cascade_cfg(stages: int = 3, width: float = 0.25):
    """ResNet-18 x``width`` + FPN 16 ch (P2-P6), small RoI heads: a step takes well under a second."""
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "CascadeMaskRCNN" if stages > 1 else "MaskRCNN"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = width
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN.TOP_BLOCK = "P6"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    if stages == 1:
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.5]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [[10.0, 10.0, 5.0, 5.0]]
    cfg.INPUT.DATASET_MAPPER_NAME = "DetectionDatasetMapper"
    return cfg


def _input(h=64, w=80, seed=0, out_size=None):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    inst.gt_boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [35.0, 10.0, 70.0, 50.0]])
    inst.gt_classes = torch.tensor([0, 2])
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 6:40, 4:30] = 1
    masks[1, 10:50, 35:70] = 1
    inst.gt_masks = masks
    H, W = out_size or (h, w)
    return {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "instances": inst,
            "height": H, "width": W}


@pytest.mark.parametrize("stages", [3, 1])
def test_training_losses_and_inference_contract(stages):
    from bcd.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cascade_cfg(stages))
    model.train()
    losses = model([_input(seed=0), _input(seed=1)])
    expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"}
    expected |= {f"loss_{n}_stage{k}" for n in ("cls", "box_reg") for k in range(stages)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    # softmax CE over K+1 = 4 classes starts near log 4; mask BCE near log 2
    assert losses["loss_cls_stage0"].item() == pytest.approx(math.log(4), rel=0.1)
    assert losses["loss_mask"].item() == pytest.approx(math.log(2), rel=0.05)
    sum(losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_predictor[stages - 1].bbox_pred.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([_input(seed=2, out_size=(128, 160))])[0]["instances"]
    assert out.image_size == (128, 160)
    assert len(out) > 0 and out.pred_masks.shape == (len(out), 128, 160) and out.pred_masks.dtype == torch.bool
    assert float(out.pred_boxes[:, 2].max()) <= 160 and float(out.pred_boxes[:, 3].max()) <= 128
    assert set(out.pred_classes.tolist()) <= {0, 1, 2}


def test_a_stage_whose_boxes_all_collapse_trains_on_no_regions(monkeypatch):
    """Stage 0 regresses every box to a degenerate one (as a diverging head can): stage 1 gets no
    regions in either image and contributes zero losses (Detectron2's matcher returns empty
    matches; torchvision's raises), the other losses stay finite."""
    from bcd.modeling import build_model

    torch.manual_seed(0)
    model = build_model(tiny_cascade_cfg(2))
    model.train()
    heads = model.roi_heads
    decode = heads._decode

    def collapse(deltas, boxes, k):
        out = decode(deltas, boxes, k)
        return torch.zeros_like(out) if k == 0 else out  # zero-area boxes, filtered before stage 1

    monkeypatch.setattr(heads, "_decode", collapse)
    losses = model([_input(seed=0), _input(seed=1)])
    assert float(losses["loss_cls_stage1"]) == 0.0 and float(losses["loss_box_reg_stage1"]) == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_cls_stage0"]) > 0
    sum(losses.values()).backward()


def test_cascade_score_is_the_mean_of_the_stages():
    """Inference score = mean of the 3 stages' softmax; boxes from the last stage."""
    import torch.nn.functional as F

    from bcd.modeling import build_model

    torch.manual_seed(0)
    cfg = tiny_cascade_cfg(3)
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0  # keep every (box, class): compare all of them
    cfg.TEST.DETECTIONS_PER_IMAGE = 10000
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.roi_heads.box_predictor.parameters():  # make the stages disagree
            p.normal_(0, 0.5)
        batch = model.preprocess([_input(seed=3)])
        feats = model.backbone(batch.tensor)
        props, _, _ = model.proposal_generator([feats[f] for f in model.rpn_in_features], batch.image_sizes)
        res, _, raw = model.roi_heads([feats[f] for f in model.roi_in_features], props)
    probs = [F.softmax(x, -1) for x in raw["class_logits"]]
    mean = sum(probs) / 3
    assert not torch.allclose(probs[0], probs[2], atol=1e-3)
    # every reported (box, class, score) is some region's averaged score
    r = res[0]
    for s, c in zip(r.scores[:50], r.pred_classes[:50]):
        assert torch.isclose(mean[:, c], s, atol=1e-6).any()
    # the stage-k boxes are stage k-1's regressed boxes
    last = model.roi_heads.box_coders[1].decode_single(raw["box_deltas"][1], raw["boxes"][1][0])
    torch.testing.assert_close(raw["boxes"][2][0], last.clamp(min=0).minimum(
        torch.tensor([80.0, 64.0, 80.0, 64.0])))


def test_mask_rcnn_needs_one_stage_and_missing_features_are_named():
    from bcd.modeling import build_model

    cfg = tiny_cascade_cfg(3)
    cfg.MODEL.META_ARCHITECTURE = "MaskRCNN"
    with pytest.raises(ValueError, match="ROI_BOX_CASCADE_HEAD.IOUS"):
        build_model(cfg)
    cfg = tiny_cascade_cfg(3)
    cfg.MODEL.FPN.TOP_BLOCK = ""
    with pytest.raises(KeyError, match="MODEL.RPN.IN_FEATURES"):
        build_model(cfg)


def test_stride_in_1x1_moves_the_stride():
    from bcd.modeling.backbone.resnet import ResNet

    tv = ResNet(depth=50, width_multiplier=0.25)
    msra = ResNet(depth=50, width_multiplier=0.25, stride_in_1x1=True)
    assert tv.res3[0].conv2.stride == (2, 2) and tv.res3[0].conv1.stride == (1, 1)
    assert msra.res3[0].conv1.stride == (2, 2) and msra.res3[0].conv2.stride == (1, 1)
    x = torch.randn(1, 3, 64, 64)
    assert {k: v.shape for k, v in tv(x).items()} == {k: v.shape for k, v in msra(x).items()}


def test_coco_configs_load():
    """Every issue-11 config under configs/ merges into get_cfg() (no unknown keys)."""
    files = sorted(glob.glob(os.path.join(REPO, "configs", "coco", "*mask_rcnn*.yaml")))
    files += sorted(glob.glob(os.path.join(REPO, "configs", "cityscapes", "*mask_rcnn*.yaml")))
    files += [os.path.join(REPO, "configs", "demo", "det_cascade_mask_rcnn.yaml")]
    assert len(files) >= 12
    for f in files:
        cfg = get_cfg()
        cfg.merge_from_file(f)
        assert cfg.MODEL.META_ARCHITECTURE in ("CascadeMaskRCNN", "MaskRCNN"), f
        assert cfg.MODEL.MASK_ON, f
    table_v = ["bcd_cascade_mask_rcnn_r50.yaml", "bcd_cascade_mask_rcnn_r18.yaml"]
    for name in table_v:
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(REPO, "configs", "coco", name))
        assert "cascade_mask_rcnn_r" in cfg.KD.TEACHER.CONFIG_FILE


@pytest.mark.parametrize("losses", [
    ["BoundaryDistillation", "ContextDistillation", "ChannelWiseDistillation", "PKD", "FGD"],
    ["BoundaryDistillationFPN", "ContextDistillationFPN"],
])
def test_kd_step_with_cascade_student(tmp_path, losses):
    """One Distiller training step: every KD loss finite and non-zero, student gradients flow."""
    from bcd.distill import build_model as build_kd_model
    from bcd.modeling import build_model

    torch.manual_seed(0)
    tcfg = tiny_cascade_cfg(3, width=0.5)
    tfile = tmp_path / "teacher.yaml"
    tfile.write_text(tcfg.dump())
    teacher_w = tmp_path / "teacher.pth"
    torch.save({"model": build_model(tcfg).state_dict()}, teacher_w)

    cfg = tiny_cascade_cfg(3, width=0.25)
    cfg.KD.LOSSES = losses
    cfg.KD.TEACHER.CONFIG_FILE = str(tfile)
    cfg.KD.TEACHER.WEIGHTS = str(teacher_w)
    cfg.KD.SHAPE_PROBE_SIZE = [64, 64]
    # L_bd is 0 while its pseudo-affinity head is fitted (first FIT_ITERS iterations): off here
    cfg.KD.BOUNDARY.TEACHER_HEAD_FIT_ITERS = 0
    res = ["backbone.bottom_up.res2", "backbone.bottom_up.res3", "backbone.bottom_up.res4",
           "backbone.bottom_up.res5"]
    fpn = [f"backbone[p{i}]" for i in range(2, 7)]
    for name in losses:
        node = {"BoundaryDistillation": cfg.KD.BOUNDARY, "ContextDistillation": cfg.KD.CONTEXT,
                "BoundaryDistillationFPN": cfg.KD.BOUNDARY, "ContextDistillationFPN": cfg.KD.CONTEXT,
                "ChannelWiseDistillation": cfg.KD.CWD, "PKD": cfg.KD.PKD, "FGD": cfg.KD.FGD}[name]
        feats = res if name in ("BoundaryDistillation", "ContextDistillation") else fpn
        node.STUDENT_FEATURES = feats
        node.TEACHER_FEATURES = feats
    model = build_kd_model(cfg)
    model.train()
    out = model([_input(seed=0), _input(seed=1)])
    kd = {k: v for k, v in out.items() if k.startswith("loss_kd")}
    assert len(kd) >= len(losses)
    for k, v in kd.items():
        assert torch.isfinite(v), (k, v)
        # unweighted value (a schedule may give weight 0 at iteration 0, e.g. a warm-up)
        raw = out.get(f"kd/{k[len('loss_kd_'):]}/raw", v)
        assert float(raw.detach().abs()) > 0, (k, raw)
    task = {k: v for k, v in out.items() if k.startswith("loss_") and not k.startswith("loss_kd")}
    assert "loss_mask" in task and "loss_cls_stage2" in task
    sum(v for k, v in out.items() if k.startswith("loss")).backward()
    g = model.student.backbone.bottom_up.res2[0].conv1.weight.grad
    assert g is not None and g.abs().sum() > 0
