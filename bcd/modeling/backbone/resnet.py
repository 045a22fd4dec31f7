"""ResNet-18/34/50/101/152 from torchvision's blocks, with dilation and a width multiplier.

The stages are torchvision's ``BasicBlock`` / ``Bottleneck`` assembled as torchvision's
``ResNet._make_layer`` does, but with every stage width multiplied by
``MODEL.RESNETS.WIDTH_MULTIPLIER`` (the papers' "ResNet-18(0.5)" has half the channels in every
layer) and with the stride of the last stages replaced by dilation for output stride 8 or 16.
Modules are named ``stem``, ``res2`` .. ``res5`` (torchvision: ``conv1/bn1``, ``layer1..4``).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Sequence, Type, Union

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

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

__all__ = ["ResNet", "build_resnet_backbone", "RESNET_SPECS", "resnet_key_map"]

Block = Union[Type[BasicBlock], Type[Bottleneck]]

# depth -> (block, blocks per stage), as in torchvision.models.resnet{18,...}
RESNET_SPECS: Dict[int, tuple] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


class ResNetStem(nn.Module):
    """Stride-4 stem: 7×7/2 conv (or three 3×3 convs, "deep stem") + norm + ReLU + 3×3/2 max-pool.

    Sub-module names of the 7×7 stem are torchvision's ``conv1`` / ``bn1`` so that
    ``stem.conv1.weight`` receives torchvision's ``conv1.weight``.
    """

    def __init__(
        self, out_channels: int, norm_layer: Callable[[int], nn.Module], deep: bool = False
    ) -> None:
        super().__init__()
        self.deep = deep
        if deep:
            mid = out_channels // 2
            # PSPNet / mmseg "ResNetV1c": 3×3/2 (mid) -> 3×3 (mid) -> 3×3 (out)
            self.conv1 = nn.Conv2d(3, mid, 3, stride=2, padding=1, bias=False)
            self.bn1 = norm_layer(mid)
            self.conv2 = nn.Conv2d(mid, mid, 3, stride=1, padding=1, bias=False)
            self.bn2 = norm_layer(mid)
            self.conv3 = nn.Conv2d(mid, out_channels, 3, stride=1, padding=1, bias=False)
            self.bn3 = norm_layer(out_channels)
        else:
            self.conv1 = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``B×3×H×W`` -> ``B×C×H/4×W/4``."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.deep:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)


def _make_stage(
    block: Block,
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int,
    norm_layer: Callable[[int], nn.Module],
) -> nn.Sequential:
    """torchvision's ``ResNet._make_layer`` with free ``inplanes`` / ``planes`` (no dilation)."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            conv1x1(inplanes, planes * block.expansion, stride),
            norm_layer(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, norm_layer=norm_layer)]
    inplanes = planes * block.expansion
    for _ in range(1, blocks):
        layers.append(block(inplanes, planes, norm_layer=norm_layer))
    return nn.Sequential(*layers)


