"""Heads: semantic segmentation decode heads and detection heads."""
from .build import SEM_SEG_HEAD_REGISTRY

__all__ = ["SEM_SEG_HEAD_REGISTRY"]
