"""Training hooks (Detectron2's set): timing, LR schedule, checkpoints, evaluation, writers;
and the two distillation hooks ``DefaultTrainer`` adds for a ``Distiller``."""
from __future__ import annotations

import datetime
import logging
import math
import operator
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from ..utils import comm
from ..utils.events import EventWriter
from .checkpoint import Checkpointer
from .train_loop import HookBase

logger = logging.getLogger(__name__)

__all__ = [
    "CallbackHook",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "EvalHook",
    "BestCheckpointer",
    "PeriodicWriter",
    "KDTemperatureHook",
    "KDReportHook",
]


class CallbackHook(HookBase):
    """A hook made of functions ``f(trainer)`` for any of the four moments."""

    def __init__(
        self,
        *,
        before_train: Optional[Callable] = None,
        after_train: Optional[Callable] = None,
        before_step: Optional[Callable] = None,
        after_step: Optional[Callable] = None,
    ) -> None:
        self._before_train = before_train
        self._after_train = after_train
        self._before_step = before_step
        self._after_step = after_step

    def before_train(self) -> None:
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self) -> None:
        if self._after_train:
            self._after_train(self.trainer)

    def before_step(self) -> None:
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self) -> None:
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """Put the wall time of each iteration (``time``, seconds, hooks included) in the storage and
    log the total training time at the end (the first ``warmup_iter`` iterations excluded from
    the per-iteration average, as they include one-time costs)."""

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_start = 0.0
        self._train_start = 0.0
        self._total_after_warmup = 0.0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()
        self._total_after_warmup = 0.0

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        seconds = time.perf_counter() - self._step_start
        if self.trainer.iter + 1 - self.trainer.start_iter > self._warmup_iter:
            self._total_after_warmup += seconds
        self.trainer.storage.put_scalars(time=seconds)

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        num_iter = self.trainer.iter - self.trainer.start_iter - self._warmup_iter  # completed, timed
        if num_iter > 0 and self._total_after_warmup > 0:
            logger.info(
                f"Overall training speed: {num_iter} iterations in "
                f"{datetime.timedelta(seconds=int(self._total_after_warmup))} "
                f"({self._total_after_warmup / num_iter:.4f} s / it)"
            )
        logger.info(f"Total training time: {datetime.timedelta(seconds=int(total))}")


class LRScheduler(HookBase):
    """Step the LR scheduler after each iteration and put the LR in the storage (``lr``: of the
    parameter group with the most parameters, the one that represents the model)."""

    def __init__(self, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None):
        self._optimizer = optimizer
        self._scheduler = scheduler

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        self._scheduler = self._scheduler or self.trainer.scheduler
        groups = self._optimizer.param_groups
        self._best_group = max(range(len(groups)), key=lambda i: sum(p.numel() for p in groups[i]["params"]))

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._best_group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._scheduler.step()


class PeriodicCheckpointer(HookBase):
    """Save the full training state every ``period`` iterations and at the end.

    ``model_{iter:07d}.pth`` holds the model, the checkpointables (optimizer, scheduler, grad
    scaler), the iteration, the hooks' states and every rank's RNG states; ``last_checkpoint``
    names it. After the last iteration ``model_final.pth`` holds only the deployed model's
    weights. Runs on every process (the RNG states are gathered); only the main one writes.
    """

    def __init__(self, checkpointer: Checkpointer, period: int, max_iter: Optional[int] = None):
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_iter = max_iter

    def before_train(self) -> None:
        if self.max_iter is None:
            self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        iteration = self.trainer.iter
        is_final = iteration + 1 >= self.max_iter
        if is_final or (self.period > 0 and (iteration + 1) % self.period == 0):
            extra = self.trainer.checkpoint_extra_state()  # collective: every rank calls it
            self.checkpointer.save(f"model_{iteration:07d}", **extra)
        if is_final:
            self.checkpointer.save_model_only("model_final", iteration=iteration)


