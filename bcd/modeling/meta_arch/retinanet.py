"""RetinaNet (Lin et al., ICCV 2017) on torchvision components, with Detectron2's interface.

``DenseDetector`` holds what every one-stage detector here shares: the FPN backbone, pixel
normalisation and padding (``preprocess``), anchors on the FPN grid (torchvision's
``AnchorGenerator`` with the backbone's true strides), per-image top-k + batched NMS inference
and the rescaling of boxes to the original image size. ``RetinaNet`` adds the anchor matching
(torchvision ``Matcher``), box coding (``BoxCoder``) and the focal / L1 losses.

Named modules (distillation feature names, docs/internals.md): ``backbone.bottom_up.res2..res5``
(ResNet stages), ``backbone[p3]``..``backbone[p7]`` (FPN levels, keys of the backbone output),
``head`` (output ``(cls_logits, bbox_reg)``: lists over levels), ``head.cls_subnet``,
``head.bbox_subnet``, ``head.cls_score``, ``head.bbox_pred``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import batched_nms, box_iou, sigmoid_focal_loss

from ...structures import ImageBatch, Instances, pad_to_divisible
from ..backbone import build_backbone
from ..heads.rpn import DefaultAnchorGenerator
from .build import META_ARCH_REGISTRY

__all__ = ["DenseDetector", "RetinaNet", "RetinaNetHead", "permute_to_N_HWA_K"]


def permute_to_N_HWA_K(x: Tensor, K: int) -> Tensor:
    """``B×(A·K)×H×W`` -> ``B×(H·W·A)×K`` (the anchor order of ``AnchorGenerator``)."""
    B, _, H, W = x.shape
    return x.view(B, -1, K, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, K)


class DenseDetector(nn.Module):
    """Base of the one-stage detectors: backbone, ``preprocess``, anchors, inference.

    Subclasses set ``self.head`` and implement ``losses(batch, outputs)`` and
    ``predict_level(cls, reg, anchors, stride)`` (per image and level: boxes / scores / classes).
    """

    in_features: List[str]

    def __init__(self, cfg, in_features: Sequence[str], num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise KeyError(
                f"Detector IN_FEATURES {missing} are not produced by backbone "
                f"'{cfg.MODEL.BACKBONE.NAME}' (outputs: {list(shapes)}); check MODEL.FPN.*"
            )
        self.in_features = list(in_features)
        self.strides = [int(shapes[f].stride) for f in self.in_features]
        self.in_channels = [int(shapes[f].channels) for f in self.in_features]
        if len(set(self.in_channels)) != 1:
            raise ValueError(f"The shared head needs equal channels on {in_features}: {self.in_channels}")
        self.num_classes = int(num_classes)
        # Pad to the bottom-up backbone's largest stride (32), as Detectron2: P6 / P7 come from
        # strided convs that accept any size, and anchors use the declared strides.
        self.size_divisibility = max(
            int(cfg.INPUT.SIZE_DIVISIBILITY), int(getattr(self.backbone, "size_divisibility", 1))
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.d2_input_format = cfg.MODEL.D2_INPUT_FORMAT  # for Detectron2 checkpoints (d2_convert.py)
        self.max_detections_per_image = int(cfg.TEST.DETECTIONS_PER_IMAGE)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ protocol
    def preprocess(self, batched_inputs: List[Dict[str, Any]]) -> ImageBatch:
        """Normalise (``MODEL.PIXEL_MEAN/STD``), pad bottom / right to ``size_divisibility``,
        move images and ``instances`` to the model's device.

        Returns:
            ``ImageBatch`` with ``tensor`` ``B×3×H×W`` float and ``image_sizes`` the unpadded
            ``(h, w)`` of each input image.
        """
        images = [
            (x["image"].to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
            for x in batched_inputs
        ]
        tensor = pad_to_divisible(images, self.size_divisibility)
        instances = None
        if all("instances" in x for x in batched_inputs):
            instances = [x["instances"].to(self.device) for x in batched_inputs]
        return ImageBatch(
            tensor=tensor,
            image_sizes=[tuple(im.shape[-2:]) for im in images],
            instances=instances,
            inputs=list(batched_inputs),
        )

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        return self.forward_batch(self.preprocess(batched_inputs))

    def forward_batch(self, batch: ImageBatch):
        """Training: ``Dict[str, Tensor]`` of scalar losses (needs ``batch.instances``).
        Evaluation: ``[{"instances": Instances(pred_boxes N×4 XYXY original pixels, scores,
        pred_classes)}]`` per image."""
        outputs = self.extract(batch)
        if self.training:
            if batch.instances is None:
                raise ValueError(
                    f"{type(self).__name__} in training mode needs 'instances' in every input "
                    f"dict (use DetectionDatasetMapper with is_train=True)"
                )
            return self.losses(batch, outputs)
        return self.inference(batch, outputs)

    def extract(self, batch: ImageBatch) -> Dict[str, Any]:
        """Raw outputs, no loss, no post-processing.

        Returns:
            ``{"features": {p3..p7: B×C×h_l×w_l}, "cls_logits": [B×(A·K)×h_l×w_l per level],
            <box key>: [per level], "anchors": [(h_l·w_l·A)×4 XYXY per level, shared by all
            images], "strides": [int per level]}``; the box key is ``"bbox_reg"`` (RetinaNet,
            ``B×(A·4)×h×w`` deltas) or ``"bbox_dist"`` (GFL, ``B×(4·(n+1))×h×w`` logits).
        """
        feats = self.backbone(batch.tensor)
        features = [feats[f] for f in self.in_features]
        cls_logits, box_out = self.head(features)
        return {
            "features": {f: feats[f] for f in self.in_features},
            "cls_logits": cls_logits,
            self.box_key: box_out,
            "anchors": self.anchors(features),
            "strides": list(self.strides),
        }

    # ------------------------------------------------------------------ anchors
    def anchors(self, features: List[Tensor]) -> List[Tensor]:
        """Anchors per level, ``(h·w·A)×4`` XYXY input pixels, ordered (y, x, anchor).

        Built with torchvision's ``AnchorGenerator.grid_anchors`` from the backbone's declared
        strides (its ``forward`` infers strides by integer division, wrong for P6 / P7 when the
        input is not a multiple of 128).
        """
        ag: AnchorGenerator = self.anchor_generator
        dtype, device = features[0].dtype, features[0].device
        ag.set_cell_anchors(dtype, device)
        grid_sizes = [list(f.shape[-2:]) for f in features]
        strides = [
            [torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides
        ]
        return [a.to(dtype) for a in ag.grid_anchors(grid_sizes, strides)]

    # ------------------------------------------------------------------ inference
    def inference(self, batch: ImageBatch, outputs: Dict[str, Any]) -> List[Dict[str, Instances]]:
        results = []
        B = len(batch)
        for i in range(B):
            boxes_all, scores_all, classes_all = [], [], []
            for lvl, anchors in enumerate(outputs["anchors"]):
                cls_i = outputs["cls_logits"][lvl][i : i + 1]
                box_i = outputs[self.box_key][lvl][i : i + 1]
                b, s, c = self.predict_level(cls_i, box_i, anchors, self.strides[lvl])
                boxes_all.append(b)
                scores_all.append(s)
                classes_all.append(c)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            classes = torch.cat(classes_all)
            keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.max_detections_per_image]
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            h, w = batch.image_sizes[i]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            # boxes clipped to nothing are dropped (Detectron2's detector_postprocess)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
            inp = batch.inputs[i] if i < len(batch.inputs) else {}
            out_h, out_w = inp.get("height", h), inp.get("width", w)
            scale = boxes.new_tensor([out_w / w, out_h / h, out_w / w, out_h / h])
            inst = Instances((out_h, out_w))
            inst.pred_boxes = boxes * scale
            inst.scores = scores
            inst.pred_classes = classes
            results.append({"instances": inst})
        return results

    def _topk_candidates(self, scores: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Of ``M×K`` scores keep those > ``score_thresh``, at most ``topk_candidates``.

        Returns ``(scores, location index, class)`` of the kept candidates.
        """
        flat = scores.flatten()
        keep = flat > self.score_thresh
        flat = flat[keep]
        idx = keep.nonzero().flatten()
        num = min(self.topk_candidates, idx.numel())
        flat, order = flat.sort(descending=True)
        flat, idx = flat[:num], idx[order[:num]]
        return flat, idx // self.num_classes, idx % self.num_classes


