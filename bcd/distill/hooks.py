"""Training hooks the ``Distiller`` hands to the trainer (``Distiller.training_hooks()``).

* :class:`KDScheduleHook`: before each step sets the Distiller's ``kd_iteration`` (which the
  weight schedules read); after each step (after ``optimizer.step()``) steps every temperature
  controller and logs ``kd/<loss>/weight`` and ``kd/<loss>/<controller>/tau`` to the event
  storage (hence ``metrics.json`` and TensorBoard).
* :class:`KDReportHook`: after training, on the main process, writes
  ``OUTPUT_DIR/kd_report.{md,json}`` (see :mod:`bcd.distill.report`).
"""
from __future__ import annotations

import logging

from bcd.engine.train_loop import HookBase
from bcd.utils import comm
from bcd.utils.events import get_event_storage

__all__ = ["KDReportHook", "KDScheduleHook"]

logger = logging.getLogger(__name__)


class KDScheduleHook(HookBase):
    """Iteration bookkeeping for KD weight schedules and temperature controllers."""

    def __init__(self, distiller) -> None:
        self.distiller = distiller

    def before_step(self) -> None:
        self.distiller.set_iteration(self.trainer.iter)

    def after_step(self) -> None:
        storage = get_event_storage()
        for name, w in self.distiller.last_weights.items():
            storage.put_scalar(f"kd/{name}/weight", float(w), smoothing_hint=False)
        for tag, ctrl in self.distiller.temperatures().items():
            ctrl.step()
            storage.put_scalar(f"kd/{tag}/tau", ctrl.value, smoothing_hint=False)


class KDReportHook(HookBase):
    """Write ``kd_report.{md,json}`` when training ends (main process only).

    ``after_eval = True`` asks the trainer to run it after the final evaluation and writers.
    """

    after_eval = True

    def __init__(self, distiller) -> None:
        self.distiller = distiller

    def after_train(self) -> None:
        if not comm.is_main_process():
            return
        if self.trainer.iter < self.trainer.max_iter:  # interrupted by an exception
            return
        from .report import write_kd_report

        latest = getattr(self.trainer, "_last_eval_results", None) or getattr(
            self.trainer, "last_eval_results", None
        )
        try:
            write_kd_report(self.distiller.cfg, self.distiller, student_results=latest)
        except Exception as e:  # a report must never lose a finished training run
            logger.warning("kd_report could not be written: %s", e)
