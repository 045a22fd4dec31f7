"""Heads: semantic segmentation decode heads and detection heads."""
from .build import SEM_SEG_HEAD_REGISTRY
from .aux_head import FCNAuxHead
from .deeplabv3plus import DeepLabV3PlusHead
from .psp import PSPHead
from .semantic_fpn import SemanticFPNHead
from .segformer import SegFormerHead
from .espnet import ESPNetHead

__all__ = [
    "SEM_SEG_HEAD_REGISTRY",
    "DeepLabV3PlusHead",
    "ESPNetHead",
    "FCNAuxHead",
    "PSPHead",
    "SegFormerHead",
    "SemanticFPNHead",
]
