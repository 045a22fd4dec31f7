"""FitNet-style feature MSE with an adapter (docs/methods.md §5.5).

``L = mean((Conv1x1_{C_S→C_T, no bias}(F_S) − sg(F_T))²)`` over ``B·C_T·h·w`` elements; with
``MASK`` only valid cells count (mean over ``C_T × #valid``). The adapter is always present
(``Connector(force_conv=True)``, norm ``CONNECTOR_NORM``). Default (CIRKD segmentation): the
final decoder feature ``sem_seg_head.feature``, λ = 10. Several pairs are averaged.
"""
from __future__ import annotations

from typing import Any, Dict

from torch import Tensor

from .base import FeaturePairLoss, KDContext
from .build import KD_LOSS_REGISTRY

__all__ = ["FitNet", "masked_mse"]


def masked_mse(s: Tensor, t: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the channels of the valid cells (``B×C×h×w``, ``B×h×w``)."""
    d = (s - t.detach()) ** 2 * valid[:, None]
    return d.sum() / (valid.sum().clamp_min(1) * s.shape[1])


@KD_LOSS_REGISTRY.register()
class FitNet(FeaturePairLoss):
    """FitNet; entry ``loss_kd_fitnet``."""

    CONFIG_KEY = "FITNET"
    NAME = "fitnet"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        self.build_connectors(cfg, self.node.CONNECTOR_NORM, force_conv=True)

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        total = 0.0
        for s, t, valid in self.aligned_pairs(student_feats, teacher_feats, ctx):
            total = total + masked_mse(s, t, valid)
        return {self.loss_key: total / len(self.connectors)}
