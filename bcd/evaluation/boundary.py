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

Connectivity (BCD's claim that distilled students predict less fragmented regions): for each
image and class, the number of connected components (8-connected) of the ground-truth mask
``n_g`` and of the predicted mask ``n_p`` (ignored pixels removed from both). Per class,

    Conn_c = Σ_images min(n_g, n_p) / Σ_images max(n_g, n_p)

(100 when every image has as many predicted regions of ``c`` as true ones; a region split in
three counts 1/3, an invented or missed region lowers it too), and the fragmentation ratio
``Frag_c = Σ n_p / Σ n_g`` (> 1: more predicted pieces than true regions).
"""
from __future__ import annotations

import math
from typing import Tuple

import cv2
import numpy as np

__all__ = [
    "boundary_dilation",
    "mask_to_boundary",
    "label_map_boundary",
    "boundary_iou_counts",
    "connected_component_counts",
    "connectivity_scores",
]


def boundary_dilation(height: int, width: int, dilation_ratio: float) -> int:
    """Band width ``d`` in pixels: ``round(dilation_ratio × sqrt(H² + W²))``, at least 1."""
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def mask_to_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Boundary band of a binary mask.

    Args:
        mask: ``H×W`` bool / 0-1 array.
        dilation: band width ``d`` in pixels.

    Returns:
        ``H×W`` bool: pixels of ``mask`` within ``d`` pixels (chessboard distance) of a pixel
        outside it, the outside of the image included; i.e. ``mask`` minus its erosion by a
        ``(2d+1)×(2d+1)`` square (``d`` erosions by a 3×3 square, as in the reference code).
    """
    m = mask.astype(bool)
    out = np.zeros(m.shape, dtype=bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return out
    # Work on the mask's bounding box: a one-pixel zero frame around it (the image outside, or
    # background) lies within the same chessboard distance as any zero beyond the box.
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = np.pad(m[y0:y1, x0:x1].astype(np.uint8), 1)
    # Chessboard (L-inf) distance of every mask pixel to the nearest zero: exact with DIST_C.
    dist = cv2.distanceTransform(crop, cv2.DIST_C, 3)[1:-1, 1:-1]
    out[y0:y1, x0:x1] = m[y0:y1, x0:x1] & (dist <= dilation)
    return out


def label_map_boundary(labels: np.ndarray, dilation: int) -> np.ndarray:
    """Boundary bands of every class of a label map at once.

    Args:
        labels: ``H×W`` integer labels in ``[0, 65533]``.
        dilation: band width ``d`` in pixels.

    Returns:
        ``H×W`` bool: True where a pixel lies in the boundary band of its own class, i.e.
        ``mask_to_boundary(labels == labels[p], d)[p]``: some pixel within chessboard distance
        ``d`` has another label or is outside the image. One min and one max filter (OpenCV
        morphology, separable) instead of one distance transform per class.
    """
    if labels.size and (labels.min() < 0 or labels.max() > 65533):
        raise ValueError("label_map_boundary(): labels must lie in [0, 65533]")
    # A one-pixel frame of a value no class has stands for the outside of the image; beyond
    # it OpenCV's default border value is neutral for both filters.
    # uint8 morphology is about 3x faster than uint16: use it when the labels fit.
    small = labels.size == 0 or labels.max() <= 253
    frame = 254 if small else 65534
    lab = np.pad(labels.astype(np.uint8 if small else np.uint16), 1, constant_values=frame)
    kernel = np.ones((2 * int(dilation) + 1, 2 * int(dilation) + 1), np.uint8)
    lo = cv2.erode(lab, kernel)
    hi = cv2.dilate(lab, kernel)
    return ((lo != lab) | (hi != lab))[1:-1, 1:-1]


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
    k = num_classes
    d = boundary_dilation(gt.shape[0], gt.shape[1], dilation_ratio)
    valid = gt != ignore_label
    # "No class" (ignored pixels) as one more label, K, in both maps: it bounds every class.
    g = np.where(valid, gt, k).astype(np.int64)
    p = np.where(valid, pred, k).astype(np.int64)
    bg = label_map_boundary(g, d) & valid
    bp = label_map_boundary(p, d) & valid
    gt_b = np.bincount(g[bg], minlength=k + 1)[:k]
    pred_b = np.bincount(p[bp], minlength=k + 1)[:k]
    both = bg & bp & (g == p)  # the pixel is in the band of the same class in both maps
    inter = np.bincount(g[both], minlength=k + 1)[:k]
    union = gt_b + pred_b - inter
    return inter.astype(np.int64), union.astype(np.int64), gt_b.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Connectivity (fragmentation) of predicted regions
# ---------------------------------------------------------------------------------------------
def connected_component_counts(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_label: int,
    connectivity: int = 8,
) -> Tuple[np.ndarray, np.ndarray]:
    """Number of connected regions of every class in the ground truth and in the prediction.

    BCD's second claim is that distilled students predict fewer fragmented regions. For one image
    and class ``c`` this counts the connected components (OpenCV ``connectedComponents``,
    8-connectivity by default) of ``gt == c`` and of ``pred == c``. Pixels whose ground truth is the
    ignore label are removed from both masks first (as for Boundary IoU), so a prediction is not
    charged for what it does on unlabelled pixels.

    Args:
        gt: ``H×W`` integer ground truth (classes ``0..K-1`` and ``ignore_label``).
        pred: ``H×W`` integer prediction (classes ``0..K-1``).
        num_classes: ``K``.
        ignore_label: ground-truth value removed from both masks.
        connectivity: 4 or 8.

    Returns:
        ``(n_gt, n_pred)``: two ``int64`` arrays of length ``K``.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"connected_component_counts(): gt {gt.shape} and pred {pred.shape} differ")
    if connectivity not in (4, 8):
        raise ValueError(f"connected_component_counts(): connectivity must be 4 or 8, got {connectivity}")
    valid = gt != ignore_label
    n_gt = np.zeros(num_classes, dtype=np.int64)
    n_pred = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        for arr, out in ((gt, n_gt), (pred, n_pred)):
            m = (arr == c) & valid
            if m.any():
                # connectedComponents counts the zero background as label 0
                out[c] = cv2.connectedComponents(m.astype(np.uint8), connectivity=connectivity)[0] - 1
    return n_gt, n_pred


def connectivity_scores(
    n_gt: np.ndarray, n_pred: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image connectivity terms from :func:`connected_component_counts`.

    For each class with ``max(n_gt, n_pred) > 0`` in an image, the agreement term is
    ``min(n_gt, n_pred)`` and the normaliser ``max(n_gt, n_pred)``; summed over images, the class
    score is ``Σ min / Σ max`` (1 when every image has as many predicted regions as true ones,
    smaller when predictions fragment a region into pieces, merge regions, or miss or invent
    them). Returns ``(min, max, n_gt)`` per class as ``int64`` arrays, to be summed over images.
    """
    return (np.minimum(n_gt, n_pred).astype(np.int64), np.maximum(n_gt, n_pred).astype(np.int64),
            n_gt.astype(np.int64))
