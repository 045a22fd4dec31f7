"""Evaluator protocol, inference loop, results table, and ``build_evaluator`` by dataset type."""
from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from collections import OrderedDict, abc
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch
from torch import nn

from ..data.catalog import MetadataCatalog
from ..utils import comm

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates a model's outputs over a dataset and computes metrics.

    ``reset()`` before a pass, ``process(inputs, outputs)`` for each batch, ``evaluate()`` at the
    end: it gathers what every process saw and returns, on the main process, an ``OrderedDict``
    ``{task: {metric: float}}`` (``{}`` on the other processes). The base class evaluates
    nothing (an empty result); subclasses override the three methods.
    """

    def reset(self) -> None:
        """Forget the predictions of a previous pass."""

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Record one batch: the model's ``inputs`` and its ``outputs`` (one dict per image)."""

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """The metrics over everything processed since ``reset()`` (main process only)."""
        return OrderedDict()

    def metric_names(self) -> Optional[List[str]]:
        """The flattened names (``task/metric``) ``evaluate()`` can return, for the start-up
        check of ``TEST.BEST_CHECKPOINT_METRIC``; None when unknown (then not checked). An
        evaluator overrides it next to its ``evaluate``."""
        return None


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run on the same pass; their results are merged (tasks must differ)."""

    def __init__(self, evaluators: Iterable[DatasetEvaluator]) -> None:
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self._evaluators:
            e.reset()

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for e in self._evaluators:
            e.process(inputs, outputs)

    def metric_names(self) -> Optional[List[str]]:
        """Every evaluator's names; None when one of them does not know its own."""
        names: List[str] = []
        for e in self._evaluators:
            mine = e.metric_names()
            if mine is None:
                return None
            names += mine
        return names

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        results: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
        for e in self._evaluators:
            result = e.evaluate()
            if comm.is_main_process() and result is not None:
                for k, v in result.items():
                    if k in results:
                        raise KeyError(f"Two evaluators produced results for the task '{k}'")
                    results[k] = v
        return results


@contextmanager
def inference_context(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


#: Environment variable: "1" forces the inference progress bar, "0" hides it (default: shown on
#: the main process when stderr is a terminal; the log line every 5 s is always written).
PROGRESS_ENV = "BCD_PROGRESS"


@contextmanager
def _progress_bar(total: Optional[int]):
    """A tqdm bar over the batches on the main process (see :data:`PROGRESS_ENV`), else None."""
    flag = os.environ.get(PROGRESS_ENV, "").strip()
    show = flag == "1" or (flag != "0" and sys.stderr.isatty())
    if not show or not comm.is_main_process():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="inference", unit="batch", mininterval=1.0, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def inference_on_dataset(
    model: Union[nn.Module, Callable[[List[dict]], List[dict]]],
    data_loader: Iterable[List[dict]],
    evaluator: Optional[Union[DatasetEvaluator, List[DatasetEvaluator]]],
) -> "OrderedDict[str, Dict[str, float]]":
    """Run ``model`` on every batch of ``data_loader`` (eval mode, no grad) and evaluate.

    Args:
        model: called on a list of input dicts, returns a list of output dicts.
        data_loader: batches of input dicts (each image once over all processes).
        evaluator: None, one evaluator, or a list of evaluators.

    Returns:
        The evaluator's results on the main process (``{}`` elsewhere or without evaluator).
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, abc.MutableSequence):
        evaluator = DatasetEvaluators(evaluator)
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    logger.info(f"Start inference on {total if total is not None else '?'} batches")
    evaluator.reset()

    num_warmup = min(5, (total or 1) - 1)  # the first batches include one-time set-up costs
    start_time = time.perf_counter()
    total_compute_time = 0.0
    n = 0
    last_log = time.perf_counter()
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        bar = stack.enter_context(_progress_bar(total))
        for idx, inputs in enumerate(data_loader):
            if idx == num_warmup:
                start_time = time.perf_counter()
                total_compute_time = 0.0
            start_compute = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            total_compute_time += time.perf_counter() - start_compute
            evaluator.process(inputs, outputs)
            n = idx + 1
            if bar is not None:
                bar.update(1)
            if time.perf_counter() - last_log > 5 or (total is not None and n == total):
                last_log = time.perf_counter()
                # Detectron2's progress line (log files too): rate and ETA after the warm-up
                per = (time.perf_counter() - start_time) / max(n - num_warmup, 1) if n > num_warmup else None
                eta = (f", {per:.4f} s / batch, ETA "
                       f"{datetime.timedelta(seconds=int(per * (total - n)))}"
                       if per is not None and total is not None else "")
                logger.info(f"Inference done {n}/{total if total is not None else '?'}{eta}")

    timed = max(n - num_warmup, 1)
    total_time = time.perf_counter() - start_time
    logger.info(
        f"Total inference time: {datetime.timedelta(seconds=int(total_time))} "
        f"({total_time / timed:.4f} s / batch per device, on {comm.get_world_size()} devices); "
        f"pure compute {total_compute_time / timed:.4f} s / batch"
    )
    results = evaluator.evaluate()
    return results if results is not None else OrderedDict()


def flatten_results_dict(results: Mapping[str, Any]) -> Dict[str, float]:
    """``{"sem_seg": {"mIoU": 71.2}}`` -> ``{"sem_seg/mIoU": 71.2}`` (nested to any depth)."""
    flat: Dict[str, float] = {}
    for k, v in results.items():
        if isinstance(v, Mapping):
            for kk, vv in flatten_results_dict(v).items():
                flat[f"{k}/{kk}"] = vv
        else:
            flat[k] = v
    return flat


def print_csv_format(results: Mapping[str, Mapping[str, float]]) -> None:
    """Log the aggregate metrics of each task as copy-paste-able CSV lines (Detectron2's
    ``copypaste:`` format and rule: per-class entries, whose names hold a ``-`` such as
    ``IoU-road`` / ``AP-person``, are left out). Each evaluator logs its own table (per class
    and summary); every number, per class included, is in the returned results and in
    ``metrics.json``."""
    for task, metrics in results.items():
        if not isinstance(metrics, Mapping):
            continue
        important = [(k, v) for k, v in metrics.items() if "-" not in k]
        logger.info(f"copypaste: Task: {task}")
        logger.info("copypaste: " + ",".join(k for k, _ in important))
        logger.info(
            "copypaste: " + ",".join(
                f"{v:.4f}" if isinstance(v, (int, float)) else str(v) for _, v in important
            )
        )


# evaluator_type (MetadataCatalog) -> factory(cfg, dataset_name, output_dir) -> DatasetEvaluator.
# The task modules (sem_seg_evaluation, cityscapes_evaluation, coco_evaluation) add entries.
EVALUATOR_TYPES: Dict[str, Callable[[Any, str, Optional[str]], DatasetEvaluator]] = {}


def build_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluator:
    """The evaluator of ``dataset_name``, by its metadata's ``evaluator_type``.

    Raises:
        KeyError: naming the dataset when it has no ``evaluator_type`` or an unknown one.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type is None:
        raise KeyError(
            f"Dataset '{dataset_name}' has no evaluator_type in its metadata; known types: "
            f"{', '.join(sorted(EVALUATOR_TYPES))}"
        )
    if evaluator_type not in EVALUATOR_TYPES:
        raise KeyError(
            f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}', which has no "
            f"evaluator; known types: {', '.join(sorted(EVALUATOR_TYPES))}"
        )
    return EVALUATOR_TYPES[evaluator_type](cfg, dataset_name, output_dir)
