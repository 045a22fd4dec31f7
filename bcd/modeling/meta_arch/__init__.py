"""Meta-architectures, registered in ``META_ARCH_REGISTRY``."""
from .build import META_ARCH_REGISTRY, ClassCountKey, build_model, class_count_key
from .semantic_seg import SemanticSegmentor
from .retinanet import RetinaNet
from .gfl import GFL
from .object_seg import ObjectSegmentor
from .cascade_rcnn import CascadeMaskRCNN, MaskRCNN
from .mask2former import Mask2FormerSegmentor

__all__ = [
    "META_ARCH_REGISTRY",
    "CascadeMaskRCNN",
    "ClassCountKey",
    "GFL",
    "Mask2FormerSegmentor",
    "MaskRCNN",
    "ObjectSegmentor",
    "RetinaNet",
    "SemanticSegmentor",
    "build_model",
    "class_count_key",
]
