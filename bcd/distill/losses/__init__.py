"""Distillation losses, one file each, registered in ``KD_LOSS_REGISTRY``."""
from .build import KD_LOSS_REGISTRY

__all__ = ["KD_LOSS_REGISTRY"]
