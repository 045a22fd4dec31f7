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

Every instance mask is checked against its image (``check_instance_mask``): polygons need at
least 3 points, an even number of coordinates and finite numbers; an RLE's ``size`` must be its
image's ``[height, width]`` and its counts must cover exactly ``height × width`` pixels. As in
Detectron2, invalid polygons of a multi-polygon instance are removed and an instance with no
valid mask left is dropped, with ONE warning per file naming it, the annotation ids and the
reasons (counted); ``invalid_masks="error"`` (``INVALID_MASKS: error`` in a ``DATASETS.CUSTOM``
entry) refuses the file instead, and a file whose masks are all invalid is an error either way.
``segmentation: []`` counts as an invalid mask in a file that has masks, and as "no mask" in a
file of boxes only.

What evaluation (COCOeval) needs and can be derived is completed, with one warning naming the
file: ``area`` from the mask (or the box without one) and ``iscrowd`` 0. ``load_coco_gt`` does it
(after dropping the invalid masks), and the COCO evaluator scores against the same cleaned and
completed ground truth.

Custom datasets are registered from the config alone::

    DATASETS:
      CUSTOM: [{NAME: my_train, TYPE: coco, JSON_FILE: /data/train.json, IMAGE_ROOT: /data/img}]

(optional key ``INVALID_MASKS``: ``drop``, the default, or ``error``).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..catalog import DatasetCatalog, MetadataCatalog
from .registry import CUSTOM_DATASET_TYPES, DATASET_CHECKS

logger = logging.getLogger(__name__)

__all__ = [
    "load_coco_json",
    "load_coco_gt",
    "register_coco_instances",
    "check_instance_mask",
    "rle_string_counts",
    "BOX_TOLERANCE",
    "INVALID_MASK_POLICIES",
]

# Boxes may overshoot the image border by this many pixels (rounding in COCO's own files);
# they are clipped to the image. Beyond it the box is an error.
BOX_TOLERANCE = 1.0


def _err(json_file: str, what: str) -> ValueError:
    return ValueError(f"Invalid COCO annotation file '{json_file}': {what}")


# json_file -> ((mtime, size), COCO, _MaskReport): the ground truth shared by the loader and the
# evaluator, with what cleaning it removed.
_GT_CACHE: Dict[str, Tuple[Tuple[float, int], Any, "_MaskReport"]] = {}
_GT_CACHE_MAX_BYTES = 64 << 20

# What to do with an instance whose mask is invalid: "drop" (with one warning per file, as
# Detectron2) or "error" (refuse the file).
INVALID_MASK_POLICIES = ("drop", "error")

# Reasons a mask is invalid (the warning counts the instances of each).
_EMPTY = "empty segmentation []"
_FEW_POINTS = "polygon with fewer than 3 points"
_ODD = "polygon with an odd number of coordinates"
_NON_FINITE = "polygon with non-finite or non-numeric coordinates"
_NOT_A_MASK = "segmentation that is neither a list of polygons nor an RLE dict"
_RLE_SIZE = "RLE size differs from its image's [height, width]"
_RLE_COUNTS = "RLE that does not decode to its size"


