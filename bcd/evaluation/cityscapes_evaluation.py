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
from .evaluator import EVALUATOR_TYPES, DatasetEvaluator
from .sem_seg_evaluation import SemSegEvaluator

__all__ = ["CityscapesSemSegEvaluator", "CityscapesInstanceEvaluator", "train_id_to_label_id"]

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

    def metric_names(self) -> List[str]:
        """``SemSegEvaluator``'s and ``cityscapes_sem_seg/{IoU, IoU_sup, iIoU, iIoU_sup}`` (the
        iIoU pair only when the ``*_gtFine_instanceIds.png`` files exist)."""
        return super().metric_names() + [
            f"cityscapes_sem_seg/{k}" for k in ("IoU", "IoU_sup", "iIoU", "iIoU_sup")]

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


class CityscapesInstanceEvaluator(DatasetEvaluator):
    """Cityscapes instance-segmentation AP with ``cityscapesscripts``' official evaluation
    (``evalInstanceLevelSemanticLabeling``), as Detectron2's evaluator of the same name.

    Each prediction is written as Cityscapes expects (a ``<stem>_pred.txt`` listing one binary
    PNG per instance with its label id and score) under ``<output_dir>/cityscapes_instance``
    (a temporary folder when ``output_dir`` is None); the main process scores them against the
    ``*_gtFine_instanceIds.png`` of the evaluated images. The official code writes
    ``matches.json`` into the current directory and caches the ground truth in
    ``gtInstances.json`` beside its own source: both go into that folder here.

    Returns ``{"segm": {"AP": ..., "AP50": ..., "AP-<class>": ...}}`` in percent.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None) -> None:
        meta = MetadataCatalog.get(dataset_name)
        self.dataset_name = dataset_name
        self.thing_classes = list(meta.get("thing_classes"))
        gt_dir = meta.get("gt_dir")
        if not gt_dir:
            raise KeyError(f"CityscapesInstanceEvaluator: dataset '{dataset_name}' has no gt_dir in its metadata")
        if not os.path.isabs(gt_dir):
            from ..data.datasets import get_datasets_root

            gt_dir = os.path.join(get_datasets_root(), gt_dir)
        self.gt_dir = gt_dir
        self._fixed_dir = os.path.join(output_dir, "cityscapes_instance") if output_dir else None
        self.reset()

    def reset(self) -> None:
        self._dir = self._fixed_dir
        self._gt_files: List[str] = []

    def _label_ids(self) -> List[int]:
        from cityscapesscripts.helpers.labels import name2label

        return [name2label[n].id for n in self.thing_classes]

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Write each image's instances (``pred_masks`` at the original size) in Cityscapes' format."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="cityscapes_inst_")
        os.makedirs(self._dir, exist_ok=True)
        label_ids = self._label_ids()
        for inp, out in zip(inputs, outputs):
            name = os.path.basename(inp["file_name"])
            if not name.endswith("_leftImg8bit.png"):
                raise ValueError(f"CityscapesInstanceEvaluator: '{inp['file_name']}' is not a *_leftImg8bit.png")
            stem = name[: -len("_leftImg8bit.png")]
            city = stem.split("_")[0]
            self._gt_files.append(os.path.join(self.gt_dir, city, stem + "_gtFine_instanceIds.png"))
            inst = out["instances"].to("cpu")
            lines = []
            if len(inst):
                if not inst.has("pred_masks"):
                    raise ValueError("CityscapesInstanceEvaluator needs pred_masks (MODEL.MASK_ON)")
                masks = inst.pred_masks.numpy().astype(np.uint8)
                for i, (c, s) in enumerate(zip(inst.pred_classes.tolist(), inst.scores.tolist())):
                    png = f"{stem}_{i}_{self.thing_classes[c]}.png"
                    Image.fromarray(masks[i] * 255).save(os.path.join(self._dir, png))
                    lines.append(f"{png} {label_ids[c]} {float(s)}\n")
            with open(os.path.join(self._dir, stem + "_pred.txt"), "w") as f:
                f.writelines(lines)

    def metric_names(self) -> List[str]:
        """``segm/AP``, ``segm/AP50``, ``segm/AP-<class>``."""
        return ["segm/AP", "segm/AP50"] + [f"segm/AP-{name}" for name in self.thing_classes]

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        gt_files = [g for part in comm.gather(self._gt_files, dst=0) for g in part]
        comm.synchronize()
        try:
            if not comm.is_main_process():
                return OrderedDict()
            if not gt_files:
                logger.warning("CityscapesInstanceEvaluator: no prediction to evaluate")
                return OrderedDict()
            res = run_cityscapes_instance_eval(self._dir, gt_files)
            out = {"AP": res["allAp"] * 100, "AP50": res["allAp50%"] * 100}
            for name in self.thing_classes:
                ap = res["classes"][name]["ap"]
                out[f"AP-{name}"] = float(ap) * 100 if ap == ap and ap >= 0 else float("nan")
            from tabulate import tabulate

            rows = [[name, out[f"AP-{name}"]] for name in self.thing_classes]
            logger.info(
                f"Cityscapes instance segmentation ({len(gt_files)} images): AP {out['AP']:.2f}, "
                f"AP50 {out['AP50']:.2f}\n" + tabulate(rows, headers=["class", "AP"], tablefmt="pipe",
                                                       floatfmt=".2f", missingval="nan")
            )
            return OrderedDict({"segm": {k: float(v) for k, v in out.items()}})
        finally:
            comm.synchronize()
            if self._fixed_dir is None and self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None


def run_cityscapes_instance_eval(pred_dir: str, gt_instance_files: List[str]) -> Dict[str, Any]:
    """Score the ``*_pred.txt`` files of ``pred_dir`` against ``gt_instance_files`` with
    ``cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling.evaluateImgLists``.

    Its global ``args`` are set for the call and restored after; ``matches.json`` and the
    ground-truth cache ``gtInstances.json`` are written into ``pred_dir`` (the official code
    writes them into the current directory / its install folder). Returns its ``averages``
    (``allAp``, ``allAp50%``, ``classes``; fractions).
    """
    import json as _json

    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs_inst

    missing = [g for g in gt_instance_files if not os.path.isfile(g)]
    if missing:
        raise FileNotFoundError(
            f"Cityscapes ground truth '{missing[0]}' does not exist ({len(missing)} missing); create the "
            "*_gtFine_instanceIds.png files with cityscapesscripts' createTrainIdInstanceImgs / json2instanceImg")
    pred_dir = os.path.abspath(pred_dir)
    saved = dict(vars(cs_inst.args))
    cwd = os.getcwd()
    orig_write = cs_inst.writeDict2JSON

    def _write(d, file_name):  # the official writer fails on numpy integers (quirk)
        with open(file_name, "w") as f:
            f.write(_json.dumps(d, default=lambda o: o.item() if hasattr(o, "item") else o.__dict__,
                                sort_keys=True, indent=4))

    try:
        cs_inst.args.predictionPath = pred_dir
        cs_inst.args.predictionWalk = None
        cs_inst.args.JSONOutput = False
        cs_inst.args.colorized = False
        cs_inst.args.quiet = True
        cs_inst.args.gtInstancesFile = os.path.join(pred_dir, "gtInstances.json")
        if os.path.isfile(cs_inst.args.gtInstancesFile):
            os.remove(cs_inst.args.gtInstancesFile)  # never reuse another image list's cache
        preds = [cs_inst.getPrediction(g, cs_inst.args) for g in gt_instance_files]
        os.chdir(pred_dir)  # matches.json lands here
        cs_inst.writeDict2JSON = _write
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # np.in1d (numpy >= 2.0)
                out = cs_inst.evaluateImgLists(preds, list(gt_instance_files), cs_inst.args)
        except SystemExit as e:
            raise RuntimeError("cityscapesscripts' instance evaluation rejected the files (message above)") from e
    finally:
        cs_inst.writeDict2JSON = orig_write
        os.chdir(cwd)
        for k in list(vars(cs_inst.args)):
            if k not in saved:
                delattr(cs_inst.args, k)
        for k, v in saved.items():
            setattr(cs_inst.args, k, v)
    return out["averages"]


def _build_cityscapes_instance_evaluator(cfg, dataset_name: str, output_dir: Optional[str]):
    return CityscapesInstanceEvaluator(dataset_name, output_dir)


EVALUATOR_TYPES["cityscapes_instance"] = _build_cityscapes_instance_evaluator
