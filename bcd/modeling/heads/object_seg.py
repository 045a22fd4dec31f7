"""Heads of ``ObjectSegmentor`` (docs/methods.md §3.2, a reconstruction [R]).

* ``ObjectSegDecoder``: the lightweight inference network's decoder. Each level of the backbone
  (``res2`` .. ``res5``) goes through a 1×1 conv-BN-ReLU to ``channels`` (``U_l``); all are
  upsampled (bilinear) to the finest level, concatenated, fused by a 3×3 conv-BN-ReLU and a
  1×1 conv gives one logit at the finest stride (4 for ResNet / MobileNetV2).
* ``PyramidSelfDistillationNetwork``: the training-only auxiliary network. Per level a pyramid
  representation block (ASPP: 1×1, 3×3 at each dilation, image pooling; or DenseASPP) gives
  ``A_l``; with top-down adjacent fusion ``Ã_top = A_top`` and ``Ã_l = ConvBNReLU3×3(cat(A_l,
  up(Ã_{l+1})))``; a 1×1 score head on each (``Ã_l`` or ``A_l``) gives ``P_aux^l``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import conv_norm_act, init_predictor
from .deeplabv3plus import ASPP

__all__ = ["ObjectSegDecoder", "DenseASPP", "PyramidSelfDistillationNetwork"]


def _up(x: Tensor, size: Tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ObjectSegDecoder(nn.Module):
    """Multi-level fusion decoder of the inference network.

    Args:
        in_channels: channels of each input feature, finest level first.
        channels: width of ``U_l`` and of the fused feature (64 in §3.2).
        norm: norm of the conv blocks ("BN", "GN", "" ...).

    Named modules: ``lateral.<i>`` (per level), ``fuse``, ``predictor`` (1×1 to one logit).
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 64, norm: str = "BN") -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_norm_act(c, channels, 1, norm) for c in in_channels)
        self.fuse = conv_norm_act(channels * len(in_channels), channels, 3, norm)
        self.predictor = init_predictor(nn.Conv2d(channels, 1, 1))

    def forward(self, features: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """``features``: ``B×C_l×h_l×w_l`` finest first -> (``B×1×h_0×w_0`` logit, ``[U_l]``)."""
        if len(features) != len(self.lateral):
            raise ValueError(f"ObjectSegDecoder expects {len(self.lateral)} levels, got {len(features)}")
        lateral = [conv(f) for conv, f in zip(self.lateral, features)]
        size = lateral[0].shape[-2:]
        fused = self.fuse(torch.cat([_up(u, size) for u in lateral], dim=1))
        return self.predictor(fused), lateral


class DenseASPP(nn.Module):
    """DenseASPP (Yang et al., CVPR 2018), compact: each dilated 3×3 conv-BN-ReLU sees the input
    and every earlier branch's output (dense connections); all are concatenated with the input's
    1×1 projection and projected to ``out_channels`` by a 1×1 conv-BN-ReLU.

    Args:
        in_channels: input channels.
        out_channels: width of every branch and of the output.
        dilations: one dilated branch per entry, in order (small to large).
        norm: norm of the conv blocks.
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int], norm: str) -> None:
        super().__init__()
        self.reduce = conv_norm_act(in_channels, out_channels, 1, norm)
        self.branches = nn.ModuleList(
            conv_norm_act(out_channels * (i + 1), out_channels, 3, norm, dilation=int(d))
            for i, d in enumerate(dilations)
        )
        self.project = conv_norm_act(out_channels * (len(dilations) + 1), out_channels, 1, norm)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×out_channels×h×w``."""
        feats = [self.reduce(x)]
        for branch in self.branches:
            feats.append(branch(torch.cat(feats, dim=1)))
        return self.project(torch.cat(feats, dim=1))


class PyramidSelfDistillationNetwork(nn.Module):
    """Training-only auxiliary network of SKD (and the branches of the BYOT / DKS baselines).

    Args:
        in_channels: channels of each backbone level, finest first.
        channels: width of ``A_l`` / ``Ã_l``.
        pyramid: "aspp" or "denseaspp".
        aspp_dilations / denseaspp_dilations: dilations of the pyramid blocks.
        top_down: adjacent top-down fusion (SKD); False gives independent per-level branches
            (BYOT / DKS).
        norm: norm of the conv blocks.

    Named modules: ``pyramids.<i>``, ``fusions.<i>`` (top-down only; ``fusions.<i>`` makes
    ``Ã_i`` from ``A_i`` and ``Ã_{i+1}``), ``scores.<i>``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 64,
        pyramid: str = "aspp",
        aspp_dilations: Sequence[int] = (6, 12, 18),
        denseaspp_dilations: Sequence[int] = (3, 6, 12, 18),
        top_down: bool = True,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        if pyramid == "aspp":
            self.pyramids = nn.ModuleList(ASPP(c, channels, list(aspp_dilations), norm) for c in in_channels)
        elif pyramid == "denseaspp":
            self.pyramids = nn.ModuleList(
                DenseASPP(c, channels, list(denseaspp_dilations), norm) for c in in_channels
            )
        else:
            raise ValueError(f"MODEL.SKD.PYRAMID must be 'aspp' or 'denseaspp'; got '{pyramid}'")
        self.top_down = bool(top_down)
        self.fusions = (
            nn.ModuleList(conv_norm_act(2 * channels, channels, 3, norm) for _ in in_channels[:-1])
            if self.top_down else None
        )
        self.scores = nn.ModuleList(init_predictor(nn.Conv2d(channels, 1, 1)) for _ in in_channels)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """``features`` finest first -> (``[P_aux^l]`` ``B×1×h_l×w_l``, ``[Ã_l]`` or ``[A_l]``),
        both finest first."""
        reps = [p(f) for p, f in zip(self.pyramids, features)]
        if self.top_down:
            refined = [reps[-1]]
            for i in range(len(reps) - 2, -1, -1):
                above = _up(refined[0], reps[i].shape[-2:])
                refined.insert(0, self.fusions[i](torch.cat([reps[i], above], dim=1)))
            reps = refined
        return [s(r) for s, r in zip(self.scores, reps)], reps
