"""Losses of binary object segmentation and its self-distillation (SKD, BYOT, DKS).

They live with the model (not in ``bcd/distill``) because there is no external teacher: the
"teachers" are other outputs of the same network, always detached (``sg``) where they teach.

* ``structure_loss``: F3Net's weighted BCE + weighted IoU (Wei et al., AAAI 2020), the task loss.
* ``binary_distillation``: pixel KD between two one-logit maps, divergence "bce" / "kl" / "mse"
  at temperature T (docs/methods.md §3.2: ``D = mean_px BCE(σ(s/T), σ(t/T))·T²``).
* ``feature_consistency``: ``‖norm(U) − sg(norm(Ã))‖²`` (channel-wise L2 norm), mean over pixels.
* ``SelfDistillationLoss``: the per-method sum, from ``MODEL.SKD``.

Shapes: logits ``B×1×h×w``; targets ``B×H×W`` int64 in {0, 1} with ``ignore_value`` (255) on
padding; ``valid`` masks ``B×H×W`` bool.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "structure_loss",
    "bce_loss",
    "binary_distillation",
    "feature_consistency",
    "SelfDistillationLoss",
    "SKD_METHODS",
]

SKD_METHODS = ("none", "skd", "byot", "dks")
_DIVERGENCES = ("bce", "kl", "mse")
_CONSISTENCY = ("feature", "prediction", "none")


def _resize_valid(valid: Optional[Tensor], size) -> Optional[Tensor]:
    """``B×H×W`` bool -> ``B×h×w`` (nearest)."""
    if valid is None or tuple(valid.shape[-2:]) == tuple(size):
        return valid
    return F.interpolate(valid[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


def _up(x: Tensor, size) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _masked_mean(x: Tensor, valid: Optional[Tensor]) -> Tensor:
    """Mean of ``x`` (``B×h×w``) over the valid cells (0 with a gradient path when none)."""
    if valid is None:
        return x.mean()
    v = valid.to(x.dtype)
    return (x * v).sum() / v.sum().clamp(min=1.0)


def structure_loss(logits: Tensor, target: Tensor, valid: Optional[Tensor] = None, kernel: int = 31) -> Tensor:
    """F3Net's structure loss: boundary-weighted BCE + weighted IoU, averaged over the batch.

    ``weit = 1 + 5·|avgpool_k(Y) − Y|`` (stride 1, zero padding counted, as F3Net); each image's
    ``wBCE = Σ weit·BCE / Σ weit`` and ``wIoU = 1 − (Σ weit·p·Y + 1) / (Σ weit·(p + Y) − Σ
    weit·p·Y + 1)``. Invalid pixels get weight 0.

    Args:
        logits: ``B×1×h×w`` (bilinearly upsampled to the target's size when smaller).
        target: ``B×H×W`` (or ``B×1×H×W``) values in {0, 1} (others count as background when
            ``valid`` excludes them).
        valid: ``B×H×W`` bool or None (all valid).
        kernel: odd window of the boundary weight (31 at F3Net's 352 px).
    """
    if target.dim() == 4:
        target = target[:, 0]
    logits = _up(logits, target.shape[-2:])
    v = torch.ones_like(target, dtype=logits.dtype) if valid is None else valid.to(logits.dtype)
    mask = (target == 1).to(logits.dtype) * v
    mask4, v4 = mask[:, None], v[:, None]
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask4, kernel_size=kernel, stride=1, padding=kernel // 2) - mask4)
    weit = weit * v4
    wbce = F.binary_cross_entropy_with_logits(logits, mask4, reduction="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3)).clamp(min=1e-6)
    pred = torch.sigmoid(logits)
    inter = (pred * mask4 * weit).sum(dim=(2, 3))
    union = ((pred + mask4) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def bce_loss(logits: Tensor, target: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Plain pixel BCE (``MODEL.OBJECT_SEG.LOSS: bce``), logits upsampled to the target."""
    if target.dim() == 4:
        target = target[:, 0]
    logits = _up(logits, target.shape[-2:])[:, 0]
    loss = F.binary_cross_entropy_with_logits(logits, (target == 1).to(logits.dtype), reduction="none")
    return _masked_mean(loss, valid)


def binary_distillation(
    student: Tensor,
    teacher: Tensor,
    temperature: float = 1.0,
    divergence: str = "bce",
    valid: Optional[Tensor] = None,
) -> Tensor:
    """Pixel KD for one-logit maps; the teacher is detached and resized to the student's grid.

    With ``p_s = σ(s/T)``, ``p_t = σ(t/T)``:

    * "bce": ``mean_px BCE(p_s, p_t) · T²`` (docs/methods.md §3.2);
    * "kl": the binary KL ``mean_px [p_t log(p_t/p_s) + (1−p_t) log((1−p_t)/(1−p_s))] · T²``
      (= "bce" minus the teacher's entropy: same gradient, 0 at agreement);
    * "mse": ``mean_px (p_s − p_t)²``.

    Args:
        student, teacher: ``B×1×h×w`` logits (any sizes; the teacher is resized bilinearly).
        valid: ``B×H×W`` bool at any size (nearest-resized to the student), or None.
    """
    if divergence not in _DIVERGENCES:
        raise ValueError(f"MODEL.SKD.DIVERGENCE must be one of {_DIVERGENCES}; got '{divergence}'")
    t = _up(teacher.detach(), student.shape[-2:])[:, 0] / temperature
    s = student[:, 0] / temperature
    p_t = torch.sigmoid(t)
    if divergence == "mse":
        loss = (torch.sigmoid(s) - p_t) ** 2
    else:
        loss = F.binary_cross_entropy_with_logits(s, p_t, reduction="none")
        if divergence == "kl":
            loss = loss - F.binary_cross_entropy_with_logits(t, p_t, reduction="none")
        loss = loss * temperature**2
    return _masked_mean(loss, _resize_valid(valid, s.shape[-2:]))


def feature_consistency(student: Tensor, teacher: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """``Σ_c (norm(U) − sg(norm(Ã)))²`` averaged over pixels (``/ H_l W_l``) and the batch;
    norm = L2 over channels at each pixel. The teacher is detached and resized to the student.

    Args:
        student: ``B×C×h×w``; teacher: ``B×C×h'×w'`` (same ``C``).
    """
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"feature consistency needs equal widths: inference feature {student.shape[1]} vs "
            f"auxiliary {teacher.shape[1]} channels (MODEL.OBJECT_SEG.CHANNELS / MODEL.SKD.AUX_CHANNELS)"
        )
    t = F.normalize(_up(teacher.detach(), student.shape[-2:]), dim=1)
    s = F.normalize(student, dim=1)
    return _masked_mean(((s - t) ** 2).sum(dim=1), _resize_valid(valid, s.shape[-2:]))


class SelfDistillationLoss(nn.Module):
    """The training losses of ``ObjectSegmentor`` for ``MODEL.SKD.METHOD`` (no parameters).

    Inputs (all lists finest level first): ``p_inf`` the inference logit, ``aux_logits``
    ``P_aux^l``, ``inf_feats`` ``U_l``, ``aux_feats`` ``Ã_l`` (SKD) / ``A_l`` (BYOT, DKS).
    Returned keys (each already weighted):

    * every method: ``loss_object_seg`` = task loss of ``p_inf``;
    * skd: ``loss_aux`` = ``Σ_l w_l·task(P_aux^l)``; ``loss_skd_top_down`` = ``λ_td·[Σ_l D(sg(P^{l+1}),
      P^l) + D(sg(P^finest), p_inf)]``; ``loss_skd_consistency`` = ``λ_cons·Σ_l cons(U_l, sg(Ã_l))``
      ("feature") or ``λ_cons·mean over pairs of maps of the symmetric D`` ("prediction");
    * byot: ``loss_aux`` (branches but the deepest weighted by ``1 − α``), ``loss_byot_kd`` =
      ``α·Σ_students D_T(sg(P^deepest), P)`` over the shallower branches and ``p_inf``,
      ``loss_byot_feature`` = ``λ_f·Σ_l ‖A_l − sg(A_deepest)‖²`` (mean over cells);
    * dks: ``loss_aux`` and ``loss_dks`` = ``λ·mean over ordered pairs (i ≠ j) of D(sg(P_j), P_i)``
      among the auxiliary maps and ``p_inf``.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        s = cfg.MODEL.SKD
        o = cfg.MODEL.OBJECT_SEG
        self.method = str(s.METHOD)
        if self.method not in SKD_METHODS:
            raise ValueError(f"MODEL.SKD.METHOD must be one of {SKD_METHODS}; got '{self.method}'")
        if o.LOSS not in ("structure", "bce"):
            raise ValueError(f"MODEL.OBJECT_SEG.LOSS must be 'structure' or 'bce'; got '{o.LOSS}'")
        if s.DIVERGENCE not in _DIVERGENCES:
            raise ValueError(f"MODEL.SKD.DIVERGENCE must be one of {_DIVERGENCES}; got '{s.DIVERGENCE}'")
        if s.CONSISTENCY not in _CONSISTENCY:
            raise ValueError(f"MODEL.SKD.CONSISTENCY must be one of {_CONSISTENCY}; got '{s.CONSISTENCY}'")
        if float(s.TEMPERATURE) <= 0 or float(s.BYOT_TEMPERATURE) <= 0:
            raise ValueError("MODEL.SKD.TEMPERATURE and BYOT_TEMPERATURE must be > 0")
        self.task = str(o.LOSS)
        self.kernel = int(o.STRUCTURE_KERNEL)
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"MODEL.OBJECT_SEG.STRUCTURE_KERNEL must be odd and >= 1; got {self.kernel}")
        self.aux_weights = [float(w) for w in s.AUX_LOSS_WEIGHTS]
        self.td_weight = float(s.TOP_DOWN_WEIGHT)
        self.consistency = str(s.CONSISTENCY)
        self.cons_weight = float(s.CONSISTENCY_WEIGHT)
        self.divergence = str(s.DIVERGENCE)
        self.temperature = float(s.TEMPERATURE)
        self.byot_alpha = float(s.BYOT_ALPHA)
        self.byot_temperature = float(s.BYOT_TEMPERATURE)
        self.byot_feature_weight = float(s.BYOT_FEATURE_WEIGHT)
        self.dks_weight = float(s.DKS_WEIGHT)

    def task_loss(self, logits: Tensor, target: Tensor, valid: Optional[Tensor]) -> Tensor:
        """Task loss (``MODEL.OBJECT_SEG.LOSS``) of one logit map against the mask."""
        if self.task == "structure":
            return structure_loss(logits, target, valid, self.kernel)
        return bce_loss(logits, target, valid)

    def _d(self, student: Tensor, teacher: Tensor, valid: Optional[Tensor], t: Optional[float] = None) -> Tensor:
        return binary_distillation(student, teacher, self.temperature if t is None else t, self.divergence, valid)

    def forward(
        self,
        p_inf: Tensor,
        aux_logits: Sequence[Tensor],
        inf_feats: Sequence[Tensor],
        aux_feats: Sequence[Tensor],
        target: Tensor,
        valid: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        """The weighted losses of the method (keys in the class doc)."""
        losses = {"loss_object_seg": self.task_loss(p_inf, target, valid)}
        if self.method == "none":
            return losses
        n = len(aux_logits)
        if len(self.aux_weights) != n:
            raise ValueError(
                f"MODEL.SKD.AUX_LOSS_WEIGHTS has {len(self.aux_weights)} entries for {n} auxiliary "
                f"levels (MODEL.OBJECT_SEG.IN_FEATURES)"
            )
        if self.method == "skd":
            losses["loss_aux"] = sum(
                w * self.task_loss(p, target, valid) for w, p in zip(self.aux_weights, aux_logits)
            )
            if self.td_weight:
                td = sum(self._d(aux_logits[i], aux_logits[i + 1], valid) for i in range(n - 1))
                td = td + self._d(p_inf, aux_logits[0], valid)
                losses["loss_skd_top_down"] = self.td_weight * td
            if self.cons_weight and self.consistency == "feature":
                losses["loss_skd_consistency"] = self.cons_weight * sum(
                    feature_consistency(u, a, valid) for u, a in zip(inf_feats, aux_feats)
                )
            elif self.cons_weight and self.consistency == "prediction":
                maps: List[Tensor] = [p_inf, *aux_logits]
                pairs = list(itertools.combinations(range(len(maps)), 2))
                cons = sum(self._d(maps[i], maps[j], valid) + self._d(maps[j], maps[i], valid) for i, j in pairs)
                losses["loss_skd_consistency"] = self.cons_weight * cons / (2 * len(pairs))
        elif self.method == "byot":
            a = self.byot_alpha
            deep = aux_logits[-1]
            losses["loss_aux"] = sum(
                w * (1.0 if i == n - 1 else 1.0 - a) * self.task_loss(p, target, valid)
                for i, (w, p) in enumerate(zip(self.aux_weights, aux_logits))
            )
            students = [*aux_logits[:-1], p_inf]
            losses["loss_byot_kd"] = a * sum(
                self._d(p, deep, valid, self.byot_temperature) for p in students
            )
            if self.byot_feature_weight:
                deep_feat = aux_feats[-1].detach()
                losses["loss_byot_feature"] = self.byot_feature_weight * sum(
                    _masked_mean(((f - _up(deep_feat, f.shape[-2:])) ** 2).mean(dim=1),
                                 _resize_valid(valid, f.shape[-2:]))
                    for f in aux_feats[:-1]
                )
        else:  # dks
            losses["loss_aux"] = sum(
                w * self.task_loss(p, target, valid) for w, p in zip(self.aux_weights, aux_logits)
            )
            maps = [p_inf, *aux_logits]
            pairs = [(i, j) for i in range(len(maps)) for j in range(len(maps)) if i != j]
            losses["loss_dks"] = self.dks_weight * sum(
                self._d(maps[i], maps[j], valid) for i, j in pairs
            ) / len(pairs)
        return losses
