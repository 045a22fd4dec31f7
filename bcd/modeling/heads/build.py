"""``SEM_SEG_HEAD_REGISTRY``: decode heads of semantic segmentation."""
from fvcore.common.registry import Registry

SEM_SEG_HEAD_REGISTRY = Registry("SEM_SEG_HEAD")
SEM_SEG_HEAD_REGISTRY.__doc__ = """
Semantic segmentation decode heads, built as ``cls(cfg, input_shape: Dict[str, ShapeSpec])``.
``forward(features: Dict[str, Tensor]) -> Tensor`` returns ``B×K×h×w`` class logits.
"""
