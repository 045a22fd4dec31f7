"""Hooks of the project's trainer (Detectron2's ``HookBase``).

* :class:`KDIterationHook`: the ``Distiller``'s iteration (what the weight schedules read) is the
  trainer's, set before each step (``bcd``'s trainer hands it over through its event storage).
* :class:`KDTemperatureHook`: ``bcd``'s hook (steps every temperature controller after the
  optimizer step, logs ``kd/<loss>/<controller>/tau``) as a Detectron2 hook.
* :class:`RNGStatesHook`: every process's random states, gathered on the iterations whose
  checkpoint is written, so ``--resume`` continues the same random draws.
* :class:`KDPeriodicCheckpointer`: Detectron2's periodic checkpointer, except at the end: the full
  state goes to ``model_<iter>.pth`` (what ``--resume`` reads, named by ``last_checkpoint``) and
  ``model_final.pth`` holds the student alone, loadable by plain Detectron2.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks as d2_hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

from bcd.engine import hooks as bcd_hooks
from bcd.engine.defaults import rng_state, set_rng_state

__all__ = [
    "KDIterationHook",
    "KDPeriodicCheckpointer",
    "KDTemperatureHook",
    "RNGStatesHook",
    "portable_rng_state",
    "restore_rng_state",
]


class KDIterationHook(HookBase):
    """Before each step: ``distiller.set_iteration(trainer.iter)``."""

    def __init__(self, distiller) -> None:
        self.distiller = distiller

    def before_step(self) -> None:
        self.distiller.set_iteration(self.trainer.iter)


class KDTemperatureHook(bcd_hooks.KDTemperatureHook, HookBase):
    """``bcd.engine.hooks.KDTemperatureHook`` in a Detectron2 trainer (its ``after_step`` uses
    only the distiller and ``trainer.storage``, which Detectron2's trainer has too)."""


def portable_rng_state() -> Dict[str, Any]:
    """``bcd.engine.defaults.rng_state()`` with NumPy's key array as a tensor: Detectron2's
    checkpointer reads files with ``torch.load(weights_only=True)``, which refuses arrays."""
    state = rng_state()
    name, keys, pos, has_gauss, gauss = state["numpy"]
    state["numpy"] = (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`portable_rng_state`."""
    name, keys, pos, has_gauss, gauss = state["numpy"]
    state = dict(state, numpy=(name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    set_rng_state(state)


class RNGStatesHook(HookBase):
    """After a step whose checkpoint is written (every ``period`` iterations and the last one):
    ``trainer.rng_states`` = every process's :func:`portable_rng_state` (a collective call: this
    hook runs on every process, before the checkpointer)."""

    def __init__(self, period: int) -> None:
        self.period = int(period)

    def after_step(self) -> None:
        it = self.trainer.iter
        if (self.period > 0 and (it + 1) % self.period == 0) or it >= self.trainer.max_iter - 1:
            self.trainer.rng_states = comm.all_gather(portable_rng_state())


class KDPeriodicCheckpointer(d2_hooks.PeriodicCheckpointer):
    """``PeriodicCheckpointer`` of a ``Distiller``: at the last iteration the full state is saved
    as ``model_<iter:07d>.pth`` (``last_checkpoint`` names it) and ``model_final.pth`` holds
    ``{"model": student.state_dict()}`` only."""

    def step(self, iteration: int, **kwargs: Any) -> None:
        iteration = int(iteration)
        if self.max_iter is None or iteration < self.max_iter - 1:
            super().step(iteration, **kwargs)
            return
        distiller = self.checkpointer.model
        student = DetectionCheckpointer(distiller.deploy_model(), self.checkpointer.save_dir,
                                        save_to_disk=self.checkpointer.save_to_disk)
        student.save(f"{self.file_prefix}_final")
        # Last, so that last_checkpoint names the full state (what --resume needs).
        self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", iteration=iteration, **kwargs)
