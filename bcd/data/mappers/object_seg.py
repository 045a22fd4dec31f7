"""``ObjectSegDatasetMapper``: an object-segmentation dataset dict -> model input dict."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np
import torch

from ..build import MAPPER_REGISTRY
from ..io import read_image
from ..transforms import ColorJitter

__all__ = ["ObjectSegDatasetMapper", "binarize_mask", "read_object_mask"]


def binarize_mask(mask: np.ndarray, threshold: int) -> np.ndarray:
    """``H×W`` (or ``H×W×1``) grayscale mask -> ``H×W`` uint8 in {0, 1}: 1 where ``mask >
    threshold`` (128 by default in ``INPUT.OBJECT_SEG.MASK_THRESHOLD``, as pysodmetrics)."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    return (mask > threshold).astype(np.uint8)


def read_object_mask(path: str, threshold: int) -> np.ndarray:
    """Read a mask file as 8-bit grayscale (``bcd.data.io.read_image``, so a bad file is an
    error naming it) and binarise it: ``H×W`` uint8 in {0, 1}."""
    return binarize_mask(read_image(path, format="L"), threshold)


def _resize(image: np.ndarray, size: Tuple[int, int], interp: int) -> np.ndarray:
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=interp)


@MAPPER_REGISTRY.register()
class ObjectSegDatasetMapper:
    """Read one image and its mask, augment (training), return tensors.

    Training (F3Net-style [R]): random crop removing up to ``INPUT.OBJECT_SEG.CROP_FRACTION``
    of each side, resize to ``INPUT.OBJECT_SEG.TRAIN_SIZE`` (image bilinear, mask nearest after
    binarisation), horizontal flip (``INPUT.FLIP``), photometric jitter (``INPUT.COLOR_JITTER``).
    Test: the image is resized to ``INPUT.OBJECT_SEG.TEST_SIZE``; the mask stays at the
    original size, where the evaluator compares it with the prediction.

    Returns ``"image"`` (uint8 ``3×H×W`` RGB), ``"sem_seg"`` (int64 ``H×W`` binary mask,
    1 = object; training: the size of ``"image"``; test: the original size; absent without
    ``mask_file_name``), ``"height"``, ``"width"`` (original size), ``"file_name"``,
    ``"mask_file_name"``, ``"image_id"``.

    Randomness comes from torch's global generator, which the loader seeds per worker.
    """

    def __init__(self, cfg, is_train: bool = True) -> None:
        c = cfg.INPUT.OBJECT_SEG
        self.is_train = is_train
        self.threshold = int(c.MASK_THRESHOLD)
        self.train_size: Tuple[int, int] = (int(c.TRAIN_SIZE[0]), int(c.TRAIN_SIZE[1]))
        self.test_size: Tuple[int, int] = (int(c.TEST_SIZE[0]), int(c.TEST_SIZE[1]))
        self.crop_fraction = float(c.CROP_FRACTION)
        if not 0.0 <= self.crop_fraction < 0.5:
            raise ValueError(f"INPUT.OBJECT_SEG.CROP_FRACTION must be in [0, 0.5); got {self.crop_fraction}")
        self.flip = bool(cfg.INPUT.FLIP)
        cj = cfg.INPUT.COLOR_JITTER
        self.jitter: Optional[ColorJitter] = (
            ColorJitter(cj.BRIGHTNESS, cj.CONTRAST, cj.SATURATION, cj.HUE)
            if is_train and cj.ENABLED else None
        )

    def _augment(self, image: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape
        if self.crop_fraction > 0:
            # F3Net's RandomCrop: drop a random margin of up to 1/8 of the size on each side
            my, mx = int(h * self.crop_fraction), int(w * self.crop_fraction)
            r = torch.randint(0, 2**31 - 1, (4,)).tolist()
            y0, y1 = r[0] % (my + 1), h - r[1] % (my + 1)
            x0, x1 = r[2] % (mx + 1), w - r[3] % (mx + 1)
            image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        image = _resize(image, self.train_size, cv2.INTER_LINEAR)
        mask = _resize(mask, self.train_size, cv2.INTER_NEAREST)
        if self.flip and torch.rand(()) < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.jitter is not None:
            image = self.jitter(np.ascontiguousarray(image))
        return image, mask

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map one dataset dict (``file_name``, ``mask_file_name``, ``height``, ``width``,
        ``image_id``, optional ``mask_threshold``). Errors name the file that caused them."""
        file_name = dataset_dict["file_name"]
        image = read_image(file_name, format="RGB")
        h, w = image.shape[:2]
        if "height" in dataset_dict and (dataset_dict["height"], dataset_dict["width"]) != (h, w):
            raise ValueError(
                f"Image '{file_name}' is {h}×{w} but its dataset dict says "
                f"{dataset_dict['height']}×{dataset_dict['width']}"
            )
        mask = None
        mask_file = dataset_dict.get("mask_file_name")
        if mask_file:
            mask = read_object_mask(mask_file, int(dataset_dict.get("mask_threshold", self.threshold)))
            if mask.shape != (h, w):
                raise ValueError(
                    f"Mask '{mask_file}' is {mask.shape[0]}×{mask.shape[1]} but its image "
                    f"'{file_name}' is {h}×{w}; image and mask must have the same size"
                )
        elif self.is_train:
            raise KeyError(f"Dataset dict of '{file_name}' has no 'mask_file_name' for training")

        if self.is_train:
            image, mask = self._augment(image, mask)
        else:
            image = _resize(image, self.test_size, cv2.INTER_LINEAR)

        out: Dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": h,
            "width": w,
            "file_name": file_name,
            "image_id": dataset_dict.get("image_id", file_name),
        }
        if mask is not None:
            out["sem_seg"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
            out["mask_file_name"] = mask_file
        return out
