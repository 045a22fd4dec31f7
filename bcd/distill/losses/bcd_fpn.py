"""BCD per FPN level (docs/methods.md §2.9, ``bcd_on=fpn`` [R]): the switch for detectors.

The faithful detector BCD concatenates the backbone stages at 1/8 (``BoundaryDistillation`` /
``ContextDistillation`` with ``backbone.bottom_up.res2..res5``). This variant applies the same
two losses **separately to each FPN level** and averages them over the levels, to compare with
the FPN-based baselines (CWD / PKD / FGD):

* ``KD.LOSSES: [BoundaryDistillationFPN, ContextDistillationFPN]`` with
  ``KD.BOUNDARY.STUDENT_FEATURES = KD.BOUNDARY.TEACHER_FEATURES = ["backbone[p3]", ...,
  "backbone[p7]"]`` (same for ``KD.CONTEXT``); every other option of ``KD.BOUNDARY`` /
  ``KD.CONTEXT`` (weights, radius, temperatures, teacher heads, ``TOKEN_CAP``) applies unchanged;
* one inner loss per kind is built for a single level and run on every level at that level's own
  grid (its stride, from the shape probe): the student HFA (1×1 conv + norm, the φ of §2.9) and
  the boundary conv are therefore **shared across levels** (and the HFA between the two losses);
  the token cap of ``L_cd`` applies per level; each level gets a fresh per-step cache;
* the result is the mean over levels of each returned entry (so α = 10, β = 50 keep their scale).

Teacher side (§2.9): the teacher's FPN features are used as they are (``TEACHER_HEAD:
identity`` for ``L_cd``: no projection; for ``L_bd`` the fitted pseudo-affinity conv reads them
through an identity aggregation, ``KD.BOUNDARY.TEACHER_HFA: identity``), set by this wrapper
whatever the config says for the single-map losses. Each level's grid is passed to the inner
loss as an argument (``stride=``); no module attribute is changed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

from torch import Tensor

from .base import DistillLoss, KDContext, as_tensor_feature
from .bcd_boundary import BoundaryDistillation
from .bcd_context import ContextDistillation
from .build import KD_LOSS_REGISTRY

__all__ = ["BoundaryDistillationFPN", "ContextDistillationFPN"]


class _PerLevel(DistillLoss):
    """Run ``INNER`` (built for one level) on each configured level pair; mean of the outputs."""

    INNER: type = DistillLoss

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        for side, names, shapes in (("STUDENT", self.student_features, student_shapes),
                                    ("TEACHER", self.teacher_features, teacher_shapes)):
            chans = {shapes[n].channels for n in names}
            if len(chans) != 1:
                raise ValueError(
                    f"{type(self).__name__}: KD.{self.CONFIG_KEY}.{side}_FEATURES {names} must have one "
                    f"width (FPN levels); got channels {[shapes[n].channels for n in names]}"
                )
        self.strides = []
        for n in self.student_features:
            stride = student_shapes[n].stride
            if stride <= 0:
                raise ValueError(f"{type(self).__name__}: feature '{n}' is not a B×C×h×w map")
            self.strides.append(int(round(stride)))
        s0, t0 = self.student_features[0], self.teacher_features[0]
        inner_cfg = cfg.clone()
        inner_cfg.defrost()
        inner_cfg.KD[self.CONFIG_KEY].STUDENT_FEATURES = [s0]
        inner_cfg.KD[self.CONFIG_KEY].TEACHER_FEATURES = [t0]
        self._set_teacher_side(inner_cfg.KD[self.CONFIG_KEY])
        self.inner = self.INNER(inner_cfg, {s0: student_shapes[s0]}, {t0: teacher_shapes[t0]}, shared)
        self.aux_loss_keys = list(self.inner.aux_loss_keys)

    def _set_teacher_side(self, node) -> None:
        """§2.9: the teacher side is the FPN feature itself (overridden by each subclass)."""

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any],
                ctx: KDContext) -> Dict[str, Tensor]:
        s0, t0 = self.student_features[0], self.teacher_features[0]
        total: Dict[str, Tensor] = {}
        n = len(self.student_features)
        for s, t, stride in zip(self.student_features, self.teacher_features, self.strides):
            level_ctx = dataclasses.replace(ctx, cache={})  # per-level grid, masks and HFA output
            out = self.inner(
                {s0: as_tensor_feature(student_feats[s], s)},
                {t0: as_tensor_feature(teacher_feats[t], t)},
                level_ctx,
                stride=stride,
            )
            for k, v in out.items():
                total[k] = total[k] + v / n if k in total else v / n
        return total


@KD_LOSS_REGISTRY.register()
class BoundaryDistillationFPN(_PerLevel):
    """BCD boundary distillation per FPN level (options in ``KD.BOUNDARY``); ``loss_kd_boundary``."""

    CONFIG_KEY = "BOUNDARY"
    NAME = "boundary"
    INNER = BoundaryDistillation

    def _set_teacher_side(self, node) -> None:
        node.TEACHER_HFA = "identity"


@KD_LOSS_REGISTRY.register()
class ContextDistillationFPN(_PerLevel):
    """BCD context distillation per FPN level (options in ``KD.CONTEXT``); ``loss_kd_context``."""

    CONFIG_KEY = "CONTEXT"
    NAME = "context"
    INNER = ContextDistillation

    def _set_teacher_side(self, node) -> None:
        node.TEACHER_HEAD = "identity"
