"""GFL: Generalized Focal Loss detector (Li et al., NeurIPS 2020) on torchvision components.

* Assignment: ATSS (Zhang et al., CVPR 2020): per ground-truth box, the ``ATSS_TOPK`` anchors
  per level closest by centre distance are candidates; positives are candidates whose IoU is at
  least mean + std of the candidates' IoUs and whose centre lies inside the box; an anchor
  claimed by several boxes goes to the one of highest IoU.
* Classification: quality focal loss (QFL): the target of a positive is the IoU of its decoded
  box with its ground truth, at its class; negatives have target 0.
* Regression: each of the 4 box sides (distances left, top, right, bottom from the anchor centre,
  in units of the level's stride) is a distribution over ``REG_MAX + 1`` bins ``0..REG_MAX``;
  the box is its expectation ("integral"). Distribution focal loss (DFL) on the two bins around
  the target distance, and GIoU loss on the decoded box, both weighted by the predicted class
  score of the positive (mmdet ``GFLHead``).

Named modules: as RetinaNet (``backbone.bottom_up.res*``, ``backbone[p3..p7]``), ``head``
(output ``(cls_logits, bbox_dist)``), ``head.cls_subnet``, ``head.bbox_subnet``,
``head.gfl_cls``, ``head.gfl_reg``, ``head.scales``.

For localization distillation (``bcd/distill/losses/ld.py``) ``forward_train`` publishes the ATSS
``"assignment"`` (labels / boxes / IoUs per anchor), the ``"anchors"`` and ``"strides"`` with the
raw outputs; the loss reads them from ``KDContext.student_outputs`` and never calls the model.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou, generalized_box_iou_loss

from ...structures import ImageBatch, Instances
from ...utils.comm import reduce_mean
from ..backbone.backbone import get_norm
from .build import META_ARCH_REGISTRY, ClassCountKey
from .dense_detector import DenseDetector, flatten_levels, permute_to_N_HWA_K

__all__ = [
    "GFL",
    "GFLHead",
    "Scale",
    "atss_assign",
    "quality_focal_loss",
    "distribution_focal_loss",
    "integral",
    "aligned_box_iou",
    "distance2bbox",
    "bbox2distance",
]


# ---------------------------------------------------------------------------------- box math
def integral(dist_logits: Tensor) -> Tensor:
    """``...×(n+1)`` bin logits -> ``...`` expected value ``Σ_i i·softmax(logits)_i`` in bins."""
    n = dist_logits.shape[-1] - 1
    bins = torch.arange(n + 1, dtype=dist_logits.dtype, device=dist_logits.device)
    return (dist_logits.softmax(-1) * bins).sum(-1)


# Side distances from a point (left, top, right, bottom) are torchvision's FCOS box coding: the
# anchor centre is the point itself, so the "anchor" is the degenerate box (x, y, x, y) and
# 0.5 * (x + x) == x exactly.
_LINEAR_CODER = BoxLinearCoder(normalize_by_size=False)


def distance2bbox(points: Tensor, distance: Tensor) -> Tensor:
    """Centres ``N×2`` (x, y) and distances ``N×4`` (left, top, right, bottom) -> ``N×4`` XYXY
    (``BoxLinearCoder.decode``)."""
    return _LINEAR_CODER.decode(distance, torch.cat([points, points], dim=-1))


def bbox2distance(points: Tensor, boxes: Tensor, max_dist: float) -> Tensor:
    """Centres ``N×2`` and boxes ``N×4`` XYXY -> ``N×4`` side distances
    (``BoxLinearCoder.encode``) clamped to ``[0, max_dist - 0.01]`` (the top bin must keep a
    right neighbour for DFL)."""
    d = _LINEAR_CODER.encode(torch.cat([points, points], dim=-1), boxes)
    return d.clamp(min=0, max=max_dist - 0.01)


def aligned_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of corresponding rows of two ``N×4`` XYXY box sets -> ``N`` (torchvision's
    ``box_iou`` is all-pairs, ``N×N`` memory)."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


# ---------------------------------------------------------------------------------- losses
def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """QFL per anchor, summed over classes.

    Args:
        logits: ``M×K`` class logits.
        labels: ``M`` int64 class ``0..K-1`` for positives, ``K`` (or any value outside
            ``0..K-1``) for negatives.
        scores: ``M`` IoU quality targets of the positives (ignored for negatives).
        beta: focusing exponent.

    Returns:
        ``M`` losses: ``BCE(σ, y)·|y − σ|^β`` summed over classes, with ``y`` the quality at
        the positive's class and 0 elsewhere.
    """
    sig = logits.sigmoid()
    K = logits.shape[1]
    target = torch.zeros_like(logits)
    pos = (labels >= 0) & (labels < K)
    target[pos, labels[pos]] = scores[pos].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * (target - sig).abs().pow(beta)).sum(dim=1)


def distribution_focal_loss(dist_logits: Tensor, target: Tensor) -> Tensor:
    """DFL: cross-entropy on the two bins around a continuous target, weighted by proximity.

    Args:
        dist_logits: ``N×(n+1)`` bin logits.
        target: ``N`` target distances in bins, in ``[0, n)``.

    Returns:
        ``N`` losses ``CE(y_l)·(y_r − y) + CE(y_r)·(y − y_l)``, ``y_l = ⌊y⌋``, ``y_r = y_l + 1``.
    """
    left = target.long()
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    return (
        F.cross_entropy(dist_logits, left, reduction="none") * w_left
        + F.cross_entropy(dist_logits, right, reduction="none") * w_right
    )


@torch.no_grad()
def atss_assign(
    anchors_per_level: List[Tensor], gt_boxes: Tensor, gt_classes: Tensor, num_classes: int,
    topk: int = 9,
) -> Tuple[Tensor, Tensor, Tensor]:
    """ATSS assignment for one image.

    Args:
        anchors_per_level: ``L_l×4`` XYXY anchors of each level.
        gt_boxes: ``G×4`` XYXY; ``gt_classes``: ``G`` int64.
        num_classes: ``K``; background is labelled ``K``.
        topk: candidates per level and box, by centre distance.

    Returns:
        ``labels`` (``M``, int64, ``K`` = background), ``boxes`` (``M×4`` matched GT, zeros for
        negatives), ``ious`` (``M``, IoU of each anchor with its matched GT, 0 for negatives).
    """
    anchors = torch.cat(anchors_per_level)
    M, G = anchors.shape[0], gt_boxes.shape[0]
    labels = torch.full((M,), num_classes, dtype=torch.int64, device=anchors.device)
    boxes = torch.zeros_like(anchors)
    ious_out = torch.zeros(M, dtype=anchors.dtype, device=anchors.device)
    if G == 0:
        return labels, boxes, ious_out
    ious = box_iou(anchors, gt_boxes)  # M×G
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    g_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = torch.cdist(a_ctr, g_ctr)  # M×G
    candidates, start = [], 0
    for lvl in anchors_per_level:
        n = lvl.shape[0]
        k = min(topk, n)
        _, idx = dist[start : start + n].topk(k, dim=0, largest=False)  # k×G
        candidates.append(idx + start)
        start += n
    cand = torch.cat(candidates)  # C×G
    cand_ious = ious.gather(0, cand)
    # unbiased std, as the ATSS reference
    thr = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= thr[None]
    # candidate centre strictly inside its box (margin 0.01 px as the reference)
    cx, cy = a_ctr[cand, 0], a_ctr[cand, 1]
    inside = torch.stack(
        [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], -1
    ).amin(-1) > 0.01
    is_pos &= inside
    # anchor × box IoU restricted to positive candidates; ties to several boxes -> max IoU
    masked = torch.full_like(ious, -1.0)
    gidx = torch.arange(G, device=anchors.device)[None].expand_as(cand)
    masked[cand[is_pos], gidx[is_pos]] = ious[cand[is_pos], gidx[is_pos]]
    best, arg = masked.max(dim=1)
    pos = best >= 0
    labels[pos] = gt_classes[arg[pos]]
    boxes[pos] = gt_boxes[arg[pos]]
    ious_out[pos] = best[pos]
    return labels, boxes, ious_out


# ---------------------------------------------------------------------------------- head
class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level for the box branch)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class GFLHead(nn.Module):
    """GFL head: two towers of ``num_convs`` 3×3 conv + GN + ReLU, class logits and side
    distributions, a learnable scale per level on the distribution logits (mmdet ``GFLHead``).

    ``forward(features)`` returns ``(cls_logits, bbox_dist)``: lists over levels of
    ``B×K×h×w`` and ``B×(4·(reg_max+1))×h×w`` (sides ordered left, top, right, bottom).
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int, reg_max: int,
                 num_levels: int, prior_prob: float = 0.01, norm: str = "GN") -> None:
        super().__init__()
        cls, bbox = [], []
        for _ in range(num_convs):
            for tower in (cls, bbox):
                tower += [
                    nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=not norm),
                    # >= 2 channels per GN group: narrow heads run on a 1x1 P7 map
                    get_norm(norm, in_channels, min_group_channels=2),
                    nn.ReLU(),
                ]
        self.cls_subnet = nn.Sequential(*cls)
        self.bbox_subnet = nn.Sequential(*bbox)
        self.gfl_cls = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(in_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        cls_logits = [self.gfl_cls(self.cls_subnet(f)) for f in features]
        bbox_dist = [s(self.gfl_reg(self.bbox_subnet(f))) for s, f in zip(self.scales, features)]
        return cls_logits, bbox_dist


@META_ARCH_REGISTRY.register()
class GFL(DenseDetector):
    """GFL detector (one square anchor of ``ANCHOR_SCALE·stride`` per location, ATSS).

    Config: ``MODEL.GFL.*``, ``MODEL.FPN.*``. Training losses: ``loss_qfl`` (divided by the
    number of positives), ``loss_dfl`` and ``loss_giou`` (weighted by the positives' class score
    and divided by the sum of those weights; DFL also by the 4 sides).
    """

    box_key = "bbox_dist"
    CLASS_COUNT = ClassCountKey("MODEL.GFL.NUM_CLASSES", "thing_classes")

    def __init__(self, cfg) -> None:
        c = cfg.MODEL.GFL
        super().__init__(cfg, c.IN_FEATURES, self.CLASS_COUNT.num_classes(cfg))
        self.reg_max = int(c.REG_MAX)
        self.anchor_generator = AnchorGenerator(
            tuple((float(c.ANCHOR_SCALE * s),) for s in self.strides),
            tuple((1.0,) for _ in self.strides),
        )
        self.head = GFLHead(
            self.in_channels[0], self.num_classes, c.NUM_CONVS, self.reg_max,
            len(self.in_features), norm=c.HEAD_NORM,
        )
        self.topk = int(c.ATSS_TOPK)
        self.qfl_beta = float(c.QFL_BETA)
        self.w_qfl, self.w_dfl, self.w_giou = c.LOSS_QFL_WEIGHT, c.LOSS_DFL_WEIGHT, c.LOSS_GIOU_WEIGHT
        self.score_thresh = c.SCORE_THRESH_TEST
        self.topk_candidates = c.TOPK_CANDIDATES_TEST
        self.nms_thresh = c.NMS_THRESH_TEST

    # ------------------------------------------------------------------ helpers for KD
    def assign(self, anchors: List[Tensor], instances: List[Instances]) -> Tuple[Tensor, Tensor, Tensor]:
        """ATSS for a batch. ``anchors``: per level ``L_l×4`` (``extract()["anchors"]``).

        Returns ``labels`` ``B×M`` (``K`` = background), ``boxes`` ``B×M×4``, ``ious`` ``B×M``.
        """
        out = [atss_assign(anchors, i.gt_boxes, i.gt_classes, self.num_classes, self.topk)
               for i in instances]
        return tuple(torch.stack(t) for t in zip(*out))  # type: ignore[return-value]

    def assignment(self, anchors: List[Tensor], instances: List[Instances]) -> Dict[str, Tensor]:
        """:meth:`assign` as ``{"labels", "boxes", "ious"}``, published by ``forward_train`` as
        ``outputs["assignment"]``."""
        labels, boxes, ious = self.assign(anchors, instances)
        return {"labels": labels, "boxes": boxes, "ious": ious}

    def flatten_outputs(self, outputs: Dict[str, Any]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-anchor views of ``extract()`` outputs, in the order of ``torch.cat(anchors)``.

        Returns ``cls`` ``B×M×K`` logits, ``dist`` ``B×M×4×(n+1)`` side logits, ``centers``
        ``M×2`` anchor centres (input pixels), ``strides`` ``M`` (the level stride of each).
        """
        n1 = self.reg_max + 1
        cls = flatten_levels(outputs["cls_logits"], self.num_classes)
        dist = flatten_levels(outputs["bbox_dist"], 4 * n1)
        anchors = outputs["anchors"]
        centers = torch.cat([(a[:, :2] + a[:, 2:]) / 2 for a in anchors])
        strides = torch.cat([
            torch.full((a.shape[0],), float(s), dtype=centers.dtype, device=centers.device)
            for a, s in zip(anchors, outputs["strides"])
        ])
        return cls, dist.reshape(dist.shape[0], dist.shape[1], 4, n1), centers, strides

    # ------------------------------------------------------------------ training
    def losses(self, batch: ImageBatch, outputs: Dict[str, Any]) -> Dict[str, Tensor]:
        # the ATSS assignment forward_train published (computed here when absent)
        assignment = outputs.get("assignment") or self.assignment(outputs["anchors"], batch.instances)
        labels, gt_boxes = assignment["labels"], assignment["boxes"]
        cls, dist, centers, strides = self.flatten_outputs(outputs)
        B, M, K = cls.shape
        pos = (labels >= 0) & (labels < K)
        num_pos = reduce_mean(pos.sum().to(cls.dtype)).clamp(min=1.0)

        b_idx, a_idx = pos.nonzero(as_tuple=True)
        scores = cls.new_zeros(B, M)
        if b_idx.numel() > 0:
            s = strides[a_idx][:, None]
            ctr = centers[a_idx] / s
            pos_dist = dist[b_idx, a_idx]  # P×4×(n+1)
            pred_box = distance2bbox(ctr, integral(pos_dist))  # in stride units
            tgt_box = gt_boxes[b_idx, a_idx] / s
            iou = aligned_box_iou(pred_box.detach(), tgt_box).clamp(min=1e-6)
            scores[b_idx, a_idx] = iou
            weight = cls.detach()[b_idx, a_idx].sigmoid().amax(dim=1)
            loss_giou = (generalized_box_iou_loss(pred_box, tgt_box, reduction="none") * weight).sum()
            tgt_dist = bbox2distance(ctr, tgt_box, self.reg_max).reshape(-1)
            loss_dfl = (
                distribution_focal_loss(pos_dist.reshape(-1, self.reg_max + 1), tgt_dist)
                * weight[:, None].expand(-1, 4).reshape(-1)
            ).sum() / 4.0
            avg = reduce_mean(weight.sum()).clamp(min=1.0)
            loss_giou, loss_dfl = loss_giou / avg, loss_dfl / avg
        else:  # keep the graph connected (DDP) with exact zeros
            loss_giou = dist.sum() * 0.0
            loss_dfl = dist.sum() * 0.0
        loss_qfl = quality_focal_loss(
            cls.reshape(-1, K), labels.reshape(-1), scores.reshape(-1), self.qfl_beta
        ).sum() / num_pos
        return {
            "loss_qfl": self.w_qfl * loss_qfl,
            "loss_dfl": self.w_dfl * loss_dfl,
            "loss_giou": self.w_giou * loss_giou,
        }

    # ------------------------------------------------------------------ inference
    def predict_level(self, cls: Tensor, dist: Tensor, anchors: Tensor, stride: int):
        """One image, one level: ``cls`` ``1×K×h×w``, ``dist`` ``1×(4·(n+1))×h×w``.

        Returns boxes ``N×4`` XYXY (input pixels), scores ``N``, classes ``N``.
        """
        scores = permute_to_N_HWA_K(cls, self.num_classes)[0].sigmoid()
        d = permute_to_N_HWA_K(dist, 4 * (self.reg_max + 1))[0]
        s, loc, c = self._topk_candidates(scores)
        ctr = (anchors[loc, :2] + anchors[loc, 2:]) / 2
        sides = integral(d[loc].reshape(-1, 4, self.reg_max + 1)) * stride
        return distance2bbox(ctr, sides), s, c
