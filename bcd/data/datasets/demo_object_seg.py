"""Generated demo data for object segmentation: ``demo_sod_{train,val}``, ``demo_cod_{train,val}``.

GENERATED DATA, not a real dataset: deterministic synthetic scenes built by this module on
first use into ``get_datasets_root()/demo_object_seg/`` (so the SKD demo, the tests and a first
training run need no download).

* ``sod``: one or two salient objects (smooth random blobs, saturated colour, own texture) on a
  cluttered background (weakly coloured texture plus several smaller, duller distractor shapes
  that are *not* in the mask).
* ``cod``: one object on a camouflaging background: the object is filled with the background's
  own texture family (same two colours, another phase / scale) and a small brightness shift, so
  only a faint texture discontinuity gives it away.
* 240 train + 60 val images per task, sizes drawn in 80..112 px per side (not square, so
  evaluation at the original size is exercised), RGB JPEG images and 8-bit PNG masks
  (0 / 255), layout ``<task>/<split>/{image,mask}/<id>.{jpg,png}``.

Build it explicitly with ``python -m bcd.data.datasets.demo_object_seg --root DIR``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image

from bcd.utils.file_io import build_dir_atomically

from .registry import get_datasets_root
from .object_seg import load_object_seg, register_object_seg

__all__ = ["OBJECT_SEG_DEMO_SPLITS", "render_object_scene", "build_demo_object_seg",
           "ensure_demo_object_seg"]

logger = logging.getLogger(__name__)

DEMO_VERSION = 1  # bump when the rendering changes: older copies are rebuilt on first use
DEMO_DIRNAME = "demo_object_seg"
SEED = 20261129
TASKS = ("sod", "cod")
# split -> (first index, count); the index seeds the scene, so splits never overlap.
OBJECT_SEG_DEMO_SPLITS: Dict[str, Tuple[int, int]] = {"train": (0, 240), "val": (10000, 60)}
SIZE_RANGE = (80, 112)

_README = """GENERATED DATA - not a real dataset.

Synthetic object-segmentation scenes made by bcd.data.datasets.demo_object_seg (version
{version}, seed {seed}) for the bcd SKD demo and tests. Rebuild with:
    python -m bcd.data.datasets.demo_object_seg --root <datasets root>

sod/: salient objects on cluttered backgrounds; cod/: objects on camouflaging backgrounds.
Layout: <task>/<split>/image/<id>.jpg (RGB), <task>/<split>/mask/<id>.png (0 / 255).
Splits: {splits}. Image sides drawn in {size_range} px.
"""


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """``h×w`` smooth noise in [0, 1] varying over about ``max(h, w) / cells`` pixels."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _two_tone(rng: np.random.Generator, h: int, w: int, c0: np.ndarray, c1: np.ndarray,
              cells: int) -> np.ndarray:
    """``h×w×3`` float texture mixing colours ``c0`` / ``c1`` by smooth noise of ``cells``."""
    t = _noise(rng, h, w, cells)[..., None]
    return c0[None, None] * (1 - t) + c1[None, None] * t


