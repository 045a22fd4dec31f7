"""PKD: Pearson-correlation feature distillation for detectors (Cao et al., NeurIPS 2022).

docs/methods.md §5.6, following mmrazor ``pkd_loss.py``: for each FPN level pair, resize the student map
to the teacher's size (bilinear) when they differ, standardise every channel jointly over
``(B, h, w)`` (mean, unbiased std + 1e-6), and take ``MSE_mean(norm_S, norm_T) / 2``; sum over the
levels. This equals ``((n−1)/n) · mean_c (1 − r_c)`` with ``r_c`` the Pearson correlation of
channel ``c`` over the ``n = B·h·w`` positions. No adapter: the widths must match (FPN: 256).
Padding is not masked (mmrazor does not), so ``KD.PKD`` has no ``MASK`` key.

Config ``KD.PKD``: ``WEIGHT`` (10 per level for one-stage detectors, applied to the sum),
``STUDENT_FEATURES`` / ``TEACHER_FEATURES`` (default ``backbone[p3]`` .. ``backbone[p6]``: the
5th level is not distilled in the reference configs).
"""
from __future__ import annotations

from typing import Dict

import torch.nn.functional as F
from torch import Tensor

from .base import DistillLoss, KDContext, as_tensor_feature
from .build import KD_LOSS_REGISTRY

__all__ = ["PKD", "pkd_level_loss"]



def _standardise(x: Tensor) -> Tensor:
    """Per channel over ``(B, h, w)``: ``(x − mean) / (std_unbiased + 1e-6)`` (fp32)."""
    x = x.float()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-6)


def pkd_level_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """PKD on one level: ``B×C×h×w`` student and teacher maps (same ``C``) -> scalar."""
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"PKD needs equal channels on student and teacher, got {student.shape[1]} and "
            f"{teacher.shape[1]} (PKD has no adapter; distil FPN levels of equal width)"
        )
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(_standardise(student), _standardise(teacher.detach())) / 2


@KD_LOSS_REGISTRY.register()
class PKD(DistillLoss):
    """Sum over the configured level pairs of :func:`pkd_level_loss`; key ``loss_kd_pkd``."""

    CONFIG_KEY = "PKD"
    NAME = "pkd"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        for s, t in zip(self.student_features, self.teacher_features):
            cs, ct = student_shapes[s].channels, teacher_shapes[t].channels
            if cs != ct:
                raise ValueError(
                    f"KD.PKD: student feature '{s}' has {cs} channels but teacher feature '{t}' "
                    f"has {ct}; PKD needs equal widths (set MODEL.FPN.OUT_CHANNELS alike)"
                )

    def forward(self, student_feats: Dict[str, Tensor], teacher_feats: Dict[str, Tensor],
                ctx: KDContext) -> Dict[str, Tensor]:
        total = None
        for s, t in zip(self.student_features, self.teacher_features):
            loss = pkd_level_loss(as_tensor_feature(student_feats[s], s),
                                  as_tensor_feature(teacher_feats[t], t))
            total = loss if total is None else total + loss
        return {self.loss_key: total}
