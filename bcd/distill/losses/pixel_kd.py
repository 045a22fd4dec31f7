"""Pixel-wise logit KD (Hinton per pixel; docs/methods.md §5.1).

``L = τ² · (1/|I|) Σ_{n,p∈I} KL(softmax_K(z_T/τ) ‖ softmax_K(z_S/τ))`` over the valid pixels ``I``
of the logits' grid (``batchmean-over-tokens``, CIRKD's reduction). When the two grids differ
the coarser map is bilinearly upsampled. Defaults (CIRKD): τ = 1, λ = 1, features
``sem_seg_head.predictor`` on both sides. ``MASK=False`` reproduces CIRKD (no ignore mask).

APD's logit term (docs/methods.md §4.4, §4.6 item 2; ``dvlab-research/APD`` ``CriterionKD``) is this loss
with two switches: ``RESIZE input`` (both logit maps bilinearly upsampled to the padded input /
label size, ``align_corners=True``, instead of the coarser map to the finer one) and ``REDUCTION
elementwise`` (PyTorch ``KLDivLoss()``'s default mean over ``B·K·H·W``, i.e. the per-pixel KL
divided by ``K``, instead of ``tokens``: mean over pixels), with ``MASK False`` and λ = 10.
"""
from __future__ import annotations

from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor

from ._functional import masked_kl
from .base import DistillLoss, KDContext, as_tensor_feature
from .build import KD_LOSS_REGISTRY

__all__ = ["PixelKD", "pixel_kd"]

_REDUCTIONS = ("tokens", "elementwise")
_RESIZES = ("logits", "input")


def match_size(s: Tensor, t: Tensor):
    """Bilinearly upsample the coarser of two ``B×C×h×w`` maps to the finer one's size."""
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    if s.shape[-2] * s.shape[-1] < t.shape[-2] * t.shape[-1]:
        return F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False), t
    return s, F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)


def pixel_kd(s: Tensor, t: Tensor, valid: Tensor, tau: float, reduction: str = "tokens") -> Tensor:
    """``τ²`` × mean over valid pixels of the channel KL.

    Args:
        s, t: ``B×K×h×w`` logits (same size).
        valid: ``B×h×w`` bool.
        reduction: ``"tokens"`` (mean over pixels, CIRKD) or ``"elementwise"`` (mean over
            pixels × K, APD's ``KLDivLoss()``).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"KD.PIXEL_KD.REDUCTION must be one of {_REDUCTIONS}; got '{reduction}'")
    kl = masked_kl(t.detach() / tau, s / tau, None, dim=1)
    n = valid.sum().clamp_min(1) * (s.shape[1] if reduction == "elementwise" else 1)
    return (kl * valid).sum() / n * tau * tau


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
        if self.node.REDUCTION not in _REDUCTIONS or self.node.RESIZE not in _RESIZES:
            raise ValueError(
                f"KD.PIXEL_KD.REDUCTION must be one of {_REDUCTIONS} and RESIZE one of {_RESIZES}; "
                f"got '{self.node.REDUCTION}', '{self.node.RESIZE}'"
            )

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        total = 0.0
        for sn, tn in zip(self.student_features, self.teacher_features):
            s, t = match_size(as_tensor_feature(student_feats[sn], sn), as_tensor_feature(teacher_feats[tn], tn).detach())
            if self.node.RESIZE == "input":  # APD: both maps to the label size
                size = tuple(ctx.student_batch.tensor.shape[-2:])
                s = F.interpolate(s, size=size, mode="bilinear", align_corners=True)
                t = F.interpolate(t, size=size, mode="bilinear", align_corners=True)
            valid = ctx.valid_mask(tuple(s.shape[-2:]))
            total = total + pixel_kd(s, t, valid, float(self.node.TEMPERATURE), self.node.REDUCTION)
        return {self.loss_key: total / len(self.student_features)}
