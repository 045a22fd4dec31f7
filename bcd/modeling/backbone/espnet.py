"""ESPNet's encoder (Mehta, Rastegari, Caspi, Shapiro, Hajishirzi, *ESPNet: Efficient Spatial
Pyramid of Dilated Convolutions for Semantic Segmentation*, ECCV 2018), written from the paper
(§3 and Fig. 4; no library ships it). The decoder is ``bcd/modeling/heads/espnet.py``.

The **ESP module** (§3.1, Fig. 1b / 3): a 1×1 convolution reduces the ``M`` input channels to
``d = N/K`` (``K = 5``), ``K`` parallel 3×3 convolutions with dilation ``2^(k-1)`` (1, 2, 4, 8,
16) run on the reduced map, their outputs are summed hierarchically (**HFF**: branch ``k`` is
added to the sum of branches ``2 .. k-1`` before concatenation, removing the gridding artefacts of
dilated convolutions), concatenated to ``N`` channels and added to the input (residual) when the
shapes match; BN + PReLU follow. ``N`` not divisible by 5: the first (dilation-1) branch takes the
remainder, ``N - 4·⌊N/5⌋`` channels. The strided ESP module (down-sampling) has a 3×3 stride-2
reduction instead of the 1×1, and no residual.

The encoder (**ESPNet-C**, Fig. 4): ``level1`` 3×3 stride-2 conv-BN-PReLU to 16 channels,
concatenated with the image average-pooled to 1/2 (the *input reinforcement*) → 19 channels
(``stem``, stride 2); a strided ESP to 64 channels, ``α2`` ESP modules, concatenated with the
strided ESP's output and the image at 1/4 → 131 channels (``res2``, stride 4); a strided ESP to
128 channels, ``α3`` ESP modules, concatenated with the strided ESP's output → 256 channels
(``res3``, stride 8). Every concatenation is followed by BN + PReLU. ESPNet has no stride-16 / -32
stages, so the backbone publishes ``stem``, ``res2`` and ``res3`` only (its ``size_divisibility``
is 8).

Published figures checked by the tests: ESPNet (α2 = 2, α3 = 8, the paper's ESPNet with its
decoder, 20 Cityscapes classes) has 0.364 M parameters (§4, Table / abstract).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from .backbone import Backbone, get_norm
from .build import BACKBONE_REGISTRY

__all__ = [
    "ESPModule",
    "ESPNetEncoder",
    "InputReinforcement",
    "build_espnet_backbone",
    "norm_prelu",
]

# ESP's K = 5 parallel dilated branches at dilations 1, 2, 4, 8, 16 (§3.1)
_DILATIONS = (1, 2, 4, 8, 16)
# the official code's BatchNorm epsilon (sacmehta/ESPNet, Model.py: eps=1e-03)
_BN_EPS = 1e-3


def norm_prelu(channels: int, norm: str) -> nn.Sequential:
    """Norm (``get_norm(norm)``; BN with ε = 1e-3 as the authors' code) followed by PReLU with
    one slope per channel: ESPNet's "BR" block after every concatenation."""
    n = get_norm(norm, channels)
    if isinstance(n, nn.modules.batchnorm._BatchNorm):
        n.eps = _BN_EPS
    return nn.Sequential(n, nn.PReLU(channels))


class ESPModule(nn.Module):
    """The efficient spatial pyramid module with hierarchical feature fusion (§3.1).

    Args:
        in_channels: ``M``.
        out_channels: ``N``; each branch has ``⌊N/5⌋`` channels, the dilation-1 branch the rest.
        stride: 1 (1×1 reduction, residual when ``M == N`` and ``residual``) or 2 (3×3 stride-2
            reduction: the strided ESP module, no residual).
        residual: add the input to the concatenation (the paper's ESP module); False for the
            decoder's ESP module, whose input has twice its output channels.
        norm: norm of the final BN + PReLU.

    Shapes: ``B×M×H×W -> B×N×H/s×W/s``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, residual: bool = True,
                 norm: str = "BN") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ESPModule stride must be 1 or 2; got {stride}")
        d = out_channels // len(_DILATIONS)
        if d < 1:
            raise ValueError(f"ESPModule needs at least {len(_DILATIONS)} output channels; got {out_channels}")
        first = out_channels - (len(_DILATIONS) - 1) * d
        k = 3 if stride == 2 else 1
        # no biases: every branch is followed by BN (the authors' C / CDilated blocks)
        self.reduce = nn.Conv2d(in_channels, d, k, stride=stride, padding=k // 2, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(d, first if i == 0 else d, 3, padding=r, dilation=r, bias=False)
            for i, r in enumerate(_DILATIONS)
        )
        self.residual = bool(residual and stride == 1 and in_channels == out_channels)
        self.out = norm_prelu(out_channels, norm)

    def forward(self, x: Tensor) -> Tensor:
        """``B×M×H×W -> B×N×H/s×W/s``."""
        r = self.reduce(x)
        outs = [b(r) for b in self.branches]
        # HFF: the dilation-2 branch, then each larger dilation added to the running sum
        fused = [outs[0], outs[1]]
        for o in outs[2:]:
            fused.append(fused[-1] + o)
        y = torch.cat(fused, dim=1)
        if self.residual:
            y = y + x
        return self.out(y)


class InputReinforcement(nn.Module):
    """The image average-pooled ``times`` times by 3×3 stride-2 windows (ESPNet's input
    reinforcement, §3.2: the image at 1/2^times concatenated to the feature maps)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pools = nn.Sequential(*[nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times)])

    def forward(self, x: Tensor) -> Tensor:
        """``B×3×H×W -> B×3×H/2^t×W/2^t``."""
        return self.pools(x)


