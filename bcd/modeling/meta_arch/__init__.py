"""Meta-architectures, registered in ``META_ARCH_REGISTRY``."""
from .build import META_ARCH_REGISTRY, ClassCountKey, build_model, class_count_key
from .semantic_seg import SemanticSegmentor
from . import gfl, retinanet  # noqa: F401  (registers RetinaNet, GFL)
from . import object_seg  # noqa: F401  (registers ObjectSegmentor)
from . import cascade_rcnn  # noqa: F401  (registers CascadeMaskRCNN, MaskRCNN)
from . import mask2former  # noqa: F401  (registers Mask2FormerSegmentor)

__all__ = ["META_ARCH_REGISTRY", "ClassCountKey", "SemanticSegmentor", "build_model", "class_count_key"]
