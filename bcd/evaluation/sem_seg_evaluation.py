"""``SemSegEvaluator``: mIoU, fwIoU, mean / pixel accuracy, per-class IoU, Boundary IoU and
connectivity.

A ``K×K`` confusion matrix (rows: ground truth, columns: prediction) is accumulated image by
image, pixels whose ground truth is the ignore label left out, and summed over processes in
``evaluate()``. Boundary IoU (Cheng et al. 2021, see ``boundary.py``) is accumulated per class
as boundary intersection / union pixel counts. Connectivity (``mConn``, ``Conn-<c>``, and the
fragmentation ratio ``mFrag``, ``Frag-<c>``; see ``boundary.py``) compares, image by image, the
number of connected regions of each class in the prediction with the ground truth's. Conventions follow Detectron2: a class absent
from the ground truth of the whole dataset has no IoU / accuracy (NaN) and is left out of the
means; results are percentages.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..data.catalog import MetadataCatalog
from ..data.io import read_sem_seg
from ..utils import comm
from .boundary import boundary_iou_counts, connected_component_counts, connectivity_scores
from .evaluator import EVALUATOR_TYPES, DatasetEvaluator

__all__ = ["SemSegEvaluator", "confusion_matrix", "image_metrics", "sem_seg_metrics"]

logger = logging.getLogger(__name__)


def sem_seg_metrics(
    conf: np.ndarray,
    b_inter: np.ndarray,
    b_union: np.ndarray,
    b_gt: np.ndarray,
    class_names: List[str],
    cc_min: Optional[np.ndarray] = None,
    cc_max: Optional[np.ndarray] = None,
    cc_gt: Optional[np.ndarray] = None,
    cc_pred: Optional[np.ndarray] = None,
) -> "OrderedDict[str, float]":
    """Metrics from accumulated counts.

    Args:
        conf: ``K×K`` confusion matrix, ``conf[g, p]`` = pixels of ground truth ``g`` predicted
            ``p`` (ignore pixels excluded).
        b_inter, b_union, b_gt: ``K`` boundary intersection, union and ground-truth boundary
            pixel counts.
        class_names: ``K`` names.
        cc_min, cc_max, cc_gt, cc_pred: ``K`` sums over images of ``min(n_g, n_p)``,
            ``max(n_g, n_p)``, ``n_g`` and ``n_p`` (connected regions per class, see
            ``boundary.py``); None leaves the connectivity metrics out.

    Returns:
        ``mIoU``, ``fwIoU``, ``mACC``, ``pACC``, ``mBIoU``, (``mConn``, ``mFrag``), then
        ``IoU-<c>``, ``ACC-<c>``, ``BIoU-<c>`` (``Conn-<c>``, ``Frag-<c>``) per class; percentages
        except ``Frag`` (a ratio); NaN for a class absent from the ground truth.
    """
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=1)
    pos_pred = conf.sum(axis=0)
    union = pos_gt + pos_pred - tp
    valid = pos_gt > 0
    k = len(class_names)
    acc = np.full(k, np.nan)
    iou = np.full(k, np.nan)
    biou = np.full(k, np.nan)
    acc[valid] = tp[valid] / pos_gt[valid]
    iou[valid] = tp[valid] / union[valid]
    b_valid = b_gt > 0
    biou[b_valid] = b_inter[b_valid] / b_union[b_valid]
    total = pos_gt.sum()
    freq = pos_gt / total if total > 0 else np.zeros(k)

    def _mean(x: np.ndarray, m: np.ndarray) -> float:
        return float(100.0 * x[m].mean()) if m.any() else float("nan")

    res: "OrderedDict[str, float]" = OrderedDict()
    res["mIoU"] = _mean(iou, valid)
    res["fwIoU"] = float(100.0 * (iou[valid] * freq[valid]).sum()) if valid.any() else float("nan")
    res["mACC"] = _mean(acc, valid)
    res["pACC"] = float(100.0 * tp.sum() / total) if total > 0 else float("nan")
    res["mBIoU"] = _mean(biou, b_valid)
    conn = frag = None
    if cc_min is not None and cc_max is not None and cc_gt is not None and cc_pred is not None:
        c_valid = cc_gt > 0
        conn = np.full(k, np.nan)
        frag = np.full(k, np.nan)
        conn[c_valid] = cc_min[c_valid] / cc_max[c_valid]
        frag[c_valid] = cc_pred[c_valid] / cc_gt[c_valid]
        res["mConn"] = _mean(conn, c_valid)
        res["mFrag"] = float(frag[c_valid].mean()) if c_valid.any() else float("nan")
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = float(100.0 * iou[i])
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = float(100.0 * acc[i])
    for i, name in enumerate(class_names):
        res[f"BIoU-{name}"] = float(100.0 * biou[i])
    if conn is not None and frag is not None:
        for i, name in enumerate(class_names):
            res[f"Conn-{name}"] = float(100.0 * conn[i])
        for i, name in enumerate(class_names):
            res[f"Frag-{name}"] = float(frag[i])
    return res


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int = 255,
                     name: Any = None) -> np.ndarray:
    """``K×K`` int64 counts ``conf[g, p]`` of one image's ``H×W`` ground truth and prediction,
    pixels of ``ignore_label`` excluded.

    Raises:
        ValueError: a ground-truth value outside ``[0, K)`` and the ignore label (naming ``name``).
    """
    k = int(num_classes)
    valid = gt != ignore_label
    g, p = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= k):
        bad = np.unique(g[(g < 0) | (g >= k)])[:10].tolist()
        raise ValueError(
            f"SemSegEvaluator: ground truth of '{name}' has values {bad} outside [0, {k}) and "
            f"the ignore label {ignore_label}"
        )
    return np.bincount(k * g + p, minlength=k * k).reshape(k, k)


def image_metrics(gt: np.ndarray, pred: np.ndarray, class_names: List[str], ignore_label: int = 255
                  ) -> "OrderedDict[str, float]":
    """:func:`sem_seg_metrics` of one image (``mIoU`` over the classes its ground truth holds,
    ``pACC`` ...; no boundary or connectivity terms), for per-image figures."""
    k = len(class_names)
    zeros = np.zeros(k, dtype=np.int64)
    conf = confusion_matrix(np.asarray(gt), np.asarray(pred), k, ignore_label)
    res = sem_seg_metrics(conf, zeros, zeros, zeros, list(class_names))
    return OrderedDict((key, v) for key, v in res.items() if "BIoU" not in key)


class SemSegEvaluator(DatasetEvaluator):
    """Semantic-segmentation metrics over a dataset, correct across processes.

    Args:
        dataset_name: a registered dataset; its metadata gives ``stuff_classes`` and
            ``ignore_label``.
        output_dir: where ``sem_seg_evaluation.json`` (the metrics and the confusion matrix) is
            written by the main process; None writes nothing.
        num_classes: overrides ``len(stuff_classes)``.
        ignore_label: overrides the metadata's ``ignore_label`` (default 255).
        boundary_dilation_ratio: Boundary IoU band width as a fraction of the image diagonal
            (``TEST.SEM_SEG.BOUNDARY_DILATION_RATIO``; Cheng et al. use 0.02); ``0`` or None
            turns Boundary IoU off (it costs a few erosions per class and image).
        connectivity: report the connectivity metrics (``mConn``, ``mFrag``, per class; one
            connected-components pass per class and image).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        num_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
        boundary_dilation_ratio: Optional[float] = 0.02,
        connectivity: bool = True,
    ):
        meta = MetadataCatalog.get(dataset_name)
        classes = meta.get("stuff_classes")
        if classes is None and num_classes is None:
            raise KeyError(
                f"SemSegEvaluator: dataset '{dataset_name}' has no stuff_classes in its metadata"
            )
        self._dataset_name = dataset_name
        self._class_names = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self._num_classes = int(num_classes) if num_classes is not None else len(self._class_names)
        if len(self._class_names) != self._num_classes:
            raise ValueError(
                f"SemSegEvaluator: {self._num_classes} classes but dataset '{dataset_name}' names "
                f"{len(self._class_names)}"
            )
        self._ignore_label = int(ignore_label if ignore_label is not None else meta.get("ignore_label", 255))
        self._boundary_ratio = float(boundary_dilation_ratio or 0.0)
        self._connectivity = bool(connectivity)
        self._output_dir = output_dir
        self.reset()

    def reset(self) -> None:
        k = self._num_classes
        self._conf = np.zeros((k, k), dtype=np.int64)
        self._b_inter = np.zeros(k, dtype=np.int64)
        self._b_union = np.zeros(k, dtype=np.int64)
        self._b_gt = np.zeros(k, dtype=np.int64)
        self._cc = {key: np.zeros(k, dtype=np.int64) for key in ("min", "max", "gt", "pred")}
        self._num_images = 0

    def _ground_truth(self, inp: Dict[str, Any], shape: tuple) -> np.ndarray:
        """``H×W`` int64 ground truth of one input at the output size ``shape``.

        Uses ``inp["sem_seg"]`` when it has the output size (the test mapper keeps labels at
        the original size), else reads ``inp["sem_seg_file_name"]``.
        """
        gt = inp.get("sem_seg")
        if gt is not None:
            gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
            if gt.shape == shape:
                return gt.astype(np.int64)
        label_file = inp.get("sem_seg_file_name")
        if label_file:
            gt = read_sem_seg(label_file)
            if gt.shape != shape:
                raise ValueError(
                    f"SemSegEvaluator: label '{label_file}' is {gt.shape[0]}×{gt.shape[1]} but the "
                    f"prediction for '{inp.get('file_name')}' is {shape[0]}×{shape[1]}; outputs must "
                    f"be at the original image size (height × width)"
                )
            return gt
        raise KeyError(
            f"SemSegEvaluator: no ground truth for '{inp.get('file_name')}': the input has neither "
            f"a 'sem_seg' of size {shape} nor a 'sem_seg_file_name'"
        )

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Accumulate one batch.

        Args:
            inputs: model inputs (``sem_seg`` at the original size and / or
                ``sem_seg_file_name``, ``file_name``).
            outputs: ``{"sem_seg": K×H×W}`` class scores at the original size (argmax taken
                here).
        """
        for inp, out in zip(inputs, outputs):
            scores = out["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"SemSegEvaluator: output 'sem_seg' for '{inp.get('file_name')}' has shape "
                    f"{tuple(scores.shape)}; expected {self._num_classes}×H×W scores"
                )
            pred = scores.argmax(dim=0).cpu().numpy().astype(np.int64)
            gt = self._ground_truth(inp, pred.shape)
            self._accumulate(gt, pred, inp.get("sem_seg_file_name") or inp.get("file_name"))

    def _accumulate(self, gt: np.ndarray, pred: np.ndarray, name: Any = None) -> None:
        k = self._num_classes
        self._conf += confusion_matrix(gt, pred, k, self._ignore_label, name)
        if self._boundary_ratio > 0:
            bi, bu, bg = boundary_iou_counts(gt, pred, k, self._ignore_label, self._boundary_ratio)
            self._b_inter += bi
            self._b_union += bu
            self._b_gt += bg
        if self._connectivity:
            n_g, n_p = connected_component_counts(gt, pred, k, self._ignore_label)
            lo, hi, _ = connectivity_scores(n_g, n_p)
            self._cc["min"] += lo
            self._cc["max"] += hi
            self._cc["gt"] += n_g
            self._cc["pred"] += n_p
        self._num_images += 1

    def _gather_counts(self) -> Optional[Dict[str, np.ndarray]]:
        """Sum the counts of every process; None on the processes other than the main one."""
        mine = {
            "conf": self._conf,
            "b_inter": self._b_inter,
            "b_union": self._b_union,
            "b_gt": self._b_gt,
            **{f"cc_{key}": v for key, v in self._cc.items()},
            "n": np.int64(self._num_images),
        }
        parts = comm.gather(mine, dst=0)
        if not comm.is_main_process():
            return None
        return {key: sum(p[key] for p in parts) for key in mine}

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """Main process: ``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "mBIoU", "IoU-<c>",
        "ACC-<c>", "BIoU-<c>"}}`` in percent (``mBIoU`` / ``BIoU-*`` only with a band ratio > 0);
        other processes: an empty dict."""
        counts = self._gather_counts()
        if counts is None:
            return OrderedDict()
        if counts["n"] == 0:
            logger.warning(f"SemSegEvaluator on '{self._dataset_name}': no image was processed")
        res = self._metrics(counts)
        self._log_table(res, int(counts["n"]))
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "sem_seg_evaluation.json")
            with open(path, "w") as f:
                json.dump(
                    {
                        "dataset": self._dataset_name,
                        "num_images": int(counts["n"]),
                        "boundary_dilation_ratio": self._boundary_ratio,
                        "metrics": {k: (None if np.isnan(v) else v) for k, v in res.items()},
                        "confusion_matrix": counts["conf"].tolist(),
                        "classes": self._class_names,
                    },
                    f,
                    indent=1,
                )
        return OrderedDict(sem_seg=res)

    def _metrics(self, counts: Dict[str, np.ndarray]) -> "OrderedDict[str, float]":
        """``sem_seg_metrics`` of summed ``counts`` with this evaluator's options."""
        cc = (
            {f"cc_{key}": counts[f"cc_{key}"] for key in ("min", "max", "gt", "pred")}
            if self._connectivity else {}
        )
        res = sem_seg_metrics(
            counts["conf"], counts["b_inter"], counts["b_union"], counts["b_gt"], self._class_names, **cc
        )
        if self._boundary_ratio <= 0:
            res = OrderedDict((k, v) for k, v in res.items() if "BIoU" not in k)
        return res

    def metric_names(self) -> List[str]:
        """``sem_seg/<metric>``: what ``evaluate`` returns with these options (computed on
        empty counts, so the list cannot drift from the metrics)."""
        k = self._num_classes
        zeros = {"conf": np.zeros((k, k), np.int64), "b_inter": np.zeros(k, np.int64),
                 "b_union": np.zeros(k, np.int64), "b_gt": np.zeros(k, np.int64),
                 **{f"cc_{key}": np.zeros(k, np.int64) for key in ("min", "max", "gt", "pred")}}
        return [f"sem_seg/{name}" for name in self._metrics(zeros)]

    def _log_table(self, res: Dict[str, float], num_images: int) -> None:
        from tabulate import tabulate

        rows = []
        for name in self._class_names:
            row = [name, res[f"IoU-{name}"], res[f"ACC-{name}"]]
            if f"BIoU-{name}" in res:
                row.append(res[f"BIoU-{name}"])
            rows.append(row)
        headers = ["class", "IoU", "ACC"] + (["BIoU"] if "mBIoU" in res else [])
        keys = ("mIoU", "fwIoU", "mACC", "pACC", "mBIoU", "mConn", "mFrag")
        summary = {k: res[k] for k in keys if k in res}
        logger.info(
            f"Semantic segmentation on '{self._dataset_name}' ({num_images} images):\n"
            + tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f")
            + "\n"
            + tabulate([list(summary.values())], headers=list(summary), tablefmt="pipe", floatfmt=".2f")
        )


def _build_sem_seg_evaluator(cfg, dataset_name: str, output_dir: Optional[str]) -> SemSegEvaluator:
    return SemSegEvaluator(
        dataset_name,
        output_dir=output_dir,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        ignore_label=MetadataCatalog.get(dataset_name).get(
            "ignore_label", cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        ),
        boundary_dilation_ratio=cfg.TEST.SEM_SEG.BOUNDARY_DILATION_RATIO,
    )


EVALUATOR_TYPES["sem_seg"] = _build_sem_seg_evaluator
