"""Solver: optimizer with parameter groups, gradient clipping, LR schedules with warm-up."""
from .build import (
    ExtraOptimizer,
    OptimizerSpec,
    build_extra_optimizers,
    build_gradient_clipper,
    build_lr_multiplier,
    build_lr_scheduler,
    build_optimizer,
    extra_optimizer_specs,
    get_default_optimizer_params,
)
from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [
    "ExtraOptimizer",
    "OptimizerSpec",
    "build_extra_optimizers",
    "build_gradient_clipper",
    "build_lr_multiplier",
    "build_lr_scheduler",
    "build_optimizer",
    "extra_optimizer_specs",
    "get_default_optimizer_params",
    "LRMultiplier",
    "WarmupParamScheduler",
]
