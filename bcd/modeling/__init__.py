"""Models: backbones, heads and meta-architectures, each family behind a registry."""
from .backbone import BACKBONE_REGISTRY, Backbone, ShapeSpec, build_backbone
from .heads import SEM_SEG_HEAD_REGISTRY
from .meta_arch import (
    GFL,
    META_ARCH_REGISTRY,
    CascadeMaskRCNN,
    Mask2FormerSegmentor,
    MaskRCNN,
    ObjectSegmentor,
    RetinaNet,
    SemanticSegmentor,
    build_model,
)

__all__ = [
    "BACKBONE_REGISTRY",
    "Backbone",
    "CascadeMaskRCNN",
    "GFL",
    "META_ARCH_REGISTRY",
    "Mask2FormerSegmentor",
    "MaskRCNN",
    "ObjectSegmentor",
    "RetinaNet",
    "SEM_SEG_HEAD_REGISTRY",
    "SemanticSegmentor",
    "ShapeSpec",
    "build_backbone",
    "build_model",
]
