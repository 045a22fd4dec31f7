"""The generated demo dataset for semantic segmentation (``demo_sem_seg_train`` / ``_val``).

GENERATED DATA, not a real dataset: deterministic synthetic scenes built by this module on
first use into ``get_datasets_root()/demo_sem_seg/`` so that the README's demo, the tests and a
first training run need no download.

* 300 train + 60 val images, 128×128 RGB JPEG, Pascal-VOC folder layout
  (``JPEGImages/``, ``SegmentationClass/`` palette PNGs, ``ImageSets/Segmentation/{train,val}.txt``).
* 6 classes: ``background``, ``disc``, ``box``, ``ring``, ``bar``, ``triangle``.
* Textured, weakly coloured background; textured objects whose colours come from one hue family
  per class (jittered, so colour is a strong cue but shape, texture and context still matter),
  overlapping objects, thin parts (rings 2-4 px wide, bars 2-5 px), fine boundaries. A small
  network from random initialisation learns it on a CPU in minutes, and its errors concentrate
  on boundaries and thin parts, which is what boundary distillation targets.
* Ignore label 255 on a 1-pixel band along the boundary of some objects (as in VOC) and on a few
  small random regions.

Build it explicitly with ``python -m bcd.data.datasets.demo --root DIR``.
"""
from __future__ import annotations

import argparse
import colorsys
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image

from bcd.utils.file_io import build_dir_atomically

from .registry import get_datasets_root
from .sem_seg import default_colors, load_sem_seg, register_sem_seg

__all__ = [
    "DEMO_CLASSES",
    "DEMO_SPLITS",
    "build_demo_sem_seg",
    "ensure_demo_sem_seg",
    "demo_sem_seg_root",
    "render_scene",
]

logger = logging.getLogger(__name__)

DEMO_VERSION = 2  # bump when render_scene changes: older copies are rebuilt on first use
DEMO_DIRNAME = "demo_sem_seg"
DEMO_CLASSES = ["background", "disc", "box", "ring", "bar", "triangle"]
DEMO_COLORS = default_colors(len(DEMO_CLASSES))
IGNORE_LABEL = 255
IMAGE_SIZE = 128
# split -> (first index, number of images); indices seed the scenes, so splits never overlap.
DEMO_SPLITS: Dict[str, Tuple[int, int]] = {"train": (0, 300), "val": (300, 60)}
SEED = 20240521

_README = """GENERATED DATA - not a real dataset.

Synthetic semantic-segmentation scenes made by bcd.data.datasets.demo (version {version},
seed {seed}) for the bcd demo and tests. Rebuild with:
    python -m bcd.data.datasets.demo --root <datasets root>

Layout (Pascal VOC style):
    JPEGImages/<id>.jpg                     {size}x{size} RGB images
    SegmentationClass/<id>.png              palette PNG labels, pixel value = class index
    ImageSets/Segmentation/train.txt        {n_train} ids
    ImageSets/Segmentation/val.txt          {n_val} ids

Classes (index: name): {classes}
Ignore label: 255 (1-pixel bands along some object boundaries, a few small random regions).
"""


def demo_sem_seg_root(root: str | None = None) -> str:
    """Folder of the demo dataset under ``root`` (default: ``get_datasets_root()``)."""
    return os.path.join(root if root is not None else get_datasets_root(), DEMO_DIRNAME)


# ---------------------------------------------------------------------------------------------
# Scene rendering
# ---------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """``size×size`` float noise in [0, 1] varying over ~``size / cells`` pixels."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _hsv_color(rng: np.random.Generator, hue: float, sat: Tuple[float, float]) -> np.ndarray:
    """An RGB colour in [0, 255] of hue ``hue`` (+-0.04, in turns) and saturation in ``sat``."""
    h = (hue + rng.uniform(-0.04, 0.04)) % 1.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(0.45, 0.9))
    return np.array(rgb, np.float32) * 255.0


