"""PSPNet decode head (Zhao et al., CVPR 2017): pyramid pooling module on ``res5``."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbone.backbone import ShapeSpec
from .build import SEM_SEG_HEAD_REGISTRY
from .common import conv_norm_act, init_predictor, pooled_conv_norm_act

__all__ = ["PyramidPoolingModule", "PSPHead"]


class PyramidPoolingModule(nn.Module):
    """Average-pool to ``b×b`` for each bin ``b``, 1×1 conv-norm-ReLU, upsample, concatenate.

    Output: ``B×(C + len(bins)·reduction)×h×w``: the input followed by one ``reduction``-channel
    map per bin (the original PSPNet / APD / Structured-KD code uses ``reduction = C / len(bins)``).
    The bins' norms are ``PooledBatchNorm2d`` with BN, so bin 1 trains with one image per process.
    """

    def __init__(self, in_channels: int, bins: Sequence[int], reduction: int, norm: str) -> None:
        super().__init__()
        self.bins = list(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), pooled_conv_norm_act(in_channels, reduction, norm))
            for b in self.bins
        )
        self.out_channels = in_channels + reduction * len(self.bins)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×out_channels×h×w``."""
        size = x.shape[-2:]
        outs = [x]
        for stage in self.stages:
            outs.append(F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, dim=1)


@SEM_SEG_HEAD_REGISTRY.register()
class PSPHead(nn.Module):
    """PPM on the last of ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` (``res5``), then a 3×3
    conv-norm-ReLU to ``CHANNELS`` (``feature``), dropout and the 1×1 ``predictor``.

    Named modules: ``ppm``, ``feature`` (decoder feature, ``B×CHANNELS×h×w``), ``predictor``
    (``B×K×h×w`` logits at the stride of ``res5``).
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        h = cfg.MODEL.SEM_SEG_HEAD
        self.in_feature = h.IN_FEATURES[-1]
        if self.in_feature not in input_shape:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES: '{self.in_feature}' is not a backbone output "
                f"({list(input_shape)})"
            )
        in_ch = input_shape[self.in_feature].channels
        bins = list(h.PSP_BINS)
        self.ppm = PyramidPoolingModule(in_ch, bins, max(in_ch // len(bins), 1), h.NORM)
        self.feature = conv_norm_act(self.ppm.out_channels, h.CHANNELS, 3, h.NORM)
        self.dropout = nn.Dropout2d(h.DROPOUT)
        self.predictor = init_predictor(nn.Conv2d(h.CHANNELS, h.NUM_CLASSES, 1))
        self.common_stride = input_shape[self.in_feature].stride

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """``{res5: B×C×h×w}`` -> ``B×K×h×w`` logits."""
        x = self.feature(self.ppm(features[self.in_feature]))
        return self.predictor(self.dropout(x))