class ResNet(Backbone):
    """ResNet backbone returning ``res2``..``res5`` (strides 4, 8, 16, 32 before dilation).

    Args:
        depth: 18, 34, 50, 101 or 152.
        width_multiplier: scales the width of the stem and of every stage (``int(64 * m)`` etc.).
        output_stride: 32 (plain), 16 (res5 dilated by 2) or 8 (res4 by 2, res5 by 4).
        norm: see :func:`get_norm`.
        deep_stem: three 3×3 convs in the stem instead of one 7×7.
        out_features: names returned by ``forward``.
        freeze_at: 0 trains everything; ``k >= 1`` freezes the stem and the first ``k - 1``
            stages (Detectron2's ``FREEZE_AT``).
        stride_in_1x1: MSRA layout: a bottleneck's stride in its first 1×1 conv (Detectron2's
            ``STRIDE_IN_1X1``); False = torchvision's (stride in the 3×3 conv).
    """

    def __init__(
        self,
        depth: int = 50,
        width_multiplier: float = 1.0,
        output_stride: int = 32,
        norm: str = "BN",
        deep_stem: bool = False,
        out_features: Sequence[str] = STAGE_NAMES,
        freeze_at: int = 0,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(RESNET_SPECS)}; got {depth}")
        if width_multiplier <= 0:
            raise ValueError(f"MODEL.RESNETS.WIDTH_MULTIPLIER must be > 0; got {width_multiplier}")
        check_stage_names(out_features, "MODEL.RESNETS.OUT_FEATURES")
        block, layers = RESNET_SPECS[depth]
        norm_layer = norm_factory(norm)
        self.depth = depth
        self.width_multiplier = float(width_multiplier)
        self.output_stride = output_stride
        dilations = stage_dilations(output_stride)

        widths = [max(int(round(w * width_multiplier)), 1) for w in (64, 128, 256, 512)]
        self.stem = ResNetStem(widths[0], norm_layer, deep=deep_stem)
        inplanes = widths[0]
        stride = 4
        for i, (name, planes, n) in enumerate(zip(STAGE_NAMES, widths, layers)):
            stage_stride = 1 if i == 0 else 2
            stage = _make_stage(block, inplanes, planes, n, stage_stride, norm_layer)
            if stride_in_1x1 and block is Bottleneck and stage_stride > 1:
                # MSRA layout (MODEL.RESNETS.STRIDE_IN_1X1, Detectron2 / Caffe2 ImageNet
                # models): the stride sits in the bottleneck's first 1x1 conv, not its 3x3.
                stage[0].conv1.stride = (stage_stride, stage_stride)
                stage[0].conv2.stride = (1, 1)
            if dilations[i] > 1:
                # torchvision's replace_stride_with_dilation only supports Bottleneck; the same
                # result for both block types: stride-2 conv -> stride 1 with the previous
                # dilation, every later 3×3 conv at this stage's dilation.
                dilate_stage(stage, dilations[i])
            else:
                stride *= stage_stride
            self.add_module(name, stage)
            inplanes = planes * block.expansion
            self._out_feature_channels[name] = inplanes
            self._out_feature_strides[name] = stride
        self._out_features = list(out_features)
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and stages ``res2 .. res{freeze_at}``."""
        if freeze_at >= 1:
            freeze_module(self.stem)
        for i, name in enumerate(STAGE_NAMES, start=2):
            if freeze_at >= i:
                freeze_module(getattr(self, name))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """``B×3×H×W`` -> ``{name: B×C×H/s×W/s}`` for the names of ``out_features``."""
        outputs = {}
        x = self.stem(x)
        last = self._out_features[-1] if self._out_features else None
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
            if name == last:
                break
        return outputs

    def load_torchvision(self, path: str) -> None:
        """Load a torchvision ResNet file (``conv1``, ``bn1``, ``layer1..4``; ``fc`` is skipped)."""
        hint = ""
        if self.width_multiplier != 1.0:
            hint = (
                f"MODEL.RESNETS.WIDTH_MULTIPLIER is {self.width_multiplier}: a width-multiplied "
                "ResNet cannot load full-width ImageNet weights; train it from scratch "
                '(MODEL.BACKBONE.WEIGHTS "") or give a file trained at that width'
            )
        elif self.stem.deep:
            hint = (
                "MODEL.RESNETS.DEEP_STEM is on: torchvision's ResNets have a 7×7 stem, so their "
                "files do not fit a deep stem"
            )
        load_torchvision_weights(self, path, resnet_key_map, hint=hint)


_LAYER = re.compile(r"^layer([1-4])\.")


def resnet_key_map(key: str) -> Optional[str]:
    """torchvision ResNet key -> ours: ``conv1.*``/``bn1.*`` -> ``stem.*``, ``layerN.`` ->
    ``res{N+1}.``, ``fc.*`` -> None (classifier, unused)."""
    if key.startswith("fc."):
        return None
    if key.startswith(("conv1.", "bn1.")):
        return "stem." + key
    m = _LAYER.match(key)
    if m:
        return f"res{int(m.group(1)) + 1}." + key[m.end():]
    return key


def _resnet_from_cfg(cfg, out_features: Optional[List[str]] = None) -> ResNet:
    r = cfg.MODEL.RESNETS
    model = ResNet(
        depth=r.DEPTH,
        width_multiplier=r.WIDTH_MULTIPLIER,
        output_stride=r.OUTPUT_STRIDE,
        norm=cfg.MODEL.BACKBONE.NORM,
        deep_stem=r.DEEP_STEM,
        out_features=out_features if out_features is not None else r.OUT_FEATURES,
        freeze_at=0,
        stride_in_1x1=r.STRIDE_IN_1X1,
    )
    if cfg.MODEL.BACKBONE.WEIGHTS:
        model.load_torchvision(cfg.MODEL.BACKBONE.WEIGHTS)
    # freeze after loading so FrozenBN receives the pretrained statistics
    model.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
    return model


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg) -> ResNet:
    """ResNet of ``MODEL.RESNETS`` (+ ``MODEL.BACKBONE.NORM / WEIGHTS / FREEZE_AT``)."""
    return _resnet_from_cfg(cfg)
