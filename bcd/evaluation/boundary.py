"""Boundary IoU for semantic segmentation (Cheng et al., "Boundary IoU: Improving Object-Centric
Image Segmentation Evaluation", CVPR 2021).

For a binary mask ``M`` its boundary region is ``M`` minus its erosion by a square of radius
``d`` pixels, ``d = round(ratio × image diagonal)`` (at least 1), where everything outside the
image counts as background, so a mask touching the image border has a boundary along it (as
in the reference implementation, which pads with zeros before eroding). For each class ``c``:

    BIoU_c = |B(G_c) ∩ B(P_c)| / |B(G_c) ∪ B(P_c)|

with ``G_c`` / ``P_c`` the ground-truth / predicted masks of ``c``. Intersections and unions
are summed over a dataset before dividing (as the confusion matrix sums pixels for mIoU).
Pixels whose ground truth is the ignore label are removed from *both* masks before taking
boundaries (they belong to no class, like the outside of the image): a prediction that is right
on every labelled pixel then scores 100 whatever it predicts on the ignored ones.
"""
from __future__ import annotations

import math
from typing import Tuple

import cv2
import numpy as np

__all__ = ["boundary_dilation", "mask_to_boundary", "boundary_iou_counts"]


def boundary_dilation(height: int, width: int, dilation_ratio: float) -> int:
    """Band width ``d`` in pixels: ``round(dilation_ratio × sqrt(H² + W²))``, at least 1."""
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def mask_to_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Boundary band of a binary mask.

    Args:
        mask: ``H×W`` bool / 0-1 array.
        dilation: band width ``d`` in pixels (erosion by a ``(2d+1)×(2d+1)`` square, which equals
            ``d`` erosions by a 3×3 square).

    Returns:
        ``H×W`` bool: pixels of ``mask`` within ``d`` pixels (chessboard distance) of a pixel
        outside it, the outside of the image included.
    """
    m = mask.astype(np.uint8)
    k = 2 * int(dilation) + 1
    # BORDER_CONSTANT with 0: the outside of the image is background, so it erodes the mask.
    eroded = cv2.erode(
        m, np.ones((k, k), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return (m - eroded).astype(bool)


def boundary_iou_counts(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_label: int,
    dilation_ratio: float,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class boundary intersection / union pixel counts of one image.

    Args:
        gt: ``H×W`` integer ground truth (classes ``0..K-1`` and ``ignore_label``).
        pred: ``H×W`` integer prediction (classes ``0..K-1``).
        num_classes: ``K``.
        ignore_label: ground-truth value excluded from the counts.
        dilation_ratio: band width as a fraction of the image diagonal.

    Returns:
        ``(intersection, union, gt_boundary)``: three ``int64`` arrays of length ``K``; the
        last counts the ground-truth boundary pixels (a class is evaluated where it is > 0).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"boundary_iou_counts(): gt {gt.shape} and pred {pred.shape} differ")
    inter = np.zeros(num_classes, np.int64)
    union = np.zeros(num_classes, np.int64)
    gt_b = np.zeros(num_classes, np.int64)
    d = boundary_dilation(gt.shape[0], gt.shape[1], dilation_ratio)
    valid = gt != ignore_label
    present = np.union1d(np.unique(gt[valid]), np.unique(pred))
    for c in present.tolist():
        if not 0 <= c < num_classes:
            continue
        bg = mask_to_boundary(gt == c, d)  # ignore pixels are never == c
        bp = mask_to_boundary((pred == c) & valid, d)
        inter[c] = np.count_nonzero(bg & bp)
        union[c] = np.count_nonzero(bg | bp)
        gt_b[c] = np.count_nonzero(bg)
    return inter, union, gt_b
