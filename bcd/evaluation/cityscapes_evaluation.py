"""Cityscapes semantic-segmentation evaluation with ``cityscapesscripts``' own pixel-level code.

``CityscapesSemSegEvaluator`` computes the ``SemSegEvaluator`` metrics on the train ids and, in
addition, writes each prediction as a Cityscapes ``labelIds`` PNG under
``OUTPUT_DIR/inference/cityscapes_sem_seg/`` and scores them against the ``*_gtFine_labelIds.png``
files with ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`` (class / category IoU,
and the instance-weighted iIoU when the ``*_gtFine_instanceIds.png`` files are there), so the
numbers are the official ones.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from ..data.catalog import MetadataCatalog
from ..utils import comm
from .evaluator import EVALUATOR_TYPES
from .sem_seg_evaluation import SemSegEvaluator

__all__ = ["CityscapesSemSegEvaluator", "train_id_to_label_id"]

logger = logging.getLogger(__name__)


def train_id_to_label_id(pred: np.ndarray) -> np.ndarray:
    """Map Cityscapes train ids (``0..18``) to label ids (``7, 8, 11, ...``), ``uint8``, as the
    official evaluation expects."""
    from cityscapesscripts.helpers.labels import trainId2label

    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 255:
            lut[train_id] = label.id
    return lut[pred.astype(np.int64)]


def _gt_label_ids_file(label_file: str) -> str:
    """``..._gtFine_labelTrainIds.png`` -> ``..._gtFine_labelIds.png`` (the official ground truth)."""
    if "labelTrainIds" not in os.path.basename(label_file):
        raise ValueError(
            f"CityscapesSemSegEvaluator: '{label_file}' is not a Cityscapes *_gtFine_labelTrainIds.png "
            f"file; the official evaluation needs the matching *_gtFine_labelIds.png"
        )
    return os.path.join(
        os.path.dirname(label_file),
        os.path.basename(label_file).replace("labelTrainIds", "labelIds"),
    )


class CityscapesSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` metrics plus the official Cityscapes pixel-level scores.

    Args: as ``SemSegEvaluator``; ``output_dir`` receives the prediction PNGs under
    ``inference/cityscapes_sem_seg`` (a temporary folder when None). Every process must see
    the same ``output_dir`` (a shared file system), as in Detectron2.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, **kwargs: Any):
        # Set before super().__init__, which calls reset().
        self._fixed_pred_dir = (
            os.path.join(output_dir, "inference", "cityscapes_sem_seg") if output_dir else None
        )
        super().__init__(dataset_name, output_dir=output_dir, **kwargs)

    def reset(self) -> None:
        super().reset()
        self._pairs: List[tuple] = []
        # Without an output_dir, each process writes into its own temporary folder, made on
        # first use and removed after evaluate() (rank 0 reads the files by their full path).
        self._pred_dir = self._fixed_pred_dir

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """As ``SemSegEvaluator.process``, and write each prediction as a ``labelIds`` PNG."""
        super().process(inputs, outputs)
        if self._pred_dir is None:
            self._pred_dir = tempfile.mkdtemp(prefix="cityscapes_eval_")
        os.makedirs(self._pred_dir, exist_ok=True)
        for inp, out in zip(inputs, outputs):
            label_file = inp.get("sem_seg_file_name")
            if not label_file:
                raise KeyError(
                    f"CityscapesSemSegEvaluator: input '{inp.get('file_name')}' has no "
                    f"sem_seg_file_name (the official evaluation reads the *_gtFine_labelIds.png)"
                )
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
            # cityscapesscripts finds a prediction by "<city>_<seq>_<frame>*.png".
            stem = os.path.basename(inp["file_name"]).replace("_leftImg8bit.png", "")
            pred_file = os.path.join(self._pred_dir, stem + "_pred.png")
            Image.fromarray(train_id_to_label_id(pred)).save(pred_file)
            self._pairs.append((pred_file, _gt_label_ids_file(label_file)))

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """Main process: ``{"sem_seg": {...}, "cityscapes_sem_seg": {"IoU", "IoU_sup"[, "iIoU",
        "iIoU_sup"]}}`` in percent; other processes: an empty dict."""
        results = super().evaluate()
        pairs = [p for part in comm.gather(self._pairs, dst=0) for p in part]
        comm.synchronize()  # every prediction file is written before rank 0 reads them
        try:
            if not comm.is_main_process():
                return OrderedDict()
            if not pairs:
                logger.warning("CityscapesSemSegEvaluator: no prediction to evaluate")
                return results
            cs = run_cityscapes_pixel_eval([p for p, _ in pairs], [g for _, g in pairs])
            results["cityscapes_sem_seg"] = cs
            logger.info(
                "Cityscapes official evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in cs.items())
            )
            return results
        finally:
            comm.synchronize()  # rank 0 has read every file
            if self._fixed_pred_dir is None and self._pred_dir is not None:
                shutil.rmtree(self._pred_dir, ignore_errors=True)
                self._pred_dir = None


def run_cityscapes_pixel_eval(prediction_files: List[str], gt_label_ids_files: List[str]) -> Dict[str, float]:
    """Score ``labelIds`` prediction PNGs against ``*_gtFine_labelIds.png`` files with
    ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling.evaluateImgLists``.

    The module keeps its options in a global ``args``; they are set for the call and restored
    after. iIoU is computed when every ``*_gtFine_instanceIds.png`` exists. Nothing is written
    to the current directory (``JSONOutput`` off).

    Returns:
        ``{"IoU", "IoU_sup"}`` (class and category mean IoU) and, with instance files,
        ``{"iIoU", "iIoU_sup"}``, in percent.

    Raises:
        RuntimeError: the official code rejected a file (it calls ``sys.exit``; its message is
            printed above the error).
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    missing = [g for g in gt_label_ids_files if not os.path.isfile(g)]
    if missing:
        raise FileNotFoundError(
            f"Cityscapes ground truth '{missing[0]}' does not exist ({len(missing)} missing); "
            f"create the labelIds / labelTrainIds files as described in datasets/README.md"
        )
    with_instances = all(
        os.path.isfile(g.replace("labelIds", "instanceIds")) for g in gt_label_ids_files
    )
    saved = dict(vars(cs_eval.args))
    try:
        cs_eval.args.evalInstLevelScore = with_instances
        cs_eval.args.JSONOutput = False
        cs_eval.args.colorized = False
        cs_eval.args.bold = cs_eval.args.nocol = ""
        cs_eval.args.quiet = True
        try:
            with warnings.catch_warnings():
                # cityscapesscripts 2.3.0 calls np.in1d, deprecated since numpy 2.0
                warnings.simplefilter("ignore", DeprecationWarning)
                out = cs_eval.evaluateImgLists(
                    list(prediction_files), list(gt_label_ids_files), cs_eval.args
                )
        except SystemExit as e:  # printError() exits the interpreter; make it an exception
            raise RuntimeError(
                "cityscapesscripts' evaluation rejected the files (see the message printed above)"
            ) from e
    finally:
        for k in list(vars(cs_eval.args)):
            if k not in saved:
                delattr(cs_eval.args, k)
        for k, v in saved.items():
            setattr(cs_eval.args, k, v)
    res = {"IoU": 100.0 * float(out["averageScoreClasses"]), "IoU_sup": 100.0 * float(out["averageScoreCategories"])}
    if with_instances:
        res["iIoU"] = 100.0 * float(out["averageScoreInstClasses"])
        res["iIoU_sup"] = 100.0 * float(out["averageScoreInstCategories"])
    return res


def _build_cityscapes_evaluator(cfg, dataset_name: str, output_dir: Optional[str]) -> CityscapesSemSegEvaluator:
    return CityscapesSemSegEvaluator(
        dataset_name,
        output_dir=output_dir,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        ignore_label=MetadataCatalog.get(dataset_name).get("ignore_label", 255),
        boundary_dilation_ratio=cfg.TEST.SEM_SEG.BOUNDARY_DILATION_RATIO,
    )


EVALUATOR_TYPES["cityscapes_sem_seg"] = _build_cityscapes_evaluator
