"""``KD_LOSS_REGISTRY``: one distillation loss per file in this package."""
from fvcore.common.registry import Registry

KD_LOSS_REGISTRY = Registry("KD_LOSS")
KD_LOSS_REGISTRY.__doc__ = """
Registry of distillation losses. An entry is a ``nn.Module`` class built as ``cls(cfg, ...)`` whose
``forward`` returns ``Dict[str, Tensor]`` of scalars named ``loss_kd_<name>`` (unweighted by the
schedule, which the Distiller applies).
"""
