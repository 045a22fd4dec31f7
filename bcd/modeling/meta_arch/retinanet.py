"""RetinaNet (Lin et al., ICCV 2017) on torchvision components, with Detectron2's interface.

``RetinaNet`` adds to ``DenseDetector`` (``dense_detector.py``: backbone, preprocessing, anchors,
inference) the anchor matching (torchvision ``Matcher``), box coding (``BoxCoder``) and the
focal / L1 losses.

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
from torchvision.ops import box_iou, sigmoid_focal_loss

from ...structures import ImageBatch, Instances
from ..heads.rpn import DefaultAnchorGenerator
from .build import META_ARCH_REGISTRY, ClassCountKey
from .dense_detector import DenseDetector, flatten_levels, permute_to_N_HWA_K

__all__ = ["DenseDetector", "RetinaNet", "RetinaNetHead", "permute_to_N_HWA_K"]


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
    CLASS_COUNT = ClassCountKey("MODEL.RETINANET.NUM_CLASSES", "thing_classes")

    def __init__(self, cfg) -> None:
        c = cfg.MODEL.RETINANET
        super().__init__(cfg, c.IN_FEATURES, self.CLASS_COUNT.num_classes(cfg))
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

    def assignment(self, anchors: List[Tensor], instances: List[Instances]) -> Dict[str, Tensor]:
        """``{"labels": B×M, "boxes": B×M×4}`` of :meth:`label_anchors` on the anchors of all
        levels (``M = Σ_l L_l``); published by ``forward_train`` as ``"assignment"``."""
        labels, boxes = self.label_anchors(torch.cat(anchors), instances)
        return {"labels": labels, "boxes": boxes}

    def losses(self, batch: ImageBatch, outputs: Dict[str, Any]) -> Dict[str, Tensor]:
        """Focal + L1 losses of ``outputs`` (``extract``'s, with the ``"assignment"`` that
        ``forward_train`` publishes; computed here when absent)."""
        anchors = torch.cat(outputs["anchors"])
        assignment = outputs.get("assignment") or self.assignment(outputs["anchors"], batch.instances)
        gt_labels, gt_boxes = assignment["labels"], assignment["boxes"]
        cls = flatten_levels(outputs["cls_logits"], self.num_classes)
        reg = flatten_levels(outputs["bbox_reg"], 4)
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
