"""MobileNetV2 from torchvision, cut into ``stem`` / ``res2`` .. ``res5`` stages.

torchvision's ``features`` blocks are grouped by the stride they reach (``features[0:2]`` stride
2, ``[2:4]`` stride 4, ``[4:7]`` stride 8, ``[7:14]`` stride 16, ``[14:18]`` stride 32); the final
1×1 conv to 1280 channels and the classifier are dropped. Output stride 8 or 16 replaces the
strides of the last stages by dilation (:func:`dilate_stage`).
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

from torch import Tensor, nn
from torchvision.models import mobilenet_v2

from .backbone import (
    STAGE_NAMES,
    Backbone,
    check_stage_names,
    dilate_stage,
    freeze_module,
    norm_factory,
    stage_dilations,
)
from .build import BACKBONE_REGISTRY
from .weights import load_torchvision_weights

__all__ = ["StagedFeatures", "MobileNetV2Backbone", "build_mobilenetv2_backbone"]

_FEATURE_KEY = re.compile(r"^features\.(\d+)\.")


class StagedFeatures(Backbone):
    """A torchvision ``features`` sequence regrouped into ``stem`` and ``res2`` .. ``res5``.

    Args:
        features: the network's ``features`` (``nn.Sequential``), strides 2, 4, 8, 16, 32.
        stage_ranges: ``{name: (start, end)}`` slices of ``features`` for ``stem`` and
            ``res2`` .. ``res5``; blocks after the last range are dropped.
        output_stride: 32, 16 or 8 (the last stages are dilated).
        out_features: names returned by ``forward``.
    """

    def __init__(
        self,
        features: nn.Sequential,
        stage_ranges: Dict[str, Tuple[int, int]],
        output_stride: int = 32,
        out_features: Sequence[str] = STAGE_NAMES,
    ) -> None:
        super().__init__()
        check_stage_names(out_features, f"{type(self).__name__} out_features")
        self._ranges = dict(stage_ranges)
        self.stem = nn.Sequential(*features[slice(*stage_ranges["stem"])])
        dilations = stage_dilations(output_stride)
        stride = 4
        for i, name in enumerate(STAGE_NAMES):
            stage = nn.Sequential(*features[slice(*stage_ranges[name])])
            if dilations[i] > 1:
                dilate_stage(stage, dilations[i])
            elif i > 0:
                stride *= 2
            self.add_module(name, stage)
            convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
            self._out_feature_channels[name] = convs[-1].out_channels
            self._out_feature_strides[name] = stride
        self._out_features = list(out_features)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """``B×3×H×W`` -> ``{name: B×C×H/s×W/s}``."""
        outputs = {}
        x = self.stem(x)
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and stages ``res2 .. res{freeze_at}``."""
        if freeze_at >= 1:
            freeze_module(self.stem)
        for i, name in enumerate(STAGE_NAMES, start=2):
            if freeze_at >= i:
                freeze_module(getattr(self, name))

    def key_map(self, key: str) -> Optional[str]:
        """torchvision ``features.{i}.*`` -> ``{stage}.{i - start}.*``; other keys -> None."""
        m = _FEATURE_KEY.match(key)
        if not m:
            return None  # classifier
        i = int(m.group(1))
        for name, (start, end) in self._ranges.items():
            if start <= i < end:
                return f"{name}.{i - start}." + key[m.end():]
        return None  # blocks after res5 (final 1×1 conv) are not part of the backbone

    def load_torchvision(self, path: str) -> None:
        """Load torchvision's file for this network (``features.*``; classifier skipped)."""
        load_torchvision_weights(self, path, self.key_map)


class MobileNetV2Backbone(StagedFeatures):
    """torchvision ``mobilenet_v2`` stages: 24 / 32 / 96 / 320 channels at width 1.0."""

    RANGES = {"stem": (0, 2), "res2": (2, 4), "res3": (4, 7), "res4": (7, 14), "res5": (14, 18)}

    def __init__(
        self,
        width_multiplier: float = 1.0,
        output_stride: int = 8,
        norm: str = "BN",
        out_features: Sequence[str] = STAGE_NAMES,
    ) -> None:
        net = mobilenet_v2(weights=None, width_mult=width_multiplier, norm_layer=norm_factory(norm))
        super().__init__(net.features, self.RANGES, output_stride, out_features)


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg) -> MobileNetV2Backbone:
    """MobileNetV2 of ``MODEL.MOBILENETV2`` (+ ``MODEL.BACKBONE.NORM / WEIGHTS / FREEZE_AT``)."""
    c = cfg.MODEL.MOBILENETV2
    model = MobileNetV2Backbone(
        width_multiplier=c.WIDTH_MULTIPLIER,
        output_stride=c.OUTPUT_STRIDE,
        norm=cfg.MODEL.BACKBONE.NORM,
    )
    if cfg.MODEL.BACKBONE.WEIGHTS:
        model.load_torchvision(cfg.MODEL.BACKBONE.WEIGHTS)
    model.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
    return model
