"""ResNet-FPN backbone on ``torchvision.ops.FeaturePyramidNetwork`` (RetinaNet, GFL, Mask R-CNN).

The ResNet is the sub-module ``bottom_up`` (stages ``bottom_up.res2`` .. ``bottom_up.res5``); the
output dict holds ``p2`` .. ``p5`` (one per ``MODEL.FPN.IN_FEATURES`` entry, named by its stride,
``p{log2(stride)}``) plus the levels of ``MODEL.FPN.TOP_BLOCK``:

* ``""``: none;
* ``"P6P7"``: torchvision's ``LastLevelP6P7`` (RetinaNet / GFL): ``p6`` = 3×3/2 conv of ``res5``
  (``TOP_BLOCK_IN "res5"``) or of ``p5`` (``"p5"``), ``p7`` = 3×3/2 conv of ReLU(``p6``);
* ``"P6"``: torchvision's ``LastLevelMaxPool`` (Mask R-CNN): ``p6`` = ``p5`` subsampled by 2.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Optional

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .backbone import Backbone, check_stage_names, norm_factory
from .build import BACKBONE_REGISTRY
from .resnet import _resnet_from_cfg

__all__ = ["FPN", "build_resnet_fpn_backbone"]


class FPN(Backbone):
    """Feature pyramid over the named outputs of ``bottom_up``.

    Args:
        bottom_up: a :class:`Backbone` returning at least ``in_features``.
        in_features: bottom-up names, increasing stride (each stride twice the previous one).
        out_channels: width of every pyramid level.
        top_block: ``""``, ``"P6P7"`` or ``"P6"``.
        top_block_in: ``"res5"`` or ``"p5"``: input of the ``P6P7`` block.
        norm: norm of the lateral / output convs (``""`` = none, as in RetinaNet).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int = 256,
        top_block: str = "",
        top_block_in: str = "res5",
        norm: str = "",
    ) -> None:
        super().__init__()
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES {missing} are not outputs of the bottom-up backbone "
                f"(it gives {list(shapes)})"
            )
        strides = [shapes[f].stride for f in in_features]
        for a, b in zip(strides, strides[1:]):
            if b != 2 * a:
                raise ValueError(
                    f"FPN needs each input level at twice the stride of the previous one; "
                    f"MODEL.FPN.IN_FEATURES {list(in_features)} have strides {strides} "
                    "(a dilated ResNet, MODEL.RESNETS.OUTPUT_STRIDE < 32, cannot feed an FPN)"
                )
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self._level_names = [f"p{int(math.log2(s))}" for s in strides]

        extra: Optional[nn.Module] = None
        if top_block == "P6P7":
            if top_block_in not in ("res5", "p5"):
                raise ValueError(f"MODEL.FPN.TOP_BLOCK_IN must be 'res5' or 'p5'; got '{top_block_in}'")
            if top_block_in == "res5" and in_features[-1] != "res5":
                raise ValueError("MODEL.FPN.TOP_BLOCK_IN 'res5' needs res5 in MODEL.FPN.IN_FEATURES")
            in_ch = shapes[in_features[-1]].channels if top_block_in == "res5" else out_channels
            extra = LastLevelP6P7(in_ch, out_channels)
            # torchvision picks P5 vs C5 by comparing channel counts; make the config decide
            # (a ResNet-18 at width 0.5 has 256-channel res5, which would silently take P5).
            extra.use_P5 = top_block_in == "p5"
            n_extra = 2
        elif top_block == "P6":
            extra = LastLevelMaxPool()
            n_extra = 1
        elif top_block in ("", None):
            n_extra = 0
        else:
            raise ValueError(f"MODEL.FPN.TOP_BLOCK must be '', 'P6P7' or 'P6'; got '{top_block}'")
        last = int(math.log2(strides[-1]))
        extra_names = [f"p{last + i}" for i in range(1, n_extra + 1)]

        self.fpn = FeaturePyramidNetwork(
            [shapes[f].channels for f in in_features],
            out_channels,
            extra_blocks=extra,
            norm_layer=norm_factory(norm) if norm else None,
        )
        self._out_features = self._level_names + extra_names
        for name in self._out_features:
            self._out_feature_channels[name] = out_channels
            self._out_feature_strides[name] = 2 ** int(name[1:])
        # the largest bottom-up stride: the extra levels are computed by strided convs/pooling
        # that accept any size (Detectron2 uses the same rule)
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """``B×3×H×W`` -> ``{p2..p7: B×out_channels×H/s×W/s}`` (the levels configured)."""
        bottom = self.bottom_up(x)
        feats = OrderedDict((f, bottom[f]) for f in self.in_features)
        outs = self.fpn(feats)  # keys: in_features, then "p6"/"p7" or "pool"
        return OrderedDict(zip(self._out_features, outs.values()))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg) -> FPN:
    """ResNet of ``MODEL.RESNETS`` as ``bottom_up`` + FPN of ``MODEL.FPN``."""
    f = cfg.MODEL.FPN
    check_stage_names(f.IN_FEATURES, "MODEL.FPN.IN_FEATURES")
    bottom_up = _resnet_from_cfg(cfg, out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES))
    return FPN(bottom_up, list(f.IN_FEATURES), f.OUT_CHANNELS, f.TOP_BLOCK, f.TOP_BLOCK_IN, f.NORM)
