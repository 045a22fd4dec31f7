"""Models: backbones, heads and meta-architectures, each family behind a registry."""
from .backbone import BACKBONE_REGISTRY, build_backbone
from .heads import SEM_SEG_HEAD_REGISTRY
from .meta_arch import META_ARCH_REGISTRY, build_model

__all__ = [
    "BACKBONE_REGISTRY",
    "META_ARCH_REGISTRY",
    "SEM_SEG_HEAD_REGISTRY",
    "build_backbone",
    "build_model",
]
