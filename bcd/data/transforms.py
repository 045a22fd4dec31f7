"""Joint image / label transforms for semantic segmentation.

The training pipeline of the semantic-segmentation papers (mmsegmentation / Detectron2
conventions): random scale of a base size, random crop that re-draws crops dominated by one
class, horizontal flip, photometric jitter, padding of the label with the ignore value.

Images are ``H×W×3`` ``uint8`` numpy arrays (RGB), labels ``H×W`` integer arrays. Resizing uses
OpenCV (bilinear for images, nearest for labels); the photometric jitter is torchvision's
``ColorJitter``. All randomness is drawn from torch's global generator, which the data loader
seeds per worker, so a seeded loader gives the same augmentations on every run.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torchvision.transforms import v2 as T

__all__ = [
    "resize_scale",
    "random_scale",
    "random_crop_category_area",
    "pad_to_size",
    "random_hflip",
    "ColorJitter",
    "SemSegAugmentation",
    "resize_to_base",
]


def _uniform(low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(()).item())


def resize_scale(
    image: np.ndarray, label: Optional[np.ndarray], target: Tuple[int, int]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Resize keeping the aspect ratio so that the image fits inside ``target``, whatever its
    orientation (mmsegmentation's ``keep_ratio`` rule: the long edge fits the long side of
    ``target``, the short edge its short side).

    Args:
        image: ``H×W×3`` uint8.
        label: ``H×W`` integer labels or None.
        target: ``(th, tw)`` in pixels; the scale is
            ``min(max(th, tw) / max(H, W), min(th, tw) / min(H, W))``.

    Returns:
        The resized image (bilinear) and label (nearest neighbour), ``round(H·s)×round(W·s)``.
    """
    h, w = image.shape[:2]
    s = min(max(target) / max(h, w), min(target) / min(h, w))
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (nh, nw) == (h, w):
        return image, label
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        # cv2 resizes int32 / uint16 / uint8 with nearest neighbour; int64 is not supported.
        label = cv2.resize(label.astype(np.int32), (nw, nh), interpolation=cv2.INTER_NEAREST)
    return image, label


