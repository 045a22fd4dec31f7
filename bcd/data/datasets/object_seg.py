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
from ..io import image_size
from . import CUSTOM_DATASET_TYPES, DATASET_CHECKS, get_datasets_root

__all__ = [
    "DEFAULT_IMAGE_EXTS",
    "BUILTIN_OBJECT_SEG",
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
        return load_object_seg(image_dir, mask_dir, list(exts), mask_ext, list_file,
                               mask_threshold=threshold)

    folders = [image_dir] + ([mask_dir] if mask_dir else [])
    register_object_seg(name, _load, check=_folder_check(*folders), image_root=image_dir,
                        mask_root=mask_dir, mask_threshold=threshold)


CUSTOM_DATASET_TYPES["object_seg"] = register_custom_object_seg


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


def _builtin_loader(image_dir: str, mask_dir: str) -> Callable[[], List[Dict[str, Any]]]:
    # The root is read when the dataset is loaded, so $BCD_DATASETS set after import counts.
    def _load() -> List[Dict[str, Any]]:
        root = get_datasets_root()
        return load_object_seg(os.path.join(root, image_dir), os.path.join(root, mask_dir))

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
            _builtin_loader(image_dir, mask_dir),
            check=_builtin_check(image_dir, mask_dir),
            image_root=image_dir,
            mask_root=mask_dir,
            task=task,
        )


register_all_object_seg()
