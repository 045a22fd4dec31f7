"""Shared tiny configs and inputs for the semantic-segmentation model tests (as fixtures)."""
from __future__ import annotations

from typing import Dict, List

import pytest
import torch

from bcd.config import get_cfg


def tiny_seg_cfg(head: str = "PSPHead", backbone: str = "resnet18", num_classes: int = 5):
    """A config of a tiny model (width 0.25 ResNet-18 by default) that runs in milliseconds."""
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.NAME = head
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.SEM_SEG_HEAD.CHANNELS = 16
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.LOW_LEVEL_CHANNELS = 8
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [1, 2, 3]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.AUX_HEAD.ENABLED = True
    cfg.MODEL.AUX_HEAD.CHANNELS = 8
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = (
        ["res2", "res3", "res4", "res5"] if head == "SemanticFPNHead" else ["res5"]
    )
    os_ = 32 if head == "SemanticFPNHead" else 8
    if backbone.startswith("resnet"):
        cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
        cfg.MODEL.RESNETS.DEPTH = int(backbone[len("resnet"):])
        cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = 0.25
        cfg.MODEL.RESNETS.OUTPUT_STRIDE = os_
    elif backbone == "mobilenetv2":
        cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_backbone"
        cfg.MODEL.MOBILENETV2.WIDTH_MULTIPLIER = 0.35
        cfg.MODEL.MOBILENETV2.OUTPUT_STRIDE = os_
    elif backbone == "efficientnet_b1":
        cfg.MODEL.BACKBONE.NAME = "build_efficientnet_backbone"
        cfg.MODEL.EFFICIENTNET.VARIANT = "b1"
        cfg.MODEL.EFFICIENTNET.OUTPUT_STRIDE = os_
    elif backbone.startswith("timm:"):
        cfg.MODEL.BACKBONE.NAME = "build_timm_backbone"
        cfg.MODEL.BACKBONE.TIMM_NAME = backbone[len("timm:"):]
        cfg.MODEL.BACKBONE.TIMM_OUTPUT_STRIDE = os_
    else:
        raise ValueError(backbone)
    return cfg


def make_inputs(
    n: int = 2, h: int = 64, w: int = 64, num_classes: int = 5, seed: int = 0
) -> List[Dict[str, object]]:
    """Mapper-style dicts: uint8 3×h×w RGB images and int64 h×w labels (some 255)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, num_classes, (h, w), generator=g)
        label[: h // 8] = 255
        out.append(
            {
                "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                "sem_seg": label,
                "height": h,
                "width": w,
            }
        )
    return out


@pytest.fixture
def seg_cfg():
    """``seg_cfg(head="PSPHead", backbone="resnet18", num_classes=5)`` -> tiny config."""
    return tiny_seg_cfg


@pytest.fixture
def seg_inputs():
    """``seg_inputs(n=2, h=64, w=64, num_classes=5, seed=0)`` -> mapper-style dicts."""
    return make_inputs
