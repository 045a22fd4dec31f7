"""Cascade Mask R-CNN (Cai & Vasconcelos 2018; He et al. 2017) with Detectron2's interface.

``CascadeMaskRCNN`` = ResNet-FPN backbone (``backbone.bottom_up`` + FPN P2–P6) + ``RPN``
(``bcd/modeling/heads/rpn.py``) + ``CascadeROIHeads`` (``bcd/modeling/heads/roi_heads.py``).
``ROI_BOX_CASCADE_HEAD.IOUS`` with one entry gives Mask R-CNN (``MaskRCNN`` is the same class
requiring exactly one stage); ``MODEL.MASK_ON: False`` gives (Cascade) Faster R-CNN.

Training losses: ``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls_stage{k}``,
``loss_box_reg_stage{k}`` (k = 0..stages-1) and ``loss_mask``. Evaluation:
``{"instances": Instances(pred_boxes N×4 XYXY original pixels, scores, pred_classes[,
pred_masks N×height×width bool])}``.

Named modules (distillation features, docs/detection.md): ``backbone.bottom_up.stem``,
``backbone.bottom_up.res2..res5``, ``backbone[p2]..backbone[p6]``, ``proposal_generator.rpn_head``,
``roi_heads.box_head.{k}`` (RoI features of stage ``k``), ``roi_heads.mask_head``.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from ...structures import ImageBatch, Instances
from ..backbone import build_backbone
from ..heads.roi_heads import CascadeROIHeads, paste_masks
from ..heads.rpn import RPN, grid_anchors
from .build import META_ARCH_REGISTRY, ClassCountKey

__all__ = ["CascadeMaskRCNN", "MaskRCNN", "detector_postprocess"]


def detector_postprocess(inst: Instances, out_h: int, out_w: int, mask_threshold: float = 0.5) -> Instances:
    """Rescale boxes from the network input size to ``(out_h, out_w)``, clip them, and paste
    ``pred_masks`` (``R×1×M×M`` probabilities) into ``R×out_h×out_w`` bool masks (Detectron2's
    ``detector_postprocess``)."""
    h, w = inst.image_size
    sx, sy = out_w / w, out_h / h
    boxes = inst.pred_boxes * inst.pred_boxes.new_tensor([sx, sy, sx, sy])
    boxes = torch.stack([boxes[:, 0].clamp(0, out_w), boxes[:, 1].clamp(0, out_h),
                         boxes[:, 2].clamp(0, out_w), boxes[:, 3].clamp(0, out_h)], dim=1)
    out = Instances((out_h, out_w))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out.pred_boxes = boxes[keep]
    out.scores = inst.scores[keep]
    out.pred_classes = inst.pred_classes[keep]
    if inst.has("pred_masks"):
        out.pred_masks = paste_masks(inst.pred_masks[keep], out.pred_boxes, (out_h, out_w), mask_threshold)
    return out


@META_ARCH_REGISTRY.register()
class CascadeMaskRCNN(nn.Module):
    """Two-stage instance segmentation: backbone, RPN, cascade box stages, mask head.

    Config: ``MODEL.RPN``, ``MODEL.ANCHOR_GENERATOR``, ``MODEL.ROI_HEADS``, ``MODEL.ROI_BOX_HEAD``,
    ``MODEL.ROI_BOX_CASCADE_HEAD``, ``MODEL.ROI_MASK_HEAD``, ``MODEL.MASK_ON``, ``MODEL.FPN``.
    """

    CLASS_COUNT = ClassCountKey("MODEL.ROI_HEADS.NUM_CLASSES", "thing_classes")

    def __init__(self, cfg) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        for key, names in (("MODEL.RPN.IN_FEATURES", cfg.MODEL.RPN.IN_FEATURES),
                           ("MODEL.ROI_HEADS.IN_FEATURES", cfg.MODEL.ROI_HEADS.IN_FEATURES)):
            missing = [f for f in names if f not in shapes]
            if missing:
                raise KeyError(f"{key} {missing} are not produced by backbone '{cfg.MODEL.BACKBONE.NAME}' "
                               f"(outputs: {list(shapes)}); check MODEL.FPN.*")
        self.rpn_in_features = list(cfg.MODEL.RPN.IN_FEATURES)
        self.roi_in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        channels = {int(shapes[f].channels) for f in self.rpn_in_features + self.roi_in_features}
        if len(channels) != 1:
            raise ValueError(f"RPN and RoI heads need equal channels on their levels: {channels}")
        ch = channels.pop()
        self.proposal_generator = RPN(cfg, ch, [shapes[f].stride for f in self.rpn_in_features])
        self.roi_heads = CascadeROIHeads(cfg, ch, [shapes[f].stride for f in self.roi_in_features])
        self.num_classes = self.CLASS_COUNT.num_classes(cfg)
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.size_divisibility = max(int(cfg.INPUT.SIZE_DIVISIBILITY),
                                     int(getattr(self.backbone, "size_divisibility", 1)))
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.d2_input_format = cfg.MODEL.D2_INPUT_FORMAT  # for Detectron2 checkpoints (d2_convert.py)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: List[Dict[str, Any]]) -> ImageBatch:
        """Normalise (``MODEL.PIXEL_MEAN/STD``), pad bottom / right to ``size_divisibility``
        (zeros after normalisation, as Detectron2), move images and ``instances`` to the device
        (``ImageBatch.from_inputs``)."""
        return ImageBatch.from_inputs(batched_inputs, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        return self.forward_batch(self.preprocess(batched_inputs))

    def extract(self, batch: ImageBatch) -> Dict[str, Any]:
        """Raw outputs without losses or post-processing: the backbone / FPN features and the
        RPN head's per-level outputs (what the teacher side of distillation reads).

        Returns ``{"features": {p2..p6: B×C×h×w}, "objectness": [B×A×h×w per RPN level],
        "anchor_deltas": [B×4A×h×w], "anchors": [(h·w·A)×4 XYXY], "strides": [int]}``. RoI
        outputs are not computed here: they live on each model's own proposals and do not pair
        between a teacher and a student (forward hooks on ``roi_heads.*`` still record them).
        """
        feats = self.backbone(batch.tensor)
        rpn_feats = [feats[f] for f in self.rpn_in_features]
        rpn = self.proposal_generator
        objectness, deltas = rpn.rpn_head(rpn_feats)
        return {"features": dict(feats), "objectness": objectness, "anchor_deltas": deltas,
                "anchors": grid_anchors(rpn.anchor_generator, rpn_feats, rpn.strides),
                "strides": list(rpn.strides)}

    def forward_batch(self, batch: ImageBatch):
        """Training: ``Dict[str, Tensor]`` of losses (needs ``batch.instances`` with ``gt_boxes``,
        ``gt_classes`` and, with ``MASK_ON``, ``gt_masks``). Evaluation: per image
        ``{"instances": Instances}`` at the original size (``height`` / ``width`` of the input)."""
        feats = self.backbone(batch.tensor)
        rpn_feats = [feats[f] for f in self.rpn_in_features]
        roi_feats = [feats[f] for f in self.roi_in_features]
        if self.training:
            if batch.instances is None:
                raise ValueError("CascadeMaskRCNN in training mode needs 'instances' in every input dict "
                                 "(use DetectionDatasetMapper with is_train=True)")
            if self.mask_on and not all(i.has("gt_masks") for i in batch.instances):
                raise ValueError("MODEL.MASK_ON is set but the inputs carry no 'gt_masks' "
                                 "(the dataset needs 'segmentation' in its annotations)")
            proposals, losses, _ = self.proposal_generator(rpn_feats, batch.image_sizes, batch.instances)
            _, roi_losses, _ = self.roi_heads(roi_feats, proposals, batch.instances)
            losses.update(roi_losses)
            return losses
        proposals, _, _ = self.proposal_generator(rpn_feats, batch.image_sizes)
        results, _, _ = self.roi_heads(roi_feats, proposals)
        outputs = []
        for i, r in enumerate(results):
            inp = batch.inputs[i] if i < len(batch.inputs) else {}
            h, w = batch.image_sizes[i]
            outputs.append({"instances": detector_postprocess(r, int(inp.get("height", h)), int(inp.get("width", w)))})
        return outputs


@META_ARCH_REGISTRY.register()
class MaskRCNN(CascadeMaskRCNN):
    """Mask R-CNN: ``CascadeMaskRCNN`` with exactly one box stage
    (``ROI_BOX_CASCADE_HEAD.IOUS: [0.5]``, ``BBOX_REG_WEIGHTS: [[10, 10, 5, 5]]``)."""

    def __init__(self, cfg) -> None:
        if len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) != 1:
            raise ValueError(
                f"MaskRCNN has one box stage: MODEL.ROI_BOX_CASCADE_HEAD.IOUS must have one entry "
                f"(got {list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)}); use CascadeMaskRCNN for more")
        super().__init__(cfg)
