"""Reading images and label maps with errors that name the file: the one image reader of
every mapper.

A data loader worker that hits a truncated JPEG or a missing PNG should fail with a message
saying *which* file is bad, not with a bare ``OSError`` from deep inside PIL. Every reader here
wraps the decoding of one file and re-raises with its path.

``read_image(path, format, scaling)`` is the reader every mapper calls (semantic segmentation,
detection, instances), with ``scaling = IntensityScaling.from_config(cfg)``:

* 8-bit images (JPEG, 8-bit PNG, palette, ...) come back as ``uint8`` ``H×W×3`` (RGB / BGR) or
  ``H×W×1`` ("L"), EXIF orientation applied, exactly as before.
* High-bit-depth images (16-bit PNG / TIFF, grey or colour; 32-bit integer; 32-bit float) are
  read at full precision and mapped to ``float32`` in ``[0, 255]`` by the rule
  ``INPUT.INTENSITY_SCALING`` names (see ``IntensityScaling``); with the default ``"none"``
  they are refused with an ``ImageReadError`` naming the file, its mode and the key to set,
  rather than clipped to 255 or truncated to their high byte (which PIL's RGB conversion does).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "ImageReadError",
    "IntensityScaling",
    "read_image",
    "read_sem_seg",
    "image_size",
    "image_bit_depth",
]

# Formats accepted by ``read_image``: PIL modes, plus "BGR" (OpenCV order).
_SUPPORTED_FORMATS = ("RGB", "BGR", "L")

# PIL modes of single-channel images with more than 8 bits per pixel.
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageReadError(OSError):
    """An image or label file could not be read or decoded. The message names the file."""


class IntensityScaling:
    """How a high-bit-depth image becomes the model's ``[0, 255]`` float input.

    ``INPUT.INTENSITY_SCALING``:

    * ``"none"`` (default): high-bit-depth images are refused (``ImageReadError`` naming the
      file and its mode): the right mapping depends on the data, so it is asked for.
    * ``"fixed"``: ``INPUT.INTENSITY_RANGE = [lo, hi]`` maps linearly to ``[0, 255]``:
      ``255 · (v − lo) / (hi − lo)``, values outside clipped. Use the sensor's or the dataset's
      range (e.g. ``[0, 4095]`` for 12-bit data stored in 16-bit PNGs); every image gets the
      same mapping, so intensities stay comparable between images.
    * ``"minmax"``: each image's own minimum and maximum (over all channels) map to 0 and 255
      (a constant image gives 0): contrast is normalised per image, absolute levels are lost.

    8-bit images are never rescaled. The result is ``float32`` (no rounding to 8 bits); the
    model then normalises it with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` as any image.
    """

    MODES = ("none", "fixed", "minmax")

    def __init__(self, mode: str = "none", intensity_range: Sequence[float] = (0.0, 65535.0)):
        if mode not in self.MODES:
            raise ValueError(
                f"INPUT.INTENSITY_SCALING must be one of {self.MODES}; got {mode!r}"
            )
        lo, hi = (float(v) for v in intensity_range)
        if mode == "fixed" and not hi > lo:
            raise ValueError(
                f"INPUT.INTENSITY_RANGE must be [lo, hi] with hi > lo; got {list(intensity_range)}"
            )
        self.mode = mode
        self.range = (lo, hi)

    @classmethod
    def from_config(cls, cfg) -> "IntensityScaling":
        """From ``cfg.INPUT.INTENSITY_SCALING`` and ``cfg.INPUT.INTENSITY_RANGE``."""
        return cls(cfg.INPUT.INTENSITY_SCALING, cfg.INPUT.INTENSITY_RANGE)

    def __call__(self, arr: np.ndarray, path: str, mode: str) -> np.ndarray:
        """``arr`` (any numeric dtype, ``H×W×C``) -> ``float32`` in ``[0, 255]``.

        Raises:
            ImageReadError: ``mode == "none"``, naming ``path`` and its ``mode``.
        """
        if self.mode == "none":
            raise ImageReadError(
                f"Image '{path}' is a high-bit-depth image (mode {mode}, {arr.dtype}, values "
                f"{arr.min()}..{arr.max()}); set INPUT.INTENSITY_SCALING to 'fixed' (with "
                f"INPUT.INTENSITY_RANGE [lo, hi]) or 'minmax' to read it at full precision"
            )
        x = arr.astype(np.float64)
        if self.mode == "fixed":
            lo, hi = self.range
        else:
            lo, hi = float(x.min()), float(x.max())
            if hi <= lo:
                return np.zeros(arr.shape, dtype=np.float32)
        return np.clip((x - lo) * (255.0 / (hi - lo)), 0.0, 255.0).astype(np.float32)

    def __repr__(self) -> str:
        return f"IntensityScaling(mode={self.mode!r}, range={self.range})"


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


def image_bit_depth(img: Image.Image, path: str) -> int:
    """Bits per sample of an opened image. PIL reports 16-bit colour PNG / TIFF files as mode
    "RGB" (keeping the high byte only), so those headers are read directly."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return 16
    if img.mode in ("I", "F"):
        return 32
    if img.format == "PNG" and img.mode in ("RGB", "RGBA", "LA"):
        with open(path, "rb") as f:
            header = f.read(25)
        return int(header[24]) if len(header) == 25 else 8  # IHDR bit depth
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, (8,))  # BitsPerSample
        bits = bits if isinstance(bits, tuple) else (bits,)
        return int(max(bits))
    return 8


# EXIF orientation -> numpy operations on an H×W[×C] array (ImageOps.exif_transpose's table).
_EXIF_OPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _read_high_bit_depth(img: Image.Image, path: str) -> np.ndarray:
    """Full-precision ``H×W×C`` array (C = 1, 3 or 4; RGB order) of a high-bit-depth file."""
    if img.mode in _HIGH_BIT_MODES:
        arr = np.asarray(img)
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        arr = arr[:, :, None]
    else:  # 16-bit colour: PIL would truncate it; OpenCV reads it whole (BGR[A] order)
        import cv2

        arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ImageReadError(f"Cannot decode high-bit-depth image file '{path}' (mode {img.mode})")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        elif arr.shape[2] >= 3:
            arr = np.concatenate([arr[:, :, 2::-1], arr[:, :, 3:]], axis=2)
    orientation = img.getexif().get(0x0112, 1)
    if orientation in _EXIF_OPS:
        arr = _EXIF_OPS[orientation](arr)
    return np.ascontiguousarray(arr)


def read_image(
    path: str, format: str = "RGB", scaling: Optional[IntensityScaling] = None  # noqa: A002
) -> np.ndarray:
    """Read an image file into a numpy array, applying its EXIF orientation. Every mapper reads
    its images through this function.

    Args:
        path: image file (any format PIL reads: JPEG, PNG, TIFF, ...).
        format: "RGB", "BGR" or "L" (grayscale).
        scaling: the rule for high-bit-depth images (``IntensityScaling.from_config(cfg)``);
            None = ``IntensityScaling("none")`` (they are refused).

    Returns:
        ``H×W×3`` ("RGB" / "BGR") or ``H×W×1`` ("L"): ``uint8`` for 8-bit files; ``float32`` in
        ``[0, 255]`` for high-bit-depth files (scaled by ``scaling``; a single channel is
        repeated to three, an alpha channel dropped, colour to grey by ITU-R 601-2 luma).

    Raises:
        ImageReadError: the file is missing or cannot be decoded, or is high-bit-depth with
            ``scaling`` "none"; the message names it.
    """
    if format not in _SUPPORTED_FORMATS:
        raise ValueError(f"read_image(): format must be one of {_SUPPORTED_FORMATS}, got {format!r}")
    img = _open(path)
    if image_bit_depth(img, path) > 8:
        arr = _read_high_bit_depth(img, path)
        arr = (scaling or IntensityScaling())(arr, path, img.mode)
        if arr.shape[2] == 1:
            arr = arr if format == "L" else np.repeat(arr, 3, axis=2)
        else:
            arr = arr[:, :, :3]
            if format == "L":  # PIL's "L" conversion weights
                arr = (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
        if format == "BGR":
            arr = arr[:, :, ::-1]
        return np.ascontiguousarray(arr, dtype=np.float32)
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
