"""Builtin COCO 2017 instances: ``coco_2017_train`` and ``coco_2017_val``.

Expected layout under ``get_datasets_root()`` (``$BCD_DATASETS``, default ``./datasets``)::

    coco/
      annotations/instances_train2017.json
      annotations/instances_val2017.json
      train2017/*.jpg
      val2017/*.jpg

Registration is lazy: nothing is checked at import. Loading a split whose folder or json is
missing raises ``FileNotFoundError`` naming the missing path and how to prepare it
(datasets/README.md, section "COCO").
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

from ..catalog import DatasetCatalog, MetadataCatalog
from .registry import DATASET_CHECKS, get_datasets_root
from .coco import load_coco_json

# name -> (image folder, annotation json), relative to <root>/coco
_COCO_SPLITS = {
    "coco_2017_train": ("train2017", "annotations/instances_train2017.json"),
    "coco_2017_val": ("val2017", "annotations/instances_val2017.json"),
}

_PREPARE_HINT = (
    "Download the COCO 2017 images (train2017.zip, val2017.zip) and annotations "
    "(annotations_trainval2017.zip) from https://cocodataset.org/#download and unzip them into "
    "{root} so that it holds annotations/, train2017/ and val2017/ (see datasets/README.md, "
    "section COCO), or point $BCD_DATASETS at the folder that contains coco/."
)


def coco_paths(name: str, root: str = "") -> Dict[str, str]:
    """``{"image_root", "json_file", "coco_root"}`` of a builtin split (no existence check)."""
    coco_root = os.path.join(root or get_datasets_root(), "coco")
    image_dir, json_rel = _COCO_SPLITS[name]
    return {
        "coco_root": coco_root,
        "image_root": os.path.join(coco_root, image_dir),
        "json_file": os.path.join(coco_root, json_rel),
    }


def check_coco_split(name: str) -> Dict[str, str]:
    """The paths of split ``name``; raises ``FileNotFoundError`` naming the first missing one.

    Checked in order: the ``coco`` folder, the image folder, the annotation json.
    """
    paths = coco_paths(name)
    for key in ("coco_root", "image_root", "json_file"):
        p = paths[key]
        exists = os.path.isfile(p) if key == "json_file" else os.path.isdir(p)
        if not exists:
            kind = "file" if key == "json_file" else "folder"
            raise FileNotFoundError(
                f"Dataset '{name}': the {kind} '{os.path.abspath(p)}' does not exist. "
                + _PREPARE_HINT.format(root=os.path.abspath(paths["coco_root"]))
            )
    return paths


def _load(name: str) -> List[Dict[str, Any]]:
    paths = check_coco_split(name)
    # The official files hold a few degenerate boxes: drop them (with a warning), as
    # Detectron2's mapper does, instead of refusing the whole dataset.
    return load_coco_json(paths["json_file"], paths["image_root"], name, invalid_boxes="drop")


def register_all_coco() -> None:
    """Register the builtin splits (idempotent)."""
    for name in _COCO_SPLITS:
        if name in DatasetCatalog:
            continue
        DatasetCatalog.register(name, lambda n=name: _load(n))
        # run by register_from_config (trainer start): a missing folder fails before any model
        DATASET_CHECKS[name] = lambda n=name: check_coco_split(n) and None
        # The evaluator resolves the json at evaluation time, under the root of that moment.
        MetadataCatalog.get(name).set(evaluator_type="coco")


register_all_coco()
