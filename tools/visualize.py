#!/usr/bin/env python
"""Side-by-side pictures of predictions, and the BCD distillation signals of one image.

    python tools/visualize.py --output output/vis --num-images 3 \
        --model teacher configs/demo/teacher_deeplabv3plus_r18.yaml output/demo_run/rep0/teacher/model_final.pth \
        --model "student (no KD)" configs/demo/ft_student_deeplabv3plus_r18_w025.yaml output/demo_run/rep0/plain_seed0/model_final.pth \
        --model "student + BCD" configs/demo/bcd_student_deeplabv3plus_r18_w025.yaml output/demo_run/rep0/bcd_seed0/model_final.pth \
        --kd configs/demo/bcd_student_deeplabv3plus_r18_w025.yaml output/demo_run/rep0/bcd_seed0

* ``--model LABEL CONFIG WEIGHTS`` (repeatable): one column of predictions per model (a
  distillation config shows its student; ``model_final.pth`` holds it, and no teacher is built).
* Images: ``--images`` files (no ground truth), else the first ``--num-images`` of
  ``--dataset`` (default: the first model's ``DATASETS.TEST[0]``), with ground truth.
* One PNG per image, ``pred_<i>.png``: the image, the ground truth, then each model's
  prediction: semantic masks, boxes with class and score (and instance masks when predicted),
  the saliency map of object segmentation. Each prediction's title holds its score on that
  image (the dataset's evaluator on one image: mIoU, box / mask AP, S-measure); a legend under
  the panels names the classes and their colours.
* Figures: ``--opacity`` of the masks over the image, ``--mask-only`` (masks without the image),
  ``--palette`` (``auto``: matplotlib's tab10 for datasets of up to 10 classes, a class named
  ``background`` left transparent; ``dataset``: the dataset's own colours; ``bright``),
  ``--dpi`` and ``--panel-size`` (inches per panel).
* ``--kd CONFIG CHECKPOINT``: a distillation config and a *full* training checkpoint of it
  (``model_XXXXXXX.pth``, or the run's folder: its ``last_checkpoint``; it holds the trained KD
  modules, which ``model_final.pth`` does not) -> ``kd_signals.png`` for the first image: the
  teacher's and the student's BCD boundary maps and one pixel's context-relation row of each
  (``bcd/distill/signals.py``). It needs the teacher (``KD.TEACHER.WEIGHTS``).

Every file named on the command line (configs, weights, the teacher of ``--kd``) is checked
before anything is written: a missing one is an error naming it and the command that makes it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _tool_common import build_deployable, load_config, resolve_checkpoint, weights_available  # noqa: E402

from bcd.utils.visualizer import PALETTES, Panel, class_palette, save_panel_grid  # noqa: E402

logger = logging.getLogger("bcd.visualize")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
# the per-image score shown in a panel title: task -> (metric, label)
_TITLE_METRICS = {"sem_seg": ("mIoU", "mIoU"), "bbox": ("AP", "box AP"), "segm": ("AP", "mask AP"),
                  "object_seg": ("Sm", "S-measure")}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--model", nargs=3, action="append", default=[], metavar=("LABEL", "CONFIG", "WEIGHTS"))
    p.add_argument("--kd", nargs=2, metavar=("CONFIG", "CHECKPOINT"),
                   help="distillation config + full training checkpoint (or its run folder): kd_signals.png")
    p.add_argument("--images", nargs="+", metavar="IMG")
    p.add_argument("--dataset", help="dataset name (default: the first config's DATASETS.TEST[0])")
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--pixel", nargs=2, type=float, metavar=("Y", "X"),
                   help="pixel of the context-relation row, as fractions of the image (default: the "
                   "strongest teacher boundary)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detections drawn from this score")
    p.add_argument("--opacity", type=float, default=0.6, help="opacity of masks over the image (0..1)")
    p.add_argument("--mask-only", action="store_true", help="draw masks without the image underneath")
    p.add_argument("--palette", default="auto", choices=PALETTES, help="class colours (see above)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG files")
    p.add_argument("--panel-size", type=float, default=2.6, help="inches per panel")
    p.add_argument("--no-metric", action="store_true", help="no per-image score in the titles")
    p.add_argument("--device", default="cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every config")
    args = p.parse_args(argv)
    if args.images:  # "--images a.png KEY VALUE": give the overrides back
        for i, item in enumerate(args.images):
            if _CONFIG_KEY.match(item):
                args.opts = args.images[i:] + list(args.opts)
                args.images = args.images[:i] or None
                break
    if not args.model and not args.kd:
        p.error("give at least one --model LABEL CONFIG WEIGHTS or --kd CONFIG CHECKPOINT")
    if not 0.0 <= args.opacity <= 1.0:
        p.error(f"--opacity must be in [0, 1]; got {args.opacity}")
    return args


def _how_to_train(cfg, config_file: str, weights: str) -> str:
    """The command that writes ``weights`` when it is the ``model_final.pth`` of ``config_file``'s
    run folder; a generic hint otherwise."""
    out = os.path.normpath(cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR else ""
    if out and os.path.normpath(os.path.dirname(weights)) == out:
        return f"train it first: python tools/train_net.py --config-file {config_file} (writes {weights})"
    return (f"train it with python tools/train_net.py --config-file {config_file} (it writes "
            f"OUTPUT_DIR/model_final.pth, OUTPUT_DIR = {cfg.OUTPUT_DIR or '<unset>'}) or give an existing file")


def check_inputs(args: argparse.Namespace) -> Dict[str, Any]:
    """Every input of the command, before anything is written: configs (parsed), weights files,
    the ``--kd`` checkpoint (a full one, with the KD modules) and its teacher.

    Returns:
        ``{"models": [(label, cfg, weights)], "kd": (cfg, checkpoint path) or None}``.

    Raises:
        FileNotFoundError / ValueError: naming the file, the flag and how to make the file.
    """
    from bcd.distill import check_teacher

    models = []
    for label, config, weights in args.model:
        cfg = load_config(config, args.opts, args.device)
        if not weights_available(weights):
            raise FileNotFoundError(f"--model '{label}': weights '{weights}' do not exist; "
                                    + _how_to_train(cfg, config, weights))
        models.append((label, cfg, weights))
    kd = None
    if args.kd:
        kcfg = load_config(args.kd[0], args.opts, args.device)
        if not len(kcfg.KD.LOSSES):
            raise ValueError(f"--kd {args.kd[0]}: not a distillation config (KD.LOSSES is empty)")
        ckpt = resolve_checkpoint(args.kd[1], "--kd")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        keys = state.get("model", state) if isinstance(state, dict) else {}
        if not any(str(k).startswith("kd_modules.") for k in keys):
            raise ValueError(
                f"--kd {args.kd[1]}: '{ckpt}' holds no KD modules (a model_final.pth holds the student "
                "only); give a full checkpoint model_XXXXXXX.pth of the run, or the run's folder")
        check_teacher(kcfg)  # the teacher's weights exist (the error says how to train them)
        kd = (kcfg, ckpt)
    return {"models": models, "kd": kd}


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_samples(cfgs: Sequence[Any], args) -> Tuple[List[Dict[str, Any]], Any, str]:
    """``(samples, metadata, dataset name)``: each sample ``{"file_name", "image" (H×W×3 uint8),
    "gt" (panel fields or None), "dict" (the dataset dict or None)}``. The dataset is
    ``--dataset`` (registered by any of ``cfgs``, e.g. a ``DATASETS.CUSTOM`` entry), else the
    first config's ``DATASETS.TEST[0]``."""
    from bcd.data import DatasetCatalog, MetadataCatalog
    from bcd.data.datasets import register_from_config

    if args.images:
        return ([{"file_name": f, "image": _read_rgb(f), "gt": None, "dict": None} for f in args.images],
                None, "")
    cfg = cfgs[0]
    name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not name:
        raise ValueError("No images: give --images or --dataset (the config has no DATASETS.TEST)")
    for c in cfgs:
        register_from_config(c, splits=())
    register_from_config(cfg, splits=("TEST",))
    if name not in DatasetCatalog:
        raise KeyError(f"--dataset '{name}' is not registered (builtin names, or DATASETS.CUSTOM of a config)")
    dicts = DatasetCatalog.get(name)[: args.num_images]
    meta = MetadataCatalog.get(name)
    samples = []
    for d in dicts:
        img = _read_rgb(d["file_name"])
        gt = None
        if d.get("sem_seg_file_name"):
            from PIL import Image

            with Image.open(d["sem_seg_file_name"]) as lab:
                gt = {"kind": "sem_seg", "labels": np.asarray(lab)}
        elif d.get("mask_file_name"):
            gt = {"kind": "heatmap", "heat": _read_rgb(d["mask_file_name"])[..., 0] / 255.0}
        elif "annotations" in d:
            anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns]).reshape(-1, 4)
            gt = {"kind": "instances", "boxes": boxes, "classes": np.array([a["category_id"] for a in anns], int)}
        samples.append({"file_name": d["file_name"], "image": img, "gt": gt, "dict": d})
    return samples, meta, name


