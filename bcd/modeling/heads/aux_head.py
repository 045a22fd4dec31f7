"""FCN auxiliary head (PSPNet's deep supervision on ``res4``), used only in training."""
from __future__ import annotations

from typing import Dict

from torch import Tensor, nn

from ..backbone.backbone import ShapeSpec
from .common import conv_norm_act, init_predictor

__all__ = ["FCNAuxHead"]


class FCNAuxHead(nn.Module):
    """3×3 conv-norm-ReLU to ``MODEL.AUX_HEAD.CHANNELS`` (``feature``), dropout, 1×1
    ``predictor`` on ``MODEL.AUX_HEAD.IN_FEATURE``; its loss is weighted by
    ``MODEL.AUX_HEAD.LOSS_WEIGHT`` (0.4)."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        a = cfg.MODEL.AUX_HEAD
        self.in_feature = a.IN_FEATURE
        if self.in_feature not in input_shape:
            raise ValueError(
                f"MODEL.AUX_HEAD.IN_FEATURE '{self.in_feature}' is not a backbone output "
                f"({list(input_shape)})"
            )
        norm = cfg.MODEL.SEM_SEG_HEAD.NORM
        self.feature = conv_norm_act(input_shape[self.in_feature].channels, a.CHANNELS, 3, norm)
        self.dropout = nn.Dropout2d(cfg.MODEL.SEM_SEG_HEAD.DROPOUT)
        self.predictor = init_predictor(nn.Conv2d(a.CHANNELS, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1))

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """``{res4: B×C×h×w}`` -> ``B×K×h×w`` logits."""
        return self.predictor(self.dropout(self.feature(features[self.in_feature])))
