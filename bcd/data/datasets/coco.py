"""COCO-format instance annotations: loading with validation, and registration.

``load_coco_json(json_file, image_root)`` reads a COCO instances file with ``pycocotools`` and
returns Detectron2-style detection dicts (see docs/internals.md): ``file_name``, ``height``,
``width``, ``image_id`` and ``annotations`` with ``bbox`` (XYWH absolute pixels), ``bbox_mode``,
contiguous ``category_id``, ``iscrowd`` and ``segmentation`` (polygons or RLE, kept unchanged for
instance segmentation).

The file is validated as it is read; each problem raises ``ValueError`` naming the file and the
offending image or annotation:

* an image listed in the json that is missing from ``image_root``;
* annotation ids that are not positive, unique integers (pycocotools treats id 0 as "unmatched",
  so a perfect prediction would score below AP 1.0);
* boxes with non-positive width / height, or lying outside their image (beyond a tolerance of
  ``BOX_TOLERANCE`` pixels: COCO's own boxes overshoot by rounding);
* annotations whose ``category_id`` is not among the json's ``categories``, or whose
  ``image_id`` is not among its ``images``; ``iscrowd`` other than 0 / 1; images without
  ``id`` / ``file_name`` / ``height`` / ``width``, categories without ``id`` / ``name``;
  duplicate image or category ids.

What evaluation (COCOeval) needs and can be derived is completed, with one warning naming the
file: ``area`` from the mask (or the box without one) and ``iscrowd`` 0. ``load_coco_gt`` does it,
and the COCO evaluator scores against the same completed ground truth.

Custom datasets are registered from the config alone::

    DATASETS:
      CUSTOM: [{NAME: my_train, TYPE: coco, JSON_FILE: /data/train.json, IMAGE_ROOT: /data/img}]
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from ..catalog import DatasetCatalog, MetadataCatalog
from . import CUSTOM_DATASET_TYPES, DATASET_CHECKS

logger = logging.getLogger(__name__)

__all__ = ["load_coco_json", "load_coco_gt", "register_coco_instances", "BOX_TOLERANCE"]

# Boxes may overshoot the image border by this many pixels (rounding in COCO's own files);
# they are clipped to the image. Beyond it the box is an error.
BOX_TOLERANCE = 1.0


def _err(json_file: str, what: str) -> ValueError:
    return ValueError(f"Invalid COCO annotation file '{json_file}': {what}")


# json_file -> ((mtime, size), COCO): the ground truth shared by the loader and the evaluator.
_GT_CACHE: Dict[str, Tuple[Tuple[float, int], Any]] = {}
_GT_CACHE_MAX_BYTES = 64 << 20


def _derive_missing_fields(coco: Any, json_file: str) -> None:
    """Fill what COCOeval needs and can be derived, in place, with one warning naming the file:
    ``area`` from the mask (``segmentation``) or else the box, ``iscrowd`` 0."""
    from pycocotools import mask as mask_util

    no_area = no_crowd = 0
    for a in coco.dataset["annotations"]:
        if "iscrowd" not in a:
            a["iscrowd"] = 0
            no_crowd += 1
        if "area" not in a:
            area = None
            if a.get("segmentation") and a.get("image_id") in coco.imgs:
                try:  # polygons or RLE, rasterised at the image size (pycocotools)
                    area = float(mask_util.area(coco.annToRLE(a)))
                except Exception:  # a malformed mask: the box below; the mapper reports it
                    area = None
            if area is None:
                bbox = a.get("bbox") or [0, 0, 0, 0]
                area = float(bbox[2]) * float(bbox[3]) if len(bbox) == 4 else 0.0
            a["area"] = area
            no_area += 1
    if no_area or no_crowd:
        logger.warning(
            f"COCO annotation file '{json_file}': derived the fields evaluation needs: 'area' of "
            f"{no_area} annotations (from the mask, or the box without one), 'iscrowd' = 0 for "
            f"{no_crowd}"
        )


def load_coco_gt(json_file: str) -> Any:
    """The ground truth of a COCO instances file as a ``pycocotools.coco.COCO`` (its indexes:
    ``imgs``, ``anns``, ``cats``, ``imgToAnns``), with the fields COCOeval needs completed
    where they can be derived (``area``, ``iscrowd``; one warning naming the file).

    Used by ``load_coco_json`` and by the COCO evaluator, so training and evaluation see the
    same annotations. Cached per file version (path, mtime, size; files up to 64 MB).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: not json, a missing top-level key, annotations without
            a positive integer ``id``, duplicate image / annotation / category ids.
    """
    import json

    from pycocotools.coco import COCO

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file '{json_file}' does not exist")
    key = (os.path.getmtime(json_file), os.path.getsize(json_file))
    cached = _GT_CACHE.get(json_file)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with open(json_file, encoding="utf-8") as f:
            dataset = json.load(f)
    except Exception as e:  # malformed json
        raise _err(json_file, f"cannot be parsed ({type(e).__name__}: {e})") from e
    if not isinstance(dataset, dict):
        raise _err(json_file, f"holds a {type(dataset).__name__}, not a dict")
    for k in ("images", "annotations", "categories"):
        if k not in dataset:
            raise _err(json_file, f"missing the top-level key '{k}'")
    _check_ids(json_file, dataset)
    coco = COCO()  # pycocotools' own indexes; createIndex prints progress
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    _derive_missing_fields(coco, json_file)
    if key[1] <= _GT_CACHE_MAX_BYTES:  # not the 450 MB train2017: it would stay in memory
        _GT_CACHE[json_file] = (key, coco)
    return coco


def _check_ids(json_file: str, dataset: Dict[str, Any]) -> None:
    """The ids pycocotools' indexes are keyed by: present, unique (an index would silently keep
    one of two entries), and annotation ids positive integers."""
    for img in dataset["images"]:
        for k in ("id", "file_name", "height", "width"):
            if k not in img:
                raise _err(json_file, f"image entry {img} has no '{k}'")
    ids = [img["id"] for img in dataset["images"]]
    if len(set(ids)) != len(ids):
        dup = next(i for n, i in enumerate(ids) if i in ids[:n])
        name = next(im["file_name"] for im in dataset["images"] if im["id"] == dup)
        raise _err(json_file, f"duplicate image id {dup} ('{name}')")
    for c in dataset["categories"]:
        for k in ("id", "name"):
            if k not in c:
                raise _err(json_file, f"category entry {c} has no '{k}'")
    for a in dataset["annotations"]:
        aid = a.get("id")
        if not isinstance(aid, int) or isinstance(aid, bool) or aid < 1:
            raise _err(
                json_file,
                f"annotation id {aid!r} (image_id {a.get('image_id')}) is not a positive integer:"
                f" ids must start at 1 (pycocotools treats id 0 as unmatched and scores a "
                f"perfect prediction below AP 1.0); renumber the annotations 1..N",
            )
    ann_ids = [a["id"] for a in dataset["annotations"]]
    if len(set(ann_ids)) != len(ann_ids):
        seen, dup = set(), None
        for aid in ann_ids:
            if aid in seen:
                dup = aid
                break
            seen.add(aid)
        raise _err(json_file, f"annotation id {dup} is used more than once")


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    invalid_boxes: str = "error",
    check_images_exist: bool = True,
) -> List[Dict[str, Any]]:
    """Load and validate a COCO instances json (through ``load_coco_gt``: pycocotools' index).

    Args:
        json_file: path of the COCO json (``images``, ``annotations``, ``categories``).
        image_root: folder the images' ``file_name`` entries are relative to.
        dataset_name: when given, ``MetadataCatalog.get(dataset_name)`` receives
            ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``json_file``,
            ``image_root`` and ``evaluator_type="coco"``.
        invalid_boxes: ``"error"`` (default: raise naming the annotation) or ``"drop"`` (skip
            the annotation with a warning; used for the builtin COCO files, which hold a handful
            of degenerate boxes).
        check_images_exist: check every listed image file exists (one ``stat`` per image).

    Returns:
        One dict per image, in the json's image order. Category ids are mapped to contiguous
        ``0..K-1`` in the order of increasing dataset id. ``iscrowd`` is 0 where the json has
        none; a missing ``area`` is derived for evaluation (one warning naming the file).

    Raises:
        FileNotFoundError: the json or ``image_root`` does not exist.
        ValueError: the json violates one of the rules in the module docstring.
    """
    if invalid_boxes not in ("error", "drop"):
        raise ValueError(f"invalid_boxes must be 'error' or 'drop', got '{invalid_boxes}'")
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file '{json_file}' does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"Image folder '{image_root}' of COCO annotation file '{json_file}' does not exist"
        )
    coco = load_coco_gt(json_file)

    cat_ids = sorted(coco.cats)
    if len(cat_ids) == 0:
        raise _err(json_file, "'categories' is empty")
    if len(cat_ids) != len(coco.dataset["categories"]):
        raise _err(
            json_file, f"duplicate category ids in 'categories': "
            f"{[c['id'] for c in coco.dataset['categories']]}"
        )
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    thing_classes = [coco.cats[cid]["name"] for cid in cat_ids]

    for a in coco.dataset["annotations"]:  # references the index cannot resolve
        if a.get("image_id") not in coco.imgs:
            raise _err(json_file, f"annotation id {a['id']} refers to unknown image_id {a.get('image_id')!r}")
        if a.get("category_id") not in id_map:
            raise _err(
                json_file,
                f"annotation id {a['id']} (image '{coco.imgs[a['image_id']]['file_name']}') has "
                f"unknown category_id {a.get('category_id')!r}; known ids: {cat_ids}",
            )
        if a["iscrowd"] not in (0, 1, True, False):
            raise _err(json_file, f"annotation id {a['id']} has iscrowd {a['iscrowd']!r}; use 0 or 1")

    num_dropped = 0
    dataset_dicts = []
    for img in coco.dataset["images"]:
        file_name = os.path.join(image_root, img["file_name"])
        if check_images_exist and not os.path.isfile(file_name):
            raise _err(
                json_file,
                f"image id {img['id']} ('{img['file_name']}') is missing: no file '{file_name}'",
            )
        annotations = []
        H, W = float(img["height"]), float(img["width"])
        for a in coco.imgToAnns.get(img["id"], []):
            aid = a["id"]
            bbox = a.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise _err(json_file, f"annotation id {aid} has no 4-number 'bbox' (got {bbox!r})")
            x, y, w, h = (float(v) for v in bbox)
            problem = None
            if w <= 0 or h <= 0:
                problem = f"box {bbox} (XYWH) has non-positive width or height"
            elif (
                x < -BOX_TOLERANCE
                or y < -BOX_TOLERANCE
                or x + w > W + BOX_TOLERANCE
                or y + h > H + BOX_TOLERANCE
            ):
                problem = f"box {bbox} (XYWH) lies outside its {int(W)}x{int(H)} image"
            if problem is not None:
                if invalid_boxes == "error":
                    raise _err(json_file, f"annotation id {aid} (image '{img['file_name']}'): {problem}")
                num_dropped += 1
                continue
            # clip the rounding overshoot
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, W), min(y + h, H)
            obj = {
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "bbox_mode": "XYWH_ABS",
                "category_id": id_map[a["category_id"]],
                "iscrowd": int(a["iscrowd"]),
                "id": aid,
            }
            if "segmentation" in a:
                obj["segmentation"] = a["segmentation"]
            annotations.append(obj)
        dataset_dicts.append(
            {
                "file_name": file_name,
                "height": int(img["height"]),
                "width": int(img["width"]),
                "image_id": img["id"],
                "annotations": annotations,
            }
        )
    if num_dropped:
        logger.warning(f"{json_file}: dropped {num_dropped} annotations with degenerate boxes")

    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        # Overwrite rather than Metadata.set: what was just loaded is the truth, and the same
        # name may be reloaded from another root ($BCD_DATASETS changed within a process).
        for k, v in dict(
            thing_classes=thing_classes,
            thing_dataset_id_to_contiguous_id=id_map,
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
        ).items():
            setattr(meta, k, v)
    return dataset_dicts


def register_coco_instances(
    name: str, json_file: str, image_root: str, invalid_boxes: str = "error"
) -> None:
    """Register a COCO-format dataset: ``DatasetCatalog`` loads it lazily with validation;
    ``check_datasets([name])`` (run by ``register_from_config``) validates it in full.

    The metadata ``json_file``, ``image_root`` and ``evaluator_type="coco"`` are set now (the
    evaluator needs them); ``thing_classes`` and the category-id map when the data is loaded.
    """
    cache: Dict[str, Any] = {}

    def load() -> List[Dict[str, Any]]:
        # The json is validated once per version of the file: the start-of-training check
        # (DATASET_CHECKS) and the loader then share one load.
        key = (os.path.getmtime(json_file), os.path.getsize(json_file)) if os.path.isfile(json_file) else None
        if key is None or cache.get("key") != key:
            cache["dicts"] = load_coco_json(json_file, image_root, name, invalid_boxes=invalid_boxes)
            cache["key"] = key
        return list(cache["dicts"])

    DatasetCatalog.register(name, load)
    # Custom files are validated in full when training starts (before any model is built).
    DATASET_CHECKS[name] = lambda: load() and None
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco"
    )


def _register_custom(entry: dict) -> None:
    """``DATASETS.CUSTOM`` entry of TYPE ``coco``: keys ``NAME``, ``JSON_FILE``, ``IMAGE_ROOT``."""
    for key in ("JSON_FILE", "IMAGE_ROOT"):
        if not entry.get(key):
            raise ValueError(
                f"DATASETS.CUSTOM entry '{entry.get('NAME')}' of TYPE coco needs {key}; got {entry}"
            )
    unknown = set(entry) - {"NAME", "TYPE", "JSON_FILE", "IMAGE_ROOT"}
    if unknown:
        raise ValueError(
            f"DATASETS.CUSTOM entry '{entry.get('NAME')}' of TYPE coco: unknown keys "
            f"{sorted(unknown)}; valid: NAME, TYPE, JSON_FILE, IMAGE_ROOT"
        )
    register_coco_instances(
        entry["NAME"], os.path.expanduser(entry["JSON_FILE"]), os.path.expanduser(entry["IMAGE_ROOT"])
    )


CUSTOM_DATASET_TYPES["coco"] = _register_custom
