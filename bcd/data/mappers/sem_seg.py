"""``SemSegDatasetMapper``: a semantic-segmentation dataset dict -> model input dict."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from ..build import MAPPER_REGISTRY
from ..io import IntensityScaling, read_image, read_sem_seg
from ..transforms import ColorJitter, SemSegAugmentation, resize_to_base

__all__ = ["SemSegDatasetMapper", "check_sem_seg_label"]


def check_sem_seg_label(
    label: np.ndarray, num_classes: int, ignore_value: int, file_name: str
) -> None:
    """Raise ``ValueError`` naming ``file_name`` when ``label`` holds a value that is neither a
    class index in ``[0, num_classes)`` nor ``ignore_value`` (a wrong label file or a dataset
    whose labels need a conversion, e.g. Cityscapes ``labelIds`` instead of ``labelTrainIds``)."""
    bad = (label < 0) | ((label >= num_classes) & (label != ignore_value))
    if bad.any():
        values = np.unique(label[bad])[:10].tolist()
        raise ValueError(
            f"Label file '{file_name}' has values {values} outside the classes [0, {num_classes}) "
            f"and the ignore value {ignore_value}; check MODEL.SEM_SEG_HEAD.NUM_CLASSES / "
            f"IGNORE_VALUE and that the labels are converted (see datasets/README.md)"
        )


@MAPPER_REGISTRY.register()
class SemSegDatasetMapper:
    """Read one image and its label map, augment (training), return tensors.

    Training: random scale of ``INPUT.BASE_SIZE`` in ``INPUT.SCALE_RANGE``, crop of
    ``INPUT.CROP.SIZE`` re-drawn while one class exceeds ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``,
    padding with ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``, flip (``INPUT.FLIP``), photometric jitter
    (``INPUT.COLOR_JITTER.*``).
    Test: no augmentation; the image is resized to fit ``INPUT.BASE_SIZE`` (aspect ratio kept;
    ``-1`` keeps it as it is) and the label stays at the original size, for evaluation there.

    Returns a dict with ``"image"`` (``3×H×W`` RGB tensor: ``uint8``, or ``float32`` in
    ``[0, 255]`` for high-bit-depth files scaled by ``INPUT.INTENSITY_SCALING``), ``"sem_seg"`` (``int64``
    ``H×W``; training: the size of ``"image"``; test: the original size; absent when the dataset
    dict has no ``sem_seg_file_name``), ``"height"``, ``"width"`` (original size),
    ``"file_name"``, ``"image_id"``.
    """

    def __init__(self, cfg, is_train: bool = True):
        self.is_train = is_train
        self.image_format = cfg.INPUT.FORMAT
        # High-bit-depth images: INPUT.INTENSITY_SCALING (bcd/data/io.py)
        self.intensity_scaling = IntensityScaling.from_config(cfg)
        self.ignore_value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        self.num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self.base_size = list(cfg.INPUT.BASE_SIZE)
        self.augmentation: Optional[SemSegAugmentation] = None
        if is_train:
            cj = cfg.INPUT.COLOR_JITTER
            jitter = (
                ColorJitter(cj.BRIGHTNESS, cj.CONTRAST, cj.SATURATION, cj.HUE) if cj.ENABLED else None
            )
            self.augmentation = SemSegAugmentation(
                base_size=self.base_size,
                scale_range=list(cfg.INPUT.SCALE_RANGE),
                crop_size=list(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None,
                single_category_max_area=float(cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA),
                flip=bool(cfg.INPUT.FLIP),
                color_jitter=jitter,
                ignore_value=self.ignore_value,
            )

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map one dataset dict (``file_name``, ``sem_seg_file_name``, ``height``, ``width``,
        ``image_id``) to the model input. Errors name the file that caused them."""
        file_name = dataset_dict["file_name"]
        # The model normalises RGB; "BGR" in INPUT.FORMAT is honoured for models trained so.
        image = read_image(
            file_name, format="BGR" if self.image_format == "BGR" else "RGB",
            scaling=self.intensity_scaling,
        )
        h, w = image.shape[:2]
        if "height" in dataset_dict and (dataset_dict["height"], dataset_dict["width"]) != (h, w):
            raise ValueError(
                f"Image '{file_name}' is {h}×{w} but its dataset dict says "
                f"{dataset_dict['height']}×{dataset_dict['width']}"
            )

        label = None
        label_file = dataset_dict.get("sem_seg_file_name")
        if label_file:
            label = read_sem_seg(label_file)
            if label.shape != (h, w):
                raise ValueError(
                    f"Label '{label_file}' is {label.shape[0]}×{label.shape[1]} but its image "
                    f"'{file_name}' is {h}×{w}; image and label must have the same size"
                )
            check_sem_seg_label(label, self.num_classes, self.ignore_value, label_file)
        elif self.is_train:
            raise KeyError(f"Dataset dict of '{file_name}' has no 'sem_seg_file_name' for training")

        if self.is_train:
            image, label = self.augmentation(image, label)
        else:
            image = resize_to_base(image, self.base_size)

        out: Dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": h,
            "width": w,
            "file_name": file_name,
            "image_id": dataset_dict.get("image_id", file_name),
        }
        if label is not None:
            out["sem_seg"] = torch.from_numpy(np.ascontiguousarray(label)).long()
        if label_file:
            out["sem_seg_file_name"] = label_file
        return out
