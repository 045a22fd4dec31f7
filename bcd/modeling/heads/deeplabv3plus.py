"""DeepLabV3+ decode head (Chen et al., ECCV 2018): ASPP on ``res5`` + low-level decoder."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbone.backbone import ShapeSpec
from .build import SEM_SEG_HEAD_REGISTRY
from .common import conv_norm_act, init_predictor, pooled_conv_norm_act

__all__ = ["ASPP", "DeepLabV3PlusHead"]


class _ImagePooling(nn.Module):
    """Global average pool -> 1×1 conv-norm-ReLU -> broadcast back to ``h×w``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        # PooledBatchNorm2d with BN: one image per process is one value per channel here.
        self.conv = pooled_conv_norm_act(in_channels, out_channels, norm)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×out×h×w`` (constant over space)."""
        return F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="nearest")


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1 conv, one 3×3 conv per dilation, image pooling;
    concatenated and projected by a 1×1 conv-norm-ReLU to ``out_channels``.

    Written here rather than taken from torchvision because torchvision's ``ASPP`` hard-codes
    ``BatchNorm2d`` and dropout 0.5 (the head must follow ``MODEL.SEM_SEG_HEAD.NORM``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, dilations: Sequence[int], norm: str
    ) -> None:
        super().__init__()
        branches = [conv_norm_act(in_channels, out_channels, 1, norm)]
        branches += [conv_norm_act(in_channels, out_channels, 3, norm, dilation=d) for d in dilations]
        branches.append(_ImagePooling(in_channels, out_channels, norm))
        self.branches = nn.ModuleList(branches)
        self.project = conv_norm_act(out_channels * len(branches), out_channels, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×out_channels×h×w``."""
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


@SEM_SEG_HEAD_REGISTRY.register()
class DeepLabV3PlusHead(nn.Module):
    """ASPP on the last of ``IN_FEATURES`` (``res5``); decoder: upsample to the stride of
    ``LOW_LEVEL_FEATURE`` (``res2``), concatenate with its 1×1 projection to
    ``LOW_LEVEL_CHANNELS`` (48), two 3×3 conv-norm-ReLU (``feature``), dropout, ``predictor``.

    Named modules: ``aspp``, ``low_level_proj``, ``feature`` (``B×CHANNELS×h/4×w/4``),
    ``predictor`` (``B×K×h/4×w/4`` logits).
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        h = cfg.MODEL.SEM_SEG_HEAD
        self.in_feature = h.IN_FEATURES[-1]
        self.low_level_feature = h.LOW_LEVEL_FEATURE
        for key, name in (("IN_FEATURES", self.in_feature), ("LOW_LEVEL_FEATURE", self.low_level_feature)):
            if name not in input_shape:
                raise ValueError(
                    f"MODEL.SEM_SEG_HEAD.{key}: '{name}' is not a backbone output ({list(input_shape)})"
                )
        ch = h.CHANNELS
        self.aspp = ASPP(input_shape[self.in_feature].channels, ch, list(h.ASPP_DILATIONS), h.NORM)
        low_ch = input_shape[self.low_level_feature].channels
        self.low_level_proj = conv_norm_act(low_ch, h.LOW_LEVEL_CHANNELS, 1, h.NORM)
        self.feature = nn.Sequential(
            conv_norm_act(ch + h.LOW_LEVEL_CHANNELS, ch, 3, h.NORM),
            conv_norm_act(ch, ch, 3, h.NORM),
        )
        self.dropout = nn.Dropout2d(h.DROPOUT)
        self.predictor = init_predictor(nn.Conv2d(ch, h.NUM_CLASSES, 1))
        self.common_stride = input_shape[self.low_level_feature].stride

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """``{res2: B×C2×h2×w2, res5: B×C5×h5×w5}`` -> ``B×K×h2×w2`` logits."""
        low = self.low_level_proj(features[self.low_level_feature])
        x = self.aspp(features[self.in_feature])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.feature(torch.cat([x, low], dim=1))
        return self.predictor(self.dropout(x))
