"""``ObjectSegEvaluator``: the SOD / COD metrics through ``pysodmetrics``.

Reported (``{"object_seg": {...}}``, fractions in [0, 1] as the SOD / COD papers print them):

* ``MAE``: mean absolute error;
* ``maxF`` / ``meanF`` / ``adpF``: F-measure (beta^2 = 0.3) at the best of 256 thresholds of
  the dataset-mean curve, its mean over the thresholds, and at the adaptive threshold
  (twice the mean prediction);
* ``wF``: weighted F-measure (Margolin et al.);
* ``Sm``: S-measure (alpha = 0.5);
* ``maxE`` / ``meanE`` / ``adpE``: E-measure, same three readings as F.

Every metric is computed per image at the mask's **original** size (the model returns its
prediction at ``height × width``; a prediction of another size is an error) by the
``pysodmetrics`` classes ``MAE``, ``FmeasureV2`` (``FmeasureHandler``), ``WeightedFmeasure``,
``Smeasure``, ``Emeasure``. Their per-image records are gathered from every process and the
dataset figures computed on the main one, so a multi-process evaluation equals a single-process
one. ``inference_on_dataset`` logs progress (``Inference done n/N``) every 5 s, which covers the
per-image metric computation done in ``process``.

Prediction convention (``TEST.OBJECT_SEG.SAVE_UINT8_NORMALIZE``, default True): as in the
standard protocol, the probability map is turned into an 8-bit image and pysodmetrics min-max
normalises it (``normalize=True``); False passes the float probabilities unchanged.
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
from ..data.io import read_image
from ..utils import comm
from .evaluator import EVALUATOR_TYPES, DatasetEvaluator

__all__ = ["ObjectSegEvaluator", "OBJECT_SEG_METRICS", "SodMetrics"]

logger = logging.getLogger(__name__)

OBJECT_SEG_METRICS = ("MAE", "maxF", "meanF", "adpF", "wF", "Sm", "maxE", "meanE", "adpE")


class SodMetrics:
    """The pysodmetrics objects of one process, with their per-image records exportable for a
    gather and mergeable on the main process.

    Args:
        normalize: pass 8-bit predictions / ground truth with ``normalize=True`` (pysodmetrics'
            own preparation: ``pred / 255`` min-max normalised, ``gt > 128``), else float
            probabilities and bool masks with ``normalize=False``.
    """

    # attribute lists holding one record per image, by metric object
    _RECORDS = {
        "mae": ("maes",),
        "wfm": ("weighted_fms",),
        "sm": ("sms",),
        "em": ("adaptive_ems", "changeable_ems"),
    }

    def __init__(self, normalize: bool = True) -> None:
        import py_sod_metrics as psm

        self.normalize = normalize
        self.mae = psm.MAE()
        self.fm = psm.FmeasureV2(
            metric_handlers={"fm": psm.FmeasureHandler(with_adaptive=True, with_dynamic=True, beta=0.3)}
        )
        self.wfm = psm.WeightedFmeasure()
        self.sm = psm.Smeasure()
        self.em = psm.Emeasure()
        self.num_images = 0

    def step(self, prob: np.ndarray, gt: np.ndarray) -> None:
        """Add one image.

        Args:
            prob: ``H×W`` float foreground probabilities in [0, 1].
            gt: ``H×W`` bool / {0, 1} ground truth of the same size.
        """
        gt = np.asarray(gt).astype(bool)
        if self.normalize:
            pred_in = np.clip(np.round(prob * 255.0), 0, 255).astype(np.uint8)
            gt_in = gt.astype(np.uint8) * 255
        else:
            pred_in = np.clip(prob, 0.0, 1.0).astype(np.float64)
            gt_in = gt
        for m in (self.mae, self.fm, self.wfm, self.sm, self.em):
            m.step(pred=pred_in, gt=gt_in, normalize=self.normalize)
        self.num_images += 1

    def records(self) -> Dict[str, Any]:
        """The per-image records (picklable lists) of every metric."""
        out: Dict[str, Any] = {"n": self.num_images}
        for name, attrs in self._RECORDS.items():
            for a in attrs:
                out[f"{name}.{a}"] = list(getattr(getattr(self, name), a))
        h = self.fm._metric_handlers["fm"]
        out["fm.adaptive_results"] = list(h.adaptive_results)
        out["fm.dynamic_results"] = list(h.dynamic_results)
        return out

    @classmethod
    def merged(cls, parts: List[Dict[str, Any]], normalize: bool = True) -> "SodMetrics":
        """A ``SodMetrics`` holding the records of ``parts`` (from ``records()``), in order."""
        m = cls(normalize)
        for part in parts:
            m.num_images += int(part["n"])
            for name, attrs in cls._RECORDS.items():
                for a in attrs:
                    getattr(getattr(m, name), a).extend(part[f"{name}.{a}"])
            h = m.fm._metric_handlers["fm"]
            h.adaptive_results.extend(part["fm.adaptive_results"])
            h.dynamic_results.extend(part["fm.dynamic_results"])
        return m

    def results(self) -> "OrderedDict[str, float]":
        """The dataset metrics (``OBJECT_SEG_METRICS``); NaN when no image was added."""
        if self.num_images == 0:
            return OrderedDict((k, float("nan")) for k in OBJECT_SEG_METRICS)
        fm = self.fm.get_results()["fm"]
        em = self.em.get_results()["em"]
        res: "OrderedDict[str, float]" = OrderedDict()
        res["MAE"] = float(self.mae.get_results()["mae"])
        res["maxF"] = float(fm["dynamic"].max())
        res["meanF"] = float(fm["dynamic"].mean())
        res["adpF"] = float(fm["adaptive"])
        res["wF"] = float(self.wfm.get_results()["wfm"])
        res["Sm"] = float(self.sm.get_results()["sm"])
        res["maxE"] = float(em["curve"].max())
        res["meanE"] = float(em["curve"].mean())
        res["adpE"] = float(em["adp"])
        return res


class ObjectSegEvaluator(DatasetEvaluator):
    """SOD / COD metrics over a dataset, correct across processes.

    Args:
        dataset_name: a registered dataset (its metadata may give ``mask_threshold``).
        output_dir: where ``object_seg_evaluation.json`` is written (main process), and with
            ``save_predictions`` the 8-bit prediction PNGs under ``predictions/``; None: nothing.
        mask_threshold: binarisation threshold of mask files read here (foreground = value >
            threshold); the metadata's ``mask_threshold`` wins when set.
        normalize: see ``SodMetrics``.
        save_predictions: write ``<output_dir>/predictions/<image_id>.png``.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        mask_threshold: int = 128,
        normalize: bool = True,
        save_predictions: bool = False,
    ) -> None:
        meta_thr = MetadataCatalog.get(dataset_name).get("mask_threshold", None)
        self._dataset_name = dataset_name
        self._threshold = int(meta_thr if meta_thr is not None else mask_threshold)
        self._normalize = bool(normalize)
        self._output_dir = output_dir
        self._save = bool(save_predictions) and output_dir is not None
        self.reset()

    def reset(self) -> None:
        self._metrics = SodMetrics(self._normalize)

    def _ground_truth(self, inp: Dict[str, Any], shape: tuple) -> np.ndarray:
        """``H×W`` bool ground truth at the prediction size ``shape`` (the original size): the
        mapper's ``sem_seg`` when it has that size, else the mask file read and binarised."""
        gt = inp.get("sem_seg")
        if gt is not None:
            gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
            if gt.shape == shape:
                return gt == 1
        mask_file = inp.get("mask_file_name")
        if mask_file:
            mask = read_image(mask_file, format="L")[..., 0]
            if mask.shape != shape:
                raise ValueError(
                    f"ObjectSegEvaluator: mask '{mask_file}' is {mask.shape[0]}×{mask.shape[1]} but "
                    f"the prediction for '{inp.get('file_name')}' is {shape[0]}×{shape[1]}; outputs "
                    f"must be at the original image size (height × width)"
                )
            return mask > self._threshold
        raise KeyError(
            f"ObjectSegEvaluator: no ground truth for '{inp.get('file_name')}': the input has "
            f"neither a 'sem_seg' of size {shape} nor a 'mask_file_name'"
        )

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Accumulate one batch.

        Args:
            inputs: model inputs (``sem_seg`` at the original size and / or ``mask_file_name``,
                ``height``, ``width``, ``file_name``, ``image_id``).
            outputs: ``{"object_seg": H×W}`` foreground probabilities at the original size.
        """
        for inp, out in zip(inputs, outputs):
            prob = out["object_seg"]
            prob = prob.detach().float().cpu().numpy() if isinstance(prob, torch.Tensor) else np.asarray(prob)
            if prob.ndim == 3 and prob.shape[0] == 1:
                prob = prob[0]
            if prob.ndim != 2:
                raise ValueError(
                    f"ObjectSegEvaluator: output 'object_seg' for '{inp.get('file_name')}' has shape "
                    f"{prob.shape}; expected H×W probabilities"
                )
            if "height" in inp and prob.shape != (int(inp["height"]), int(inp["width"])):
                raise ValueError(
                    f"ObjectSegEvaluator: prediction for '{inp.get('file_name')}' is "
                    f"{prob.shape[0]}×{prob.shape[1]}, not the original size "
                    f"{inp['height']}×{inp['width']}"
                )
            gt = self._ground_truth(inp, prob.shape)
            self._metrics.step(prob, gt)
            if self._save:
                self._save_prediction(inp, prob)

    def _save_prediction(self, inp: Dict[str, Any], prob: np.ndarray) -> None:
        from PIL import Image

        image_id = str(inp.get("image_id", os.path.splitext(os.path.basename(inp["file_name"]))[0]))
        path = os.path.join(self._output_dir, "predictions", image_id + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.clip(np.round(prob * 255), 0, 255).astype(np.uint8)).save(path)

    def metric_names(self) -> List[str]:
        """``object_seg/<metric>`` for each of ``OBJECT_SEG_METRICS``."""
        return [f"object_seg/{k}" for k in OBJECT_SEG_METRICS]

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """Main process: ``{"object_seg": {MAE, maxF, meanF, adpF, wF, Sm, maxE, meanE, adpE}}``;
        other processes: an empty dict."""
        parts = comm.gather(self._metrics.records(), dst=0)
        if not comm.is_main_process():
            return OrderedDict()
        merged = SodMetrics.merged(parts, self._normalize)
        if merged.num_images == 0:
            logger.warning(f"ObjectSegEvaluator on '{self._dataset_name}': no image was processed")
        res = merged.results()
        from tabulate import tabulate

        logger.info(
            f"Object segmentation on '{self._dataset_name}' ({merged.num_images} images):\n"
            + tabulate([list(res.values())], headers=list(res), tablefmt="pipe", floatfmt=".4f")
        )
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "object_seg_evaluation.json"), "w") as f:
                json.dump(
                    {
                        "dataset": self._dataset_name,
                        "num_images": merged.num_images,
                        "mask_threshold": self._threshold,
                        "uint8_normalize": self._normalize,
                        "metrics": {k: (None if np.isnan(v) else v) for k, v in res.items()},
                    },
                    f,
                    indent=1,
                )
        return OrderedDict(object_seg=res)


def _build_object_seg_evaluator(cfg, dataset_name: str, output_dir: Optional[str]) -> ObjectSegEvaluator:
    return ObjectSegEvaluator(
        dataset_name,
        output_dir=output_dir,
        mask_threshold=cfg.INPUT.OBJECT_SEG.MASK_THRESHOLD,
        normalize=cfg.TEST.OBJECT_SEG.SAVE_UINT8_NORMALIZE,
        save_predictions=cfg.TEST.OBJECT_SEG.SAVE_PREDICTIONS,
    )


EVALUATOR_TYPES["object_seg"] = _build_object_seg_evaluator
