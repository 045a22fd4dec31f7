"""Backbone base class, ``ShapeSpec`` and the normalisation-layer factory shared by all backbones."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Iterable

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "Backbone",
    "ShapeSpec",
    "dilate_stage",
    "get_norm",
    "norm_factory",
    "freeze_module",
    "STAGE_NAMES",
    "stage_dilations",
    "stage_strides",
]

# The stage names every semantic-segmentation backbone exposes as sub-modules (forward hooks of
# distillation attach to ``backbone.<name>``), at strides 4, 8, 16, 32 before dilation.
STAGE_NAMES = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (in input pixels per feature cell) of one named feature map."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """A module mapping ``B×3×H×W`` images to a ``Dict[str, Tensor]`` of named feature maps.

    Subclasses fill ``self._out_features`` (names, in order of increasing depth),
    ``self._out_feature_channels`` and ``self._out_feature_strides``, and define
    ``forward(x: B×3×H×W) -> Dict[str, Tensor]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._out_features: list = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """``{name: ShapeSpec(channels, stride)}`` of every feature ``forward`` returns."""
        return {
            name: ShapeSpec(self._out_feature_channels[name], self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        """Input sizes must be a multiple of this (the largest output stride) for the features
        of every level to align exactly with the image."""
        return max(self._out_feature_strides[n] for n in self._out_features)


# ------------------------------------------------------------------------------------ norms
def get_norm(name: str, channels: int, min_group_channels: int = 1) -> nn.Module:
    """Normalisation layer ``name`` over ``channels`` channels: the one norm factory of ``bcd``
    (backbones, FPN, heads, detector towers and the KD connectors / HFA all use it).

    Args:
        name: ``"BN"`` (``nn.BatchNorm2d``), ``"SyncBN"`` (``nn.SyncBatchNorm``: statistics over all
            processes in multi-GPU training; behaves as BN in a single process), ``"FrozenBN"``
            (``torchvision.ops.FrozenBatchNorm2d``: fixed statistics and affine parameters),
            ``"GN"`` (``nn.GroupNorm`` with ``gcd(32, C)`` groups: 32, or fewer when ``channels``
            is not a multiple of 32, as happens in width-multiplied networks), ``"GN<k>"`` (e.g.
            ``"GN4"``: ``gcd(k, C)`` groups), or ``""`` / ``"none"`` (identity).
        channels: number of channels ``C`` of the ``B×C×H×W`` input.
        min_group_channels: GN only: halve the number of groups until each has at least this
            many channels (the GFL head uses 2: with one channel per group GN is instance norm
            and fails on a 1×1 map).

    Raises:
        ValueError: an unknown ``name``, naming it and the valid ones.
    """
    if name in ("", "none", None):
        return nn.Identity()
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name.startswith("GN") and (name == "GN" or name[2:].isdigit()):
        groups = math.gcd(int(name[2:]) if len(name) > 2 else 32, channels)
        while groups > 1 and channels // groups < min_group_channels:
            groups //= 2
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"Unknown norm '{name}'; expected one of BN, SyncBN, FrozenBN, GN, GN<k> or ''")


def norm_factory(name: str) -> Callable[[int], nn.Module]:
    """``channels -> get_norm(name, channels)``: the ``norm_layer`` argument torchvision takes."""
    # Validate early so a typo fails when the model is built, naming the config value.
    get_norm(name, 32)
    return partial(get_norm, name)


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients of every parameter of ``module`` and turn its BatchNorms into FrozenBN.

    Used by ``MODEL.BACKBONE.FREEZE_AT``: frozen stages keep ImageNet statistics.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return _convert_frozen_batchnorm(module)


def _convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = _convert_frozen_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


# ---------------------------------------------------------------------------------- dilation
@torch.no_grad()
def dilate_stage(stage: nn.Module, dilation: int) -> None:
    """Replace the stride-2 of ``stage`` by dilation (DeepLab / PSPNet "dilated network").

    Every stride-2 convolution gets stride 1 and, when it has a spatial kernel, dilation
    ``dilation // 2`` (it still sees the input at the previous resolution's spacing); every
    other convolution with a spatial kernel gets dilation ``dilation``. Padding is set to keep
    the spatial size (``(k - 1) // 2 * dilation``). Weights are unchanged, so ImageNet weights of
    the undilated network still apply.

    Args:
        stage: a module whose convolutions belong to one stage of the network.
        dilation: the dilation of this stage (2 for the stage that would reach stride 16 when
            dilating to output stride 8, 4 for the one after it).
    """
    for m in stage.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        k = m.kernel_size[0]
        if m.stride == (2, 2):
            m.stride = (1, 1)
            d = max(dilation // 2, 1)
        else:
            d = dilation
        if k > 1:
            m.dilation = (d, d)
            m.padding = ((k - 1) // 2 * d, (k - 1) // 2 * d)


def stage_dilations(output_stride: int, num_stages: int = 4) -> list:
    """Dilations of the stages at nominal strides 4, 8, 16, 32 for ``output_stride`` 8/16/32."""
    if output_stride == 32:
        return [1, 1, 1, 1][:num_stages]
    if output_stride == 16:
        return [1, 1, 1, 2][:num_stages]
    if output_stride == 8:
        return [1, 1, 2, 4][:num_stages]
    raise ValueError(f"OUTPUT_STRIDE must be 8, 16 or 32; got {output_stride}")


def stage_strides(output_stride: int) -> Dict[str, int]:
    """Effective strides of res2..res5 at ``output_stride`` (e.g. 4, 8, 8, 8 at 8)."""
    stage_dilations(output_stride)  # validates
    return {n: min(4 * 2**i, output_stride) for i, n in enumerate(STAGE_NAMES)}


def check_stage_names(names: Iterable[str], where: str) -> None:
    """Raise when ``names`` contains something other than res2..res5 (``where``: config key)."""
    bad = [n for n in names if n not in STAGE_NAMES]
    if bad:
        raise ValueError(f"{where}: unknown feature names {bad}; expected a subset of {STAGE_NAMES}")
