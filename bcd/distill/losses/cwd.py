"""Channel-wise distillation, CWD (Shu et al., ICCV 2021; docs/methods.md §5.2).

For each channel ``c``: ``φ(Y_{n,c}) = softmax_{h·w}(Y_{n,c}/τ)``;
``L = τ²/(B·C) Σ_{n,c} KL(φ(Y^T_{n,c}) ‖ φ(Y^S_{n,c}))`` (``sum/(N·C)``). A 1×1 conv connector
(no bias, ``CONNECTOR_NORM``) maps student channels to the teacher's only when they differ; the
student map is resized to the teacher's. With ``MASK`` the spatial softmax runs over valid cells
only (docs/methods.md §1.2; mmrazor / CIRKD do not mask: ``MASK False``). Several feature pairs are
averaged. Defaults: CIRKD segmentation logits, τ = 4, λ = 3.
"""
from __future__ import annotations

from typing import Any, Dict

from torch import Tensor

from ._functional import masked_kl
from .base import FeaturePairLoss, KDContext
from .build import KD_LOSS_REGISTRY

__all__ = ["ChannelWiseDistillation", "cwd_loss"]


def cwd_loss(s: Tensor, t: Tensor, valid: Tensor, tau: float) -> Tensor:
    """``τ²/(B·C) Σ KL`` of per-channel spatial softmaxes.

    Args:
        s, t: ``B×C×h×w`` (same shape).
        valid: ``B×h×w`` bool.
    """
    B, C = s.shape[:2]
    m = valid.reshape(B, 1, -1)
    kl = masked_kl(t.detach().reshape(B, C, -1) / tau, s.reshape(B, C, -1) / tau, m, dim=2)
    return kl.sum() / (B * C) * tau * tau


@KD_LOSS_REGISTRY.register()
class ChannelWiseDistillation(FeaturePairLoss):
    """CWD; entry ``loss_kd_cwd``."""

    CONFIG_KEY = "CWD"
    NAME = "cwd"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        self.build_connectors(cfg, self.node.CONNECTOR_NORM)

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        total = 0.0
        for s, t, valid in self.aligned_pairs(student_feats, teacher_feats, ctx):
            total = total + cwd_loss(s, t, valid, float(self.node.TEMPERATURE))
        return {self.loss_key: total / len(self.connectors)}
