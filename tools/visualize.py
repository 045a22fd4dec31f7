#!/usr/bin/env python
"""Side-by-side pictures of predictions, and the BCD distillation signals of one image.

    python tools/visualize.py --output out/vis \
        --model teacher configs/demo/teacher_pspnet_r18.yaml output/demo/teacher/model_final.pth \
        --model student configs/demo/student_pspnet_r18_w025.yaml output/demo/student/model_final.pth \
        --model "student + BCD" configs/demo/bcd_student_pspnet_r18_w025.yaml output/demo/bcd/model_final.pth \
        --kd configs/demo/bcd_student_pspnet_r18_w025.yaml output/demo/bcd/model_0000299.pth \
        --num-images 3

* ``--model LABEL CONFIG WEIGHTS`` (repeatable): one column of predictions per model (a
  distillation config shows its student; ``model_final.pth`` holds it).
* Images: ``--images`` files (no ground truth), else the first ``--num-images`` of
  ``--dataset`` (default: the first model's ``DATASETS.TEST[0]``), with ground truth.
* One PNG per image, ``pred_<i>.png``: the image, the ground truth, then each model's
  prediction: semantic masks in the dataset's colours, boxes with class and score (and instance
  masks when predicted), the saliency map of object segmentation.
* ``--kd CONFIG CHECKPOINT``: a distillation config and a *full* training checkpoint of it
  (``model_XXXXXXX.pth``: it holds the trained KD modules, which ``model_final.pth`` does not) ->
  ``kd_signals.png`` for the first image: the teacher's and the student's BCD boundary maps and
  one pixel's context-relation row of each (``bcd/distill/signals.py``).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _tool_common import build_deployable, load_config  # noqa: E402

from bcd.utils.visualizer import Panel, save_panel_grid  # noqa: E402

logger = logging.getLogger("bcd.visualize")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--model", nargs=3, action="append", default=[], metavar=("LABEL", "CONFIG", "WEIGHTS"))
    p.add_argument("--kd", nargs=2, metavar=("CONFIG", "CHECKPOINT"),
                   help="distillation config + full training checkpoint: kd_signals.png")
    p.add_argument("--images", nargs="+", metavar="IMG")
    p.add_argument("--dataset", help="dataset name (default: the first config's DATASETS.TEST[0])")
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--pixel", nargs=2, type=float, metavar=("Y", "X"),
                   help="pixel of the context-relation row, as fractions of the image (default: the "
                   "strongest teacher boundary)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detections drawn from this score")
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
    return args


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_samples(cfg, args) -> Tuple[List[Dict[str, Any]], Any]:
    """``(samples, metadata)``: each sample ``{"file_name", "image" (H×W×3 uint8), "gt"
    (panel fields or None), "dict" (the dataset dict or None)}``."""
    from bcd.data import DatasetCatalog, MetadataCatalog
    from bcd.data.datasets import register_from_config

    if args.images:
        return [{"file_name": f, "image": _read_rgb(f), "gt": None, "dict": None} for f in args.images], None
    name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not name:
        raise ValueError("No images: give --images or --dataset (the config has no DATASETS.TEST)")
    register_from_config(cfg, splits=("TEST",))
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
        elif "annotations" in d:
            anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns]).reshape(-1, 4)
            gt = {"kind": "instances", "boxes": boxes, "classes": np.array([a["category_id"] for a in anns], int)}
        samples.append({"file_name": d["file_name"], "image": img, "gt": gt, "dict": d})
    return samples, meta


def _meta_fields(meta, cfg) -> Dict[str, Any]:
    if meta is None:
        return {"class_names": [], "colors": [], "ignore_label": int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)}
    get = getattr(meta, "get", None)
    names = (get("stuff_classes", None) or get("thing_classes", None) or []) if get else []
    colors = (get("stuff_colors", None) or get("thing_colors", None) or []) if get else []
    ignore = get("ignore_label", int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)) if get else 255
    return {"class_names": list(names), "colors": [tuple(c) for c in colors], "ignore_label": int(ignore)}


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


def prediction_panel(label: str, output: Dict[str, Any], image: np.ndarray, fields: Dict[str, Any],
                     score_thresh: float) -> Panel:
    """A panel of one model's output dict (``sem_seg`` scores, ``instances``, ``object_seg``)."""
    if "sem_seg" in output:
        return Panel(label, "sem_seg", image=image, labels=output["sem_seg"].argmax(0).cpu().numpy(), **fields)
    if "instances" in output:
        inst = output["instances"]
        masks = getattr(inst, "pred_masks", None) if hasattr(inst, "pred_masks") else None
        return Panel(label, "instances", image=image, boxes=inst.pred_boxes.cpu().numpy(),
                     classes=inst.pred_classes.cpu().numpy(), scores=inst.scores.cpu().numpy(),
                     masks=None if masks is None else masks.cpu().numpy(), score_thresh=score_thresh,
                     class_names=fields["class_names"], colors=fields["colors"])
    if "object_seg" in output:
        return Panel(label, "heatmap", heat=output["object_seg"].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    raise ValueError(f"{label}: no sem_seg, instances or object_seg in the model's output ({list(output)})")


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the pictures; returns ``{"files": [...], "panels": {file: (rows, columns, panels)}}``."""
    os.makedirs(args.output, exist_ok=True)
    cfgs = [(label, load_config(c, args.opts, args.device), w) for label, c, w in args.model]
    first_cfg = cfgs[0][1] if cfgs else load_config(args.kd[0], args.opts, args.device)
    samples, meta = load_samples(first_cfg, args)
    fields = _meta_fields(meta, first_cfg)
    result: Dict[str, Any] = {"files": [], "panels": {}}
    models = [(label, cfg, build_deployable(cfg, w)) for label, cfg, w in cfgs]
    for i, s in enumerate(samples if models else []):
        row = [Panel("image", "image", image=s["image"])]
        if s["gt"] is not None:
            gt = dict(s["gt"])
            kind = gt.pop("kind")
            row.append(Panel("ground truth", kind, image=s["image"], **gt,
                             **({k: v for k, v in fields.items()} if kind == "sem_seg" else
                                {"class_names": fields["class_names"], "colors": fields["colors"]})))
        for label, cfg, model in models:
            with torch.no_grad():
                out = model([model_input(cfg, s)])[0]
            row.append(prediction_panel(label, out, s["image"], fields, args.score_thresh))
        path = os.path.join(args.output, f"pred_{i}.png")
        shape = save_panel_grid([row], path)
        result["files"].append(path)
        result["panels"][path] = (*shape, len(row))
    if args.kd:
        from bcd.distill import build_model
        from bcd.engine import Checkpointer

        kcfg = load_config(args.kd[0], args.opts, args.device)
        kcfg.MODEL.BACKBONE.WEIGHTS = ""  # every weight comes from the checkpoint
        distiller = build_model(kcfg)
        Checkpointer(distiller).load(args.kd[1], checkpointables=[])
        from bcd.distill.signals import bcd_signals, signal_panels

        inp = model_input(kcfg, samples[0])
        panels = signal_panels(bcd_signals(distiller, [inp], args.pixel), inp["image"])
        path = os.path.join(args.output, "kd_signals.png")
        shape = save_panel_grid([panels], path)
        result["files"].append(path)
        result["panels"][path] = (*shape, len(panels))
    for f in result["files"]:
        print(f"wrote {f}")
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
