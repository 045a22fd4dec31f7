"""Distillation losses, one file each, registered in ``KD_LOSS_REGISTRY``.

Every module of this package is imported here (so its losses register; a new file needs no other
registration). The config node of each loss, ``KD.<LOSS>``, is declared in
``bcd/config/kd_defaults.py`` (torch-free), not in the loss file.
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


__all__ = [
    "KD_LOSS_REGISTRY",
    "DistillLoss",
    "FeatureShape",
    "KDContext",
    "add_common_loss_config",
]
