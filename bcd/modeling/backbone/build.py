"""``BACKBONE_REGISTRY`` and ``build_backbone``."""
from __future__ import annotations

from fvcore.common.registry import Registry
from torch import nn

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
    name = cfg.MODEL.BACKBONE.NAME
    try:
        fn = BACKBONE_REGISTRY.get(name)
    except KeyError as e:
        known = ", ".join(sorted(k for k, _ in BACKBONE_REGISTRY))
        raise KeyError(f"MODEL.BACKBONE.NAME '{name}' is not registered; known: {known}") from e
    return fn(cfg)