def _blob(rng: np.random.Generator, h: int, w: int, radius: float,
          center: Tuple[float, float] | None = None) -> np.ndarray:
    """``h×w`` bool mask of a smooth random blob (a polar curve with low-frequency wobble)."""
    if center is None:
        center = (rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.full_like(angles, radius)
    for k in (2, 3, 5):
        r += radius * rng.uniform(0.0, 0.25) * np.sin(k * angles + rng.uniform(0, 2 * np.pi))
    pts = np.stack([center[0] + r * np.cos(angles), center[1] + r * np.sin(angles)], axis=1)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return m.astype(bool)


def render_object_scene(task: str, index: int, seed: int = SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Render scene ``index`` of ``task`` ("sod" or "cod"), deterministic in its arguments.

    Returns:
        ``image``: ``h×w×3`` uint8 RGB; ``mask``: ``h×w`` uint8 in {0, 255}; ``h`` and ``w``
        are drawn in ``SIZE_RANGE``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    rng = np.random.default_rng([seed, TASKS.index(task), index])
    h, w = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
    mask = np.zeros((h, w), bool)
    side = min(h, w)
    if task == "sod":
        bg0, bg1 = (rng.uniform(60, 190, size=3).astype(np.float32) for _ in range(2))
        image = _two_tone(rng, h, w, bg0, bg1, int(rng.integers(3, 8)))
        # clutter: smaller, duller shapes that are not salient (not in the mask)
        for _ in range(int(rng.integers(3, 7))):
            d = _blob(rng, h, w, side * rng.uniform(0.06, 0.14),
                      (rng.uniform(0, w), rng.uniform(0, h)))
            grey = rng.uniform(50, 200)
            image[d] = grey + rng.normal(0, 12, size=3).astype(np.float32)
        for _ in range(int(rng.integers(1, 3))):
            obj = _blob(rng, h, w, side * rng.uniform(0.16, 0.3))
            hue = rng.uniform(0, 180)
            hsv = np.uint8([[[hue, rng.uniform(170, 255), rng.uniform(150, 255)]]])
            base = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
            tex = _two_tone(rng, h, w, base, base * rng.uniform(0.6, 0.85), 4)
            image[obj] = tex[obj]
            mask |= obj
    else:  # camouflage: the object reuses the background's colours and texture statistics
        c0, c1 = (rng.uniform(50, 200, size=3).astype(np.float32) for _ in range(2))
        cells = int(rng.integers(5, 10))
        image = _two_tone(rng, h, w, c0, c1, cells)
        obj = _blob(rng, h, w, side * rng.uniform(0.18, 0.3))
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(14, 26)
        tex = _two_tone(rng, h, w, c0, c1, int(cells * rng.uniform(1.6, 2.4))) + shift
        image[obj] = tex[obj]
        mask |= obj
    image += rng.normal(0, 5, size=image.shape).astype(np.float32)
    image = cv2.GaussianBlur(image, (3, 3), 0.7)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def demo_object_seg_root(root: str | None = None) -> str:
    """Folder of the generated object-segmentation data under ``root`` (default: datasets root)."""
    return os.path.join(root if root is not None else get_datasets_root(), DEMO_DIRNAME)


def _write(folder: str) -> None:
    for task in TASKS:
        for split, (start, count) in OBJECT_SEG_DEMO_SPLITS.items():
            img_dir = os.path.join(folder, task, split, "image")
            mask_dir = os.path.join(folder, task, split, "mask")
            os.makedirs(img_dir)
            os.makedirs(mask_dir)
            for i in range(start, start + count):
                image, mask = render_object_scene(task, i)
                stem = f"{task}_{i:06d}"
                Image.fromarray(image).save(os.path.join(img_dir, stem + ".jpg"), quality=92)
                Image.fromarray(mask, mode="L").save(os.path.join(mask_dir, stem + ".png"))
    with open(os.path.join(folder, "README.txt"), "w") as f:
        f.write(_README.format(version=DEMO_VERSION, seed=SEED, splits=OBJECT_SEG_DEMO_SPLITS,
                               size_range=SIZE_RANGE))


def build_demo_object_seg(root: str | None = None, overwrite: bool = False) -> str:
    """Generate the data into ``root/demo_object_seg`` (temporary folder renamed into place, so
    a concurrent process sees no dataset or a complete one) and return that folder."""
    final = demo_object_seg_root(root)
    if os.path.isdir(final) and not overwrite:
        readme = os.path.join(final, "README.txt")
        if os.path.isfile(readme):
            with open(readme) as f:
                if f"(version {DEMO_VERSION}," in f.read().replace("\n", " "):
                    return final
        logger.info("Generated object-segmentation data at %s is incomplete or old: rebuilding", final)
    shutil.rmtree(final, ignore_errors=True)
    return build_dir_atomically(final, _write)


def ensure_demo_object_seg(root: str | None = None) -> str:
    """The generated data's folder, generating it first when absent."""
    return build_demo_object_seg(root)


def _loader(task: str, split: str):
    def _load() -> List[Dict[str, Any]]:
        folder = ensure_demo_object_seg()
        return load_object_seg(os.path.join(folder, task, split, "image"),
                               os.path.join(folder, task, split, "mask"), image_exts=(".jpg",))

    return _load


def register_demo_object_seg() -> None:
    """Register ``demo_{sod,cod}_{train,val}`` (generated on first load)."""
    for task in TASKS:
        for split in OBJECT_SEG_DEMO_SPLITS:
            register_object_seg(
                f"demo_{task}_{split}",
                _loader(task, split),
                task=task,
                generated=True,
                description=f"GENERATED synthetic {task.upper()} scenes "
                            f"(bcd.data.datasets.demo_object_seg), not a real dataset",
            )


if __name__ != "__main__":  # under ``python -m`` the package import has registered them
    register_demo_object_seg()


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the GENERATED object-segmentation demo data.")
    parser.add_argument("--root", default=None, help="datasets root (default: $BCD_DATASETS or ./datasets)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    print(f"Generated data at {build_demo_object_seg(args.root, args.overwrite)}")


if __name__ == "__main__":
    main()
