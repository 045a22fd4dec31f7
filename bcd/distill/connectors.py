"""Connectors: align a student feature map to its teacher's channels and spatial size.

``Connector(c_s, c_t)`` is a 1×1 convolution (no bias) followed by an optional norm when the
channel counts differ (or always, with ``force_conv``), then a spatial alignment to the teacher's
``h×w`` done at run time: bilinear interpolation (``"interpolate"``) or, when the student map is
larger, adaptive average pooling (``"pool"``). Connectors are created from the shapes recorded in
the Distiller's dry run, trained with the student (``KD.LR_MULTIPLIER``), counted separately in
the report and never exported (``model_final.pth`` holds the student only).
"""
from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from bcd.modeling.backbone.backbone import get_norm

# The KD modules use the norm factory of the models (one owner); the old name stays importable.
build_norm = get_norm

__all__ = ["Connector", "align_spatial", "build_norm"]


def align_spatial(x: Tensor, size: Tuple[int, int], mode: str = "interpolate") -> Tensor:
    """Resize ``B×C×h×w`` to ``size``: identity, bilinear (align_corners=False) or avg-pool.

    ``mode="pool"`` uses adaptive average pooling when both sides shrink, bilinear otherwise.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "pool" and x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    if mode not in ("interpolate", "pool"):
        raise ValueError(f"Unknown spatial alignment '{mode}'; use 'interpolate' or 'pool'")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Connector(nn.Module):
    """Student → teacher alignment of one feature map.

    Args:
        in_channels: student channels ``C_s``.
        out_channels: teacher channels ``C_t``.
        norm: norm after the 1×1 conv (``""``, ``"BN"``, ``"GN"``...).
        spatial: ``"interpolate"`` or ``"pool"`` (see :func:`align_spatial`).
        force_conv: use the conv even when ``C_s == C_t`` (FitNet's adapter is always there).
        bias: conv bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "BN",
        spatial: str = "interpolate",
        force_conv: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.spatial = spatial
        if in_channels != out_channels or force_conv:
            self.proj: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=bias), get_norm(norm, out_channels)
            )
        else:
            self.proj = nn.Identity()
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        """``B×C_s×h_s×w_s`` → ``B×C_t×size``."""
        return align_spatial(self.proj(x), size, self.spatial)