def _meta_fields(meta, cfg, palette: str) -> Dict[str, Any]:
    get = getattr(meta, "get", None) if meta is not None else None
    names = list((get("stuff_classes", None) or get("thing_classes", None) or []) if get else [])
    colors = list((get("stuff_colors", None) or get("thing_colors", None) or []) if get else [])
    ignore = get("ignore_label", int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)) if get else \
        int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
    n = len(names) or len(colors)
    return {"class_names": names, "colors": class_palette(n, names, colors, palette) if n else [],
            "ignore_label": int(ignore)}


def model_input(cfg, sample: Dict[str, Any]) -> Dict[str, Any]:
    """The model's input dict: the config's test mapper on the dataset dict (resizing as at
    evaluation), else the image file as it is."""
    if sample["dict"] is not None:
        from bcd.data.build import build_mapper

        d = dict(sample["dict"])
        d.pop("sem_seg_file_name", None)  # labels are not needed for a prediction
        d.pop("annotations", None)
        return build_mapper(cfg, is_train=False)(d)
    img = sample["image"]
    return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "height": img.shape[0], "width": img.shape[1]}


def image_scores(evaluator, sample: Dict[str, Any], output: Dict[str, Any]) -> str:
    """The dataset's evaluator on one image: ``"mIoU 75.3"``, ``"box AP 63.0  mask AP 58.2"``
    (the metrics of ``_TITLE_METRICS``); ``""`` without ground truth or evaluator."""
    if evaluator is None or sample["dict"] is None or sample["gt"] is None:
        return ""
    evaluator.reset()
    evaluator.process([sample["dict"]], [output])
    res = evaluator.evaluate() or {}
    parts = []
    for task, (metric, label) in _TITLE_METRICS.items():
        v = res.get(task, {}).get(metric)
        if v is not None:
            parts.append(f"{label} {v:.1f}" if not math.isnan(v) else f"{label} –")
    return "  ".join(parts)


