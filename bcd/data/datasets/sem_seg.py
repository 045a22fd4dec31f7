"""Semantic-segmentation datasets from an image folder + a label folder, or a list file.

``load_sem_seg`` turns the files into dataset dicts (``file_name``, ``sem_seg_file_name``,
``height``, ``width``, ``image_id``); ``register_sem_seg`` registers a dataset with its metadata;
``CUSTOM_DATASET_TYPES["sem_seg"]`` lets a config register one without code::

    DATASETS:
      CUSTOM:
        - NAME: my_train
          TYPE: sem_seg
          IMAGE_DIR: /data/mine/images
          LABEL_DIR: /data/mine/labels
          LIST_FILE: /data/mine/train.txt    # optional
          CLASSES: [background, road, car]
          IGNORE_LABEL: 255                  # optional (255)
          IMAGE_EXT: .jpg                    # optional (.jpg)
          LABEL_EXT: .png                    # optional (.png)
          EVALUATOR_TYPE: sem_seg            # optional (sem_seg)
          COLORS: [[0, 0, 0], [128, 64, 128], [0, 0, 142]]   # optional
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..catalog import DatasetCatalog, MetadataCatalog
from ..io import image_size
from .registry import CUSTOM_DATASET_TYPES

__all__ = ["load_sem_seg", "register_sem_seg", "register_custom_sem_seg", "default_colors"]

logger = logging.getLogger(__name__)

_README_HINT = "see datasets/README.md"


def default_colors(num_classes: int) -> List[List[int]]:
    """The Pascal VOC colour map (bit-interleaved), one RGB triple per class."""
    colors = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append([r, g, b])
    return colors


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder '{path}' does not exist ({_README_HINT})")


def _read_list(list_file: str) -> List[List[str]]:
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"List file '{list_file}' does not exist ({_README_HINT})")
    rows = []
    with open(list_file) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise ValueError(
                    f"{list_file}:{n}: expected 'stem' or 'image_path label_path', got {line.strip()!r}"
                )
            rows.append(parts)
    if not rows:
        raise ValueError(f"List file '{list_file}' lists no images")
    return rows


def load_sem_seg(
    image_dir: str,
    label_dir: Optional[str],
    image_ext: str = ".jpg",
    label_ext: str = ".png",
    list_file: Optional[str] = None,
    read_sizes: bool = True,
) -> List[Dict[str, Any]]:
    """Dataset dicts of a semantic-segmentation dataset.

    Pairs are found either from ``list_file`` or by walking ``image_dir``:

    * ``list_file``, one line per image: a stem (``2007_000032``; may hold a sub-folder,
      ``frankfurt/frankfurt_000000_000294``): image ``image_dir/<stem><image_ext>``, label
      ``label_dir/<stem><label_ext>``; or two columns ``image_path label_path``, each absolute
      or relative to ``image_dir`` / ``label_dir``.
    * no list file: every ``*<image_ext>`` under ``image_dir`` (recursively, sorted); its label is
      the same relative path under ``label_dir`` with ``image_ext`` replaced by ``label_ext``
      (suffixes may be longer than an extension, e.g. ``_leftImg8bit.png`` /
      ``_gtFine_labelTrainIds.png`` for Cityscapes).

    Args:
        image_dir: folder of the images.
        label_dir: folder of the label maps (index PNGs), or None for an unlabelled test set.
        image_ext, label_ext: file-name suffixes of images and labels.
        list_file: optional list of the images to use (a split file).
        read_sizes: read ``height`` / ``width`` from each image header (cheap; lets the mapper
            check the files).

    Returns:
        ``[{"file_name", "sem_seg_file_name", "height", "width", "image_id"}]``;
        ``sem_seg_file_name`` is absent when ``label_dir`` is None.

    Raises:
        FileNotFoundError: a folder, the list file, an image or a label is missing (named).
    """
    _require_dir(image_dir, "Image")
    if label_dir is not None:
        _require_dir(label_dir, "Label")
    pairs: List[tuple] = []
    if list_file:
        for parts in _read_list(list_file):
            if len(parts) == 1:
                stem = parts[0]
                img = os.path.join(image_dir, stem + image_ext)
                lab = os.path.join(label_dir, stem + label_ext) if label_dir is not None else None
                image_id = stem
            else:
                img = os.path.join(image_dir, parts[0])
                lab = os.path.join(label_dir, parts[1]) if label_dir is not None else None
                image_id = os.path.splitext(parts[0])[0]
            pairs.append((img, lab, image_id))
    else:
        files = sorted(glob.glob(os.path.join(image_dir, "**", "*" + image_ext), recursive=True))
        if not files:
            raise FileNotFoundError(f"No '*{image_ext}' images under '{image_dir}' ({_README_HINT})")
        for img in files:
            stem = os.path.relpath(img, image_dir)[: -len(image_ext)]
            lab = os.path.join(label_dir, stem + label_ext) if label_dir is not None else None
            pairs.append((img, lab, stem))

    dicts = []
    for img, lab, image_id in pairs:
        if not os.path.isfile(img):
            raise FileNotFoundError(f"Image '{img}' does not exist" + (f" (listed in '{list_file}')" if list_file else ""))
        if lab is not None and not os.path.isfile(lab):
            raise FileNotFoundError(f"Label '{lab}' of image '{img}' does not exist")
        d: Dict[str, Any] = {"file_name": img, "image_id": image_id}
        if lab is not None:
            d["sem_seg_file_name"] = lab
        if read_sizes:
            d["height"], d["width"] = image_size(img)
        dicts.append(d)
    logger.info("Loaded %d images from %s", len(dicts), list_file or image_dir)
    return dicts


def register_sem_seg(
    name: str,
    loader: Callable[[], List[Dict[str, Any]]],
    classes: Sequence[str],
    colors: Optional[Sequence[Sequence[int]]] = None,
    ignore_label: int = 255,
    evaluator_type: str = "sem_seg",
    **metadata: Any,
) -> None:
    """Register ``name`` in ``DatasetCatalog`` (``loader`` runs on ``DatasetCatalog.get``) and
    set its ``MetadataCatalog`` entry: ``stuff_classes``, ``stuff_colors``, ``ignore_label``,
    ``evaluator_type`` plus any extra ``metadata`` (e.g. ``image_root``, ``sem_seg_root``)."""
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError(f"Dataset '{name}': the class list is empty")
    if colors is None:
        colors = default_colors(len(classes))
    if len(colors) != len(classes):
        raise ValueError(f"Dataset '{name}': {len(colors)} colours for {len(classes)} classes")
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        stuff_colors=[[int(v) for v in c] for c in colors],
        ignore_label=int(ignore_label),
        evaluator_type=evaluator_type,
        **metadata,
    )


_CUSTOM_KEYS = {
    "NAME", "TYPE", "IMAGE_DIR", "LABEL_DIR", "LIST_FILE", "CLASSES", "COLORS", "IGNORE_LABEL",
    "IMAGE_EXT", "LABEL_EXT", "EVALUATOR_TYPE",
}


def register_custom_sem_seg(entry: Dict[str, Any]) -> None:
    """Register one ``DATASETS.CUSTOM`` entry of ``TYPE: sem_seg`` (keys in the module doc).

    Folders are checked when the dataset is loaded, not here, so a config may name a dataset
    that exists only on the training machine.
    """
    name = entry.get("NAME")
    unknown = set(entry) - _CUSTOM_KEYS
    if unknown:
        raise KeyError(
            f"DATASETS.CUSTOM '{name}': unknown keys {sorted(unknown)}; TYPE sem_seg takes "
            f"{sorted(_CUSTOM_KEYS)}"
        )
    for key in ("IMAGE_DIR", "CLASSES"):
        if not entry.get(key):
            raise KeyError(f"DATASETS.CUSTOM '{name}' (TYPE sem_seg) needs {key}")
    image_dir = os.path.expanduser(str(entry["IMAGE_DIR"]))
    label_dir = entry.get("LABEL_DIR")
    label_dir = os.path.expanduser(str(label_dir)) if label_dir else None
    list_file = entry.get("LIST_FILE")
    list_file = os.path.expanduser(str(list_file)) if list_file else None
    image_ext = str(entry.get("IMAGE_EXT", ".jpg"))
    label_ext = str(entry.get("LABEL_EXT", ".png"))

    def _load() -> List[Dict[str, Any]]:
        return load_sem_seg(image_dir, label_dir, image_ext, label_ext, list_file)

    register_sem_seg(
        name,
        _load,
        classes=list(entry["CLASSES"]),
        colors=entry.get("COLORS") or None,
        ignore_label=int(entry.get("IGNORE_LABEL", 255)),
        evaluator_type=str(entry.get("EVALUATOR_TYPE", "sem_seg")),
        image_root=image_dir,
        sem_seg_root=label_dir,
    )


CUSTOM_DATASET_TYPES["sem_seg"] = register_custom_sem_seg
