"""Row-softmax relation KL in ``O(N·C)`` memory, as attention (issue 15).

The relation losses (BCD context distillation, CIRKD's mini-batch pixel relations) compare, row
by row, two softmaxes over ``N×M`` score matrices::

    a^t_ij = s·q^t_i·k^t_j      P_t = softmax_row(a^t)     lse^t_i = log Σ_j exp(a^t_ij)
    a^s_ij = s·q^s_i·k^s_j      P_s = softmax_row(a^s)     lse^s_i = log Σ_j exp(a^s_ij)

    KL_i = KL(P_t[i] ‖ P_s[i]) = Σ_j P_t,ij (a^t_ij − a^s_ij) − lse^t_i + lse^s_i
         = s·q^t_i·(P_t K_t)_i − s·q^s_i·(P_t K_s)_i − lse^t_i + lse^s_i

so the forward needs two attention outputs of the teacher rows (``P_t [K_t | K_s]``) and the two
log-sum-exps, never the ``N×M`` matrices. The teacher side is a constant (``sg``). With an
upstream gradient ``g_i`` per row and ``G = diag(g)(P_s − P_t)``::

    ∂L/∂q^s = s·G K_s = s·g ⊙ (P_s K_s − P_t K_s)
    ∂L/∂k^s = s·Gᵀ Q_s = s·(P_sᵀ (g ⊙ Q_s) − P_tᵀ (g ⊙ Q_s))

and ``(Pᵀ V)_j = Σ_i exp(s·k_j·q_i − lse_i) V_i`` is attention again, with the rows as keys and
``−lse`` as a key bias (every exponent is ≤ 0, so no running maximum is needed). For a self
relation (``q = k = X``, BCD) pass the same tensor twice: autograd adds the two gradients, which is
the symmetric ``s[(P_s − P_t)X_s + (P_s − P_t)ᵀX_s]`` of the issue.

Each pass streams over blocks of query rows: one ``rows×M`` score block lives at a time, so the
peak memory is ``O(B·N·C + B·block·M)`` with ``block·M`` bounded by ``max_block_elems`` (default
``2^24`` elements over the batch, 64 MiB in fp32), instead of ``O(B·N·M)``. Scores, softmaxes and
sums are accumulated in fp32 (fp64 inputs stay fp64); the log-sum-exp subtracts the row maximum.

Masks: invalid columns get ``-inf`` scores (no probability mass); invalid rows get ``KL = 0`` and
no gradient (callers drop them from their mean). A row without any valid column also gets 0.

The direct ``N×M`` implementations (``masked_kl`` on the full or chunked scores) stay in the losses
as the reference and the ``IMPL="chunked"`` fallback; ``tests/distill/test_relation_fused.py``
checks that both agree (value and gradient).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["relation_kl_rows", "self_relation_kl_rows", "DEFAULT_MAX_BLOCK_ELEMS"]

# Score-block budget (elements over the whole batch): 2^24 fp32 = 64 MiB, about one B×N×C
# feature map at N = 16 384, C = 512, B = 2 (the COCO 1/8 grid).
DEFAULT_MAX_BLOCK_ELEMS = 1 << 22

RowsHook = Callable[[Tensor, Tensor], None]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _block_rows(batch: int, rows: int, cols: int, max_block_elems: int) -> int:
    return max(1, min(rows, max_block_elems // max(1, batch * cols)))


def _log_softmax_(s: Tensor) -> Tensor:
    """In place: ``s ← log_softmax(s, dim=2)``; returns the ``lse`` ``B×n`` (``-inf`` for rows
    whose scores are all ``-inf``, which then stay ``-inf``)."""
    m = s.amax(dim=2, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # fully masked rows
    s.sub_(m)
    z = torch.logsumexp(s, dim=2, keepdim=True)  # of scores ≤ 0: no overflow
    s.sub_(z)
    return (m + z)[..., 0]


class _RelationKL(torch.autograd.Function):
    """Per-row ``KL(softmax(s·Q_t K_tᵀ) ‖ softmax(s·Q_s K_sᵀ))``; gradients to ``Q_s``, ``K_s``.

    Forward, per block of query rows: both score blocks, their log-softmaxes, the KL of the rows
    (as ``masked_kl``: ``Σ_j p_t (log p_t − log p_s)``, no cancellation of large terms) and
    ``R = (P_s − P_t) K_s`` (``∂/∂Q_s`` up to ``s·g``). Saved: the inputs, ``R`` and the two
    ``lse`` (``O(N·C)``). Backward, per block of key columns: ``(P_s − P_t)ᵀ (g ⊙ Q_s)`` from the
    transposed scores ``s·k_j·q_i − lse_i``.
    """

    @staticmethod
    def forward(ctx, q_s, k_s, q_t, k_t, col_valid, row_valid, scale, block_q, block_k, rows_hook):
        B, N, C = q_s.shape
        dt, dev = q_s.dtype, q_s.device
        zero = torch.zeros((), dtype=dt, device=dev)
        ninf = torch.tensor(float("-inf"), dtype=dt, device=dev)
        col_bias = torch.where(col_valid, zero, ninf)[:, None, :]  # B×1×M
        col_off = ~col_valid[:, None, :]
        kl = q_s.new_empty(B, N)
        lse_t = q_s.new_empty(B, N)
        lse_s = q_s.new_empty(B, N)
        r = q_s.new_empty(B, N, C)
        kt_t, ks_t = k_t.transpose(1, 2), k_s.transpose(1, 2)
        for a in range(0, N, block_q):
            b = min(N, a + block_q)
            st = torch.baddbmm(col_bias, q_t[:, a:b], kt_t, alpha=scale)  # B×n×M teacher scores
            if rows_hook is not None:
                rows_hook(st, torch.arange(a, b, device=dev))
            ss = torch.baddbmm(col_bias, q_s[:, a:b], ks_t, alpha=scale)
            lse_t[:, a:b] = _log_softmax_(st)
            lse_s[:, a:b] = _log_softmax_(ss)
            pt = st.exp()
            st.sub_(ss).masked_fill_(col_off, 0.0)  # log p_t − log p_s (0 where masked: -inf - -inf)
            kl[:, a:b] = torch.linalg.vecdot(pt, st, dim=2)
            del st
            ss.exp_().sub_(pt)  # P_s − P_t
            del pt
            r[:, a:b] = torch.bmm(ss, k_s)
            del ss
        rows_ok = row_valid & torch.isfinite(lse_t) & torch.isfinite(lse_s)
        kl = torch.where(rows_ok, kl, zero)
        r = torch.where(rows_ok[..., None], r, zero)  # rows without a valid column hold NaN
        ctx.save_for_backward(q_s, k_s, q_t, k_t, r, lse_t, lse_s, col_valid, rows_ok)
        ctx.scale, ctx.block_k = scale, block_k
        return kl

    @staticmethod
    def backward(ctx, grad):
        q_s, k_s, q_t, k_t, r, lse_t, lse_s, col_valid, rows_ok = ctx.saved_tensors
        s = ctx.scale
        dt, dev = q_s.dtype, q_s.device
        zero = torch.zeros((), dtype=dt, device=dev)
        g = torch.where(rows_ok, grad.to(dt), zero)[..., None]  # B×N×1 (dropped rows: 0)
        dq = dk = None
        if ctx.needs_input_grad[0]:
            dq = (s * g) * r
        if ctx.needs_input_grad[1]:
            w = g * q_s  # B×N×C
            ninf = torch.tensor(float("-inf"), dtype=dt, device=dev)
            # (Pᵀ w)_j = Σ_i exp(s·k_j·q_i − lse_i) w_i: rows i as keys with bias −lse_i (the
            # exponent is ≤ 0); dropped rows get -inf (no key).
            bias_s = torch.where(rows_ok, -lse_s, ninf)[:, None, :]
            bias_t = torch.where(rows_ok, -lse_t, ninf)[:, None, :]
            qs_t, qt_t = q_s.transpose(1, 2), q_t.transpose(1, 2)
            M = k_s.shape[1]
            dk = q_s.new_empty(k_s.shape)
            for c in range(0, M, ctx.block_k):
                d = min(M, c + ctx.block_k)
                ps = torch.baddbmm(bias_s, k_s[:, c:d], qs_t, alpha=s).exp_()  # P_s[:, c:d]ᵀ
                pt = torch.baddbmm(bias_t, k_t[:, c:d], qt_t, alpha=s).exp_()
                ps.sub_(pt)
                del pt
                dk[:, c:d] = torch.bmm(ps, w)
                del ps
            dk.mul_(s).mul_(col_valid[..., None].to(dt))
        return dq, dk, None, None, None, None, None, None, None, None


def relation_kl_rows(
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    scale: float,
    row_valid: Optional[Tensor] = None,
    col_valid: Optional[Tensor] = None,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
    teacher_rows_hook: Optional[RowsHook] = None,
) -> Tensor:
    """Per-row ``KL(softmax(s·q^t_i K_tᵀ) ‖ softmax(s·q^s_i K_sᵀ))`` without ``N×M`` memory.

    Args:
        q_s, k_s: ``B×N×C`` / ``B×M×C`` student queries and keys (gradients flow to both; pass
            the same tensor twice for a self relation).
        q_t, k_t: teacher queries / keys, same shapes (treated as constants: detached).
        scale: ``s`` (e.g. ``1/(√C·τ)``).
        row_valid: ``B×N`` bool; invalid rows give 0 and no gradient. None: all valid.
        col_valid: ``B×M`` bool; invalid columns take no probability mass. None: all valid.
        max_block_elems: bound on the elements of one score block over the batch (memory).
        teacher_rows_hook: called with each ``B×n×M`` block of teacher scores ``s·q^t kᵀ``
            (``-inf`` at invalid columns) and the ``n`` row indices; no-grad, do not modify.

    Returns:
        ``B×N`` KL per row (fp32, or fp64 for fp64 inputs); 0 for invalid rows and rows with no
        valid column.

    Raises:
        ValueError: on mismatched shapes.
    """
    if q_s.dim() != 3 or k_s.dim() != 3 or q_s.shape[0] != k_s.shape[0] or q_s.shape[2] != k_s.shape[2]:
        raise ValueError(f"relation_kl_rows: q_s {tuple(q_s.shape)} / k_s {tuple(k_s.shape)} must be B×N×C / B×M×C")
    if q_t.shape != q_s.shape or k_t.shape != k_s.shape:
        raise ValueError(
            f"relation_kl_rows: teacher q/k {tuple(q_t.shape)}/{tuple(k_t.shape)} must match the student's "
            f"{tuple(q_s.shape)}/{tuple(k_s.shape)}"
        )
    B, N, _ = q_s.shape
    M = k_s.shape[1]
    dt = _compute_dtype(q_s)
    dev = q_s.device
    row_valid = torch.ones(B, N, dtype=torch.bool, device=dev) if row_valid is None else row_valid.to(dev, torch.bool)
    col_valid = torch.ones(B, M, dtype=torch.bool, device=dev) if col_valid is None else col_valid.to(dev, torch.bool)
    if row_valid.shape != (B, N) or col_valid.shape != (B, M):
        raise ValueError(
            f"relation_kl_rows: row_valid {tuple(row_valid.shape)} / col_valid {tuple(col_valid.shape)} "
            f"must be {(B, N)} / {(B, M)}"
        )
    same = q_s is k_s
    q_s = q_s.to(dt)
    k_s = q_s if same else k_s.to(dt)
    q_t = q_t.detach().to(dt)
    k_t = k_t.detach().to(dt)
    block_q = _block_rows(B, N, M, max_block_elems)  # rows of the forward passes (keys = M)
    block_k = _block_rows(B, M, N, max_block_elems)  # columns as queries in the backward
    return _RelationKL.apply(
        q_s, k_s, q_t, k_t, col_valid, row_valid, float(scale), block_q, block_k, teacher_rows_hook
    )


def self_relation_kl_rows(
    x_s: Tensor,
    x_t: Tensor,
    scale: float,
    valid: Optional[Tensor] = None,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
    teacher_rows_hook: Optional[RowsHook] = None,
) -> Tensor:
    """:func:`relation_kl_rows` of the self relations ``s·X Xᵀ`` (BCD context distillation).

    Args:
        x_s, x_t: ``B×N×C`` student / teacher tokens (teacher detached).
        valid: ``B×N`` bool: invalid tokens are neither rows nor columns.

    Returns:
        ``B×N`` per-row KL (0 on invalid rows).
    """
    return relation_kl_rows(x_s, x_s, x_t, x_t, scale, valid, valid, max_block_elems, teacher_rows_hook)