def rle_string_counts(counts: Union[str, bytes]) -> List[int]:
    """Run lengths of a compressed COCO RLE string (``{"counts": "...", "size": [h, w]}``).

    The inverse of pycocotools' ``rleToString`` (cocoapi ``common/maskApi.c``, ``rleFrString``):
    each run is a little-endian sequence of 6-bit groups stored as characters 48..111, 5 value
    bits and a continuation bit each, the last group's 0x10 bit the sign; from the third run on
    the value is a difference to the run two before. pycocotools exposes no reader of the runs,
    and its ``decode`` fills a mask whose runs stop short with uninitialised memory instead of
    failing, so the loader sums the runs itself.

    Returns:
        The runs (alternating background / foreground, starting with background), possibly
        negative for a corrupted string.

    Raises:
        ValueError: a character outside 48..111 or a truncated last run.
    """
    data = counts.encode("ascii", "replace") if isinstance(counts, str) else bytes(counts)
    runs: List[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("the last run is truncated")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(data[p])!r} at {p} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign extension
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_instance_mask(segm: Any, height: int, width: int) -> Tuple[Any, Optional[str], str]:
    """Check one annotation's ``segmentation`` against its image of ``height × width`` pixels.

    Polygons (``[[x0, y0, x1, y1, ...], ...]``, image pixels) must each have at least 3 points,
    an even number of coordinates and finite numbers (pycocotools fails on fewer points or an
    odd count with errors that name neither file nor annotation, and a NaN exhausts memory). An
    RLE (``{"size": [h, w], "counts": str | list}``) must have ``size == [height, width]`` (a
    mask of another size is silently resampled in training and matches nothing in evaluation)
    and runs covering exactly ``h × w`` pixels.

    Returns:
        ``(kept, reason, detail)``: ``kept`` is the segmentation to use (``segm`` itself, the
        valid polygons of a multi-polygon instance with invalid ones removed, as Detectron2's
        loader does; or None when the instance has no valid mask and is dropped); ``reason``
        one of the module's reason strings (None when ``segm`` is valid as it is); ``detail``
        what exactly is wrong ("" when valid).
    """
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in size)) or counts is None:
            return None, _RLE_COUNTS, f"RLE without an integer [height, width] 'size' and 'counts' (keys {sorted(segm)})"
        if [size[0], size[1]] != [height, width]:
            return None, _RLE_SIZE, f"RLE size {list(size)}, image [{height}, {width}]"
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
                return None, _RLE_COUNTS, "uncompressed RLE counts that are not all integers"
            runs = counts
        elif isinstance(counts, (str, bytes)):
            try:
                runs = rle_string_counts(counts)
            except ValueError as e:
                return None, _RLE_COUNTS, f"compressed RLE counts: {e}"
        else:
            return None, _RLE_COUNTS, f"RLE counts of type {type(counts).__name__}"
        total = sum(runs)
        if any(r < 0 for r in runs) or total != height * width:
            return None, _RLE_COUNTS, (
                f"RLE runs cover {total} pixels{' (negative runs)' if any(r < 0 for r in runs) else ''}, "
                f"not height × width = {height * width}"
            )
        return segm, None, ""
    if not isinstance(segm, list):
        return None, _NOT_A_MASK, f"segmentation of type {type(segm).__name__}"
    if len(segm) == 0:
        return None, _EMPTY, "segmentation []"
    if not all(isinstance(p, (list, tuple)) for p in segm):
        if all(isinstance(v, (int, float)) for v in segm):
            what = "a flat list of numbers (one polygon is [[x0, y0, x1, y1, ...]])"
        elif all(isinstance(v, dict) for v in segm):
            what = "a list of RLE dicts (an instance has one RLE dict)"
        else:
            what = "a list mixing polygons and other values"
        return None, _NOT_A_MASK, f"segmentation is {what}"
    kept, problems = [], []
    for i, poly in enumerate(segm):
        if not all(_is_number(v) for v in poly):
            problems.append((_NON_FINITE, f"polygon {i}: {[v for v in poly if not _is_number(v)][:3]}"))
        elif len(poly) % 2:
            problems.append((_ODD, f"polygon {i}: {len(poly)} coordinates"))
        elif len(poly) < 6:
            problems.append((_FEW_POINTS, f"polygon {i}: {len(poly) // 2} points"))
        else:
            kept.append(poly)
    if not problems:
        return segm, None, ""
    reason, detail = problems[0]
    if len(segm) > 1:
        detail = f"{len(problems)} of {len(segm)} polygons invalid, {detail}"
    return (kept or None), reason, detail


@dataclass
class _MaskReport:
    """What ``_clean_masks`` removed from one file: dropped instances by reason, and instances
    kept without their invalid polygons; ``num_masks``: annotations with a segmentation."""

    num_masks: int = 0
    dropped: Dict[str, List[Tuple[int, str]]] = field(default_factory=dict)
    trimmed: List[Tuple[int, str, str]] = field(default_factory=list)

    @property
    def num_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())

    def summary(self) -> str:
        """``"<reason>: <count> (annotation ids ...; e.g. id <id>: <detail>); ..."``."""
        def ids(items: List[Tuple[int, str]]) -> str:
            shown = ", ".join(str(a) for a, _ in items[:10])
            return shown + (f" and {len(items) - 10} more" if len(items) > 10 else "")

        parts = [f"{reason}: {len(items)} (annotation ids {ids(items)}; e.g. id {items[0][0]}: {items[0][1]})"
                 for reason, items in self.dropped.items()]
        if self.trimmed:
            items = [(a, d) for a, _, d in self.trimmed]
            parts.append(
                f"kept {len(items)} instances without their invalid polygons (annotation ids "
                f"{ids(items)}; e.g. id {items[0][0]}: {self.trimmed[0][1]}, {items[0][1]})"
            )
        return "; ".join(parts)


