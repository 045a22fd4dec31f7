"""Region proposal network (Faster R-CNN's RPN, Detectron2 semantics) on torchvision parts.

* ``DefaultAnchorGenerator``: torchvision's ``AnchorGenerator`` (cell anchors ordered
  aspect-ratio-major, grid offset 0) without the rounding of the cell anchors to integers, so
  anchors equal Detectron2's ``DefaultAnchorGenerator`` (which does not round) up to the order
  of each cell's anchors (Detectron2 enumerates size-major; ``bcd.modeling.d2_convert`` permutes
  head channels on conversion).
* ``RPN``: torchvision's ``RPNHead`` (3×3 conv + ReLU, 1×1 objectness, 1×1 deltas), ``Matcher``,
  ``BalancedPositiveNegativeSampler``, ``BoxCoder`` and ``batched_nms``; proposal selection as
  Detectron2's ``find_top_rpn_proposals`` (per-level top-k on logits, clip, drop empty boxes,
  NMS per level, top-k over levels) and its losses (sampled BCE + L1 / smooth-L1 on deltas, both
  divided by ``BATCH_SIZE_PER_IMAGE × images``).

Named modules: ``proposal_generator.rpn_head`` (output ``(objectness, deltas)``: lists over
levels of ``B×A×h×w`` and ``B×4A×h×w``).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import batched_nms, box_iou

from ...structures import Instances

__all__ = ["DefaultAnchorGenerator", "RPN", "grid_anchors", "per_level"]


class DefaultAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with Detectron2's unrounded cell anchors.

    torchvision rounds every cell anchor to integer coordinates (``base_anchors.round()``);
    Detectron2 keeps them exact (a 40.3-px anchor stays 40.3 px). Exact anchors are needed to
    reproduce Detectron2's matching and decoding. Order within a cell: aspect ratio major, size
    minor (torchvision).
    """

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


def per_level(values: Sequence, n: int, key: str) -> List[List[float]]:
    """Detectron2 semantics of anchor lists: one list for all levels, or one per level."""
    values = [[float(x) for x in v] for v in values]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"{key} has {len(values)} entries; expected 1 or {n} (one per level)")
    return values


def grid_anchors(ag: AnchorGenerator, features: List[Tensor], strides: Sequence[int]) -> List[Tensor]:
    """Anchors per level, ``(h·w·A)×4`` XYXY input pixels, ordered (y, x, anchor).

    Uses the declared strides (``AnchorGenerator.forward`` infers them by integer division,
    wrong for coarse levels of inputs that are not multiples of the coarsest stride).
    """
    dtype, device = features[0].dtype, features[0].device
    ag.set_cell_anchors(dtype, device)
    grid_sizes = [list(f.shape[-2:]) for f in features]
    st = [[torch.tensor(int(s), dtype=torch.int64, device=device)] * 2 for s in strides]
    return [a.to(dtype) for a in ag.grid_anchors(grid_sizes, st)]


def _permute(x: Tensor, k: int) -> Tensor:
    """``B×(A·k)×H×W`` -> ``B×(H·W·A)×k`` (the order of ``grid_anchors``)."""
    B, _, H, W = x.shape
    return x.view(B, -1, k, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, k)


