"""FitNet-style feature MSE with an adapter (METHODS §5.5).

``L = mean((Conv1x1_{C_S→C_T, no bias}(F_S) − sg(F_T))²)`` over ``B·C_T·h·w`` elements; with
``MASK`` only valid cells count (mean over ``C_T × #valid``). The adapter is always present
(``Connector(force_conv=True)``, norm ``CONNECTOR_NORM``). Default (CIRKD segmentation): the
final decoder feature ``sem_seg_head.feature``, λ = 10. Several pairs are averaged.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn

from bcd.config import CfgNode as CN

from ..connectors import Connector
from .base import DistillLoss, KDContext, add_common_loss_config, as_tensor_feature
from .build import KD_LOSS_REGISTRY

__all__ = ["FitNet", "add_config", "masked_mse"]


def add_config(cfg: CN) -> None:
    """Declare ``KD.FITNET``."""
    node = add_common_loss_config(CN(), 10.0, ["sem_seg_head.feature"], ["sem_seg_head.feature"])
    node.CONNECTOR_NORM = ""
    cfg.KD.FITNET = node


def masked_mse(s: Tensor, t: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the channels of the valid cells (``B×C×h×w``, ``B×h×w``)."""
    d = (s - t.detach()) ** 2 * valid[:, None]
    return d.sum() / (valid.sum().clamp_min(1) * s.shape[1])


@KD_LOSS_REGISTRY.register()
class FitNet(DistillLoss):
    """FitNet; entry ``loss_kd_fitnet``."""

    CONFIG_KEY = "FITNET"
    NAME = "fitnet"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        self.connectors = nn.ModuleList(
            Connector(student_shapes[sn].channels, teacher_shapes[tn].channels, self.node.CONNECTOR_NORM,
                      cfg.KD.CONNECTOR.SPATIAL, force_conv=True)
            for sn, tn in zip(self.student_features, self.teacher_features)
        )

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        total = 0.0
        for conn, sn, tn in zip(self.connectors, self.student_features, self.teacher_features):
            t = as_tensor_feature(teacher_feats[tn], tn).detach()
            s = conn(as_tensor_feature(student_feats[sn], sn), tuple(t.shape[-2:]))
            valid = ctx.valid_mask(tuple(t.shape[-2:])) if self.node.MASK else torch.ones_like(
                t[:, 0], dtype=torch.bool
            )
            total = total + masked_mse(s, t, valid)
        return {self.loss_key: total / len(self.connectors)}