class EvalHook(HookBase):
    """Evaluate every ``eval_period`` iterations and after the last one.

    ``eval_function()`` returns nested results ``{task: {metric: value}}`` (on the main process);
    they are put in the storage flattened (``task/metric``) at the current iteration, so the
    writers write them with that iteration. ``last_results`` holds the flattened results of the
    latest evaluation (``{}`` on the processes other than the main one).
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Mapping[str, Any]]):
        self._period = int(eval_period)
        self._func = eval_function
        self.last_results: Dict[str, float] = {}

    def _do_eval(self) -> None:
        from ..evaluation import flatten_results_dict

        results = self._func()
        self.last_results = {}
        if results:
            flat = flatten_results_dict(results)
            for k, v in flat.items():
                try:
                    v = float(v)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        f"Evaluation result '{k}' = {v!r} is not a number; evaluators must return "
                        "{task: {metric: float}}"
                    ) from e
                self.trainer.storage.put_scalar(k, v, smoothing_hint=False)
                self.last_results[k] = v
        # Evaluation may take different times on different processes: wait for all.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()  # the final evaluation happens in after_train

    def after_train(self) -> None:
        # Only after a completed run (not after an exception).
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
        self._func = None  # release the evaluation closure (it may hold loaders)


class BestCheckpointer(HookBase):
    """After each evaluation, save ``model_best.pth`` (deployable weights) when ``metric``
    improved (``mode`` "max": higher is better, "min": lower is better). Register it after
    the ``EvalHook`` with the same ``eval_period``.

    An evaluation whose ``metric`` is NaN / inf (undefined: ``bbox/APl`` on data without large
    objects, detectron2#1482) or missing gets a warning naming the metric and saying that no
    ``model_best.pth`` was written, and why; a name no evaluator can produce is refused at
    start-up (``bcd.engine.validation.check_best_checkpoint_metric``).
    """

    def __init__(self, eval_period: int, checkpointer: Checkpointer, metric: str,
                 mode: str = "max", file_prefix: str = "model_best") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"TEST.BEST_CHECKPOINT_MODE must be 'max' or 'min'; got '{mode}'")
        self._period = int(eval_period)
        self._checkpointer = checkpointer
        self._metric = metric
        self._compare = operator.gt if mode == "max" else operator.lt
        self._prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None

    def _check(self) -> None:
        if not comm.is_main_process():
            return  # evaluation results exist on the main process only
        storage = self.trainer.storage
        latest = storage.latest().get(self._metric)
        best = (f"model_best.pth keeps {self.best_metric:.4f} from iteration {self.best_iter}"
                if self.best_metric is not None else "no model_best.pth exists yet")
        if latest is None or latest[1] != self.trainer.iter:
            # The EvalHook ran just before (its results carry this iteration).
            evals = [h for h in getattr(self.trainer, "_hooks", []) if isinstance(h, EvalHook)]
            produced = sorted(evals[-1].last_results) if evals else []
            logger.warning(
                f"BestCheckpointer: the evaluation at iteration {self.trainer.iter} returned no "
                f"'{self._metric}' (TEST.BEST_CHECKPOINT_METRIC)"
                f"{f'; it returned {produced[:20]}' if produced else ' (no results)'}; no "
                f"model_best.pth written ({best})"
            )
            return
        value, metric_iter = latest
        if not math.isfinite(value):
            logger.warning(
                f"BestCheckpointer: '{self._metric}' (TEST.BEST_CHECKPOINT_METRIC) is {value} at "
                f"iteration {metric_iter}: the evaluator could not compute it on this test set "
                f"(e.g. no ground truth of that kind, such as no large objects for bbox/APl); no "
                f"model_best.pth written ({best}). Choose a metric defined on the test set"
            )
            return
        if self.best_metric is None or self._compare(value, self.best_metric):
            logger.info(
                f"Saved best model: {self._metric} = {value:.4f} at iteration {metric_iter} "
                f"(previous best: {self.best_metric})"
            )
            self.best_metric, self.best_iter = value, metric_iter
            self._checkpointer.save_model_only(
                self._prefix, iteration=metric_iter, metric=self._metric, value=value
            )

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._check()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._check()

    def state_dict(self) -> Dict[str, Any]:
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric = state.get("best_metric")
        self.best_iter = state.get("best_iter")


class PeriodicWriter(HookBase):
    """Call the writers every ``period`` iterations, after the last one, and at the end."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        for w in writers:
            if not isinstance(w, EventWriter):
                raise TypeError(f"{w!r} is not an EventWriter")
        self._writers = list(writers)
        self._period = int(period)

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for w in self._writers:
                w.write()

    def after_train(self) -> None:
        for w in self._writers:
            # Also after an exception: flush what was recorded (e.g. the final evaluation).
            w.write()
            w.close()


# ------------------------------------------------------------------------------ distillation
class KDTemperatureHook(HookBase):
    """After each step (after ``optimizer.step()``) step every temperature controller of the
    ``Distiller``'s losses and put ``kd/<loss>/<controller>/tau`` (the value the next step uses)
    in the storage.

    The KD iteration needs no hook: the ``Distiller`` reads it from the event storage. Loss
    values, raw values and weights travel in the loss dict (``SimpleTrainer.check_and_log``).
    """

    def __init__(self, distiller) -> None:
        self.distiller = distiller

    def after_step(self) -> None:
        for tag, ctrl in self.distiller.temperatures().items():
            ctrl.step()
            self.trainer.storage.put_scalar(f"kd/{tag}/tau", ctrl.value, smoothing_hint=False)


class KDReportHook(HookBase):
    """After a completed run, on the main process, write ``OUTPUT_DIR/kd_report.{md,json}``
    (``bcd.distill.report``) with the distilled student's final evaluation results.

    The results come from the event storage: the scalars put at the final iteration, which after
    training are those of ``EvalHook``'s final evaluation (register this hook after it).
    ``after_eval = True`` asks ``DefaultTrainer.build_hooks`` to do so.
    """

    after_eval = True

    def __init__(self, distiller) -> None:
        self.distiller = distiller

    def after_train(self) -> None:
        if not comm.is_main_process():
            return
        if self.trainer.iter < self.trainer.max_iter:  # interrupted by an exception
            return
        from ..distill.report import write_kd_report

        storage = self.trainer.storage
        final = {k: v for k, (v, itr) in storage.latest().items() if itr == storage.iter}
        try:
            write_kd_report(self.distiller.cfg, self.distiller, student_results=final or None)
        except Exception as e:  # a report must never lose a finished training run
            logger.warning("kd_report could not be written: %s", e)