def _texture(rng: np.random.Generator, size: int, kind: str, hue: float | None = None) -> np.ndarray:
    """A ``size×size×3`` float texture in [0, 255]: two colours mixed by a pattern.

    With ``hue`` (an object class) both colours are saturated colours of that hue family; without
    it (background) they are weakly saturated colours of any hue.
    """
    if hue is None:
        bg_hue = rng.uniform(0, 1)
        base = _hsv_color(rng, bg_hue, (0.0, 0.3))
        alt = _hsv_color(rng, bg_hue + 0.5 * rng.uniform(-1, 1), (0.0, 0.3))
    else:
        base = _hsv_color(rng, hue, (0.55, 0.95))
        alt = _hsv_color(rng, hue, (0.55, 0.95))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 9)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == "checker":
        p = int(rng.integers(3, 7))
        t = (((xx // p) + (yy // p)) % 2).astype(np.float32)
    elif kind == "blotches":
        t = _smooth_noise(rng, size, int(rng.integers(6, 14)))
    else:  # "grain": fine noise around one colour
        t = rng.random((size, size)).astype(np.float32) * 0.35
    tex = base[None, None] * (1 - t[..., None]) + alt[None, None] * t[..., None]
    tex += rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)
    return tex


# Texture and hue family (in turns of the colour wheel) of each object class; the background
# draws any texture with weak colours.
_CLASS_TEXTURE = {1: "grain", 2: "stripes", 3: "grain", 4: "grain", 5: "checker"}
_CLASS_HUE = {1: 0.0, 2: 0.33, 3: 0.62, 4: 0.14, 5: 0.82}


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """``size×size`` uint8 mask (1 inside) of one object of class ``cls``."""
    m = np.zeros((size, size), np.uint8)
    cx, cy = (int(v) for v in rng.integers(12, size - 12, size=2))
    if cls == 1:  # disc
        cv2.circle(m, (cx, cy), int(rng.integers(9, 26)), 1, thickness=-1, lineType=cv2.LINE_8)
    elif cls == 2:  # box, rotated
        w, h = rng.uniform(14, 42, size=2)
        pts = cv2.boxPoints(((float(cx), float(cy)), (float(w), float(h)), float(rng.uniform(0, 90))))
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    elif cls == 3:  # ring: a thin annulus
        r = int(rng.integers(11, 30))
        cv2.circle(m, (cx, cy), r, 1, thickness=int(rng.integers(2, 5)), lineType=cv2.LINE_8)
    elif cls == 4:  # bar: a long thin line
        length = rng.uniform(40, 100)
        a = rng.uniform(0, np.pi)
        dx, dy = 0.5 * length * np.cos(a), 0.5 * length * np.sin(a)
        p0 = (int(round(cx - dx)), int(round(cy - dy)))
        p1 = (int(round(cx + dx)), int(round(cy + dy)))
        cv2.line(m, p0, p1, 1, thickness=int(rng.integers(2, 6)), lineType=cv2.LINE_8)
    else:  # triangle with a minimum area, so it is not a sliver
        for _ in range(20):
            pts = np.array([cx, cy])[None] + rng.integers(-24, 25, size=(3, 2))
            (ax, ay), (bx, by) = pts[1] - pts[0], pts[2] - pts[0]
            area = 0.5 * abs(int(ax) * int(by) - int(ay) * int(bx))
            if area > 150:
                break
        cv2.fillPoly(m, [pts.astype(np.int32).clip(0, size - 1)], 1, lineType=cv2.LINE_8)
    return m


def render_scene(index: int, size: int = IMAGE_SIZE, seed: int = SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Render demo scene ``index`` (deterministic in ``(index, size, seed)``).

    Returns:
        ``image``: ``size×size×3`` uint8 RGB; ``label``: ``size×size`` uint8 class indices in
        ``[0, 6)`` and the ignore label 255.
    """
    rng = np.random.default_rng([seed, index])
    kinds = ["stripes", "checker", "blotches", "grain"]
    image = _texture(rng, size, kinds[int(rng.integers(len(kinds)))])
    # A second, smooth layer of large blotches so the background is not one texture.
    image = 0.7 * image + 0.3 * _texture(rng, size, "blotches")
    label = np.zeros((size, size), np.uint8)
    n_objects = int(rng.integers(2, 7))
    masks: List[Tuple[int, np.ndarray, bool]] = []
    for _ in range(n_objects):
        cls = int(rng.integers(1, len(DEMO_CLASSES)))
        m = _shape_mask(rng, cls, size).astype(bool)
        if not m.any():
            continue
        tex = _texture(rng, size, _CLASS_TEXTURE[cls], hue=_CLASS_HUE[cls])
        image[m] = tex[m]  # later objects occlude earlier ones
        label[m] = cls
        # VOC-style ignore band on the outline of some solid objects (thin ones keep their
        # pixels: their whole width would be boundary).
        masks.append((cls, m, cls in (1, 2, 5) and rng.random() < 0.5))
    image = cv2.GaussianBlur(image, (3, 3), 0.6)  # camera-like softness of the edges
    kernel = np.ones((3, 3), np.uint8)
    for cls, _, band in masks:
        if band:
            visible = (label == cls).astype(np.uint8)
            edge = visible.astype(bool) & ~cv2.erode(visible, kernel).astype(bool)
            label[edge] = IGNORE_LABEL
    if rng.random() < 0.15:  # a few small regions nobody could label
        h, w = (int(v) for v in rng.integers(4, 11, size=2))
        y, x = (int(v) for v in rng.integers(0, size - 11, size=2))
        label[y : y + h, x : x + w] = IGNORE_LABEL
    return np.clip(image, 0, 255).astype(np.uint8), label


def _palette() -> List[int]:
    pal = [0] * 768
    for i, c in enumerate(DEMO_COLORS):
        pal[3 * i : 3 * i + 3] = c
    pal[3 * IGNORE_LABEL : 3 * IGNORE_LABEL + 3] = [224, 224, 192]  # VOC's ignore colour
    return pal


def _write_dataset(folder: str) -> None:
    os.makedirs(os.path.join(folder, "JPEGImages"))
    os.makedirs(os.path.join(folder, "SegmentationClass"))
    os.makedirs(os.path.join(folder, "ImageSets", "Segmentation"))
    palette = _palette()
    for split, (start, count) in DEMO_SPLITS.items():
        ids = []
        for i in range(start, start + count):
            image, label = render_scene(i)
            stem = f"demo_{i:06d}"
            Image.fromarray(image).save(os.path.join(folder, "JPEGImages", stem + ".jpg"), quality=92)
            lab = Image.fromarray(label, mode="P")
            lab.putpalette(palette)
            lab.save(os.path.join(folder, "SegmentationClass", stem + ".png"))
            ids.append(stem)
        with open(os.path.join(folder, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    with open(os.path.join(folder, "README.txt"), "w") as f:
        f.write(
            _README.format(
                version=DEMO_VERSION,
                seed=SEED,
                size=IMAGE_SIZE,
                n_train=DEMO_SPLITS["train"][1],
                n_val=DEMO_SPLITS["val"][1],
                classes=", ".join(f"{i}: {c}" for i, c in enumerate(DEMO_CLASSES)),
            )
        )


def build_demo_sem_seg(root: str | None = None, overwrite: bool = False) -> str:
    """Generate the demo dataset into ``root/demo_sem_seg`` and return that folder.

    The files are written into a temporary folder next to the target and renamed into place at
    the end, so a concurrent process sees either no dataset or a complete one. When another
    process finished first, its copy is kept (the content is identical: it is deterministic).
    """
    final = demo_sem_seg_root(root)
    if os.path.isdir(final):
        if not overwrite:
            readme = os.path.join(final, "README.txt")
            if not os.path.isfile(readme):
                raise RuntimeError(
                    f"'{final}' exists but is not a complete demo dataset (no README.txt); delete "
                    f"it or rebuild with: python -m bcd.data.datasets.demo --overwrite"
                )
            with open(readme) as f:
                if f"(version {DEMO_VERSION}," in f.read():
                    return final
            logger.info("Demo dataset at %s is from another version: rebuilding it", final)
        shutil.rmtree(final, ignore_errors=True)
    return build_dir_atomically(final, _write_dataset)


def ensure_demo_sem_seg(root: str | None = None) -> str:
    """The demo dataset's folder, generating it first if it does not exist."""
    return build_demo_sem_seg(root)  # returns at once when the dataset is there


def _loader(split: str):
    def _load() -> List[Dict[str, Any]]:
        folder = ensure_demo_sem_seg()
        return load_sem_seg(
            os.path.join(folder, "JPEGImages"),
            os.path.join(folder, "SegmentationClass"),
            image_ext=".jpg",
            label_ext=".png",
            list_file=os.path.join(folder, "ImageSets", "Segmentation", split + ".txt"),
        )

    return _load


def register_demo_sem_seg() -> None:
    """Register ``demo_sem_seg_train`` and ``demo_sem_seg_val`` (generated on first load)."""
    for split in DEMO_SPLITS:
        register_sem_seg(
            f"demo_sem_seg_{split}",
            _loader(split),
            classes=DEMO_CLASSES,
            colors=DEMO_COLORS,
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            generated=True,
            description="GENERATED synthetic scenes (bcd.data.datasets.demo), not a real dataset",
        )


if __name__ != "__main__":  # under ``python -m`` the package import has registered them already
    register_demo_sem_seg()


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the GENERATED bcd demo segmentation dataset.")
    parser.add_argument("--root", default=None, help="datasets root (default: $BCD_DATASETS or ./datasets)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args()
    t0 = time.perf_counter()
    folder = build_demo_sem_seg(args.root, overwrite=args.overwrite)
    print(f"Demo dataset (generated) at {folder} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
