"""``BACKBONE_REGISTRY`` and ``build_backbone``."""
from __future__ import annotations

from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import lookup

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Registry of backbones, built by ``build_backbone(cfg)``.

A registered function is called as ``fn(cfg)`` and returns a ``Backbone``: an ``nn.Module`` whose
``forward(x: B×3×H×W)`` returns ``Dict[str, Tensor]`` of named features (``res2``..``res5`` for
stages at strides 4..32, ``p3``..``p7`` for FPN levels) and whose ``output_shape()`` gives each
name's channels and stride.
"""


def build_backbone(cfg) -> nn.Module:
    """Build ``cfg.MODEL.BACKBONE.NAME``."""
    return lookup(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.NAME, "MODEL.BACKBONE.NAME")(cfg)
