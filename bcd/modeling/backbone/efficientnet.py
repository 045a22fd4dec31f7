"""EfficientNet-B0..B7 from torchvision, cut into ``stem`` / ``res2`` .. ``res5`` stages.

torchvision's ``features``: ``[0:2]`` stride 2 (stem conv + first MBConv stage), ``[2]`` stride 4,
``[3]`` stride 8, ``[4:6]`` stride 16, ``[6:8]`` stride 32; the final 1×1 conv and the classifier
are dropped. Output stride 8 or 16 dilates the last stages (:func:`dilate_stage`).
"""
from __future__ import annotations

from typing import Sequence

import torchvision
from torch import nn

from .backbone import STAGE_NAMES, norm_factory
from .build import BACKBONE_REGISTRY
from .mobilenet import StagedFeatures

__all__ = ["EfficientNetBackbone", "build_efficientnet_backbone"]

_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")


class EfficientNetBackbone(StagedFeatures):
    """torchvision ``efficientnet_<variant>`` stages (B1: 24 / 40 / 112 / 320 channels)."""

    RANGES = {"stem": (0, 2), "res2": (2, 3), "res3": (3, 4), "res4": (4, 6), "res5": (6, 8)}

    def __init__(
        self,
        variant: str = "b1",
        output_stride: int = 8,
        norm: str = "BN",
        out_features: Sequence[str] = STAGE_NAMES,
    ) -> None:
        variant = variant.lower()
        if variant not in _VARIANTS:
            raise ValueError(f"MODEL.EFFICIENTNET.VARIANT must be one of {_VARIANTS}; got '{variant}'")
        builder = getattr(torchvision.models, f"efficientnet_{variant}")
        net: nn.Module = builder(weights=None, norm_layer=norm_factory(norm))
        super().__init__(net.features, self.RANGES, output_stride, out_features)


@BACKBONE_REGISTRY.register()
def build_efficientnet_backbone(cfg) -> EfficientNetBackbone:
    """EfficientNet of ``MODEL.EFFICIENTNET`` (+ ``MODEL.BACKBONE.NORM / WEIGHTS / FREEZE_AT``)."""
    c = cfg.MODEL.EFFICIENTNET
    model = EfficientNetBackbone(
        variant=c.VARIANT,
        output_stride=c.OUTPUT_STRIDE,
        norm=cfg.MODEL.BACKBONE.NORM,
    )
    if cfg.MODEL.BACKBONE.WEIGHTS:
        model.load_torchvision(cfg.MODEL.BACKBONE.WEIGHTS)
    model.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
    return model
