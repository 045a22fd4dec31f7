"""BCD context distillation ``L_cd`` (docs/methods.md §2.5, §2.10 A1/A5).

* Student: the shared student HFA output ``F_S`` (``bcd_hfa.py``), token-capped, then
  ``φ_S = BN(Conv1x1_{C_S→C_T}(·))``. Teacher (``TEACHER_HEAD``): ``fixed_projection`` (default,
  parameter-free standardise + fixed orthogonal projection), ``literal_joint`` (a trainable
  teacher HFA trained by ``L_cd``), ``frozen_random`` (a random frozen teacher HFA),
  ``shared_stopgrad`` (the student HFA on teacher features, detached; equal channels).
* Token cap: when ``N = h·w > TOKEN_CAP``, both maps are average-pooled by the smallest integer
  stride ``s`` with ``⌈h/s⌉·⌈w/s⌉ ≤ TOKEN_CAP`` before ``φ`` (a pooled cell is valid when any of
  its cells is).
* Relation ``R = softmax_row(X Xᵀ / √C / τ)`` of the ``B×N×C`` tokens, in fp32, invalid columns at
  ``-inf``, invalid rows dropped; loss ``τ² · mean_{valid rows} KL(sg(R_T[i]) ‖ R_S[i])``.
* Row chunking: rows are processed ``CHUNK`` at a time against all keys, so the peak memory of
  one chunk is ``O(B·CHUNK·N)``; with ``CHECKPOINT`` each chunk's activations are recomputed in
  the backward (``torch.utils.checkpoint``) instead of kept, so the whole loss stays
  ``O(B·CHUNK·N)``. The result equals the unchunked computation.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..functional.relation import self_relation_kl_rows
from ._functional import build_temperature, masked_kl
from .base import DistillLoss, KDContext
from .bcd_hfa import (
    HFA,
    FixedProjectionHFA,
    IdentityHFA,
    bcd_inputs,
    frozen_norm_stats,
    student_hfa,
)
from .build import KD_LOSS_REGISTRY

__all__ = ["ContextDistillation", "cap_tokens", "relation_kl", "relation_row_kl", "relation_scale"]

_BACKBONE_LEVELS = ["backbone.res2", "backbone.res3", "backbone.res4", "backbone.res5"]
_TEACHER_HEADS = ("fixed_projection", "literal_joint", "frozen_random", "shared_stopgrad", "identity")


def cap_tokens(x: Tensor, valid: Tensor, cap: int) -> Tuple[Tensor, Tensor]:
    """Average-pool ``B×C×h×w`` (and max-pool the ``B×h×w`` mask) so that ``h·w ≤ cap``."""
    h, w = x.shape[-2:]
    if cap <= 0 or h * w <= cap:
        return x, valid
    s = max(1, int(math.floor(math.sqrt(h * w / cap))))
    while math.ceil(h / s) * math.ceil(w / s) > cap:
        s += 1
    xp = F.avg_pool2d(x, s, s, ceil_mode=True)
    vp = F.max_pool2d(valid[:, None].float(), s, s, ceil_mode=True)[:, 0] > 0.5
    return xp, vp


def relation_row_kl(q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, col: Tensor, scale: float) -> Tensor:
    """Per-row relation KL of one chunk of query rows: ``B×n``.

    ``KL(softmax(scale · q_t k_tᵀ) ‖ softmax(scale · q_s k_sᵀ))`` row by row, over the columns
    where ``col`` (``B×N`` bool) is True. ``q_*``: ``B×n×C`` query rows, ``k_*``: ``B×N×C`` keys.
    This is the one place the relation rows are computed (a fused implementation replaces it).
    """
    a_s = torch.bmm(q_s, k_s.transpose(1, 2)) * scale
    a_t = torch.bmm(q_t, k_t.transpose(1, 2)) * scale
    return masked_kl(a_t, a_s, col[:, None, :], dim=2)


_chunk_kl = relation_row_kl  # old name


def relation_scale(channels: int, tau: float, relation: str = "dot", cos_tau: float = 0.1) -> float:
    """Factor of ``X Xᵀ`` in the relation logits: ``1/(√C·τ)`` (``dot``) or ``1/(cos_tau·τ)``
    (``cosine``, tokens L2-normalised first)."""
    if relation == "dot":
        return 1.0 / (math.sqrt(channels) * tau)
    if relation == "cosine":
        return 1.0 / (cos_tau * tau)
    raise ValueError(f"KD.CONTEXT.RELATION must be 'dot' or 'cosine', got '{relation}'")


def relation_kl(
    x_s: Tensor,
    x_t: Tensor,
    valid: Tensor,
    tau: float,
    chunk: int = 0,
    use_checkpoint: bool = False,
    observer: Optional[Any] = None,
    reduction: str = "row_mean",
    relation: str = "dot",
    cos_tau: float = 0.1,
    impl: str = "chunked",
) -> Tensor:
    """Relation KD: ``Σ_{valid rows i} KL(softmax(A_T[i]/τ) ‖ softmax(A_S[i]/τ))`` reduced.

    ``A = X Xᵀ/√C`` (``relation="dot"``, Eq. 4) or ``A = X̂ X̂ᵀ/cos_tau`` with L2-normalised
    tokens (``"cosine"``, CIRKD).

    Args:
        x_s, x_t: ``B×N×C`` student / teacher tokens (same C).
        valid: ``B×N`` bool (invalid tokens are neither rows nor columns).
        tau: temperature (no τ² here).
        chunk: rows per chunk (≤ 0 or ≥ N: one chunk).
        use_checkpoint: recompute each chunk in the backward.
        observer: a ``TemperatureController`` fed with the teacher rows (``observe``), or None.
        reduction: ``"row_mean"`` (divide by the number of valid rows) or ``"element_mean"``
            (divide by the number of valid (row, column) entries: also by the row length).
        relation, cos_tau: see above.
        impl: ``"chunked"`` (this loop over ``relation_row_kl``, the reference) or ``"fused"``
            (``bcd.distill.functional.relation``: ``O(N·C)`` memory, analytic backward; ``chunk``
            and ``use_checkpoint`` are then unused).
    """
    if reduction not in ("row_mean", "element_mean"):
        raise ValueError(f"KD.CONTEXT.REDUCTION must be 'row_mean' or 'element_mean', got '{reduction}'")
    x_s = x_s.float()
    x_t = x_t.float().detach()
    if relation == "cosine":
        x_s = F.normalize(x_s, dim=-1)
        x_t = F.normalize(x_t, dim=-1)
    B, N, C = x_s.shape
    scale = relation_scale(C, tau, relation, cos_tau)
    if impl == "fused":
        hook = None
        if observer is not None:  # teacher logits at τ = 1 (the controller divides by τ)
            def hook(scores: Tensor, idx: Tensor) -> None:
                observer.observe(scores * tau, valid[:, idx], dim=2)
        rows_kl = self_relation_kl_rows(x_s, x_t, scale, valid, teacher_rows_hook=hook)
        return (rows_kl * valid).sum() / _normaliser(valid, reduction)
    if impl != "chunked":
        raise ValueError(f"KD.CONTEXT.IMPL must be 'fused' or 'chunked', got '{impl}'")
    chunk = N if chunk <= 0 else min(chunk, N)
    total = x_s.new_zeros(())
    for a in range(0, N, chunk):
        b = min(N, a + chunk)
        rows = valid[:, a:b]
        if not bool(rows.any()):
            continue
        args = (x_s[:, a:b], x_s, x_t[:, a:b], x_t, valid, scale)
        if use_checkpoint and torch.is_grad_enabled() and x_s.requires_grad:
            kl = checkpoint(relation_row_kl, *args, use_reentrant=False)
        else:
            kl = relation_row_kl(*args)
        total = total + (kl * rows).sum()
        if observer is not None:
            with torch.no_grad():  # teacher logits at τ = 1 (the controller divides by τ)
                a_t = torch.bmm(x_t[:, a:b], x_t.transpose(1, 2)) * (scale * tau)
                observer.observe(a_t.masked_fill(~valid[:, None, :], float("-inf")), rows, dim=2)
    return total / _normaliser(valid, reduction)


def _normaliser(valid: Tensor, reduction: str) -> Tensor:
    """Number of valid rows, or of valid (row, column) entries (rows × valid columns per image)."""
    if reduction == "row_mean":
        return valid.sum().clamp_min(1)
    n = valid.sum(dim=1).to(torch.float64)
    return (n * n).sum().clamp_min(1).float()


@KD_LOSS_REGISTRY.register()
class ContextDistillation(DistillLoss):
    """BCD context distillation (module docstring); entry ``loss_kd_context``."""

    CONFIG_KEY = "CONTEXT"
    NAME = "context"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        node = self.node
        if node.TEACHER_HEAD not in _TEACHER_HEADS:
            raise ValueError(f"KD.CONTEXT.TEACHER_HEAD '{node.TEACHER_HEAD}' not in {_TEACHER_HEADS}")
        s_ch = [student_shapes[n].channels for n in self.student_features]
        t_ch = [teacher_shapes[n].channels for n in self.teacher_features]
        dim = int(cfg.KD.BCD_HFA.DIM)
        self.stride = int(cfg.KD.BCD_HFA.STRIDE)
        self.head = node.TEACHER_HEAD
        # shared with the other BCD loss; registered once, in the Distiller's shared dict
        object.__setattr__(self, "hfa_s", student_hfa(self, cfg, self.student_features, s_ch))
        if node.IMPL not in ("fused", "chunked"):
            raise ValueError(f"KD.CONTEXT.IMPL must be 'fused' or 'chunked', got '{node.IMPL}'")
        if node.REDUCTION not in ("row_mean", "element_mean"):
            raise ValueError(f"KD.CONTEXT.REDUCTION must be 'row_mean' or 'element_mean', got '{node.REDUCTION}'")
        if node.RELATION not in ("dot", "cosine"):
            raise ValueError(f"KD.CONTEXT.RELATION must be 'dot' or 'cosine', got '{node.RELATION}'")
        if self.head == "fixed_projection":
            self.hfa_t: Optional[nn.Module] = FixedProjectionHFA(t_ch, dim, node.PROJECTION_SEED)
        elif self.head == "identity":
            self.hfa_t = IdentityHFA(t_ch)
        elif self.head in ("literal_joint", "frozen_random"):
            self.hfa_t = HFA(t_ch, dim, cfg.KD.BCD_HFA.NORM)
            if self.head == "frozen_random":
                self.hfa_t.requires_grad_(False)
        else:
            if s_ch != t_ch:
                raise ValueError(
                    f"KD.CONTEXT.TEACHER_HEAD shared_stopgrad needs equal channels, got {s_ch} vs {t_ch}"
                )
            self.hfa_t = None
        c_t = self.hfa_t.out_channels if self.hfa_t is not None else self.hfa_s.out_channels
        self.phi_s = nn.Sequential(nn.Conv2d(self.hfa_s.out_channels, c_t, 1, bias=False), nn.BatchNorm2d(c_t))
        self.temperature = build_temperature(node)

    def train(self, mode: bool = True) -> "ContextDistillation":
        super().train(mode)
        if self.head == "frozen_random" and self.hfa_t is not None:
            self.hfa_t.eval()
        return self

    def forward(
        self,
        student_feats: Dict[str, Any],
        teacher_feats: Dict[str, Any],
        ctx: KDContext,
        stride: Optional[int] = None,
    ) -> Dict[str, Tensor]:
        """The loss entries; ``stride`` overrides ``KD.BCD_HFA.STRIDE`` for this call (the FPN
        variant runs one loss per level at that level's stride)."""
        f_s, t_list, size = bcd_inputs(self, student_feats, teacher_feats, ctx, stride)
        valid = ctx.valid_mask(size)
        if self.hfa_t is None:
            with torch.no_grad(), frozen_norm_stats(self.hfa_s):
                f_t = self.hfa_s(t_list, size)
        elif isinstance(self.hfa_t, (FixedProjectionHFA, IdentityHFA)):
            f_t = self.hfa_t(t_list, size, valid)
        else:
            f_t = self.hfa_t(t_list, size)
        if self.head != "literal_joint":
            f_t = f_t.detach()
        f_s, valid_c = cap_tokens(f_s, valid, int(self.node.TOKEN_CAP))
        f_t, _ = cap_tokens(f_t, valid, int(self.node.TOKEN_CAP))
        z_s = self.phi_s(f_s)
        x_s = z_s.flatten(2).transpose(1, 2)
        x_t = f_t.flatten(2).transpose(1, 2)
        tau = self.temperature.value
        if self.head == "literal_joint":
            loss = self._joint(x_s, x_t, valid_c.flatten(1), tau)
        else:
            loss = relation_kl(
                x_s, x_t, valid_c.flatten(1), tau, int(self.node.CHUNK), bool(self.node.CHECKPOINT),
                observer=self.temperature, reduction=self.node.REDUCTION, relation=self.node.RELATION,
                cos_tau=float(self.node.COS_TAU), impl=str(self.node.IMPL),
            )
        return {self.loss_key: loss * (tau * tau if self.node.TAU_SQUARED else 1.0)}

    def _joint(self, x_s: Tensor, x_t: Tensor, valid: Tensor, tau: float) -> Tensor:
        """``literal_joint``: the teacher side keeps its gradient (unchunked); it feeds the
        temperature controller like the detached path."""
        x_s, x_t = x_s.float(), x_t.float()
        if self.node.RELATION == "cosine":
            x_s, x_t = F.normalize(x_s, dim=-1), F.normalize(x_t, dim=-1)
        scale = relation_scale(x_s.shape[-1], tau, self.node.RELATION, float(self.node.COS_TAU))
        with torch.no_grad():
            a_t = torch.bmm(x_t, x_t.transpose(1, 2)) * (scale * tau)
            self.temperature.observe(a_t.masked_fill(~valid[:, None, :], float("-inf")), valid, dim=2)
        kl = relation_row_kl(x_s, x_s, x_t, x_t, valid, scale)
        return (kl * valid).sum() / _normaliser(valid, self.node.REDUCTION)
