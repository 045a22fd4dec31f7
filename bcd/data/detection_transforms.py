"""Geometric transforms for detection: one transform moves an image, its boxes and its masks.

An augmentation (``ResizeShortestEdge``, ``RandomFlip``) looks at an image and returns a
deterministic ``Transform`` (``ResizeTransform``, ``HFlipTransform``) that is then applied to the
image, the boxes and the masks alike, so all stay aligned (Detectron2's ``T.Augmentation`` /
``T.Transform`` split). Images are ``H×W×C`` uint8 numpy arrays; boxes ``N×4`` XYXY float
pixels; polygons lists of flat ``[x0, y0, x1, y1, ...]`` arrays; bitmasks ``H×W`` uint8.
"""
from __future__ import annotations

import sys
from typing import List, Sequence, Tuple

import numpy as np

__all__ = [
    "Transform",
    "ResizeTransform",
    "HFlipTransform",
    "ResizeShortestEdge",
    "RandomFlip",
    "apply_augmentations",
]


class Transform:
    """A deterministic geometric transform. Subclasses implement the ``apply_*`` methods."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} must override apply_image")

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """``N×2`` float ``(x, y)`` pixel coordinates -> transformed coordinates."""
        raise TypeError(f"{type(self).__name__} must override apply_coords")

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        """``H×W`` integer mask (nearest-neighbour resampling)."""
        raise TypeError(f"{type(self).__name__} must override apply_segmentation")

    def apply_box(self, boxes: np.ndarray) -> np.ndarray:
        """``N×4`` XYXY boxes -> the axis-aligned boxes enclosing the transformed corners."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        idx = np.array([[0, 1], [2, 1], [0, 3], [2, 3]])  # the 4 corners
        corners = boxes[:, idx].reshape(-1, 2)
        corners = self.apply_coords(corners).reshape(-1, 4, 2)
        mins, maxs = corners.min(axis=1), corners.max(axis=1)
        return np.concatenate([mins, maxs], axis=1)

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        """Each polygon is a flat ``[x0, y0, x1, y1, ...]`` array."""
        return [
            self.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).reshape(-1)
            for p in polygons
        ]


class ResizeTransform(Transform):
    """Resize ``h×w`` -> ``new_h×new_w`` (bilinear for images, nearest for masks)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int) -> None:
        self.h, self.w, self.new_h, self.new_w = h, w, new_h, new_w

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        import cv2

        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"ResizeTransform for {self.h}x{self.w} got image {img.shape[:2]}")
        if (self.h, self.w) == (self.new_h, self.new_w):
            return img
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        return out.reshape(self.new_h, self.new_w, *img.shape[2:])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.resize(mask, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)


class HFlipTransform(Transform):
    """Horizontal flip of an image of the given width (pixel edges: ``x -> width - x``)."""

    def __init__(self, width: int) -> None:
        self.width = width

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = self.width - coords[:, 0]
        return coords

    def apply_segmentation(self, mask: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(mask[:, ::-1])


class ResizeShortestEdge:
    """Scale the shorter side to a length, capping the longer side at ``max_size``.

    Args:
        short_edge_length: candidate lengths; ``sample_style="choice"`` draws one of them,
            ``"range"`` draws uniformly in ``[min, max]`` (two values).
        max_size: the longer side never exceeds this (0 = no cap).
        sample_style: ``"choice"`` or ``"range"``.
    """

    def __init__(
        self,
        short_edge_length: Sequence[int],
        max_size: int = sys.maxsize,
        sample_style: str = "choice",
    ) -> None:
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length,)
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got '{sample_style}'")
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(
                f"sample_style='range' needs two lengths (min, max); got {short_edge_length}"
            )
        self.short_edge_length = tuple(int(s) for s in short_edge_length)
        self.max_size = int(max_size) if max_size and max_size > 0 else sys.maxsize
        self.sample_style = sample_style

    @staticmethod
    def get_output_shape(h: int, w: int, short: int, max_size: int) -> Tuple[int, int]:
        """The ``(new_h, new_w)`` for a shortest edge of ``short`` capped at ``max_size``."""
        scale = short / min(h, w)
        new_h, new_w = h * scale, w * scale
        if max(new_h, new_w) > max_size:
            scale = max_size / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)

    def get_transform(self, img: np.ndarray, rng: np.random.Generator) -> Transform:
        h, w = img.shape[:2]
        if self.sample_style == "range":
            short = int(rng.integers(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            short = int(self.short_edge_length[rng.integers(len(self.short_edge_length))])
        if short == 0:  # 0 disables resizing (Detectron2 convention)
            return ResizeTransform(h, w, h, w)
        new_h, new_w = self.get_output_shape(h, w, short, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)


class RandomFlip:
    """Horizontal flip with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def get_transform(self, img: np.ndarray, rng: np.random.Generator) -> Transform:
        if rng.random() < self.prob:
            return HFlipTransform(img.shape[1])
        h, w = img.shape[:2]
        return ResizeTransform(h, w, h, w)  # identity


def apply_augmentations(
    augs: Sequence, img: np.ndarray, rng: np.random.Generator
) -> Tuple[np.ndarray, List[Transform]]:
    """Apply ``augs`` in order to ``img``; return the new image and the transforms used."""
    transforms = []
    for aug in augs:
        t = aug.get_transform(img, rng)
        img = t.apply_image(img)
        transforms.append(t)
    return img, transforms
