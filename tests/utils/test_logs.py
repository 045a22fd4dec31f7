"""What a run prints (issue 21, "Logs"): iteration lines that fit 160 columns with the losses
first and no KD diagnostics; one compact table per evaluated task; copypaste lines with the
aggregate metrics only (Detectron2's rule: per-class keys hold a '-')."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from bcd.evaluation import print_csv_format
from bcd.utils.events import CommonMetricPrinter, EventStorage
from bcd.utils.logger import setup_logger

PREFIX = re.compile(r"^\[\d\d/\d\d \d\d:\d\d:\d\d\] [\w.]+ [A-Z]+: ")


class _Lines(logging.Handler):
    """Collects what the bcd loggers print, formatted as the console and log.txt show it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        from bcd.utils.logger import _DATEFMT, _FORMAT

        self.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        self.records = []

    def emit(self, record):
        self.records.append(self.format(record))

    @property
    def lines(self):
        return [line for r in self.records for line in r.split("\n")]


@pytest.fixture
def captured():
    log = setup_logger(name="bcd")
    h = _Lines()
    log.addHandler(h)
    try:
        yield h
    finally:
        log.removeHandler(h)


def _bcd_like_storage(it: int) -> EventStorage:
    """The scalars a BCD distillation puts in one iteration: task and KD losses, raw terms,
    weights, temperatures, gradient ratios, timings, the LR."""
    storage = EventStorage(it)
    storage.put_scalars(total_loss=3.1379, loss_sem_seg=1.647, loss_aux=0.69187)
    storage.put_scalars(loss_kd_boundary=0.1234, loss_kd_boundary_teacher_head=0.5731, loss_kd_context=0.16524,
                        smoothing_hint=False)
    for k in ("boundary", "boundary_teacher_head", "context"):
        storage.put_scalar(f"kd/{k}/raw", 0.01, smoothing_hint=False)
    storage.put_scalars(**{"kd/BoundaryDistillation/weight": 5.0, "kd/ContextDistillation/weight": 25.0,
                           "kd/BoundaryDistillation/temperature/tau": 1.0, "kd/grad_ratio": 0.3,
                           "kd/grad_norm/task": 2.0, "kd/grad_norm/kd": 0.6, "kd/grad_cosine": 0.1},
                        smoothing_hint=False)
    storage.put_scalars(time=0.1234, data_time=0.0012)
    storage.put_scalar("lr", 0.006, smoothing_hint=False)
    return storage


def test_iteration_line_fits_160_columns_losses_first(captured):
    printer = CommonMetricPrinter(max_iter=150)
    storage = _bcd_like_storage(19)
    with storage:
        printer.write()
    (record,) = [r for r in captured.records if "iter: 19" in r]
    lines = record.split("\n")
    assert all(len(line) <= 160 for line in lines), [len(line) for line in lines]
    assert len(lines) >= 2  # this many losses need a continuation line
    assert all(line.startswith("    ") for line in lines[1:])
    first = lines[0]
    assert PREFIX.match(first)
    # what tools/evidence.py reads from the first line
    assert " eta: " in first and " iter: 19" in first and "total_loss: 3.138" in first
    body = "  ".join(line.strip() for line in [PREFIX.sub("", first)] + lines[1:])
    names = [item.split(":")[0] for item in body.split("  ")]
    assert names[:3] == ["eta", "iter", "total_loss"]
    losses = [n for n in names if n.startswith("loss")]
    assert losses == ["loss_aux", "loss_sem_seg", "loss_kd_boundary", "loss_kd_boundary_teacher_head",
                      "loss_kd_context"]  # task losses, then the KD terms
    assert names[-3:] == ["time", "data_time", "lr"]
    assert "kd/" not in record  # diagnostics: metrics.json / TensorBoard only


def test_short_line_stays_one_line(captured):
    printer = CommonMetricPrinter(max_iter=10)
    storage = EventStorage(3)
    storage.put_scalars(total_loss=1.0, loss_cls=0.5, loss_box_reg=0.5, time=0.1, data_time=0.0)
    storage.put_scalar("lr", 0.01, smoothing_hint=False)
    with storage:
        printer.write()
    (record,) = [r for r in captured.records if "iter: 3" in r]
    assert "\n" not in record and len(record) <= 160


def test_copypaste_has_aggregates_only_and_no_wide_table(captured):
    classes = [f"class{i}" for i in range(40)]
    res = {"sem_seg": {"mIoU": 50.0, "fwIoU": 60.0, **{f"IoU-{c}": 1.0 for c in classes},
                       **{f"ACC-{c}": 2.0 for c in classes}},
           "bbox": {"AP": 30.0, "AP50": 50.0, **{f"AP-{c}": 3.0 for c in classes}}}
    print_csv_format(res)
    lines = [PREFIX.sub("", line) for line in captured.lines]
    assert lines == ["copypaste: Task: sem_seg", "copypaste: mIoU,fwIoU", "copypaste: 50.0000,60.0000",
                     "copypaste: Task: bbox", "copypaste: AP,AP50", "copypaste: 30.0000,50.0000"]