class RetinaNetHead(nn.Module):
    """Shared conv towers over the FPN levels (Detectron2 ``RetinaNetHead``).

    ``forward(features: List[B×C×h_l×w_l])`` returns ``(cls_logits, bbox_reg)``: lists over levels
    of ``B×(A·K)×h_l×w_l`` class logits and ``B×(A·4)×h_l×w_l`` box deltas.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int,
                 prior_prob: float) -> None:
        super().__init__()
        cls, bbox = [], []
        for _ in range(num_convs):
            cls += [nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU()]
            bbox += [nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU()]
        self.cls_subnet = nn.Sequential(*cls)
        self.bbox_subnet = nn.Sequential(*bbox)
        self.cls_score = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        # Start with every anchor at background probability prior_prob (focal-loss paper §3.3).
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        cls_logits = [self.cls_score(self.cls_subnet(f)) for f in features]
        bbox_reg = [self.bbox_pred(self.bbox_subnet(f)) for f in features]
        return cls_logits, bbox_reg


def _per_level(values: Sequence, n: int, key: str) -> List:
    """Detectron2 semantics: one list for all levels, or one per level."""
    values = [list(v) for v in values]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{key} has {len(values)} entries; expected 1 or {n} (one per level)")
    return values


@META_ARCH_REGISTRY.register()
class RetinaNet(DenseDetector):
    """RetinaNet: FPN P3–P7, 9 anchors per location, focal loss, L1 box loss.

    Config: ``MODEL.RETINANET.*``, ``MODEL.ANCHOR_GENERATOR.*``, ``MODEL.FPN.*``.
    Training losses: ``loss_cls`` (sigmoid focal loss) and ``loss_box_reg`` (L1 / smooth-L1 on
    encoded deltas), both summed over anchors and divided by the number of positive anchors of
    the batch.
    """

    box_key = "bbox_reg"

    def __init__(self, cfg) -> None:
        c = cfg.MODEL.RETINANET
        super().__init__(cfg, c.IN_FEATURES, c.NUM_CLASSES)
        n = len(self.in_features)
        sizes = _per_level(cfg.MODEL.ANCHOR_GENERATOR.SIZES, n, "MODEL.ANCHOR_GENERATOR.SIZES")
        ratios = _per_level(
            cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS, n, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"
        )
        # Detectron2's unrounded cell anchors (torchvision rounds them to integers)
        self.anchor_generator = DefaultAnchorGenerator(
            tuple(tuple(float(s) for s in v) for v in sizes),
            tuple(tuple(float(r) for r in v) for r in [None] for v in ratios),
        )
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ValueError(f"RetinaNet needs the same number of anchors per level: {num_anchors}")
        self.num_anchors = num_anchors[0]
        self.head = RetinaNetHead(
            self.in_channels[0], self.num_anchors, self.num_classes, c.NUM_CONVS, c.PRIOR_PROB
        )
        low, high = c.IOU_THRESHOLDS
        self.matcher = det_utils.Matcher(high, low, allow_low_quality_matches=True)
        self.box_coder = det_utils.BoxCoder(weights=tuple(c.BBOX_REG_WEIGHTS))
        self.focal_alpha = c.FOCAL_LOSS_ALPHA
        self.focal_gamma = c.FOCAL_LOSS_GAMMA
        self.smooth_l1_beta = c.SMOOTH_L1_BETA
        self.score_thresh = c.SCORE_THRESH_TEST
        self.topk_candidates = c.TOPK_CANDIDATES_TEST
        self.nms_thresh = c.NMS_THRESH_TEST

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def label_anchors(self, anchors: Tensor, instances: List[Instances]) -> Tuple[Tensor, Tensor]:
        """Match the anchors (``M×4``, all levels) to each image's ground truth.

        Returns:
            ``gt_labels`` ``B×M`` int64: class in ``0..K-1``, ``K`` for background, ``-1`` for
            ignored anchors (IoU between the two thresholds); ``gt_boxes`` ``B×M×4`` the matched
            box of each anchor (zeros where unmatched).
        """
        labels, boxes = [], []
        for inst in instances:
            gt = inst.gt_boxes
            if gt.numel() == 0:
                labels.append(torch.full((anchors.shape[0],), self.num_classes, dtype=torch.int64,
                                         device=anchors.device))
                boxes.append(torch.zeros_like(anchors))
                continue
            matched = self.matcher(box_iou(gt, anchors))  # M: gt index, -1 below, -2 between
            lab = inst.gt_classes[matched.clamp(min=0)].clone()
            lab[matched == det_utils.Matcher.BELOW_LOW_THRESHOLD] = self.num_classes
            lab[matched == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1
            labels.append(lab)
            boxes.append(gt[matched.clamp(min=0)])
        return torch.stack(labels), torch.stack(boxes)

    def losses(self, batch: ImageBatch, outputs: Dict[str, Any]) -> Dict[str, Tensor]:
        anchors = torch.cat(outputs["anchors"])
        gt_labels, gt_boxes = self.label_anchors(anchors, batch.instances)
        cls = torch.cat([permute_to_N_HWA_K(x, self.num_classes) for x in outputs["cls_logits"]], 1)
        reg = torch.cat([permute_to_N_HWA_K(x, 4) for x in outputs["bbox_reg"]], 1)
        valid = gt_labels >= 0
        pos = valid & (gt_labels != self.num_classes)
        normalizer = max(float(pos.sum().item()), 1.0)
        target = F.one_hot(gt_labels[valid], self.num_classes + 1)[:, :-1].to(cls.dtype)
        loss_cls = sigmoid_focal_loss(
            cls[valid], target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        deltas = self.box_coder.encode_single(gt_boxes[pos], anchors.expand_as(gt_boxes)[pos])
        if self.smooth_l1_beta > 0:
            loss_box = F.smooth_l1_loss(reg[pos], deltas, beta=self.smooth_l1_beta, reduction="sum")
        else:
            loss_box = F.l1_loss(reg[pos], deltas, reduction="sum")
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box / normalizer}

    # ------------------------------------------------------------------ inference
    def predict_level(self, cls: Tensor, reg: Tensor, anchors: Tensor, stride: int):
        """One image, one level: ``cls`` ``1×(A·K)×h×w``, ``reg`` ``1×(A·4)×h×w``.

        Returns boxes ``N×4`` XYXY (input pixels), scores ``N``, classes ``N``.
        """
        scores = permute_to_N_HWA_K(cls, self.num_classes)[0].sigmoid()
        deltas = permute_to_N_HWA_K(reg, 4)[0]
        s, loc, c = self._topk_candidates(scores)
        boxes = self.box_coder.decode_single(deltas[loc], anchors[loc])
        return boxes, s, c
