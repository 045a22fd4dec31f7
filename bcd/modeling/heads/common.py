"""Small building blocks shared by the semantic-segmentation heads."""
from __future__ import annotations

from typing import Optional

from torch import nn
from torchvision.ops import Conv2dNormActivation

from ..backbone.backbone import norm_factory

__all__ = ["conv_norm_act", "init_predictor"]


def conv_norm_act(
    in_channels: int, out_channels: int, kernel_size: int, norm: str, dilation: int = 1
) -> Conv2dNormActivation:
    """``Conv(k×k, dilation) -> norm -> ReLU`` keeping the spatial size (torchvision's block).

    The conv has a bias only when there is no norm (``norm == ""``), as in torchvision.
    """
    norm_layer: Optional[object] = norm_factory(norm) if norm else None
    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size,
        norm_layer=norm_layer,
        activation_layer=nn.ReLU,
        dilation=dilation,
        inplace=True,
    )


def init_predictor(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise a 1×1 classifier as mmseg's ``conv_seg`` (normal, std 0.01; zero bias)."""
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
