"""Meta-architectures, registered in ``META_ARCH_REGISTRY``."""
from .build import META_ARCH_REGISTRY, build_model

__all__ = ["META_ARCH_REGISTRY", "build_model"]
