"""Training metrics: ``EventStorage`` (scalars per iteration) and the writers of ``OUTPUT_DIR``.

As in Detectron2: code anywhere in a training step calls ``get_event_storage().put_scalar(...)``;
periodic writers print the console line with an ETA, append to ``metrics.json`` (one JSON
object per line) and write TensorBoard events.
"""
from __future__ import annotations

import abc
import datetime
import json
import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

_CURRENT_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The ``EventStorage`` of the running training loop.

    Raises:
        RuntimeError: outside ``with EventStorage(...)`` (i.e. outside ``trainer.train()``).
    """
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() has to be called inside a 'with EventStorage(...)' context "
            "(the trainer opens one in train())"
        )
    return _CURRENT_STORAGE_STACK[-1]


def current_event_storage() -> Optional["EventStorage"]:
    """The ``EventStorage`` of the running training loop, or None outside one (a model used
    outside the trainer, e.g. in a test or a benchmark)."""
    return _CURRENT_STORAGE_STACK[-1] if _CURRENT_STORAGE_STACK else None


class EventStorage:
    """Scalars reported during training, with their history and the iteration they belong to.

    ``put_scalar(name, value)`` records ``value`` at the current iteration; ``latest()`` gives
    the last value of each scalar; ``history(name)`` its ``HistoryBuffer`` (median, average).
    """

    def __init__(self, start_iter: int = 0) -> None:
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = start_iter
        self._current_prefix = ""

    def put_scalar(self, name: str, value: float, smoothing_hint: bool = True) -> None:
        """Record a scalar at the current iteration.

        Args:
            name: metric name, e.g. ``"loss_sem_seg"`` or ``"kd/temperature"``.
            value: a python number or a 0-dim tensor (moved to the CPU).
            smoothing_hint: writers may print the median of recent values (True) or the latest
                value (False, e.g. for evaluation results and the learning rate).
        """
        name = self._current_prefix + name
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().item()
        value = float(value)
        self._history[name].update(value, self._iter)
        self._latest_scalars[name] = (value, self._iter)
        existing = self._smoothing_hints.get(name)
        if existing is not None and existing != smoothing_hint:
            raise ValueError(f"Scalar '{name}' was put with different smoothing_hint values")
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, **kwargs: float) -> None:
        """Record several scalars: ``put_scalars(loss_a=0.3, loss_b=0.1)``."""
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of scalar ``name`` (``KeyError`` naming it when absent)."""
        if name not in self._history:
            raise KeyError(f"No history metric available for '{name}'")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return self._history

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """``{name: (latest value, iteration it was put at)}``."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like ``latest()``, but smoothed scalars are the median of their last ``window_size``
        values."""
        result = {}
        for k, (v, itr) in self._latest_scalars.items():
            if self._smoothing_hints[k]:
                v = self._history[k].median(window_size)
            result[k] = (v, itr)
        return result

    def smoothing_hints(self) -> Dict[str, bool]:
        return self._smoothing_hints

    def step(self) -> None:
        """Advance to the next iteration (the trainer sets ``iter`` directly instead)."""
        self._iter += 1

    @property
    def iter(self) -> int:  # noqa: A003
        """The iteration currently being run."""
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:  # noqa: A003
        self._iter = int(val)

    @property
    def iteration(self) -> int:
        return self._iter

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Prefix every scalar put inside the block with ``name/``."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix


class EventWriter(abc.ABC):
    """Base class of the writers: ``write()`` is called periodically, ``close()`` at the end."""

    @abc.abstractmethod
    def write(self) -> None:
        """Write the scalars of the current ``EventStorage`` that are new since the last call."""

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Append the scalars of each new iteration to ``metrics.json``, one JSON object per line.

    Each line is ``{"iteration": i, name: value, ...}`` holding the scalars put at iteration
    ``i`` since the last write (smoothed scalars as the median of ``window_size`` values).
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        self._file_handle = open(json_file, "a", encoding="utf-8")
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        to_save: Dict[int, Dict[str, float]] = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr <= self._last_write:
                continue  # already written
            to_save[itr][k] = v
        if to_save:
            self._last_write = max(to_save.keys())
        for itr, scalars in sorted(to_save.items()):
            scalars["iteration"] = itr
            self._file_handle.write(json.dumps(scalars, sort_keys=True) + "\n")
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())

    def close(self) -> None:
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """Write the new scalars to TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._window_size = window_size
        self._writer = SummaryWriter(log_dir, **kwargs)
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        new_last_write = self._last_write
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(k, v, itr)
                new_last_write = max(new_last_write, itr)
        self._last_write = new_last_write
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Print the console line: ETA, iteration, the losses, time per iteration, LR, memory.

    Only losses are printed (``total_loss`` first, then the task losses, then the KD terms
    ``loss_kd_*``), each as its median over the last ``window_size`` iterations; every other
    scalar (KD diagnostics ``kd/...``, evaluation results) goes to ``metrics.json`` and
    TensorBoard only. A line longer than ``width`` columns (with the logger's prefix of about
    40 characters) continues on indented lines, so it fits a 160-column terminal however many
    losses a model has; ``eta:``, ``iter:`` and ``total_loss:`` stay on the first line (scripts
    such as ``tools/evidence.py`` read them there).

    The ETA is the median iteration time of the last 1000 iterations times the iterations left.
    """

    _PREFIX = 40  # "[12/04 18:50:22] bcd.utils.events INFO: "

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20, width: int = 160) -> None:
        self.logger = logging.getLogger("bcd.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._width = width
        self._last_write: Optional[Tuple[int, float]] = None  # (iteration, wall time)

    def _get_eta(self, storage: EventStorage) -> Optional[str]:
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        try:
            eta_seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        except KeyError:
            # No "time" history yet (e.g. the first iterations): estimate from wall time.
            eta_string = None
            if self._last_write is not None:
                seconds_per_iter = (time.perf_counter() - self._last_write[1]) / max(
                    iteration - self._last_write[0], 1
                )
                eta_seconds = seconds_per_iter * (self._max_iter - iteration - 1)
                eta_string = str(datetime.timedelta(seconds=int(eta_seconds)))
            self._last_write = (iteration, time.perf_counter())
            return eta_string

    @staticmethod
    def _loss_order(key: str) -> Tuple[int, str]:
        """``total_loss``, then the task losses, then the KD terms, each group in name order."""
        return (0 if key == "total_loss" else 2 if key.startswith("loss_kd") else 1, key)

    def _wrap(self, items: List[str]) -> str:
        """Join ``items`` with two spaces (Detectron2's separator), breaking before an item that
        would pass the width; continuation lines are indented by four spaces."""
        limit = max(self._width - self._PREFIX, 40)
        lines: List[str] = []
        cur = ""
        for it in items:
            if cur and len(cur) + 2 + len(it) > limit:
                lines.append(cur)
                cur = "    " + it
            else:
                cur = f"{cur}  {it}" if cur else it
        lines.append(cur)
        return "\n".join(lines)

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if self._max_iter is not None and iteration == self._max_iter:
            # after_train calls write() once more after the last step; nothing new to print.
            return

        def fmt_median(name: str, fmt: str = "{:.4f}") -> str:
            try:
                return fmt.format(storage.history(name).median(self._window_size))
            except KeyError:
                return "N/A"

        try:
            lr = "{:.5g}".format(storage.history("lr").latest())
        except KeyError:
            lr = "N/A"
        eta_string = self._get_eta(storage)
        # Losses only, smoothed ones as their median; an unsmoothed loss (a KD term written as
        # the value of its own iteration) only on the line of the iteration it was put at.
        hints = storage.smoothing_hints()
        latest = storage.latest()
        losses = sorted(
            (k for k in storage.histories()
             if (k == "total_loss" or k.startswith("loss"))
             and (hints.get(k, False) or latest[k][1] == iteration)),
            key=self._loss_order,
        )

        def value(k: str) -> str:
            v = storage.history(k).median(self._window_size) if hints[k] else latest[k][0]
            return f"{k}: {v:.4g}"

        items = ([f"eta: {eta_string}"] if eta_string else []) + [f"iter: {iteration}"]
        items += [value(k) for k in losses]
        items += [f"time: {fmt_median('time')}", f"data_time: {fmt_median('data_time')}", f"lr: {lr}"]
        if torch.cuda.is_available():
            items.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        self.logger.info(self._wrap(items))
