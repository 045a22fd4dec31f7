"""Fixtures of the detection tests: small COCO files written on the fly, a tiny detector config."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import numpy as np
import pytest


def write_coco(root: str, images: List[Dict[str, Any]], annotations: List[Dict[str, Any]],
               categories: List[Dict[str, Any]], write_images: bool = True) -> str:
    """Write ``root/ann.json`` and (optionally) grey PNGs ``root/img/<file_name>``; return the json."""
    from PIL import Image

    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    if write_images:
        for im in images:
            arr = np.full((im["height"], im["width"], 3), 100, dtype=np.uint8)
            Image.fromarray(arr).save(os.path.join(root, "img", im["file_name"]))
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


@pytest.fixture
def small_coco(tmp_path):
    """A valid 2-image, 3-box, 2-category COCO dataset (category ids 3 and 7)."""
    images = [
        {"id": 1, "file_name": "a.png", "height": 40, "width": 50},
        {"id": 2, "file_name": "b.png", "height": 30, "width": 30},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12], "iscrowd": 0, "area": 120,
         "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 5, 25, 30], "iscrowd": 0, "area": 750,
         "segmentation": [[20, 5, 45, 5, 45, 35, 20, 35]]},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 0, "area": 900,
         "segmentation": [[0, 0, 30, 0, 30, 30, 0, 30]]},
    ]
    cats = [{"id": 3, "name": "cat3"}, {"id": 7, "name": "cat7"}]
    root = str(tmp_path / "coco")
    path = write_coco(root, images, anns, cats)
    return {"json": path, "image_root": os.path.join(root, "img"), "images": images,
            "annotations": anns, "categories": cats, "root": root}


def tiny_detector_cfg(arch: str, num_classes: int = 3, width: float = 0.25):
    """ResNet-18 at ``width`` + FPN (32 channels) P3–P7, 2 head convs: fast on CPU."""
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = width
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.TOP_BLOCK = "P6P7"
    cfg.MODEL.FPN.TOP_BLOCK_IN = "p5" if arch == "GFL" else "res5"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CONVS = 1
    cfg.MODEL.GFL.NUM_CLASSES = num_classes
    cfg.MODEL.GFL.NUM_CONVS = 1
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 20, 25], [32, 40, 50], [64, 80, 101],
                                        [128, 161, 203], [256, 322, 406]]
    cfg.MODEL.GFL.ANCHOR_SCALE = 4
    cfg.INPUT.DATASET_MAPPER_NAME = "DetectionDatasetMapper"
    return cfg


@pytest.fixture
def tiny_cfg():
    """The factory :func:`tiny_detector_cfg` (``tiny_cfg("RetinaNet")``)."""
    return tiny_detector_cfg


@pytest.fixture
def coco_writer():
    """The function :func:`write_coco`."""
    return write_coco
