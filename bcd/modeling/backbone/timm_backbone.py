"""Any ``timm`` model with ``features_only=True`` as a backbone, by name.

The last four feature levels become ``res2`` .. ``res5`` (strides 4..32 for the usual 5-level
networks), the level before them (stride 2), when the model has one, ``stem``. They are
returned by ``forward`` and pass through ``nn.Identity`` modules of those names, so forward
hooks on ``backbone.res3`` work as for the torchvision backbones (``backbone[res3]`` also picks
the entry of the output dict).
"""
from __future__ import annotations

import os
from typing import Dict

import timm
from torch import Tensor, nn

from .backbone import STAGE_NAMES, Backbone
from .build import BACKBONE_REGISTRY
from .weights import resolve_weights

__all__ = ["TimmBackbone", "build_timm_backbone"]


class TimmBackbone(Backbone):
    """``timm.create_model(name, features_only=True)`` with outputs named ``res2`` .. ``res5``.

    Args:
        name: a timm model name (``timm.list_models()``).
        output_stride: 32, 16 or 8, passed to timm (for the models that support dilation).
        weights: a local timm checkpoint (timm's own key names), a ``timm://<name>`` resolved by
            :func:`~bcd.modeling.backbone.weights.resolve_weights`, or "" for random init; loaded by
            timm's own pretrained path (``pretrained_cfg_overlay={"file": ...}``), so timm itself
            never downloads.
        norm: "BN" keeps the model's norm layers; "SyncBN" converts BatchNorms for multi-GPU.
    """

    def __init__(self, name: str, output_stride: int = 32, weights: str = "", norm: str = "BN"):
        super().__init__()
        if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
            raise ValueError(f"MODEL.BACKBONE.TIMM_NAME '{name}' is not a timm model")
        kwargs = {}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if weights:
            weights = resolve_weights(weights)  # timm://<name>: torch.hub's cache (weights.py)
            if not os.path.isfile(weights):
                raise FileNotFoundError(
                    f"MODEL.BACKBONE.WEIGHTS: file '{weights}' does not exist (timm checkpoint of "
                    f"'{name}'); nothing is downloaded"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": weights})
        self.body = timm.create_model(name, features_only=True, **kwargs)
        if norm == "SyncBN":
            self.body = nn.SyncBatchNorm.convert_sync_batchnorm(self.body)
        elif norm not in ("BN", ""):
            raise ValueError(
                f"MODEL.BACKBONE.NORM '{norm}' is not supported by timm backbones (BN or SyncBN)"
            )
        channels = self.body.feature_info.channels()
        strides = self.body.feature_info.reduction()
        if len(channels) < 4:
            raise ValueError(f"timm model '{name}' gives {len(channels)} feature levels; need 4")
        self._first = len(channels) - 4  # index of res2 among timm's levels
        self.stem = nn.Identity()
        for name_i, c, s in zip(STAGE_NAMES, channels[-4:], strides[-4:]):
            self.add_module(name_i, nn.Identity())
            self._out_feature_channels[name_i] = int(c)
            self._out_feature_strides[name_i] = int(s)
        self._out_features = list(STAGE_NAMES)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """``B×3×H×W`` -> ``{res2..res5: B×C×H/s×W/s}``."""
        feats = self.body(x)
        # stem: timm's level before res2 when it exists, else the input itself
        self.stem(feats[self._first - 1] if self._first > 0 else x)
        return {n: getattr(self, n)(f) for n, f in zip(STAGE_NAMES, feats[self._first:])}


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg) -> TimmBackbone:
    """timm model ``MODEL.BACKBONE.TIMM_NAME`` at ``MODEL.BACKBONE.TIMM_OUTPUT_STRIDE``."""
    b = cfg.MODEL.BACKBONE
    if not b.TIMM_NAME:
        raise ValueError("MODEL.BACKBONE.TIMM_NAME must name a timm model for build_timm_backbone")
    return TimmBackbone(b.TIMM_NAME, b.TIMM_OUTPUT_STRIDE, b.WEIGHTS, b.NORM)
