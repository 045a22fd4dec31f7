"""Binary object-segmentation datasets (salient / camouflaged objects): image + mask folders.

``load_object_seg`` pairs images with their masks (``file_name``, ``mask_file_name``,
``height``, ``width``, ``image_id``); ``register_object_seg`` registers a dataset with
``evaluator_type="object_seg"``; ``CUSTOM_DATASET_TYPES["object_seg"]`` lets a config register
one without code::

    DATASETS:
      CUSTOM:
        - NAME: my_sod_train
          TYPE: object_seg
          IMAGE_DIR: /data/mine/image        # images <stem><ext>, ext in IMAGE_EXTS, recursive
          MASK_DIR: /data/mine/mask          # masks  <stem><MASK_EXT> (same relative path)
          LIST_FILE: /data/mine/train.txt    # optional: one stem a line
          IMAGE_EXTS: [.jpg, .png]           # optional (.jpg, .jpeg, .png, .bmp)
          MASK_EXT: .png                     # optional (.png)
          MASK_THRESHOLD: 128                # optional (INPUT.OBJECT_SEG.MASK_THRESHOLD)

Masks are 8-bit grayscale images (any format PIL reads); a pixel is foreground when its value
is greater than the threshold (default 128, as ``pysodmetrics`` binarises ground truth).

``check_object_seg_masks(cfg, names)`` (run by ``validate_run`` before training) checks every
mask's size against its image (headers only) and the values of a sample of masks (all of them
up to ``MASK_VALUE_CHECKS`` images): masks stored as 0 / 1 would all be empty under the ``> 128``
rule; they are read as binary (threshold 0 for that dataset, with a warning) or refused, as
``INPUT.OBJECT_SEG.ZERO_ONE_MASKS`` says.

Builtin datasets (layouts under ``$BCD_DATASETS``, see ``datasets/README.md``):

| names | layout |
|---|---|
| ``sod_duts_tr``, ``sod_duts_te``, ``sod_ecssd``, ``sod_hku_is``, ``sod_pascal_s``, ``sod_dut_omron``, ``sod_soc``, ``sod_thur15k`` | ``SOD/<DATASET>/{image,mask}`` (F3Net layout) |
| ``cod_train`` (COD10K-train + CAMO-train) | ``COD/TrainDataset/{Imgs,GT}`` (SINet-V2 layout) |
| ``cod_camo_test``, ``cod_cod10k_test``, ``cod_chameleon``, ``cod_nc4k`` | ``COD/TestDataset/<DATASET>/{Imgs,GT}`` |
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..catalog import DatasetCatalog, MetadataCatalog
from ..io import image_size, read_image
from .registry import CUSTOM_DATASET_TYPES, DATASET_CHECKS, get_datasets_root

__all__ = [
    "DEFAULT_IMAGE_EXTS",
    "BUILTIN_OBJECT_SEG",
    "MASK_VALUE_CHECKS",
    "ZERO_ONE_RULES",
    "check_object_seg_masks",
    "load_object_seg",
    "register_object_seg",
    "register_custom_object_seg",
]

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
_README_HINT = "see datasets/README.md, section 'Salient and camouflaged object segmentation'"


def load_object_seg(
    image_dir: str,
    mask_dir: Optional[str],
    image_exts: Sequence[str] = DEFAULT_IMAGE_EXTS,
    mask_ext: str = ".png",
    list_file: Optional[str] = None,
    read_sizes: bool = True,
    mask_threshold: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Dataset dicts of an object-segmentation dataset.

    Without ``list_file`` every file under ``image_dir`` (recursively, sorted) whose suffix is
    in ``image_exts`` (case-insensitive) is an image; its mask is the same relative path under
    ``mask_dir`` with the suffix replaced by ``mask_ext``. With ``list_file`` (one stem a line,
    a sub-folder allowed) the image is the first ``image_dir/<stem><ext>`` that exists.

    Args:
        image_dir: folder of the RGB images.
        mask_dir: folder of the grayscale masks, or None for an unlabelled set.
        image_exts: accepted image suffixes.
        mask_ext: mask suffix.
        list_file: optional split file.
        read_sizes: read ``height`` / ``width`` from each image header.
        mask_threshold: stored in every dict as ``mask_threshold`` (the mapper's binarisation
            threshold for this dataset); None leaves it to ``INPUT.OBJECT_SEG.MASK_THRESHOLD``.

    Returns:
        ``[{"file_name", "mask_file_name", "height", "width", "image_id"}]``.

    Raises:
        FileNotFoundError: a folder, the list file, an image or a mask is missing (named).
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Image folder '{image_dir}' does not exist ({_README_HINT})")
    if mask_dir is not None and not os.path.isdir(mask_dir):
        raise FileNotFoundError(f"Mask folder '{mask_dir}' does not exist ({_README_HINT})")
    exts = tuple(e.lower() for e in image_exts)
    stems: List[tuple] = []  # (image path, stem)
    if list_file:
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"List file '{list_file}' does not exist ({_README_HINT})")
        with open(list_file) as f:
            listed = [line.strip() for line in f if line.strip()]
        if not listed:
            raise ValueError(f"List file '{list_file}' lists no images")
        for stem in listed:
            found = next(
                (os.path.join(image_dir, stem + e) for e in image_exts
                 if os.path.isfile(os.path.join(image_dir, stem + e))),
                None,
            )
            if found is None:
                raise FileNotFoundError(
                    f"Image '{os.path.join(image_dir, stem)}' (listed in '{list_file}') does not "
                    f"exist with any suffix of {list(image_exts)}"
                )
            stems.append((found, stem))
    else:
        files = sorted(
            p for p in glob.glob(os.path.join(image_dir, "**", "*"), recursive=True)
            if os.path.isfile(p) and p.lower().endswith(exts)
        )
        if not files:
            raise FileNotFoundError(
                f"No images ({', '.join(image_exts)}) under '{image_dir}' ({_README_HINT})"
            )
        stems = [(p, os.path.splitext(os.path.relpath(p, image_dir))[0]) for p in files]

    dicts = []
    for img, stem in stems:
        d: Dict[str, Any] = {"file_name": img, "image_id": stem}
        if mask_dir is not None:
            mask = os.path.join(mask_dir, stem + mask_ext)
            if not os.path.isfile(mask):
                raise FileNotFoundError(f"Mask '{mask}' of image '{img}' does not exist")
            d["mask_file_name"] = mask
        if read_sizes:
            d["height"], d["width"] = image_size(img)
        if mask_threshold is not None:
            d["mask_threshold"] = int(mask_threshold)
        dicts.append(d)
    logger.info("Loaded %d images from %s", len(dicts), list_file or image_dir)
    return dicts


def register_object_seg(
    name: str,
    loader: Callable[[], List[Dict[str, Any]]],
    check: Optional[Callable[[], None]] = None,
    **metadata: Any,
) -> None:
    """Register ``name`` (``loader`` runs on ``DatasetCatalog.get``) with metadata
    ``evaluator_type="object_seg"``, ``thing_classes=["object"]`` and ``metadata``; ``check``
    (optional) goes to ``DATASET_CHECKS`` so a missing folder fails before training."""
    DatasetCatalog.register(name, loader)
    meta = {"evaluator_type": "object_seg", "thing_classes": ["object"]}
    meta.update(metadata)
    MetadataCatalog.get(name).set(**meta)
    if check is not None:
        DATASET_CHECKS[name] = check


def _folder_check(*folders: str) -> Callable[[], None]:
    def _check() -> None:
        for folder in folders:
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"Folder '{folder}' does not exist ({_README_HINT})")

    return _check


_CUSTOM_KEYS = {
    "NAME", "TYPE", "IMAGE_DIR", "MASK_DIR", "LIST_FILE", "IMAGE_EXTS", "MASK_EXT", "MASK_THRESHOLD",
}


def register_custom_object_seg(entry: Dict[str, Any]) -> None:
    """Register one ``DATASETS.CUSTOM`` entry of ``TYPE: object_seg`` (keys in the module doc).

    Raises:
        KeyError: an unknown key, or no ``IMAGE_DIR``; the message names the dataset.
        ValueError: ``MASK_THRESHOLD`` outside ``[0, 255)``.
    """
    name = entry.get("NAME")
    unknown = set(entry) - _CUSTOM_KEYS
    if unknown:
        raise KeyError(
            f"DATASETS.CUSTOM '{name}': unknown keys {sorted(unknown)}; TYPE object_seg takes "
            f"{sorted(_CUSTOM_KEYS)}"
        )
    if not entry.get("IMAGE_DIR"):
        raise KeyError(f"DATASETS.CUSTOM '{name}' (TYPE object_seg) needs IMAGE_DIR")
    image_dir = os.path.expanduser(str(entry["IMAGE_DIR"]))
    mask_dir = os.path.expanduser(str(entry["MASK_DIR"])) if entry.get("MASK_DIR") else None
    list_file = os.path.expanduser(str(entry["LIST_FILE"])) if entry.get("LIST_FILE") else None
    exts = entry.get("IMAGE_EXTS") or DEFAULT_IMAGE_EXTS
    if isinstance(exts, str):
        exts = [exts]
    mask_ext = str(entry.get("MASK_EXT", ".png"))
    threshold = entry.get("MASK_THRESHOLD")
    if threshold is not None and not 0 <= int(threshold) < 255:
        raise ValueError(f"DATASETS.CUSTOM '{name}': MASK_THRESHOLD must be in [0, 255); got {threshold}")

    def _load() -> List[Dict[str, Any]]:
        # The metadata's threshold: the entry's MASK_THRESHOLD, or 0 once check_object_seg_masks
        # found 0 / 1 masks.
        return load_object_seg(image_dir, mask_dir, list(exts), mask_ext, list_file,
                               mask_threshold=MetadataCatalog.get(name).get("mask_threshold"))

    folders = [image_dir] + ([mask_dir] if mask_dir else [])
    register_object_seg(name, _load, check=_folder_check(*folders), image_root=image_dir,
                        mask_root=mask_dir, mask_threshold=threshold)


CUSTOM_DATASET_TYPES["object_seg"] = register_custom_object_seg


# ------------------------------------------------------------------------ start-up mask check
# Masks whose values are read at start-up: all of them up to this many images, else this many
# spread evenly over the dataset (the first included). Sizes are checked for every mask.
MASK_VALUE_CHECKS = 32
# INPUT.OBJECT_SEG.ZERO_ONE_MASKS: what to do with a dataset whose masks hold only 0 and 1.
ZERO_ONE_RULES = ("binary", "error")
_ZERO_ONE_KEY = "INPUT.OBJECT_SEG.ZERO_ONE_MASKS"


def _threshold_key(cfg, name: str) -> str:
    for entry in cfg.DATASETS.CUSTOM:
        if dict(entry).get("NAME") == name and dict(entry).get("MASK_THRESHOLD") is not None:
            return f"DATASETS.CUSTOM['{name}'].MASK_THRESHOLD"
    return "INPUT.OBJECT_SEG.MASK_THRESHOLD"


def check_object_seg_masks(cfg, dataset_names: Sequence[str]) -> None:
    """Check the masks of every object-segmentation dataset among ``dataset_names`` (metadata
    ``evaluator_type == "object_seg"``) before training, so that what would fail or silently
    mislead mid-run fails now.

    * Every mask's size (header only) against its image's: a mask of another size is an error
      naming both files (it used to fail only when the loader met it, after training for a
      validation mask).
    * The values of the masks of ``MASK_VALUE_CHECKS`` images (all of a smaller dataset), read
      as the mapper reads them (8-bit grayscale). With a threshold ``t >= 1`` (foreground =
      value > t, default 128) masks stored as 0 / 1 (BASNet#44, U-2-Net#276) would all be
      empty. ``INPUT.OBJECT_SEG.ZERO_ONE_MASKS`` "binary" (default) reads such a dataset as
      0 = background, 1 = object: its threshold becomes 0 (metadata ``mask_threshold``, which
      the loader's dicts and the evaluator use), with a warning naming the dataset and a mask;
      "error" refuses it, naming the key. A dataset mixing 0 / 1 masks with 0..255 masks is
      refused either way. Masks with values but none above the threshold get a warning.

    Raises:
        ValueError: naming the dataset, the files and the key.
    """
    rule = str(cfg.INPUT.OBJECT_SEG.ZERO_ONE_MASKS)
    if rule not in ZERO_ONE_RULES:
        raise ValueError(f"{_ZERO_ONE_KEY} is '{rule}'; valid: {', '.join(ZERO_ONE_RULES)}")
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if meta.get("evaluator_type") != "object_seg":
            continue
        dicts = [d for d in DatasetCatalog.get(name) if d.get("mask_file_name")]
        if not dicts:
            continue
        for d in dicts:
            mask_hw = image_size(d["mask_file_name"])
            img_hw = (d["height"], d["width"]) if "height" in d else image_size(d["file_name"])
            if tuple(mask_hw) != tuple(img_hw):
                raise ValueError(
                    f"Dataset '{name}': mask '{d['mask_file_name']}' is {mask_hw[0]}×{mask_hw[1]} "
                    f"but its image '{d['file_name']}' is {img_hw[0]}×{img_hw[1]} (height × width); "
                    f"image and mask must have the same size"
                )
        n = len(dicts)
        picks = range(n) if n <= MASK_VALUE_CHECKS else sorted(
            {round(i * (n - 1) / (MASK_VALUE_CHECKS - 1)) for i in range(MASK_VALUE_CHECKS)})
        threshold = int(dicts[0].get("mask_threshold", cfg.INPUT.OBJECT_SEG.MASK_THRESHOLD))
        if threshold < 1:
            continue  # foreground = value > 0: 0 / 1 masks read as they are
        zero_one, wide, maxima = [], [], []
        for i in picks:
            path = dicts[i]["mask_file_name"]
            vmax = int(read_image(path, format="L").max())
            maxima.append(vmax)
            if vmax == 1:
                zero_one.append(path)
            elif vmax > 1:
                wide.append((path, vmax))
        checked = f"{len(maxima)} of its {n} masks checked"
        key = _threshold_key(cfg, name)
        if zero_one and wide:
            raise ValueError(
                f"Dataset '{name}' mixes masks stored as 0 / 1 ('{zero_one[0]}' and "
                f"{len(zero_one) - 1} more) with masks of values up to {wide[0][1]} "
                f"('{wide[0][0]}'; {checked}): one threshold ({key} {threshold}) cannot read both. "
                f"Save every mask with the same coding (0 / 255 as the public sets)"
            )
        if zero_one:
            if rule == "error":
                raise ValueError(
                    f"Dataset '{name}': its masks hold only the values 0 and 1 (e.g. "
                    f"'{zero_one[0]}'; {checked}), so with foreground = value > {threshold} "
                    f"({key}) every mask is empty. {_ZERO_ONE_KEY} is 'error'; set it to 'binary' "
                    f"to read them as 0 = background, 1 = object, or save the masks as 0 / 255"
                )
            logger.warning(
                f"Dataset '{name}': its masks hold only the values 0 and 1 (e.g. '{zero_one[0]}'; "
                f"{checked}); foreground = value > {threshold} ({key}) would make every mask "
                f"empty, so they are read as binary (0 = background, 1 = object; threshold 0 for "
                f"this dataset, in training and evaluation). {_ZERO_ONE_KEY} error refuses them "
                f"instead"
            )
            meta.mask_threshold = 0  # the loader's dicts and the evaluator read it
        elif wide and all(v <= threshold for v in maxima):
            logger.warning(
                f"Dataset '{name}': none of its {len(maxima)} checked masks has a value above "
                f"{threshold} ({key}; highest {max(maxima)} in '{max(wide, key=lambda t: t[1])[0]}'): "
                f"they read as empty (no object)"
            )


# ------------------------------------------------------------------------------------- builtin
# name -> (image folder, mask folder) relative to the datasets root, and the task.
BUILTIN_OBJECT_SEG: Dict[str, tuple] = {
    "sod_duts_tr": ("SOD/DUTS-TR/image", "SOD/DUTS-TR/mask", "sod"),
    "sod_duts_te": ("SOD/DUTS-TE/image", "SOD/DUTS-TE/mask", "sod"),
    "sod_ecssd": ("SOD/ECSSD/image", "SOD/ECSSD/mask", "sod"),
    "sod_hku_is": ("SOD/HKU-IS/image", "SOD/HKU-IS/mask", "sod"),
    "sod_pascal_s": ("SOD/PASCAL-S/image", "SOD/PASCAL-S/mask", "sod"),
    "sod_dut_omron": ("SOD/DUT-OMRON/image", "SOD/DUT-OMRON/mask", "sod"),
    "sod_soc": ("SOD/SOC/image", "SOD/SOC/mask", "sod"),
    "sod_thur15k": ("SOD/THUR15K/image", "SOD/THUR15K/mask", "sod"),
    "cod_train": ("COD/TrainDataset/Imgs", "COD/TrainDataset/GT", "cod"),
    "cod_camo_test": ("COD/TestDataset/CAMO/Imgs", "COD/TestDataset/CAMO/GT", "cod"),
    "cod_cod10k_test": ("COD/TestDataset/COD10K/Imgs", "COD/TestDataset/COD10K/GT", "cod"),
    "cod_chameleon": ("COD/TestDataset/CHAMELEON/Imgs", "COD/TestDataset/CHAMELEON/GT", "cod"),
    "cod_nc4k": ("COD/TestDataset/NC4K/Imgs", "COD/TestDataset/NC4K/GT", "cod"),
}


def _builtin_loader(name: str, image_dir: str, mask_dir: str) -> Callable[[], List[Dict[str, Any]]]:
    # The root is read when the dataset is loaded, so $BCD_DATASETS set after import counts.
    def _load() -> List[Dict[str, Any]]:
        root = get_datasets_root()
        return load_object_seg(os.path.join(root, image_dir), os.path.join(root, mask_dir),
                               mask_threshold=MetadataCatalog.get(name).get("mask_threshold"))

    return _load


def _builtin_check(image_dir: str, mask_dir: str) -> Callable[[], None]:
    def _check() -> None:
        root = get_datasets_root()
        _folder_check(os.path.join(root, image_dir), os.path.join(root, mask_dir))()

    return _check


def register_all_object_seg() -> None:
    """Register the builtin SOD / COD datasets of ``BUILTIN_OBJECT_SEG`` (lazily)."""
    for name, (image_dir, mask_dir, task) in BUILTIN_OBJECT_SEG.items():
        register_object_seg(
            name,
            _builtin_loader(name, image_dir, mask_dir),
            check=_builtin_check(image_dir, mask_dir),
            image_root=image_dir,
            mask_root=mask_dir,
            task=task,
        )


register_all_object_seg()
