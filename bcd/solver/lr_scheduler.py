"""Learning-rate schedules: fvcore ``ParamScheduler`` multipliers applied per iteration.

``build_lr_scheduler`` (in ``build.py``) composes a warm-up with a main schedule (multi-step,
cosine or poly) into one multiplier of the iteration fraction ``where = iter / MAX_ITER``, and
``LRMultiplier`` applies it to every parameter group's base LR (Detectron2's design).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)
from torch.optim.lr_scheduler import LRScheduler

logger = logging.getLogger(__name__)


class WarmupParamScheduler(CompositeParamScheduler):
    """A warm-up of ``warmup_length`` (a fraction of training) followed by ``scheduler``.

    During warm-up the multiplier rises linearly from ``warmup_factor * scheduler(0)`` to
    ``scheduler(0)`` (``"linear"``) or stays at ``warmup_factor * scheduler(0)``
    (``"constant"``); afterwards ``scheduler`` is evaluated at the same global ``where`` (not
    rescaled), so the main schedule is unchanged by the warm-up.
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
    ) -> None:
        if not 0.0 <= warmup_length < 1.0:
            raise ValueError(
                f"Warm-up must last less than the whole training; got {warmup_length:.3f} of it "
                "(SOLVER.WARMUP_ITERS >= SOLVER.MAX_ITER?)"
            )
        start_value = warmup_factor * scheduler(0.0)
        end_value = scheduler(warmup_length)
        if warmup_method == "linear":
            warmup: ParamScheduler = LinearParamScheduler(start_value, end_value)
        elif warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        else:
            raise ValueError(
                f"Unknown SOLVER.WARMUP_METHOD '{warmup_method}'; use 'linear' or 'constant'"
            )
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "fixed"],
            lengths=[warmup_length, 1.0 - warmup_length],
        )


class LRMultiplier(LRScheduler):
    """Set each group's LR to ``base_lr * multiplier(iter / max_iter)`` at every ``step()``.

    ``step()`` is called once per iteration (by the ``LRScheduler`` hook). The state saved in
    checkpoints is only ``base_lrs`` and ``last_epoch`` (the iteration), so checkpoints stay
    plain tensors and numbers; the multiplier itself is rebuilt from the config.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(
                f"LRMultiplier needs an fvcore ParamScheduler; got {type(multiplier).__name__}"
            )
        if max_iter <= 0:
            raise ValueError(f"LRMultiplier needs max_iter > 0; got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the iteration only. The base LRs stay those of the current config (so a
        changed ``SOLVER.BASE_LR`` or LR multiplier takes effect on ``--resume``; a difference
        is logged), and every group's LR is set for the restored iteration."""
        old = [float(v) for v in state_dict.get("base_lrs", [])]
        if old and (len(old) != len(self.base_lrs) or any(
            abs(a - b) > 1e-12 * max(abs(a), abs(b)) for a, b in zip(old, self.base_lrs)
        )):
            logger.warning(
                f"Resuming: the checkpoint's base LRs {old} differ from the config's "
                f"{list(self.base_lrs)}; the config's are used"
            )
        self.last_epoch = int(state_dict["last_epoch"])
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_lr(self) -> List[float]:
        # After the last iteration's step() where reaches 1.0; clamp so the schedule is defined.
        where = min(self.last_epoch / self._max_iter, 1.0)
        multiplier = self._multiplier(where)
        return [base_lr * multiplier for base_lr in self.base_lrs]
