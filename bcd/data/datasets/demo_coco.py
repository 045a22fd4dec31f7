"""Generated COCO-format detection demo data: ``demo_det_train`` and ``demo_det_val``.

GENERATED data, not a real dataset: coloured squares, discs and triangles at several scales on
textured backgrounds, with COCO json annotations (boxes, polygon masks for squares / triangles,
compressed RLE masks for discs, ids starting at 1). Deterministic (seeded), built on first use
under ``<get_datasets_root()>/demo_det`` (or ``build_demo_coco(root)``), small enough that a tiny
RetinaNet / GFL learns it on CPU in minutes. It goes through exactly the same loader
(``load_coco_json``) and evaluator as real COCO files.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import numpy as np

from ..catalog import DatasetCatalog, MetadataCatalog
from .registry import get_datasets_root
from .coco import load_coco_json

DEMO_DET_CLASSES = ["square", "disc", "triangle"]
# Base hue per class (OpenCV hue units 0..179): colour is a cue as well as shape, so a tiny
# model reaches a clear AP in minutes; the hue is jittered per object.
_CLASS_HUES = [0, 60, 120]
_SPLITS = {"train": (96, 0), "val": (24, 1)}  # name -> (number of images, seed offset)
_IMAGE_SIZES = [(128, 128), (128, 160), (160, 128)]  # (h, w): several aspect ratios
_OBJECT_SIZES = (12, 64)  # side / diameter range in pixels: small to large at this resolution


def demo_coco_root(root: str = "") -> str:
    """Folder of the demo data: ``<root or get_datasets_root()>/demo_det``."""
    return os.path.join(root or get_datasets_root(), "demo_det")


def _hsv_color(hue: int, rng: np.random.Generator) -> Tuple[int, int, int]:
    import cv2

    h = int((hue + rng.integers(-10, 11)) % 180)
    s, v = int(rng.integers(150, 256)), int(rng.integers(150, 256))
    rgb = cv2.cvtColor(np.uint8([[[h, s, v]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _make_image(rng: np.random.Generator, H: int, W: int, ann_start: int, image_id: int):
    """One image (``H×W×3`` uint8 RGB) and its annotations (COCO dicts)."""
    import cv2
    from pycocotools import mask as mask_util

    # smooth random background + noise
    low = rng.integers(0, 100, size=(4, 4, 3)).astype(np.uint8)
    img = cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, size=(H, W, 3)), 0, 255)
    img = img.astype(np.uint8)
    occupied = np.zeros((H, W), dtype=bool)
    anns = []
    n_obj = int(rng.integers(1, 5))
    for _ in range(n_obj):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(DEMO_DET_CLASSES)))
            size = int(rng.integers(_OBJECT_SIZES[0], min(_OBJECT_SIZES[1], H - 4, W - 4) + 1))
            x0 = int(rng.integers(1, W - size - 1))
            y0 = int(rng.integers(1, H - size - 1))
            if occupied[max(y0 - 2, 0) : y0 + size + 2, max(x0 - 2, 0) : x0 + size + 2].any():
                continue  # no overlaps: every object fully visible
            mask = np.zeros((H, W), dtype=np.uint8)
            if cls == 0:  # square
                poly = np.array([[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size]])
                cv2.fillPoly(mask, [poly.astype(np.int32)], 1)
                segm = [poly.astype(float).flatten().tolist()]
            elif cls == 1:  # disc: RLE mask
                r = size / 2.0
                cv2.circle(mask, (int(round(x0 + r)), int(round(y0 + r))), int(r), 1, -1)
                rle = mask_util.encode(np.asfortranarray(mask))
                segm = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            else:  # triangle
                poly = np.array([[x0 + size / 2.0, y0], [x0 + size, y0 + size], [x0, y0 + size]])
                cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
                segm = [poly.astype(float).flatten().tolist()]
            ys, xs = np.nonzero(mask)
            bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            img[mask.astype(bool)] = _hsv_color(_CLASS_HUES[cls], rng)
            occupied |= mask.astype(bool)
            anns.append(
                {
                    "id": ann_start + len(anns),
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": segm,
                }
            )
            break
    return img, anns


def build_demo_coco(root: str = "", seed: int = 0) -> str:
    """Write the demo data (both splits) under ``demo_coco_root(root)`` unless it is complete.

    Returns the demo folder, holding ``{train,val}/*.png`` and ``annotations/{train,val}.json``.
    The folder is written to a temporary sibling and renamed, so concurrent first uses (data
    loader workers, ranks) never see a half-written dataset.
    """
    import cv2

    out = demo_coco_root(root)
    if all(os.path.isfile(os.path.join(out, "annotations", f"{s}.json")) for s in _SPLITS):
        return out
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo_det_", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "annotations"))
        for split, (n_images, offset) in _SPLITS.items():
            rng = np.random.default_rng(seed * 1000 + offset)
            os.makedirs(os.path.join(tmp, split))
            images: List[Dict] = []
            annotations: List[Dict] = []
            for i in range(n_images):
                H, W = _IMAGE_SIZES[i % len(_IMAGE_SIZES)]
                image_id = i + 1
                img, anns = _make_image(rng, H, W, len(annotations) + 1, image_id)
                file_name = f"{image_id:06d}.png"
                cv2.imwrite(os.path.join(tmp, split, file_name), img[:, :, ::-1])
                images.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
                annotations.extend(anns)
            categories = [
                {"id": i + 1, "name": n, "supercategory": "shape"}
                for i, n in enumerate(DEMO_DET_CLASSES)
            ]
            with open(os.path.join(tmp, "annotations", f"{split}.json"), "w") as f:
                json.dump(
                    {
                        "info": {"description": "bcd generated demo detection data (synthetic)"},
                        "images": images,
                        "annotations": annotations,
                        "categories": categories,
                    },
                    f,
                )
        try:
            os.rename(tmp, out)
        except OSError:
            if not os.path.isdir(out):  # another process won the race otherwise
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load(split: str):
    out = build_demo_coco()
    return load_coco_json(
        os.path.join(out, "annotations", f"{split}.json"),
        os.path.join(out, split),
        f"demo_det_{split}",
    )


def register_demo_coco() -> None:
    """Register ``demo_det_train`` / ``demo_det_val`` (data generated on first load)."""
    for split in _SPLITS:
        name = f"demo_det_{split}"
        if name in DatasetCatalog:
            continue
        DatasetCatalog.register(name, lambda s=split: _load(s))
        MetadataCatalog.get(name).set(evaluator_type="coco", thing_classes=DEMO_DET_CLASSES)


register_demo_coco()
