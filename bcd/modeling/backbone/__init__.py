"""Backbones (torchvision / timm) and FPN, registered in ``BACKBONE_REGISTRY``."""
from .build import BACKBONE_REGISTRY, build_backbone

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]
