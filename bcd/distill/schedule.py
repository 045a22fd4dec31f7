"""Per-loss weight schedules by iteration and the adaptive temperature controller.

* :class:`WeightSchedule`: ``w(it) = λ · decay(it) · warmup(it)``, 0 from ``stop_iter`` on.
  ``decay`` is 1 (``"constant"``) or BCD's time decay ``1 − it/max_iter`` (``"linear_decay"``,
  docs/methods.md §2.6 Eq. 7 per iteration, A7): 1 at the first iteration, ``1/max_iter`` at the last.
  ``warmup`` rises linearly ``(it+1)/warmup_iters`` to 1. The schedule is a pure function of the
  iteration, which the ``Distiller`` keeps in a buffer (so ``--resume`` restores it).
* :class:`TemperatureController` (docs/methods.md §2.7): τ starts at τ₀ and is multiplied by γ after a
  training step whose statistic fires the trigger; τ never decreases. ``maxprob``: the mean over
  the batch's valid rows of the teacher's maximum row probability at the current τ, fires when it
  exceeds the threshold (0.5). ``range``: ``(max − min)`` of the teacher's logits divided by τ over
  the valid items, fires when it exceeds the threshold. The statistic is all-reduced across ranks
  (sum for the mean, max for the range) so every rank keeps the same τ; τ is a buffer, saved with
  the model state.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bcd.utils import comm

__all__ = ["WeightSchedule", "TemperatureController", "build_weight_schedule"]

_SCHEDULES = ("constant", "linear_decay")


class WeightSchedule:
    """Weight of one loss as a function of the 0-based iteration.

    Args:
        name: ``"constant"`` or ``"linear_decay"``.
        weight: the base weight λ.
        max_iter: ``SOLVER.MAX_ITER`` (the decay reaches ``1/max_iter`` at ``max_iter − 1``).
        warmup_iters: linear warm-up length (0 = none).
        stop_iter: iteration from which the weight is 0 (0 = never).
    """

    def __init__(
        self, name: str, weight: float, max_iter: int, warmup_iters: int = 0, stop_iter: int = 0
    ) -> None:
        if name not in _SCHEDULES:
            raise ValueError(f"Unknown KD schedule '{name}'; choose one of {_SCHEDULES}")
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be positive for a KD schedule, got {max_iter}")
        self.name = name
        self.weight = float(weight)
        self.max_iter = int(max_iter)
        self.warmup_iters = int(warmup_iters)
        self.stop_iter = int(stop_iter)

    def __call__(self, iteration: int) -> float:
        """The effective weight at ``iteration`` (0-based)."""
        if self.stop_iter > 0 and iteration >= self.stop_iter:
            return 0.0
        w = self.weight
        if self.name == "linear_decay":
            w *= max(0.0, 1.0 - iteration / self.max_iter)
        if self.warmup_iters > 0 and iteration < self.warmup_iters:
            w *= (iteration + 1) / self.warmup_iters
        return w

    def __repr__(self) -> str:
        return (
            f"WeightSchedule({self.name}, weight={self.weight}, max_iter={self.max_iter}, "
            f"warmup={self.warmup_iters}, stop={self.stop_iter})"
        )


def build_weight_schedule(loss_node, default_node, max_iter: int) -> WeightSchedule:
    """Schedule of one loss from ``KD.<LOSS>`` (``WEIGHT``, ``SCHEDULE``) and ``KD.SCHEDULE``.

    An empty ``KD.<LOSS>.SCHEDULE.NAME`` takes ``KD.SCHEDULE.NAME``; warm-up / stop iterations
    of the loss node win when non-zero.
    """
    s = loss_node.SCHEDULE
    name = s.NAME or default_node.NAME
    warm = s.WARMUP_ITERS or default_node.WARMUP_ITERS
    stop = s.STOP_ITER or default_node.STOP_ITER
    return WeightSchedule(name, loss_node.WEIGHT, max_iter, warm, stop)


class TemperatureController(nn.Module):
    """Adaptive temperature τ (docs/methods.md §2.7) with its state in buffers.

    Args:
        init: τ₀.
        factor: γ, the multiplier applied when the trigger fires.
        trigger: ``"maxprob"`` or ``"range"``.
        threshold: 0.5 for ``maxprob``; θ for ``range`` (≤ 0 means ``ln(row_size)``, given per
            observation).
        adaptive: False keeps τ fixed at τ₀.

    Buffers (in ``state_dict``): ``tau`` (float64 scalar), ``num_updates`` (how often τ grew).
    Usage: the loss calls :meth:`observe` on the teacher's logits at the current τ in ``forward``
    (no grad); the Distiller's hook calls :meth:`step` after ``optimizer.step()`` on every rank.
    """

    def __init__(
        self,
        init: float = 1.0,
        factor: float = 1.05,
        trigger: str = "maxprob",
        threshold: float = 0.5,
        adaptive: bool = True,
    ) -> None:
        super().__init__()
        if trigger not in ("maxprob", "range"):
            raise ValueError(f"Unknown temperature trigger '{trigger}'; use 'maxprob' or 'range'")
        if init <= 0 or factor < 1.0:
            raise ValueError(f"Temperature needs init > 0 and factor >= 1, got {init}, {factor}")
        self.factor = float(factor)
        self.trigger = trigger
        self.threshold = float(threshold)
        self.adaptive = bool(adaptive)
        self.register_buffer("tau", torch.tensor(float(init), dtype=torch.float64))
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.int64))
        # Statistic accumulated since the last step (not state: reset every step).
        self._stat_sum = 0.0
        self._stat_count = 0.0
        self._row_size = 0

    @property
    def value(self) -> float:
        """The current τ as a Python float."""
        return float(self.tau.item())

    @torch.no_grad()
    def observe(self, teacher_logits: Tensor, valid: Optional[Tensor] = None, dim: int = -1) -> None:
        """Accumulate the trigger statistic of teacher rows ``teacher_logits`` (any shape).

        Args:
            teacher_logits: unscaled teacher scores; softmax rows run along ``dim``. Entries that
                are ``-inf`` (masked) are ignored.
            valid: bool mask of the rows to include (the shape of ``teacher_logits`` without
                ``dim``), or None for all rows.
        """
        if not self.adaptive:
            return
        x = teacher_logits.detach().float() / self.value
        x = x.movedim(dim, -1)
        rows = x.reshape(-1, x.shape[-1])
        keep = torch.isfinite(rows).any(dim=1)
        if valid is not None:
            keep = keep & valid.reshape(-1).to(keep.device)
        rows = rows[keep]
        self._row_size = max(self._row_size, x.shape[-1])
        if rows.numel() == 0:
            return
        if self.trigger == "maxprob":
            self._stat_sum += float(torch.softmax(rows, dim=1).max(dim=1).values.sum())
            self._stat_count += float(rows.shape[0])
        else:
            finite = rows[torch.isfinite(rows)]
            rng = float(finite.max() - finite.min())
            self._stat_sum = max(self._stat_sum, rng)
            self._stat_count = 1.0

    @torch.no_grad()
    def step(self) -> bool:
        """Apply the rule to the statistic gathered since the last call; True when τ grew.

        All ranks must call it (the statistic is all-reduced when distributed).
        """
        if not self.adaptive:
            return False
        stat = torch.tensor([self._stat_sum, self._stat_count], dtype=torch.float64)
        if comm.get_world_size() > 1:
            backend_dev = self.tau.device if dist.get_backend() == "nccl" else torch.device("cpu")
            stat = stat.to(backend_dev)
            if self.trigger == "maxprob":
                dist.all_reduce(stat, op=dist.ReduceOp.SUM)
            else:
                dist.all_reduce(stat, op=dist.ReduceOp.MAX)
            stat = stat.cpu()
        self._stat_sum, self._stat_count = 0.0, 0.0
        if stat[1] <= 0:
            return False
        if self.trigger == "maxprob":
            fired = float(stat[0] / stat[1]) > self.threshold
        else:
            theta = self.threshold if self.threshold > 0 else math.log(max(self._row_size, 2))
            fired = float(stat[0]) > theta
        if fired:
            self.tau.mul_(self.factor)
            self.num_updates.add_(1)
        return fired

    def extra_repr(self) -> str:
        return (
            f"tau={self.value:.4f}, factor={self.factor}, trigger={self.trigger}, "
            f"threshold={self.threshold}, adaptive={self.adaptive}"
        )
