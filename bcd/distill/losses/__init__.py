"""Distillation losses, one file each, registered in ``KD_LOSS_REGISTRY``.

Every module of this package is imported here (so its losses register) and may define
``add_config(cfg)``, which declares its ``KD.<LOSS>`` node; :func:`add_loss_configs` calls them
all (``bcd.config.get_cfg`` does). Detection losses in other packages register the same way.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import List

from .base import DistillLoss, FeatureShape, KDContext, add_common_loss_config
from .build import KD_LOSS_REGISTRY

_SKIP = {"base", "build"}


def _loss_modules() -> List[ModuleType]:
    mods = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _SKIP:
            continue
        mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return mods


_MODULES = _loss_modules()


def add_loss_configs(cfg) -> None:
    """Call ``add_config(cfg)`` of every loss module (declares the ``KD.<LOSS>`` nodes)."""
    for mod in _MODULES:
        fn = getattr(mod, "add_config", None)
        if fn is not None:
            fn(cfg)


__all__ = [
    "KD_LOSS_REGISTRY",
    "DistillLoss",
    "FeatureShape",
    "KDContext",
    "add_common_loss_config",
    "add_loss_configs",
]
