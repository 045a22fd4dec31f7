"""Dataset registrations: builtin datasets under ``$BCD_DATASETS`` and custom ones from the config.

``register_from_config(cfg)`` registers every entry of ``cfg.DATASETS.CUSTOM`` through the
function its ``TYPE`` names in ``CUSTOM_DATASET_TYPES`` (``registry.py``, which the task modules
fill on import).
"""
from .registry import (
    CUSTOM_DATASET_TYPES,
    DATASET_CHECKS,
    check_datasets,
    get_datasets_root,
    register_from_config,
)

# Task modules register their builtin datasets and their CUSTOM_DATASET_TYPES entry on import.
from . import builtin_sem_seg, demo, sem_seg  # noqa: E402,F401
from . import builtin_coco, coco, demo_coco  # noqa: E402,F401
from . import cityscapes_instance  # noqa: E402,F401  (issue 11)
from . import object_seg, demo_object_seg  # noqa: E402,F401

__all__ = ["CUSTOM_DATASET_TYPES", "DATASET_CHECKS", "check_datasets", "get_datasets_root",
           "register_from_config"]