def _clean_masks(dataset: Dict[str, Any]) -> _MaskReport:
    """Check every annotation's ``segmentation`` against its image (``check_instance_mask``)
    and remove, in place, the instances without a valid mask and the invalid polygons of the
    others. A file without any non-empty segmentation holds boxes only: ``[]`` means "no mask"
    there and nothing is removed. Annotations of unknown images are left for the loader's
    error."""
    report = _MaskReport()
    anns = dataset["annotations"]
    if not any(a.get("segmentation") for a in anns):
        return report
    images = {img["id"]: img for img in dataset["images"]}
    kept_anns = []
    for a in anns:
        img = images.get(a.get("image_id"))
        if "segmentation" not in a or img is None:
            kept_anns.append(a)
            continue
        report.num_masks += 1
        kept, reason, detail = check_instance_mask(a["segmentation"], int(img["height"]), int(img["width"]))
        if kept is None:
            report.dropped.setdefault(reason, []).append((a["id"], detail))
            continue
        if reason is not None:
            report.trimmed.append((a["id"], reason, detail))
            a["segmentation"] = kept
        kept_anns.append(a)
    dataset["annotations"] = kept_anns
    return report


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


def load_coco_gt(json_file: str, invalid_masks: str = "drop") -> Any:
    """The ground truth of a COCO instances file as a ``pycocotools.coco.COCO`` (its indexes:
    ``imgs``, ``anns``, ``cats``, ``imgToAnns``), cleaned of invalid instance masks (see the
    module docstring) and with the fields COCOeval needs completed where they can be derived
    (``area``, ``iscrowd``; one warning naming the file).

    Used by ``load_coco_json`` and by the COCO evaluator, so training and evaluation see the
    same annotations. Cached per file version (path, mtime, size; files up to 64 MB).

    Args:
        json_file: the COCO json.
        invalid_masks: ``"drop"`` (instances without a valid mask are removed, invalid polygons
            of the others too, with one warning per file naming the annotation ids and the
            reasons) or ``"error"`` (such a file is refused).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: not json, a missing top-level key, annotations without
            a positive integer ``id``, duplicate image / annotation / category ids; every
            instance mask invalid; with ``invalid_masks="error"``, any invalid mask.
    """
    import json

    from pycocotools.coco import COCO

    if invalid_masks not in INVALID_MASK_POLICIES:
        raise ValueError(f"invalid_masks must be one of {INVALID_MASK_POLICIES}; got '{invalid_masks}'")
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file '{json_file}' does not exist")
    key = (os.path.getmtime(json_file), os.path.getsize(json_file))
    cached = _GT_CACHE.get(json_file)
    if cached is not None and cached[0] == key:
        _apply_mask_policy(json_file, cached[2], invalid_masks)
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
    report = _clean_masks(dataset)
    if report.num_masks and report.num_dropped == report.num_masks:
        raise _err(
            json_file,
            f"every one of its {report.num_masks} instance masks is invalid, nothing is left to "
            f"train on: {report.summary()}",
        )
    _apply_mask_policy(json_file, report, invalid_masks)
    if report.dropped or report.trimmed:
        logger.warning(
            f"COCO annotation file '{json_file}': {report.num_dropped} of its "
            f"{report.num_masks} instance masks are invalid and their instances are dropped"
            f"{f', {len(report.trimmed)} more lose invalid polygons' if report.trimmed else ''}"
            f" (as Detectron2 does); training and evaluation both use what remains. "
            f"{report.summary()}. (INVALID_MASKS error in a DATASETS.CUSTOM entry refuses such "
            f"a file instead.)"
        )
    coco = COCO()  # pycocotools' own indexes; createIndex prints progress
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    _derive_missing_fields(coco, json_file)
    if key[1] <= _GT_CACHE_MAX_BYTES:  # not the 450 MB train2017: it would stay in memory
        _GT_CACHE[json_file] = (key, coco, report)
    return coco