class RPN(nn.Module):
    """Region proposal network over the FPN levels of ``MODEL.RPN.IN_FEATURES``.

    Args:
        cfg: ``MODEL.RPN.*`` and ``MODEL.ANCHOR_GENERATOR.{SIZES, ASPECT_RATIOS}``.
        in_channels: channels of every input level (shared head).
        strides: stride of each level of ``MODEL.RPN.IN_FEATURES``.
    """

    def __init__(self, cfg, in_channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        c = cfg.MODEL.RPN
        n = len(strides)
        sizes = per_level(cfg.MODEL.ANCHOR_GENERATOR.SIZES, n, "MODEL.ANCHOR_GENERATOR.SIZES")
        ratios = per_level(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS, n,
                           "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
        self.anchor_generator = DefaultAnchorGenerator(
            tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios)
        )
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ValueError(f"The RPN head needs the same number of anchors per level: {num_anchors}")
        self.strides = [int(s) for s in strides]
        self.rpn_head = RPNHead(in_channels, num_anchors[0])
        for layer in self.rpn_head.modules():  # Detectron2 StandardRPNHead initialisation
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)
        low, high = c.IOU_THRESHOLDS
        self.matcher = det_utils.Matcher(high, low, allow_low_quality_matches=True)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(c.BATCH_SIZE_PER_IMAGE, c.POSITIVE_FRACTION)
        self.box_coder = det_utils.BoxCoder(tuple(c.BBOX_REG_WEIGHTS))
        self.batch_size_per_image = int(c.BATCH_SIZE_PER_IMAGE)
        self.pre_nms_topk = {True: int(c.PRE_NMS_TOPK_TRAIN), False: int(c.PRE_NMS_TOPK_TEST)}
        self.post_nms_topk = {True: int(c.POST_NMS_TOPK_TRAIN), False: int(c.POST_NMS_TOPK_TEST)}
        self.nms_thresh = float(c.NMS_THRESH)
        self.min_box_size = float(c.MIN_SIZE)
        self.smooth_l1_beta = float(c.SMOOTH_L1_BETA)
        self.loss_weight = float(c.LOSS_WEIGHT)

    def forward(self, features: List[Tensor], image_sizes: List[Tuple[int, int]],
                gt_instances: List[Instances] = None) -> Tuple[List[Instances], Dict[str, Tensor], Dict]:
        """Proposals (and losses when training).

        Args:
            features: the RPN levels, ``B×C×h_l×w_l``.
            image_sizes: ``(h, w)`` of each unpadded image.
            gt_instances: ground truth with ``gt_boxes`` (training only).

        Returns:
            ``(proposals, losses, raw)``: per image ``Instances(proposal_boxes N×4 XYXY,
            objectness_logits N)`` sorted by logit; ``{"loss_rpn_cls", "loss_rpn_loc"}`` in
            training (else empty); raw head outputs ``{"objectness", "anchor_deltas",
            "anchors"}``.
        """
        objectness, deltas = self.rpn_head(features)
        anchors = grid_anchors(self.anchor_generator, features, self.strides)
        logits = [_permute(o, 1).flatten(1) for o in objectness]  # B×(h·w·A)
        pred_deltas = [_permute(d, 4) for d in deltas]  # B×(h·w·A)×4
        raw = {"objectness": objectness, "anchor_deltas": deltas, "anchors": anchors}
        with torch.no_grad():
            proposals = self.find_top_proposals(logits, pred_deltas, anchors, image_sizes)
        losses: Dict[str, Tensor] = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("RPN in training mode needs ground-truth instances")
            losses = self.losses(torch.cat(logits, 1), torch.cat(pred_deltas, 1), torch.cat(anchors),
                                 gt_instances)
        return proposals, losses, raw

    @torch.no_grad()
    def find_top_proposals(self, logits: List[Tensor], deltas: List[Tensor], anchors: List[Tensor],
                           image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """Detectron2's ``find_top_rpn_proposals`` (per-level top-k, clip, non-empty, NMS per level)."""
        B = logits[0].shape[0]
        pre, post = self.pre_nms_topk[self.training], self.post_nms_topk[self.training]
        boxes_l, scores_l, level_l = [], [], []
        for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
            k = min(pre, lg.shape[1])
            top, idx = lg.topk(k, dim=1)  # sorted
            sel = dl.gather(1, idx[..., None].expand(-1, -1, 4))
            boxes = self.box_coder.decode_single(sel.reshape(-1, 4), an[idx.reshape(-1)]).view(B, k, 4)
            boxes_l.append(boxes)
            scores_l.append(top)
            level_l.append(torch.full((k,), lvl, dtype=torch.int64, device=lg.device))
        boxes_all, scores_all, levels = torch.cat(boxes_l, 1), torch.cat(scores_l, 1), torch.cat(level_l)
        results = []
        for i, (h, w) in enumerate(image_sizes):
            boxes, scores, lv = boxes_all[i], scores_all[i], levels
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(valid.all()):
                if not self.training:
                    raise FloatingPointError("Predicted boxes or scores contain Inf/NaN (training diverged?)")
                boxes, scores, lv = boxes[valid], scores[valid], lv[valid]
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
            keep = ((boxes[:, 2] - boxes[:, 0]) > self.min_box_size) & (
                (boxes[:, 3] - boxes[:, 1]) > self.min_box_size)
            boxes, scores, lv = boxes[keep], scores[keep], lv[keep]
            keep = batched_nms(boxes, scores, lv, self.nms_thresh)[:post]
            inst = Instances((h, w))
            inst.proposal_boxes = boxes[keep]
            inst.objectness_logits = scores[keep]
            results.append(inst)
        return results

    def losses(self, logits: Tensor, deltas: Tensor, anchors: Tensor,
               gt_instances: List[Instances]) -> Dict[str, Tensor]:
        """Sampled objectness BCE and box-delta L1 (smooth-L1 when ``SMOOTH_L1_BETA`` > 0).

        ``logits`` ``B×M``, ``deltas`` ``B×M×4``, ``anchors`` ``M×4``; both losses are divided by
        ``BATCH_SIZE_PER_IMAGE × B`` (Detectron2's normaliser), then weighted by ``LOSS_WEIGHT``.
        """
        labels, matched_boxes = [], []
        with torch.no_grad():
            for inst in gt_instances:
                gt = inst.gt_boxes
                if gt.numel() == 0:
                    lab = torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device)
                    labels.append(lab)
                    matched_boxes.append(torch.zeros_like(anchors))
                    continue
                m = self.matcher(box_iou(gt, anchors))
                lab = (m >= 0).to(torch.float32)
                lab[m == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1.0
                labels.append(lab)
                matched_boxes.append(gt[m.clamp(min=0)])
            pos_masks, neg_masks = self.sampler(labels)
        pos = torch.stack(pos_masks).bool()
        neg = torch.stack(neg_masks).bool()
        sampled = pos | neg
        target = torch.stack(labels)
        normalizer = float(self.batch_size_per_image * len(gt_instances))
        loss_cls = F.binary_cross_entropy_with_logits(logits[sampled], target[sampled], reduction="sum")
        gt_deltas = self.box_coder.encode_single(torch.stack(matched_boxes)[pos], anchors.expand(len(labels), -1, -1)[pos])
        if self.smooth_l1_beta > 0:
            loss_loc = F.smooth_l1_loss(deltas[pos], gt_deltas, beta=self.smooth_l1_beta, reduction="sum")
        else:
            loss_loc = F.l1_loss(deltas[pos], gt_deltas, reduction="sum")
        w = self.loss_weight
        return {"loss_rpn_cls": w * loss_cls / normalizer, "loss_rpn_loc": w * loss_loc / normalizer}
