"""``COCOEvaluator``: box and mask AP of detections through ``pycocotools`` (Detectron2's metrics).

The predictions of every process are gathered on the main process, mapped back to the dataset's
category ids, written to ``<output_dir>/coco_instances_results.json`` (boxes, and masks as
compressed RLE) and scored by ``pycocotools.cocoeval.COCOeval`` against the dataset's json: AP
(0.50:0.95), AP50, AP75, APs, APm, APl and per-category AP, in percent, under the task ``"bbox"``
and, when the predictions carry ``pred_masks`` (or ``tasks`` asks for it), ``"segm"``. For
``segm`` the result boxes are dropped before ``loadRes`` so that pycocotools takes each
detection's area from its mask (as Detectron2 does).
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..utils import comm
from .evaluator import EVALUATOR_TYPES, DatasetEvaluator

logger = logging.getLogger(__name__)

__all__ = ["COCOEvaluator", "instances_to_coco_json", "coco_eval", "coco_eval_bbox"]

_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def instances_to_coco_json(instances, image_id: int) -> List[Dict[str, Any]]:
    """``Instances`` (pred_boxes XYXY, scores, pred_classes contiguous, optional pred_masks
    ``N×H×W`` bool at the original image size) -> COCO result dicts with ``bbox`` XYWH, the
    *contiguous* ``category_id`` (mapped to dataset ids later) and ``segmentation`` (compressed
    RLE, ``counts`` as str) when masks are present."""
    n = len(instances)
    if n == 0:
        return []
    boxes = instances.pred_boxes.detach().cpu().double().numpy().copy()
    boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH
    scores = instances.scores.detach().cpu().tolist()
    classes = instances.pred_classes.detach().cpu().tolist()
    results = [
        {
            "image_id": image_id,
            "category_id": int(classes[k]),
            "bbox": [float(v) for v in boxes[k]],
            "score": float(scores[k]),
        }
        for k in range(n)
    ]
    if instances.has("pred_masks"):
        from pycocotools import mask as mask_util

        masks = instances.pred_masks.detach().cpu().numpy().astype(np.uint8)
        for r, m in zip(results, masks):
            rle = mask_util.encode(np.asfortranarray(m[:, :, None]))[0]
            rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
    return results


def _no_results(coco_gt):
    """An empty detection set for ``COCOeval``: with no detections it reports 0 where ground
    truth exists and -1 (undefined) where none does, which a hard-coded 0 would hide."""
    from pycocotools.coco import COCO

    dt = COCO()
    dt.dataset = {"images": list(coco_gt.dataset["images"]),
                  "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def coco_eval(coco_gt, results: List[Dict[str, Any]], iou_type: str = "bbox",
              img_ids: Optional[List[int]] = None):
    """Run ``COCOeval`` (``iou_type`` ``"bbox"`` or ``"segm"``) on ``results`` (dataset category
    ids); returns the evaluated ``COCOeval`` object (``.stats``: the 12 standard numbers in [0, 1]).

    For ``segm`` every result needs ``segmentation``; its ``bbox`` is removed from a copy so that
    pycocotools computes areas from the masks."""
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm'; got '{iou_type}'")
    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            if "segmentation" not in r:
                raise ValueError("segm evaluation: a result has no 'segmentation' (model without masks?)")
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _no_results(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev.summarize()
    logger.info(f"COCOeval ({iou_type}):\n" + buf.getvalue())
    return ev


def coco_eval_bbox(coco_gt, results: List[Dict[str, Any]], img_ids: Optional[List[int]] = None):
    """``coco_eval(coco_gt, results, "bbox", img_ids)``."""
    return coco_eval(coco_gt, results, "bbox", img_ids)


class COCOEvaluator(DatasetEvaluator):
    """Box (and mask) AP on a COCO-format dataset (metadata ``json_file``, ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id``).

    Args:
        dataset_name: a registered dataset with ``evaluator_type == "coco"``.
        output_dir: where ``coco_instances_results.json`` is written (None = not written).
        distributed: gather the predictions of all processes.
        tasks: ``("bbox",)``, ``("bbox", "segm")``; None = ``bbox``, plus ``segm`` when the
            predictions carry masks (the config builder passes ``segm`` when ``MODEL.MASK_ON``).
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None,
                 distributed: bool = True, tasks: Optional[Sequence[str]] = None) -> None:
        if tasks is not None and (not set(tasks) <= {"bbox", "segm"} or not tasks):
            raise ValueError(f"COCOEvaluator tasks must be among ('bbox', 'segm'); got {tasks}")
        self.tasks = tuple(tasks) if tasks is not None else None
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        meta = MetadataCatalog.get(dataset_name)
        if meta.get("json_file") is None or meta.get("thing_dataset_id_to_contiguous_id") is None:
            # Both are set when the dataset is loaded (load_coco_json).
            DatasetCatalog.get(dataset_name)
        self.json_file = meta.get("json_file")
        if not self.json_file or not os.path.isfile(self.json_file):
            raise FileNotFoundError(
                f"COCOEvaluator: dataset '{dataset_name}' has no COCO json "
                f"(metadata json_file = {self.json_file!r})"
            )
        id_map = meta.get("thing_dataset_id_to_contiguous_id")
        self.contiguous_to_dataset = {v: k for k, v in id_map.items()}
        self.thing_classes = list(meta.get("thing_classes"))
        self._coco_gt = None
        self.reset()

    @property
    def coco_gt(self):
        """The ground truth as a ``pycocotools.coco.COCO`` (read once, lazily)."""
        if self._coco_gt is None:
            from ..data.datasets.coco import load_coco_gt

            # The loader's ground truth (pycocotools' COCO): 'area' / 'iscrowd' completed where
            # the json lacks them, so evaluation needs what training was validated for.
            self._coco_gt = load_coco_gt(self.json_file)
        return self._coco_gt

    def reset(self) -> None:
        self._predictions: List[Dict[str, Any]] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Keep, per image, its id and its detections (boxes in original image pixels)."""
        for inp, out in zip(inputs, outputs):
            pred = {"image_id": inp["image_id"], "instances": []}
            if "instances" in out:
                pred["instances"] = instances_to_coco_json(out["instances"], inp["image_id"])
            self._predictions.append(pred)

    def metric_names(self) -> List[str]:
        """``<task>/<metric>`` for ``bbox`` (and ``segm`` when asked for, or possible with
        ``tasks=None``): AP, AP50, AP75, APs, APm, APl and ``AP-<class>``."""
        tasks = self.tasks or ("bbox", "segm")
        return [f"{t}/{m}" for t in tasks for m in _METRICS + [f"AP-{c}" for c in self.thing_classes]]

    def evaluate(self, img_ids: Optional[List[int]] = None) -> "OrderedDict[str, Dict[str, float]]":
        """Gather, write the results json, and score with COCOeval on the main process.

        Only the images seen by ``process`` (over all processes) are scored (or ``img_ids``).
        """
        predictions = self._predictions
        if self.distributed and comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return OrderedDict()
        if len(predictions) == 0:
            logger.warning(f"COCOEvaluator on '{self.dataset_name}': no predictions were processed")
            return OrderedDict()
        results = list(itertools.chain(*[p["instances"] for p in predictions]))
        for r in results:
            c = r["category_id"]
            if c not in self.contiguous_to_dataset:
                raise ValueError(
                    f"Predicted class {c} is outside the {len(self.contiguous_to_dataset)} classes "
                    f"of dataset '{self.dataset_name}' (check MODEL.*.NUM_CLASSES)"
                )
            r["category_id"] = self.contiguous_to_dataset[c]
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, "coco_instances_results.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(results, f)
            os.replace(tmp, path)
        if img_ids is None:
            img_ids = sorted({p["image_id"] for p in predictions})
        tasks = self.tasks
        if tasks is None:
            tasks = ("bbox", "segm") if any("segmentation" in r for r in results) else ("bbox",)
        return OrderedDict((t, self._derive(results, img_ids, t)) for t in tasks)

    def _derive(self, results: List[Dict[str, Any]], img_ids: List[int],
                iou_type: str = "bbox") -> Dict[str, float]:
        if len(results) == 0:
            logger.warning(f"COCOEvaluator on '{self.dataset_name}': no detections")
        ev = coco_eval(self.coco_gt, results, iou_type, img_ids)
        # COCOeval reports -1 where a metric is undefined (e.g. no small objects): NaN here
        out = {
            m: float(ev.stats[i] * 100) if ev.stats[i] >= 0 else float("nan")
            for i, m in enumerate(_METRICS)
        }
        # precision: [T iou thresholds, R recall points, K classes, A areas, M max dets]
        precisions = ev.eval["precision"]
        cat_ids = ev.params.catIds
        for k, cat_id in enumerate(cat_ids):
            p = precisions[:, :, k, 0, -1]
            p = p[p > -1]
            ap = float(np.mean(p) * 100) if p.size else float("nan")
            contiguous = {v: c for c, v in self.contiguous_to_dataset.items()}.get(cat_id)
            name = self.thing_classes[contiguous] if contiguous is not None else str(cat_id)
            out[f"AP-{name}"] = ap
        self._log_table(iou_type, out, len(img_ids))
        return out

    def _log_table(self, iou_type: str, res: Dict[str, float], num_images: int) -> None:
        """Detectron2's two tables: the summary (AP, AP50, AP75, APs, APm, APl) and the
        per-category AP in three (category, AP) column pairs, so 80 COCO classes take 27 rows
        of about 90 columns."""
        from tabulate import tabulate

        summary = tabulate([[res[m] for m in _METRICS]], headers=_METRICS, tablefmt="pipe",
                           floatfmt=".2f", missingval="nan")
        per_cat = [(k[len("AP-"):], v) for k, v in res.items() if k.startswith("AP-")]
        pairs = 3
        flat = [x for kv in per_cat for x in kv]
        rows = [flat[i:i + 2 * pairs] for i in range(0, len(flat), 2 * pairs)]
        table = tabulate(rows, headers=["category", "AP"] * min(pairs, len(per_cat)),
                         tablefmt="pipe", floatfmt=".2f", numalign="left")
        logger.info(f"{iou_type} AP on '{self.dataset_name}' ({num_images} images):\n{summary}\n"
                    f"Per-category {iou_type} AP:\n{table}")


def _build(cfg, dataset_name: str, output_dir: Optional[str]) -> COCOEvaluator:
    mask_on = bool(cfg is not None and cfg.MODEL.get("MASK_ON", False))
    return COCOEvaluator(dataset_name, output_dir, tasks=("bbox", "segm") if mask_on else ("bbox",))


EVALUATOR_TYPES["coco"] = _build