def prediction_panel(label: str, output: Dict[str, Any], image: np.ndarray, fields: Dict[str, Any],
                     args: argparse.Namespace) -> Panel:
    """A panel of one model's output dict (``sem_seg`` scores, ``instances``, ``object_seg``)."""
    style = dict(alpha=args.opacity, mask_only=args.mask_only)
    if "sem_seg" in output:
        return Panel(label, "sem_seg", image=image, labels=output["sem_seg"].argmax(0).cpu().numpy(),
                     **fields, **style)
    if "instances" in output:
        inst = output["instances"]
        masks = inst.pred_masks if inst.has("pred_masks") else None
        return Panel(label, "instances", image=image, boxes=inst.pred_boxes.cpu().numpy(),
                     classes=inst.pred_classes.cpu().numpy(), scores=inst.scores.cpu().numpy(),
                     masks=None if masks is None else masks.cpu().numpy(), score_thresh=args.score_thresh,
                     class_names=fields["class_names"], colors=fields["colors"], **style)
    if "object_seg" in output:
        return Panel(label, "heatmap", heat=output["object_seg"].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    raise ValueError(f"{label}: no sem_seg, instances or object_seg in the model's output ({list(output)})")


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the pictures; returns ``{"files": [...], "panels": {file: (rows, columns, panels)},
    "titles": {file: [panel titles]}}``. Nothing is written when an input is missing."""
    inputs = check_inputs(args)
    cfgs = inputs["models"]
    first_cfg = cfgs[0][1] if cfgs else inputs["kd"][0]
    models = [(label, cfg, build_deployable(cfg, w)) for label, cfg, w in cfgs]
    distiller = None
    if inputs["kd"] is not None:
        from bcd.distill import build_model
        from bcd.engine import Checkpointer

        kcfg, ckpt = inputs["kd"]
        kcfg.MODEL.BACKBONE.WEIGHTS = ""  # every weight comes from the checkpoint
        distiller = build_model(kcfg)
        Checkpointer(distiller).load(ckpt, checkpointables=[])
    samples, meta, dataset = load_samples([c for _, c, _ in cfgs] or [first_cfg], args)
    fields = _meta_fields(meta, first_cfg, args.palette)
    evaluator = None
    if dataset and models and not args.no_metric:
        from bcd.evaluation import build_evaluator

        try:
            evaluator = build_evaluator(models[0][1], dataset, None)
        except (KeyError, ValueError, FileNotFoundError) as e:
            logger.warning(f"no per-image score in the titles: {e}")
    os.makedirs(args.output, exist_ok=True)
    result: Dict[str, Any] = {"files": [], "panels": {}, "titles": {}}
    grid = dict(panel_size=args.panel_size, dpi=args.dpi)
    for i, s in enumerate(samples if models else []):
        row = [Panel("image", "image", image=s["image"])]
        if s["gt"] is not None:
            gt = dict(s["gt"])
            kind = gt.pop("kind")
            extra = (dict(fields, alpha=args.opacity, mask_only=args.mask_only) if kind == "sem_seg" else
                     {"class_names": fields["class_names"], "colors": fields["colors"], "alpha": args.opacity,
                      "mask_only": args.mask_only} if kind == "instances" else
                     {"cmap": "gray", "vmin": 0, "vmax": 1})
            row.append(Panel("ground truth", kind, image=None if kind == "heatmap" else s["image"], **gt, **extra))
        for label, cfg, model in models:
            with torch.no_grad():
                out = model([model_input(cfg, s)])[0]
            score = image_scores(evaluator, s, out)
            row.append(prediction_panel(f"{label}\n{score}" if score else label, out, s["image"], fields, args))
        path = os.path.join(args.output, f"pred_{i}.png")
        shape = save_panel_grid([row], path, **grid)
        result["files"].append(path)
        result["panels"][path] = (*shape, len(row))
        result["titles"][path] = [p.title for p in row]
    if distiller is not None:
        from bcd.distill.signals import bcd_signals, signal_panels

        inp = model_input(inputs["kd"][0], samples[0])
        panels = signal_panels(bcd_signals(distiller, [inp], args.pixel), inp["image"])
        path = os.path.join(args.output, "kd_signals.png")
        shape = save_panel_grid([panels], path, **grid)
        result["files"].append(path)
        result["panels"][path] = (*shape, len(panels))
        result["titles"][path] = [p.title for p in panels]
    for f in result["files"]:
        print(f"wrote {f}")
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    return run(parse_args(None if argv is None else list(argv)))


if __name__ == "__main__":
    main()
