"""``build_model``: the model of a config, the ``Distiller`` when ``KD.LOSSES`` is set.

This is the builder the engine and the tools use. It lives in ``bcd.distill`` (which may import
``bcd.modeling``) so that ``bcd.modeling`` never imports ``bcd.distill``: the Detectron2 way of
letting a wrapper meta-architecture register itself in ``META_ARCH_REGISTRY`` without the model
layer knowing it.
"""
from __future__ import annotations

import torch
from torch import nn

from bcd.modeling import build_model as build_plain_model

from .distiller import Distiller

__all__ = ["build_model"]


def build_model(cfg) -> nn.Module:
    """``Distiller(cfg)`` when ``cfg.KD.LOSSES`` is not empty (student = this config's model,
    teacher from ``KD.TEACHER``), else ``bcd.modeling.build_model(cfg)``; on ``MODEL.DEVICE``."""
    if len(cfg.KD.LOSSES) == 0:
        return build_plain_model(cfg)
    model = Distiller(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