class ESPNetEncoder(Backbone):
    """ESPNet-C's encoder (Fig. 4): ``stem`` (19 ch, stride 2), ``res2`` (131 ch, stride 4),
    ``res3`` (256 ch, stride 8).

    Args:
        alpha2: ESP modules at stride 4 (the paper's α2; ESPNet: 2).
        alpha3: ESP modules at stride 8 (α3; ESPNet: 8).
        norm: norm of every BN + PReLU (``get_norm``).

    Named modules: ``level1``, ``stem`` (BN + PReLU of the stride-2 concatenation), ``down2``,
    ``level2``, ``res2`` (BN + PReLU of the stride-4 concatenation), ``down3``, ``level3``,
    ``res3`` (BN + PReLU of the stride-8 concatenation). Their outputs are the features.
    """

    def __init__(self, alpha2: int = 2, alpha3: int = 8, norm: str = "BN") -> None:
        super().__init__()
        if alpha2 < 1 or alpha3 < 1:
            raise ValueError(f"MODEL.ESPNET.ALPHA2 / ALPHA3 must be >= 1; got {alpha2}, {alpha3}")
        conv = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.level1 = nn.Sequential(conv, *norm_prelu(16, norm))
        self.sample1 = InputReinforcement(1)
        self.sample2 = InputReinforcement(2)
        self.stem = norm_prelu(16 + 3, norm)
        self.down2 = ESPModule(16 + 3, 64, stride=2, norm=norm)
        self.level2 = nn.Sequential(*[ESPModule(64, 64, norm=norm) for _ in range(alpha2)])
        self.res2 = norm_prelu(64 + 64 + 3, norm)
        self.down3 = ESPModule(64 + 64 + 3, 128, stride=2, norm=norm)
        self.level3 = nn.Sequential(*[ESPModule(128, 128, norm=norm) for _ in range(alpha3)])
        self.res3 = norm_prelu(128 + 128, norm)
        self._out_features = ["stem", "res2", "res3"]
        self._out_feature_channels = {"stem": 19, "res2": 131, "res3": 256}
        self._out_feature_strides = {"stem": 2, "res2": 4, "res3": 8}

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """``B×3×H×W -> {stem: B×19×H/2×W/2, res2: B×131×H/4×W/4, res3: B×256×H/8×W/8}``
        (``H``, ``W`` multiples of 8)."""
        stem = self.stem(torch.cat([self.level1(x), self.sample1(x)], dim=1))
        d2 = self.down2(stem)
        res2 = self.res2(torch.cat([self.level2(d2), d2, self.sample2(x)], dim=1))
        d3 = self.down3(res2)
        res3 = self.res3(torch.cat([d3, self.level3(d3)], dim=1))
        return {"stem": stem, "res2": res2, "res3": res3}


@BACKBONE_REGISTRY.register()
def build_espnet_backbone(cfg) -> ESPNetEncoder:
    """ESPNet encoder of ``MODEL.ESPNET`` (``ALPHA2``, ``ALPHA3``) with ``MODEL.BACKBONE.NORM``.

    ESPNet trains from scratch in the paper (no ImageNet file exists for it): a
    ``MODEL.BACKBONE.WEIGHTS`` or ``FREEZE_AT`` is refused, naming the key."""
    b = cfg.MODEL.BACKBONE
    if b.WEIGHTS:
        raise ValueError(
            f"MODEL.BACKBONE.WEIGHTS '{b.WEIGHTS}': build_espnet_backbone has no pretrained "
            "weights (ESPNet is trained from scratch); set it to \"\""
        )
    if b.FREEZE_AT:
        raise ValueError("MODEL.BACKBONE.FREEZE_AT is not supported by build_espnet_backbone; set it to 0")
    return ESPNetEncoder(cfg.MODEL.ESPNET.ALPHA2, cfg.MODEL.ESPNET.ALPHA3, b.NORM)