def random_scale(
    image: np.ndarray,
    label: Optional[np.ndarray],
    base_size: Sequence[int],
    scale_range: Sequence[float],
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Resize to ``s × base_size`` (keeping the aspect ratio), ``s ~ U(scale_range)``.

    Args:
        base_size: ``(h, w)`` the scale multiplies; ``-1`` (or a non-positive entry) means the
            image's own size, i.e. a plain random rescale by ``s``.
        scale_range: ``(low, high)`` of the uniform scale factor.
    """
    s = _uniform(float(scale_range[0]), float(scale_range[1]))
    h, w = image.shape[:2]
    bh, bw = _base(base_size, (h, w))
    return resize_scale(image, label, (bh * s, bw * s))


def _base(base_size: Sequence[int], hw: Tuple[int, int]) -> Tuple[int, int]:
    """``base_size`` with ``-1`` / ``[-1]`` entries replaced by the image size."""
    if isinstance(base_size, (int, float)):
        base_size = [base_size, base_size]
    if len(base_size) == 1:
        base_size = [base_size[0], base_size[0]]
    bh, bw = int(base_size[0]), int(base_size[1])
    if bh <= 0 or bw <= 0:
        return hw
    return bh, bw


def _crop_box(h: int, w: int, ch: int, cw: int) -> Tuple[int, int]:
    y0 = int(torch.randint(0, h - ch + 1, ()).item())
    x0 = int(torch.randint(0, w - cw + 1, ()).item())
    return y0, x0


def random_crop_category_area(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: Sequence[int],
    single_category_max_area: float,
    ignore_value: int,
    max_tries: int = 10,
) -> Tuple[np.ndarray, np.ndarray]:
    """Random crop of ``crop_size`` (clipped to the image) avoiding crops dominated by one class.

    A crop is re-drawn (up to ``max_tries`` times, as in Detectron2 / mmsegmentation) while one
    class covers more than ``single_category_max_area`` of its labelled (non-ignore) pixels; the
    last draw is kept if none qualifies.

    Args:
        image: ``H×W×3``; label: ``H×W``.
        crop_size: ``(ch, cw)``; an image smaller than that is cropped to its own size (pad it
            afterwards with :func:`pad_to_size`).
        single_category_max_area: in ``(0, 1]``; ``1.0`` turns the check off.
        ignore_value: label value not counted.

    Returns:
        The cropped image ``h'×w'×3`` and label ``h'×w'`` with ``h' = min(H, ch)``, ``w' = min(W, cw)``.
    """
    h, w = label.shape[:2]
    ch, cw = min(int(crop_size[0]), h), min(int(crop_size[1]), w)
    y0, x0 = _crop_box(h, w, ch, cw)
    if single_category_max_area < 1.0:
        for _ in range(max_tries):
            crop = label[y0 : y0 + ch, x0 : x0 + cw]
            values, counts = np.unique(crop, return_counts=True)
            counts = counts[values != ignore_value]
            if len(counts) > 1 and counts.max() / counts.sum() < single_category_max_area:
                break
            y0, x0 = _crop_box(h, w, ch, cw)
    return (
        image[y0 : y0 + ch, x0 : x0 + cw],
        label[y0 : y0 + ch, x0 : x0 + cw],
    )


def pad_to_size(
    image: np.ndarray, label: Optional[np.ndarray], size: Sequence[int], ignore_value: int
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Pad bottom / right to at least ``size = (h, w)``: the image with 0, the label with the
    ignore value (so padded pixels contribute no loss)."""
    h, w = image.shape[:2]
    ph, pw = max(int(size[0]) - h, 0), max(int(size[1]) - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
    if label is not None:
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_value)
    return image, label


def random_hflip(
    image: np.ndarray, label: Optional[np.ndarray], prob: float = 0.5
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Mirror image and label left-right with probability ``prob``."""
    if torch.rand(()).item() < prob:
        image = image[:, ::-1]
        label = label[:, ::-1] if label is not None else None
    return image, label


class ColorJitter:
    """Photometric jitter of a ``uint8`` ``H×W×3`` RGB image (torchvision ``ColorJitter``).

    ``brightness``, ``contrast``, ``saturation`` draw a factor in ``[1 - x, 1 + x]``; ``hue`` a
    shift in ``[-hue, hue]`` (fraction of the hue circle). The order of the four is random.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float):
        self._jitter = T.ColorJitter(
            brightness=brightness, contrast=contrast, saturation=saturation, hue=hue
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``uint8``, or ``float32`` in ``[0, 255]`` (high-bit-depth images, bcd/data/io.py), in
        and out."""
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if t.is_floating_point():  # torchvision's float convention is [0, 1]
            return (self._jitter(t / 255.0) * 255.0).permute(1, 2, 0).numpy()
        return self._jitter(t).permute(1, 2, 0).numpy()


class SemSegAugmentation:
    """The training augmentation: scale, crop, pad, flip, photometric jitter.

    Args:
        base_size: ``(h, w)`` of the random scale (``-1``: the image's own size).
        scale_range: ``(low, high)`` of the scale factor.
        crop_size: ``(h, w)`` of the crop, or None for no crop; the result is padded to it.
        single_category_max_area: crop constraint (see :func:`random_crop_category_area`).
        flip: random horizontal flip with probability 0.5.
        color_jitter: a :class:`ColorJitter` or None.
        ignore_value: label value of padded pixels.
    """

    def __init__(
        self,
        base_size: Sequence[int],
        scale_range: Sequence[float],
        crop_size: Optional[Sequence[int]],
        single_category_max_area: float,
        flip: bool,
        color_jitter: Optional[ColorJitter],
        ignore_value: int,
    ):
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"INPUT.SCALE_RANGE must be (low, high) with 0 < low <= high, got {scale_range}")
        if not 0 < single_category_max_area <= 1:
            raise ValueError(
                f"INPUT.CROP.SINGLE_CATEGORY_MAX_AREA must be in (0, 1], got {single_category_max_area}"
            )
        self.base_size = list(base_size) if isinstance(base_size, (list, tuple)) else [base_size]
        self.scale_range = tuple(scale_range)
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.single_category_max_area = single_category_max_area
        self.flip = flip
        self.color_jitter = color_jitter
        self.ignore_value = ignore_value

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Args: ``H×W×3`` uint8 image, ``H×W`` labels. Returns the augmented pair, ``h×w×3`` and
        ``h×w`` (``h×w`` = the crop size when cropping)."""
        image, label = random_scale(image, label, self.base_size, self.scale_range)
        if self.crop_size is not None:
            image, label = random_crop_category_area(
                image, label, self.crop_size, self.single_category_max_area, self.ignore_value
            )
            image, label = pad_to_size(image, label, self.crop_size, self.ignore_value)
        if self.flip:
            image, label = random_hflip(image, label)
        if self.color_jitter is not None:
            image = self.color_jitter(image)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def __repr__(self) -> str:
        return (
            f"SemSegAugmentation(base_size={self.base_size}, scale_range={self.scale_range}, "
            f"crop_size={self.crop_size}, single_category_max_area={self.single_category_max_area}, "
            f"flip={self.flip}, color_jitter={self.color_jitter is not None})"
        )


def resize_to_base(image: np.ndarray, base_size: Sequence[int]) -> np.ndarray:
    """Test-time resize of the image to fit ``base_size`` (keeping the aspect ratio); ``-1``
    keeps the image as it is. Labels are not resized: evaluation is at the original size."""
    bh, bw = _base(base_size, image.shape[:2])
    return resize_scale(image, None, (bh, bw))[0]

