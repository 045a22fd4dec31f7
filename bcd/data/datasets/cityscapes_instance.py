"""Cityscapes instance segmentation from ``gtFine`` polygons (Detectron2's ``cityscapes_fine_instance_seg_*``).

| name | folders under ``$BCD_DATASETS`` |
|---|---|
| ``cityscapes_fine_instance_seg_{train,val}`` | ``cityscapes/leftImg8bit/<split>``, ``cityscapes/gtFine/<split>`` (``*_gtFine_polygons.json``; evaluation also reads ``*_gtFine_instanceIds.png``) |

Each ``*_gtFine_polygons.json`` lists objects in drawing order (later ones occlude earlier ones).
An object of one of the 8 instance classes (``hasInstances`` and not ``ignoreInEval`` in
``cityscapesscripts.helpers.labels``) becomes an annotation whose mask is its polygon minus every
later polygon (the visible part, as Detectron2's ``load_cityscapes_instances`` computes with
shapely; here rasterised), stored as compressed RLE, with the box of that mask. ``<class>group``
objects (e.g. ``cargroup``) are crowd regions (``iscrowd: 1``), dropped in training by the
mapper. Objects whose visible part is empty are skipped. Evaluation: ``evaluator_type
"cityscapes_instance"`` (``CityscapesInstanceEvaluator``, cityscapesscripts' official AP).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, List

import numpy as np

from ..catalog import DatasetCatalog, MetadataCatalog
from .registry import DATASET_CHECKS, get_datasets_root

__all__ = ["load_cityscapes_instances", "register_cityscapes_instances", "CITYSCAPES_THING_CLASSES"]


def _thing_labels():
    from cityscapesscripts.helpers.labels import labels

    return [lb for lb in labels if lb.hasInstances and not lb.ignoreInEval]


CITYSCAPES_THING_CLASSES: List[str] = [lb.name for lb in _thing_labels()]


def _image_annotations(poly_file: str, name_to_class: Dict[str, int]) -> Dict[str, Any]:
    from PIL import Image, ImageDraw
    from pycocotools import mask as mask_util

    try:
        with open(poly_file) as f:
            js = json.load(f)
        H, W = int(js["imgHeight"]), int(js["imgWidth"])
        objects = js["objects"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"Cannot read Cityscapes polygons '{poly_file}': {type(e).__name__}: {e}") from e
    masks = []
    for obj in objects:  # rasterise every polygon (stuff too: it occludes)
        img = Image.new("L", (W, H), 0)
        poly = [tuple(p) for p in obj["polygon"]]
        if len(poly) >= 3:
            ImageDraw.Draw(img).polygon(poly, outline=1, fill=1)
        masks.append(np.asarray(img, dtype=bool))
    covered = np.zeros((H, W), dtype=bool)
    annos = []
    for obj, m in reversed(list(zip(objects, masks))):  # last drawn first: it is on top
        visible = m & ~covered
        covered |= m
        label = obj["label"]
        crowd = label.endswith("group")
        base = label[: -len("group")] if crowd else label
        if base not in name_to_class or not visible.any():
            continue
        rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
        annos.append({"bbox": [x, y, w, h], "bbox_mode": "XYWH_ABS", "category_id": name_to_class[base],
                      "iscrowd": int(crowd), "segmentation": rle})
    annos.reverse()
    return {"height": H, "width": W, "annotations": annos}


def load_cityscapes_instances(image_dir: str, gt_dir: str) -> List[Dict[str, Any]]:
    """Detection dicts (docs/internals.md) of ``image_dir/<city>/*_leftImg8bit.png`` with the
    instances of ``gt_dir/<city>/*_gtFine_polygons.json``; ``category_id`` indexes
    ``CITYSCAPES_THING_CLASSES``. A missing folder or polygon file raises naming it."""
    for d in (image_dir, gt_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(
                f"Cityscapes folder '{d}' does not exist; see datasets/README.md (Cityscapes: "
                "leftImg8bit/ and gtFine/ from cityscapes-dataset.com)")
    name_to_class = {n: i for i, n in enumerate(CITYSCAPES_THING_CLASSES)}
    images = sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png")))
    if not images:
        raise FileNotFoundError(f"No *_leftImg8bit.png under '{image_dir}/<city>/'")
    dicts = []
    for idx, img in enumerate(images):
        city = os.path.basename(os.path.dirname(img))
        stem = os.path.basename(img)[: -len("_leftImg8bit.png")]
        poly = os.path.join(gt_dir, city, stem + "_gtFine_polygons.json")
        if not os.path.isfile(poly):
            raise FileNotFoundError(f"Cityscapes image '{img}' has no polygon file '{poly}'")
        d = _image_annotations(poly, name_to_class)
        d.update({"file_name": img, "image_id": stem, "instance_ids_file":
                  os.path.join(gt_dir, city, stem + "_gtFine_instanceIds.png")})
        dicts.append(d)
    return dicts


def register_cityscapes_instances(name: str, image_dir: str, gt_dir: str) -> None:
    """Register a Cityscapes-layout instance dataset (absolute, or relative to ``$BCD_DATASETS``
    when loaded)."""
    def _resolve(p):
        return p if os.path.isabs(p) else os.path.join(get_datasets_root(), p)

    DatasetCatalog.register(name, lambda: load_cityscapes_instances(_resolve(image_dir), _resolve(gt_dir)))
    MetadataCatalog.get(name).set(
        thing_classes=list(CITYSCAPES_THING_CLASSES), evaluator_type="cityscapes_instance",
        image_dir=image_dir, gt_dir=gt_dir)

    def _check():
        for d in (_resolve(image_dir), _resolve(gt_dir)):
            if not os.path.isdir(d):
                raise FileNotFoundError(
                    f"Dataset '{name}': folder '{d}' does not exist; see datasets/README.md (Cityscapes)")

    DATASET_CHECKS[name] = _check


for _split in ("train", "val"):
    register_cityscapes_instances(f"cityscapes_fine_instance_seg_{_split}",
                                  f"cityscapes/leftImg8bit/{_split}", f"cityscapes/gtFine/{_split}")
