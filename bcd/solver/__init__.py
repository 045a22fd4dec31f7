"""Solver: optimizer with parameter groups, gradient clipping, LR schedules with warm-up."""
from .build import (
    build_gradient_clipper,
    build_lr_multiplier,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    separately_optimized_parameter_names,
)
from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [
    "build_gradient_clipper",
    "build_lr_multiplier",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "separately_optimized_parameter_names",
    "LRMultiplier",
    "WarmupParamScheduler",
]
