"""Structured KD, pair-wise term (Liu et al., CVPR 2019; docs/methods.md §5.3).

1. Max-pool both maps into nodes: ``VARIANT="official"`` uses kernel = stride =
   ``⌊POOL_SCALE·(h, w)⌋`` with ceil mode (2×2 = 4 nodes at scale 0.5); ``"cirkd"`` uses a 2×2
   kernel (fine nodes, ``M = N/4``).
2. L2-normalise each node over channels (the norm is detached, as in the official code).
3. ``a_ij = f̂_iᵀ f̂_j`` for teacher and student; ``L = mean_n mean_{i,j} (a^S_ij − a^T_ij)²``
   (both variants reduce to this: ``(1/B) Σ_n Σ_ij (·)² / M²``).

With ``MASK`` invalid cells are set to ``-inf`` before the max-pool, and nodes without any valid
cell are left out of the pairs (so masked pixels carry no weight). The node grid is defined on the
padded map, so unlike the other losses the value is not invariant to the amount of padding.
A connector (1×1 conv + norm) maps the student channels to the teacher's when they differ.
Default: ``sem_seg_head.feature`` on both sides, λ = 0.5 (official).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import FeaturePairLoss, KDContext
from .build import KD_LOSS_REGISTRY

__all__ = ["StructuredKD", "node_features", "pairwise_similarity_loss"]


def node_features(x: Tensor, valid: Tensor, variant: str, scale: float) -> Tuple[Tensor, Tensor]:
    """Max-pooled, L2-normalised nodes ``B×M×C`` and their validity ``B×M``."""
    h, w = x.shape[-2:]
    if variant == "official":
        k = (max(1, int(h * scale)), max(1, int(w * scale)))
    elif variant == "cirkd":
        k = (2, 2)
    else:
        raise ValueError(f"KD.STRUCTURED_KD.VARIANT '{variant}' must be 'official' or 'cirkd'")
    xm = x.float().masked_fill(~valid[:, None], float("-inf"))
    p = F.max_pool2d(xm, kernel_size=k, stride=k, ceil_mode=True)
    node_valid = torch.isfinite(p[:, 0]).flatten(1)
    p = torch.where(torch.isfinite(p), p, torch.zeros_like(p)).flatten(2).transpose(1, 2)
    norm = p.norm(dim=2, keepdim=True).detach().clamp_min(1e-8)
    return p / norm, node_valid


def pairwise_similarity_loss(fs: Tensor, ft: Tensor, vs: Tensor) -> Tensor:
    """Mean over images of the mean over valid node pairs of ``(a^S − a^T)²``."""
    a_s = torch.bmm(fs, fs.transpose(1, 2))
    a_t = torch.bmm(ft, ft.transpose(1, 2)).detach()
    pair = (vs[:, :, None] & vs[:, None, :]).float()
    per_img = ((a_s - a_t) ** 2 * pair).sum(dim=(1, 2)) / pair.sum(dim=(1, 2)).clamp_min(1)
    keep = (pair.sum(dim=(1, 2)) > 0).float()
    return (per_img * keep).sum() / keep.sum().clamp_min(1)


@KD_LOSS_REGISTRY.register()
class StructuredKD(FeaturePairLoss):
    """Structured-KD pair-wise term; entry ``loss_kd_structured``."""

    CONFIG_KEY = "STRUCTURED_KD"
    NAME = "structured"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        self.build_connectors(cfg, cfg.KD.CONNECTOR.NORM)

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        total = 0.0
        for s, t, valid in self.aligned_pairs(student_feats, teacher_feats, ctx):
            fs, vs = node_features(s, valid, self.node.VARIANT, float(self.node.POOL_SCALE))
            ft, _ = node_features(t, valid, self.node.VARIANT, float(self.node.POOL_SCALE))
            total = total + pairwise_similarity_loss(fs, ft, vs)
        return {self.loss_key: total / len(self.connectors)}
