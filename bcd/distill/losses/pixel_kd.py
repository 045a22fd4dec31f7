"""Pixel-wise logit KD (Hinton per pixel; docs/methods.md §5.1).

``L = τ² · (1/|I|) Σ_{n,p∈I} KL(softmax_K(z_T/τ) ‖ softmax_K(z_S/τ))`` over the valid pixels ``I``
of the logits' grid (``batchmean-over-tokens``, CIRKD's reduction). When the two grids differ
the coarser map is bilinearly upsampled. Defaults (CIRKD): τ = 1, λ = 1, features
``sem_seg_head.predictor`` on both sides. ``MASK=False`` reproduces CIRKD (no ignore mask).
"""
from __future__ import annotations

from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor

from ._functional import masked_kl
from .base import DistillLoss, KDContext, as_tensor_feature
from .build import KD_LOSS_REGISTRY

__all__ = ["PixelKD", "pixel_kd"]


def match_size(s: Tensor, t: Tensor):
    """Bilinearly upsample the coarser of two ``B×C×h×w`` maps to the finer one's size."""
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    if s.shape[-2] * s.shape[-1] < t.shape[-2] * t.shape[-1]:
        return F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False), t
    return s, F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)


def pixel_kd(s: Tensor, t: Tensor, valid: Tensor, tau: float) -> Tensor:
    """``τ²`` × mean over valid pixels of the channel KL.

    Args:
        s, t: ``B×K×h×w`` logits (same size).
        valid: ``B×h×w`` bool.
    """
    kl = masked_kl(t.detach() / tau, s / tau, None, dim=1)
    return (kl * valid).sum() / valid.sum().clamp_min(1) * tau * tau


@KD_LOSS_REGISTRY.register()
class PixelKD(DistillLoss):
    """Pixel-wise logit KD; entry ``loss_kd_pixel``."""

    CONFIG_KEY = "PIXEL_KD"
    NAME = "pixel"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        for sn, tn in zip(self.student_features, self.teacher_features):
            if student_shapes[sn].channels != teacher_shapes[tn].channels:
                raise ValueError(
                    f"KD.PIXEL_KD: '{sn}' has {student_shapes[sn].channels} classes but teacher "
                    f"'{tn}' has {teacher_shapes[tn].channels}"
                )

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        total = 0.0
        for sn, tn in zip(self.student_features, self.teacher_features):
            s, t = match_size(as_tensor_feature(student_feats[sn], sn), as_tensor_feature(teacher_feats[tn], tn).detach())
            valid = ctx.valid_mask(tuple(s.shape[-2:]))
            total = total + pixel_kd(s, t, valid, float(self.node.TEMPERATURE))
        return {self.loss_key: total / len(self.student_features)}
