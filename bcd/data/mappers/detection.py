"""``DetectionDatasetMapper``: detection dataset dict -> model input (docs/internals.md).

Reads the image, resizes the shortest edge (a random choice among ``INPUT.MIN_SIZE_TRAIN`` in
training, ``INPUT.MIN_SIZE_TEST`` in evaluation) with the longest edge capped, flips
horizontally in training (``INPUT.FLIP``), and moves boxes (and masks when asked) with the image.
Padding to the backbone's stride happens in the model's ``preprocess`` (``ImageBatch``).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ...structures import Instances
from ..build import MAPPER_REGISTRY
from ..detection_transforms import (
    RandomFlip,
    ResizeShortestEdge,
    Transform,
    apply_augmentations,
)
from ..io import IntensityScaling

__all__ = ["DetectionDatasetMapper", "annotations_to_instances"]


def _read_image(file_name: str, scaling: Optional[IntensityScaling] = None) -> np.ndarray:
    """``H×W×3`` RGB: uint8, or float32 in [0, 255] for high-bit-depth files scaled by
    ``scaling`` (``INPUT.INTENSITY_SCALING``); an unreadable file raises naming it."""
    from ..io import read_image

    return read_image(file_name, format="RGB", scaling=scaling)


def _transform_annotation(
    obj: Dict[str, Any], transforms: List[Transform], image_size: tuple, use_masks: bool
) -> Dict[str, Any]:
    x, y, w, h = obj["bbox"]
    box = np.array([[x, y, x + w, y + h]], dtype=np.float64)
    for t in transforms:
        box = t.apply_box(box)
    H, W = image_size
    box[:, 0::2] = box[:, 0::2].clip(0, W)
    box[:, 1::2] = box[:, 1::2].clip(0, H)
    out = {"box": box[0], "category_id": obj["category_id"]}
    if use_masks and "segmentation" in obj:
        out["mask"] = _transform_mask(obj["segmentation"], transforms)
    return out


def _transform_mask(segm: Any, transforms: List[Transform]) -> Any:
    """Polygons are moved as coordinates and rasterised; RLE is decoded and resampled."""
    from pycocotools import mask as mask_util

    if isinstance(segm, list):  # polygons
        polys = [np.asarray(p, dtype=np.float64) for p in segm]
        for t in transforms:
            polys = t.apply_polygons(polys)
        return polys  # rasterised at the final size by annotations_to_instances
    if isinstance(segm, dict):
        rle = segm
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_util.frPyObjects(rle, *rle["size"])
        m = mask_util.decode(rle)
        for t in transforms:
            m = t.apply_segmentation(m)
        return m
    raise ValueError(f"Unknown segmentation format {type(segm).__name__}: {segm!r:.80}")


def annotations_to_instances(
    annos: List[Dict[str, Any]], image_size: tuple, use_masks: bool = False
) -> Instances:
    """Transformed annotations -> ``Instances(gt_boxes N×4 XYXY float, gt_classes int64,
    [gt_masks N×H×W uint8])`` for an image of ``image_size = (H, W)``."""
    from pycocotools import mask as mask_util

    H, W = image_size
    inst = Instances(image_size)
    boxes = np.stack([a["box"] for a in annos]) if annos else np.zeros((0, 4))
    inst.gt_boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    inst.gt_classes = torch.as_tensor([a["category_id"] for a in annos], dtype=torch.int64)
    if use_masks:
        masks = []
        for a in annos:
            m = a.get("mask")
            if isinstance(m, list):
                rles = mask_util.frPyObjects([p.tolist() for p in m], H, W)
                m = mask_util.decode(mask_util.merge(rles))
            if m is None:
                m = np.zeros((H, W), dtype=np.uint8)
            masks.append(torch.as_tensor(np.ascontiguousarray(m), dtype=torch.uint8))
        inst.gt_masks = torch.stack(masks) if masks else torch.zeros((0, H, W), dtype=torch.uint8)
    return inst


@MAPPER_REGISTRY.register()
class DetectionDatasetMapper:
    """Detection dict -> ``{"image", "instances", "height", "width", "file_name", "image_id"}``.

    Args:
        cfg: reads ``INPUT.MIN_SIZE_TRAIN``, ``MIN_SIZE_TRAIN_SAMPLING``, ``MAX_SIZE_TRAIN``,
            ``MIN_SIZE_TEST``, ``MAX_SIZE_TEST``, ``FLIP``.
        is_train: training augmentation, crowd boxes dropped, empty boxes dropped; evaluation
            keeps the ground truth too (non-crowd) so KD losses and visualisation can use it.
        use_masks: also produce ``gt_masks`` (``N×H×W`` uint8) from polygons / RLE; None =
            ``MODEL.MASK_ON`` in training (evaluation scores masks against the dataset's json).
    """

    def __init__(self, cfg, is_train: bool = True, use_masks: Optional[bool] = None) -> None:
        self.is_train = is_train
        if use_masks is None:
            use_masks = bool(cfg.MODEL.MASK_ON) and is_train
        self.use_masks = use_masks
        self.intensity_scaling = IntensityScaling.from_config(cfg)  # high-bit-depth images
        if is_train:
            self.augs = [
                ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN,
                    cfg.INPUT.MAX_SIZE_TRAIN,
                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                )
            ]
            if cfg.INPUT.FLIP:
                self.augs.append(RandomFlip(0.5))
        else:
            self.augs = [ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)]

    def __call__(self, dataset_dict: Dict[str, Any], rng: Optional[np.random.Generator] = None):
        """Map one dataset dict. ``rng`` defaults to one drawn from numpy's global state (which
        the loader seeds per worker)."""
        d = copy.deepcopy(dataset_dict)
        if rng is None:
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        img = _read_image(d["file_name"], self.intensity_scaling)
        if img.shape[:2] != (d["height"], d["width"]):
            raise ValueError(
                f"Image '{d['file_name']}' is {img.shape[1]}x{img.shape[0]} (WxH) but its "
                f"annotation says {d['width']}x{d['height']}"
            )
        img, transforms = apply_augmentations(self.augs, img, rng)
        image_size = img.shape[:2]
        out: Dict[str, Any] = {
            "image": torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))),
            "height": d["height"],
            "width": d["width"],
            "file_name": d["file_name"],
            "image_id": d["image_id"],
        }
        if "annotations" in d:
            annos = [
                _transform_annotation(obj, transforms, image_size, self.use_masks)
                for obj in d["annotations"]
                if obj.get("iscrowd", 0) == 0
            ]
            inst = annotations_to_instances(annos, image_size, self.use_masks)
            # boxes squeezed to nothing by clipping carry no signal
            keep = (inst.gt_boxes[:, 2] > inst.gt_boxes[:, 0] + 1e-5) & (
                inst.gt_boxes[:, 3] > inst.gt_boxes[:, 1] + 1e-5
            )
            out["instances"] = inst[keep]
        return out
