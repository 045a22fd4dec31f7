"""BCD boundary distillation ``L_bd`` (docs/methods.md §2.4, ambiguity register §2.10).

Pipeline (both sides, on the ``1/8`` grid of the student's padded input):

1. ``F = HFA(backbone levels)`` (``bcd_hfa.py``); ``s = Conv1x1_{C→1}(F)``: a boundary logit.
2. Pair boundary by line-max (IRNet's rule): for each displacement ``δ`` of the disk
   ``0 < |δ|² < r²``, ``B(i, i+δ) = max_{k∈Ω(δ)} s(i+k)`` where ``Ω(δ)`` are the integer offsets of
   the bounding box of the segment ``0→δ`` at squared perpendicular distance < 1 from it
   (endpoints included). ``B`` is symmetric; ``|N_5| = 68`` neighbours. ``DOMAIN="logit"`` uses
   ``B`` of the logit (default); ``"prob"`` uses ``sigmoid(B) = max sigmoid(s)``.
3. Row-wise spatial softmax over the valid neighbours of each valid source pixel at temperature
   τ_bd, ``KL(sg(p_T) ‖ p_S)`` averaged over valid rows (``REDUCTION: row_mean``,
   ``batchmean-over-tokens``) or over valid (row, neighbour) pairs (``element_mean``), times τ².
   ``MODE="unary"`` instead takes one spatial softmax over the whole map of ``s``.

Teacher head (A1, ``TEACHER_HEAD``): ``pseudo_affinity`` (default: a teacher HFA + conv trained
only by IRNet's affinity loss on pair labels from the teacher's own argmax prediction, returned as
the auxiliary entry ``loss_kd_boundary_teacher_head`` at weight ``PSEUDO_AFFINITY_WEIGHT``, not
scheduled; ``L_bd`` is stopped at ``B_T``; the head is *fitted* during the first
``TEACHER_HEAD_FIT_ITERS`` iterations of the run, while ``L_bd`` is 0, then frozen: the student
distils from a fixed teacher boundary map, and only student parameters are updated by ``L_bd``,
as the paper says; ``FIT_ITERS: 0`` trains it throughout), ``literal_joint`` (teacher head trained by ``L_bd``
jointly), ``frozen_random`` (random, frozen teacher head), ``shared_stopgrad`` (the student's
HFA + conv applied to the teacher features, detached; needs equal channels).
Temperature: adaptive controller (§2.7), statistic = the teacher's row softmax.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# line_max below is the reference; the loss uses the equal, faster shared-sub-line version
# (projects/bcd/benchmarks/: ~1.8x less CPU time at r = 5)
from ..functional.line_max import disk_directions, half_plane_directions, line_max_views, line_offsets
from ._functional import build_temperature, masked_kl
from .base import DistillLoss, KDContext
from .bcd_hfa import HFA, IdentityHFA, bcd_inputs, frozen_norm_stats, student_hfa
from .build import KD_LOSS_REGISTRY

__all__ = [
    "BoundaryDistillation",
    "add_config",
    "disk_directions",
    "half_plane_directions",
    "line_max",
    "line_offsets",
    "neighbour_valid",
    "pairwise_boundary_kl",
    "pseudo_affinity_loss",
    "shift",
]

_BACKBONE_LEVELS = ["backbone.res2", "backbone.res3", "backbone.res4", "backbone.res5"]
_TEACHER_HEADS = ("pseudo_affinity", "literal_joint", "frozen_random", "shared_stopgrad")


# ---------------------------------------------------------------------------------------------
# Line-max geometry
# ---------------------------------------------------------------------------------------------
# half_plane_directions, disk_directions, line_offsets: one owner, bcd/distill/functional/line_max.py


def shift(x: Tensor, dy: int, dx: int, pad_value: float) -> Tensor:
    """``out[..., i, j] = x[..., i+dy, j+dx]``; positions outside take ``pad_value``."""
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    xp = F.pad(x, (p, p, p, p), value=pad_value)
    return xp[..., p + dy : p + dy + h, p + dx : p + dx + w]


def line_max(e: Tensor, radius: int, pad_value: float = 0.0) -> Tensor:
    """Pair boundary ``B(i, i+δ) = max_{k∈Ω(δ)} e(i+k)`` for every δ of the disk.

    Args:
        e: ``B×1×h×w`` boundary map (logits or probabilities).
        radius: disk radius r (neighbours with ``0 < |δ|² < r²``).
        pad_value: value outside the map (such targets are masked by callers).

    Returns:
        ``B×|N_r|×h×w`` in the order of :func:`disk_directions`.
    """
    half = half_plane_directions(radius)
    needed = sorted({k for d in half for k in line_offsets(*d)})
    shifted = {k: shift(e, k[0], k[1], pad_value) for k in needed}
    fwd = []
    for d in half:
        offs = line_offsets(*d)
        m = shifted[offs[0]]
        for k in offs[1:]:
            m = torch.maximum(m, shifted[k])
        fwd.append(m)
    # B(i, i-δ) = B(i-δ, i) = B_δ(i-δ): shift B_δ by -δ.
    bwd = [shift(m, -dy, -dx, pad_value) for m, (dy, dx) in zip(fwd, half)]
    return torch.cat(fwd + bwd, dim=1)


def neighbour_valid(valid: Tensor, radius: int) -> Tensor:
    """``B×|N_r|×h×w`` bool: the target ``i+δ`` of each pair is valid (inside and not ignored)."""
    v = valid[:, None].float()
    return torch.cat([shift(v, dy, dx, 0.0) for dy, dx in disk_directions(radius)], dim=1) > 0.5


def neighbour_labels(labels: Tensor, radius: int) -> Tensor:
    """``B×|N_r|×h×w``: the label of the target of each pair (-1 outside)."""
    l = labels[:, None].float()
    return torch.cat([shift(l, dy, dx, -1.0) for dy, dx in disk_directions(radius)], dim=1)


def pseudo_affinity_loss(
    pair_logit: Tensor, labels: Tensor, valid: Tensor, radius: int, bg_class: int = 0
) -> Tensor:
    """IRNet's affinity loss on line-max boundary logits with pair labels from ``labels``.

    ``y_ij = 1[label_i ≠ label_j]``; ``−log(1−B) = softplus(m)`` averaged over same-class pairs
    (foreground and background separately, then halved and summed), ``−log B = softplus(−m)``
    over different-class pairs; total / 2.

    Args:
        pair_logit: ``B×|N_r|×h×w`` line-max logits ``m``.
        labels: ``B×h×w`` int class of each cell (the teacher's argmax).
        valid: ``B×h×w`` bool.
    """
    tgt = neighbour_labels(labels, radius)
    src = labels[:, None].float()
    pair_valid = valid[:, None] & neighbour_valid(valid, radius)
    same = (tgt == src) & pair_valid
    diff = (tgt != src) & pair_valid

    def _mean(x: Tensor, m: Tensor) -> Tensor:
        return (x * m).sum() / m.sum().clamp_min(1)

    pos = F.softplus(pair_logit)
    neg = F.softplus(-pair_logit)
    if bg_class >= 0:
        is_bg = src == bg_class
        same_term = 0.5 * (_mean(pos, same & ~is_bg) + _mean(pos, same & is_bg))
    else:
        same_term = _mean(pos, same)
    return 0.5 * (same_term + _mean(neg, diff))


def pairwise_boundary_kl(
    m_s: Tensor,
    m_t: Tensor,
    valid: Tensor,
    radius: int,
    tau: float,
    domain: str = "logit",
    tau_squared: bool = True,
    observer: Optional[Any] = None,
    reduction: str = "row_mean",
) -> Tensor:
    """Row KL over the disk neighbours (steps B3-B4).

    Args:
        m_s, m_t: ``B×|N_r|×h×w`` line-max logits (student, teacher; the teacher's is used as is,
            callers detach it).
        valid: ``B×h×w`` bool (sources and targets).
        radius: r of the disk.
        tau: temperature.
        domain: ``"logit"`` or ``"prob"`` (sigmoid of the line-max logit).
        tau_squared: multiply by τ².
        observer: a ``TemperatureController`` fed with the teacher rows, or None.
        reduction: ``"row_mean"``: divide the summed row KLs by the number of valid rows;
            ``"element_mean"``: by the number of valid (row, neighbour) pairs (≈ 68 × rows).
    Returns:
        scalar ``τ² · Σ_{valid rows} KL(p_T ‖ p_S) / normaliser``.
    """
    if reduction not in ("row_mean", "element_mean"):
        raise ValueError(f"KD.BOUNDARY.REDUCTION must be 'row_mean' or 'element_mean', got '{reduction}'")
    col = neighbour_valid(valid, radius)
    rows = valid & col.any(dim=1)
    to_domain = torch.sigmoid if domain == "prob" else (lambda x: x)
    b_t = to_domain(m_t.float())
    b_s = to_domain(m_s.float())
    if observer is not None:
        observer.observe(b_t.detach().masked_fill(~col, float("-inf")), rows, dim=1)
    kl = masked_kl(b_t / tau, b_s / tau, col, dim=1)
    if reduction == "row_mean":
        norm = rows.sum().clamp_min(1)
    else:
        norm = (col & rows[:, None]).sum().clamp_min(1)
    loss = (kl * rows).sum() / norm
    return loss * (tau * tau if tau_squared else 1.0)


@KD_LOSS_REGISTRY.register()
class BoundaryDistillation(DistillLoss):
    """BCD boundary distillation (module docstring); entry ``loss_kd_boundary``."""

    CONFIG_KEY = "BOUNDARY"
    NAME = "boundary"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        node = self.node
        if node.TEACHER_HEAD not in _TEACHER_HEADS:
            raise ValueError(f"KD.BOUNDARY.TEACHER_HEAD '{node.TEACHER_HEAD}' not in {_TEACHER_HEADS}")
        if node.DOMAIN not in ("logit", "prob") or node.MODE not in ("pairwise", "unary"):
            raise ValueError("KD.BOUNDARY.DOMAIN must be logit|prob and MODE pairwise|unary")
        if node.REDUCTION not in ("row_mean", "element_mean"):
            raise ValueError(f"KD.BOUNDARY.REDUCTION must be 'row_mean' or 'element_mean', got '{node.REDUCTION}'")
        if node.TEACHER_HFA not in ("hfa", "identity"):
            raise ValueError(f"KD.BOUNDARY.TEACHER_HFA must be 'hfa' or 'identity', got '{node.TEACHER_HFA}'")
        s_ch = [student_shapes[n].channels for n in self.student_features]
        t_ch = [teacher_shapes[n].channels for n in self.teacher_features]
        self.stride = int(cfg.KD.BCD_HFA.STRIDE)
        self.radius = int(node.RADIUS)
        # shared with the other BCD loss; registered once, in the Distiller's shared dict
        object.__setattr__(self, "hfa_s", student_hfa(self, cfg, self.student_features, s_ch))
        self.conv_s = nn.Conv2d(self.hfa_s.out_channels, 1, 1)
        self.head = node.TEACHER_HEAD
        if self.head == "shared_stopgrad":
            if s_ch != t_ch:
                raise ValueError(
                    f"KD.BOUNDARY.TEACHER_HEAD shared_stopgrad needs equal channels, got {s_ch} vs {t_ch}"
                )
            self.hfa_t: Optional[nn.Module] = None
            self.conv_t: Optional[nn.Module] = None
        else:
            if node.TEACHER_HFA == "identity":
                self.hfa_t = IdentityHFA(t_ch)
            else:
                self.hfa_t = HFA(t_ch, cfg.KD.BCD_HFA.DIM, cfg.KD.BCD_HFA.NORM)
            self.conv_t = nn.Conv2d(self.hfa_t.out_channels, 1, 1)
            if self.head == "frozen_random":
                self.hfa_t.requires_grad_(False)
                self.conv_t.requires_grad_(False)
        self.temperature = build_temperature(node)
        # pseudo_affinity: fitted during the first FIT_ITERS iterations, then frozen (buffer, so a
        # resumed run knows; the iteration alone would also tell)
        self.fit_iters = int(node.TEACHER_HEAD_FIT_ITERS) if self.head == "pseudo_affinity" else 0
        self.register_buffer("teacher_head_frozen", torch.tensor(False))
        if self.head == "pseudo_affinity":
            self.aux_loss_keys = [self.loss_key + "_teacher_head"]

    def train(self, mode: bool = True) -> "BoundaryDistillation":
        super().train(mode)
        if self.hfa_t is not None and (self.head == "frozen_random" or bool(self.teacher_head_frozen)):
            self.hfa_t.eval()  # frozen: BN keeps its (initial or fitted) statistics
        return self

    def freeze_teacher_head(self) -> None:
        """End of the fitting phase: the teacher boundary head (HFA_T + Conv_T) gets no gradient
        and its BatchNorm uses the running statistics it gathered while fitting."""
        for p in list(self.hfa_t.parameters()) + list(self.conv_t.parameters()):
            p.requires_grad_(False)
            p.grad = None
        self.hfa_t.eval()
        self.teacher_head_frozen.fill_(True)

    def teacher_head_fitting(self, iteration: int) -> bool:
        """True while the pseudo-affinity head is being fitted (``iteration < FIT_ITERS``, or
        always when ``FIT_ITERS`` is 0); freezes the head on the first call past the phase."""
        if self.head != "pseudo_affinity":
            return False
        if self.fit_iters <= 0:
            return True
        if iteration >= self.fit_iters:
            if not bool(self.teacher_head_frozen) or self.conv_t.weight.requires_grad:
                self.freeze_teacher_head()
            return False
        return True

    def _teacher_logit(self, t_feats: List[Tensor], size: Tuple[int, int], grad: bool = True) -> Tensor:
        if self.head == "shared_stopgrad":
            with torch.no_grad(), frozen_norm_stats(self.hfa_s):
                return self.conv_s(self.hfa_s(t_feats, size))
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.conv_t(self.hfa_t(t_feats, size))

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
        s_logit = self.conv_s(f_s)
        fitting = self.teacher_head_fitting(int(ctx.iteration))
        head_trains = self.head == "literal_joint" or fitting
        t_logit = self._teacher_logit(t_list, size, grad=head_trains)
        valid = ctx.valid_mask(size)
        tau = self.temperature.value
        out: Dict[str, Tensor] = {}
        m_t: Optional[Tensor] = None
        if fitting and self.fit_iters > 0:
            # Fitting phase: the head learns the teacher's boundaries; the student gets no L_bd
            # yet (0, kept in the graph so every student KD parameter stays in use).
            kd = s_logit.sum() * 0.0
        elif self.node.MODE == "unary":
            t_for_kd = t_logit if self.head == "literal_joint" else t_logit.detach()
            kd = self.unary_kd(s_logit, t_for_kd, valid, tau)
        else:
            m_s = line_max_views(s_logit, self.radius, -1e4)
            m_t = line_max_views(t_logit, self.radius, -1e4)
            m_t_kd = m_t if self.head == "literal_joint" else m_t.detach()
            kd = self.pairwise_kd(m_s, m_t_kd, valid, tau)
        out[self.loss_key] = kd
        if self.head == "pseudo_affinity":
            key = self.aux_loss_keys[0]
            if fitting:
                if m_t is None:
                    m_t = line_max_views(t_logit, self.radius, -1e4)
                labels = self._pseudo_labels(ctx, size)
                out[key] = self.node.PSEUDO_AFFINITY_WEIGHT * pseudo_affinity_loss(
                    m_t, labels, valid, self.radius, int(self.node.BG_CLASS)
                )
            else:
                out[key] = s_logit.new_zeros(())  # frozen head: nothing to train
        return out

    @staticmethod
    def _pseudo_labels(ctx: KDContext, size: Tuple[int, int]) -> Tensor:
        try:
            return ctx.pseudo_labels(size)
        except ValueError as e:
            raise ValueError(f"KD.BOUNDARY.TEACHER_HEAD pseudo_affinity: {e}; choose another TEACHER_HEAD") from e

    def _domain(self, m: Tensor) -> Tensor:
        return torch.sigmoid(m) if self.node.DOMAIN == "prob" else m

    def pairwise_kd(self, m_s: Tensor, m_t: Tensor, valid: Tensor, tau: float) -> Tensor:
        """:func:`pairwise_boundary_kl` with this loss's radius, domain, τ² flag and controller."""
        return pairwise_boundary_kl(
            m_s, m_t, valid, self.radius, tau, self.node.DOMAIN, bool(self.node.TAU_SQUARED), self.temperature,
            reduction=self.node.REDUCTION,
        )

    def unary_kd(self, s: Tensor, t: Tensor, valid: Tensor, tau: float) -> Tensor:
        """One spatial softmax per image over the ``h×w`` map (``bd_mode=unary``)."""
        B = s.shape[0]
        vs = valid.reshape(B, -1)
        b_t = self._domain(t.float()).reshape(B, -1) / tau
        b_s = self._domain(s.float()).reshape(B, -1) / tau
        self.temperature.observe(b_t.detach().masked_fill(~vs, float("-inf")) * tau, vs.any(1), dim=1)
        kl = masked_kl(b_t, b_s, vs, dim=1)
        keep = vs.any(1)
        norm = keep.sum() if self.node.REDUCTION == "row_mean" else vs.sum()
        loss = (kl * keep).sum() / norm.clamp_min(1)
        return loss * (tau * tau if self.node.TAU_SQUARED else 1.0)
