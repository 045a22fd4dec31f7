"""Semantic FPN head: the semantic branch of Panoptic FPN (Kirillov et al., CVPR 2019).

An FPN (``torchvision.ops.FeaturePyramidNetwork``, sub-module ``fpn``) is built inside the head
over ``IN_FEATURES`` (``res2`` .. ``res5``), so the backbone keeps the names ``res2`` .. ``res5``
common to every semantic-segmentation model. Each pyramid level then goes through
``max(1, log2(stride / COMMON_STRIDE))`` stages of 3×3 conv-norm-ReLU (``CONVS_DIM`` channels),
each followed by ×2 bilinear upsampling while above ``COMMON_STRIDE``; the levels are summed
(``feature``), and a 1×1 ``predictor`` gives logits at ``COMMON_STRIDE`` (1/4).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from ..backbone.backbone import ShapeSpec, norm_factory
from .build import SEM_SEG_HEAD_REGISTRY
from .common import conv_norm_act, init_predictor

__all__ = ["SemanticFPNHead"]


class _SumLevels(nn.Module):
    """Sum of per-level ``B×C×h×w`` maps (resized to the first one's size when they differ,
    e.g. for inputs that are not a multiple of the largest stride)."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            if x.shape[-2:] != out.shape[-2:]:
                x = F.interpolate(x, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + x
        return out


@SEM_SEG_HEAD_REGISTRY.register()
class SemanticFPNHead(nn.Module):
    """FPN (``MODEL.FPN.OUT_CHANNELS``, ``MODEL.FPN.NORM``) + Panoptic-FPN semantic branch.

    Named modules: ``fpn``, ``scale_heads``, ``feature`` (the sum, ``B×CONVS_DIM×h/4×w/4``),
    ``predictor`` (``B×K×h/4×w/4`` logits).
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        h = cfg.MODEL.SEM_SEG_HEAD
        self.in_features = list(h.IN_FEATURES)
        missing = [f for f in self.in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs ({list(input_shape)})"
            )
        fpn_ch = cfg.MODEL.FPN.OUT_CHANNELS
        fpn_norm = cfg.MODEL.FPN.NORM
        self.fpn = FeaturePyramidNetwork(
            [input_shape[f].channels for f in self.in_features],
            fpn_ch,
            norm_layer=norm_factory(fpn_norm) if fpn_norm else None,
        )
        self.common_stride = h.COMMON_STRIDE
        self.scale_heads = nn.ModuleList()
        for f in self.in_features:
            stride = input_shape[f].stride
            n_up = int(math.log2(stride / self.common_stride)) if stride > self.common_stride else 0
            layers: List[nn.Module] = []
            for k in range(max(1, n_up)):
                layers.append(conv_norm_act(fpn_ch if k == 0 else h.CONVS_DIM, h.CONVS_DIM, 3, h.NORM))
                if k < n_up:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.feature = _SumLevels()
        self.dropout = nn.Dropout2d(h.DROPOUT)
        self.predictor = init_predictor(nn.Conv2d(h.CONVS_DIM, h.NUM_CLASSES, 1))

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """``{res2..res5}`` -> ``B×K×h/4×w/4`` logits."""
        pyramid = self.fpn(OrderedDict((f, features[f]) for f in self.in_features))
        x = self.feature([head(p) for head, p in zip(self.scale_heads, pyramid.values())])
        return self.predictor(self.dropout(x))
