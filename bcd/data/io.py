"""Reading images and label maps with errors that name the file.

A data loader worker that hits a truncated JPEG or a missing PNG should fail with a message
saying *which* file is bad, not with a bare ``OSError`` from deep inside PIL. Every reader here
wraps the decoding of one file and re-raises with its path.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageReadError", "read_image", "read_sem_seg", "image_size"]

# Formats accepted by ``read_image``: PIL modes, plus "BGR" (OpenCV order).
_SUPPORTED_FORMATS = ("RGB", "BGR", "L")


class ImageReadError(OSError):
    """An image or label file could not be read or decoded. The message names the file."""


def _open(path: str) -> Image.Image:
    """Open and fully decode ``path`` (PIL is lazy: ``load()`` surfaces truncated files here)."""
    if not os.path.isfile(path):
        raise ImageReadError(f"File not found: '{path}'")
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise ImageReadError(f"Cannot read image file '{path}': {type(e).__name__}: {e}") from e
    return img


def read_image(path: str, format: str = "RGB") -> np.ndarray:  # noqa: A002
    """Read an image file into a numpy array, applying its EXIF orientation.

    Args:
        path: image file (any format PIL reads: JPEG, PNG, ...).
        format: "RGB", "BGR" or "L" (grayscale).

    Returns:
        ``uint8`` array ``H×W×3`` ("RGB" / "BGR") or ``H×W×1`` ("L").

    Raises:
        ImageReadError: the file is missing or cannot be decoded; the message names it.
    """
    if format not in _SUPPORTED_FORMATS:
        raise ValueError(f"read_image(): format must be one of {_SUPPORTED_FORMATS}, got {format!r}")
    img = _open(path)
    try:
        # Photos from cameras store their rotation in EXIF; the labels were drawn on the
        # rotated view, so apply it (as Detectron2 does).
        img = ImageOps.exif_transpose(img)
        arr = np.asarray(img.convert("L" if format == "L" else "RGB"))
    except Exception as e:
        raise ImageReadError(f"Cannot decode image file '{path}': {type(e).__name__}: {e}") from e
    if format == "BGR":
        arr = arr[:, :, ::-1]
    elif format == "L":
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def read_sem_seg(path: str) -> np.ndarray:
    """Read a semantic-segmentation label map: one class index per pixel.

    Palette PNGs (VOC style, mode "P") give their palette indices, not the colours; grayscale
    PNGs (mode "L", "I", "I;16") give their values.

    Args:
        path: label file (PNG).

    Returns:
        ``int64`` array ``H×W`` of class indices (the ignore label included as it is stored).

    Raises:
        ImageReadError: the file is missing, cannot be decoded, or has colour channels (an RGB
            colour rendering of a label map is not a label map); the message names it.
    """
    img = _open(path)
    if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        raise ImageReadError(
            f"Label file '{path}' has mode '{img.mode}'; a label map must be a single-channel "
            f"index image (palette 'P' or grayscale 'L' / 16-bit PNG), not a colour rendering"
        )
    return np.asarray(img, dtype=np.int64)


def image_size(path: str) -> tuple:
    """``(height, width)`` of an image file, reading only its header (EXIF rotation applied).

    Raises:
        ImageReadError: the file is missing or is not an image; the message names it.
    """
    if not os.path.isfile(path):
        raise ImageReadError(f"File not found: '{path}'")
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception as e:
        raise ImageReadError(f"Cannot read image file '{path}': {type(e).__name__}: {e}") from e
    # EXIF orientations 5-8 swap width and height.
    if orientation in (5, 6, 7, 8):
        h, w = w, h
    return int(h), int(w)
