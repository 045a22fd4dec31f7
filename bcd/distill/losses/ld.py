"""LD: Localization Distillation for GFL-style box distributions (Zheng et al., CVPR 2022).

docs/methods.md §5.8, following ``HikariTJU/LD`` (``ld_head.py``, ``kd_loss.py``): teacher and student
are GFL detectors with the same anchors (FPN P3–P7, one anchor per location) and ``REG_MAX``.
On the student's ATSS positives, each of the 4 box sides is distilled::

    KL_T(t ‖ s) = T² · mean_bins[ softmax(t/T) · (log softmax(t/T) − log softmax(s/T)) ]
    L_LD = (1/4) · Σ_pos Σ_sides w_p · KL_T,   w_p = max_c σ(student class logit at p) (detached)

(mean over the ``REG_MAX + 1`` bins, avg_factor 4, *not* divided by the number of positives).

How it reaches the detectors (documented choice):

* features: ``KD.LD.STUDENT_FEATURES = ["head"]`` and ``TEACHER_FEATURES = ["head"]``: the GFL
  head returns ``(cls_logits, bbox_dist)``, lists over levels of ``B×K×h×w`` and
  ``B×(4·(n+1))×h×w``;
* positives: the ATSS assignment the student's own loss used, published by
  ``GFL.forward_train`` as ``ctx.student_outputs["assignment"]["labels"]`` (``B×M``, ``K`` =
  background, anchors in the order of ``flatten_levels``). The loss never calls the model.

The VLR (valuable localisation region) term of the authors' full config is not implemented.

Config ``KD.LD``: ``WEIGHT`` (0.25), ``TEMPERATURE`` (10).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch.nn.functional as F
from torch import Tensor

from bcd.modeling.meta_arch.dense_detector import flatten_levels

from .base import DistillLoss, KDContext
from .build import KD_LOSS_REGISTRY

__all__ = ["LD", "ld_side_kl", "ld_soft_target"]


def ld_soft_target(teacher_logits: Tensor, temperature: float) -> Tensor:
    """The teacher's soft distribution ``softmax(t / T)`` over the last axis (fp32, detached)."""
    return F.softmax(teacher_logits.detach().float() / temperature, dim=-1)


def ld_side_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-side KD term ``T²·mean_bins[p_t (log p_t − log p_s)]``.

    Args:
        student_logits, teacher_logits: ``N×(n+1)`` bin logits of ``N`` box sides.
        temperature: ``T``.

    Returns:
        ``N`` values (0 where the two distributions are equal).
    """
    target = ld_soft_target(teacher_logits, temperature)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_s, target, reduction="none")  # p_t (log p_t − log p_s), 0 where p_t = 0
    return kl.mean(dim=-1) * temperature**2


@KD_LOSS_REGISTRY.register()
class LD(DistillLoss):
    """Localization distillation on GFL's side distributions; key ``loss_kd_ld``."""

    CONFIG_KEY = "LD"
    NAME = "ld"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        if len(self.student_features) != 1:
            raise ValueError(
                "KD.LD.STUDENT_FEATURES / TEACHER_FEATURES must each name the one GFL head "
                f"output (e.g. ['head']); got {self.student_features}"
            )
        self.temperature = float(self.node.TEMPERATURE)

    @staticmethod
    def _head_outputs(value: Any, name: str) -> List[List[Tensor]]:
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, (tuple, list)) for v in value)):
            raise TypeError(
                f"KD.LD feature '{name}' must be a GFL head output (cls_logits, bbox_dist), "
                f"lists over levels; got {type(value).__name__}"
            )
        return [list(value[0]), list(value[1])]

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any],
                ctx: KDContext) -> Dict[str, Tensor]:
        s_name, t_name = self.student_features[0], self.teacher_features[0]
        s_cls, s_dist = self._head_outputs(student_feats[s_name], s_name)
        _, t_dist = self._head_outputs(teacher_feats[t_name], t_name)
        assignment = ctx.student_outputs.get("assignment")
        if "bbox_dist" not in ctx.student_outputs or not assignment or "ious" not in assignment:
            raise TypeError(
                "KD loss LD needs a GFL student: its training outputs ('bbox_dist' and the ATSS "
                "'assignment', KDContext.student_outputs) were not published; got outputs with "
                f"keys {sorted(ctx.student_outputs)} from {type(ctx.student).__name__}"
            )
        for s, t in zip(s_dist, t_dist):
            if s.shape != t.shape:
                raise ValueError(
                    f"KD.LD: student and teacher box distributions differ in shape "
                    f"({tuple(s.shape)} vs {tuple(t.shape)}): both need the same REG_MAX, "
                    f"levels and input padding"
                )
        n1 = s_dist[0].shape[1] // 4
        K = s_cls[0].shape[1]
        labels = assignment["labels"]
        pos = (labels >= 0) & (labels < K)  # B×M
        cls = flatten_levels(s_cls, K)[pos]  # P×K
        sd = flatten_levels(s_dist, 4 * n1)[pos].reshape(-1, n1)  # (P·4)×(n+1)
        td = flatten_levels(t_dist, 4 * n1)[pos].reshape(-1, n1)
        weight = cls.detach().sigmoid().amax(dim=1)[:, None].expand(-1, 4).reshape(-1)
        kl = ld_side_kl(sd, td, self.temperature)
        loss = (kl * weight).sum() / 4.0
        if not pos.any():  # keep the graph connected (DDP) with an exact zero
            loss = s_dist[0].sum() * 0.0
        return {self.loss_key: loss}