def _apply_mask_policy(json_file: str, report: _MaskReport, invalid_masks: str) -> None:
    """Raise for a file with invalid masks when ``invalid_masks`` is ``"error"``."""
    if invalid_masks == "error" and (report.dropped or report.trimmed):
        n = report.num_dropped + len(report.trimmed)
        raise _err(
            json_file,
            f"{n} of its {report.num_masks} instance masks are invalid and INVALID_MASKS is "
            f"'error' (its DATASETS.CUSTOM entry; 'drop', the default, drops them with a "
            f"warning): {report.summary()}",
        )


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
    invalid_masks: str = "drop",
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
        invalid_masks: ``"drop"`` (default) or ``"error"``: see ``load_coco_gt``.

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
    coco = load_coco_gt(json_file, invalid_masks=invalid_masks)

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
            if a.get("segmentation"):  # checked by load_coco_gt; [] in a boxes-only file: no mask
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
    name: str, json_file: str, image_root: str, invalid_boxes: str = "error",
    invalid_masks: str = "drop",
) -> None:
    """Register a COCO-format dataset: ``DatasetCatalog`` loads it lazily with validation;
    ``check_datasets([name])`` (run by ``register_from_config``) validates it in full
    (``invalid_boxes``, ``invalid_masks``: see ``load_coco_json``).

    The metadata ``json_file``, ``image_root`` and ``evaluator_type="coco"`` are set now (the
    evaluator needs them); ``thing_classes`` and the category-id map when the data is loaded.
    """
    cache: Dict[str, Any] = {}

    def load() -> List[Dict[str, Any]]:
        # The json is validated once per version of the file: the start-of-training check
        # (DATASET_CHECKS) and the loader then share one load.
        key = (os.path.getmtime(json_file), os.path.getsize(json_file)) if os.path.isfile(json_file) else None
        if key is None or cache.get("key") != key:
            cache["dicts"] = load_coco_json(json_file, image_root, name, invalid_boxes=invalid_boxes,
                                            invalid_masks=invalid_masks)
            cache["key"] = key
        return list(cache["dicts"])

    DatasetCatalog.register(name, load)
    # Custom files are validated in full when training starts (before any model is built).
    DATASET_CHECKS[name] = lambda: load() and None
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco"
    )


def _register_custom(entry: dict) -> None:
    """``DATASETS.CUSTOM`` entry of TYPE ``coco``: keys ``NAME``, ``JSON_FILE``, ``IMAGE_ROOT``,
    optional ``INVALID_MASKS`` (``drop`` or ``error``, see ``load_coco_gt``)."""
    for key in ("JSON_FILE", "IMAGE_ROOT"):
        if not entry.get(key):
            raise ValueError(
                f"DATASETS.CUSTOM entry '{entry.get('NAME')}' of TYPE coco needs {key}; got {entry}"
            )
    unknown = set(entry) - {"NAME", "TYPE", "JSON_FILE", "IMAGE_ROOT", "INVALID_MASKS"}
    if unknown:
        raise ValueError(
            f"DATASETS.CUSTOM entry '{entry.get('NAME')}' of TYPE coco: unknown keys "
            f"{sorted(unknown)}; valid: NAME, TYPE, JSON_FILE, IMAGE_ROOT, INVALID_MASKS"
        )
    invalid_masks = str(entry.get("INVALID_MASKS", "drop"))
    if invalid_masks not in INVALID_MASK_POLICIES:
        raise ValueError(
            f"DATASETS.CUSTOM['{entry.get('NAME')}'].INVALID_MASKS is '{invalid_masks}'; valid: "
            f"{', '.join(INVALID_MASK_POLICIES)}"
        )
    register_coco_instances(
        entry["NAME"], os.path.expanduser(entry["JSON_FILE"]), os.path.expanduser(entry["IMAGE_ROOT"]),
        invalid_masks=invalid_masks,
    )


CUSTOM_DATASET_TYPES["coco"] = _register_custom
