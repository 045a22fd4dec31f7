"""Shared numerics of the losses: masked row-wise KL, temperature config helpers."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from bcd.config import CfgNode as CN
from bcd.config.kd_defaults import add_temperature_config  # noqa: F401  (re-exported)

from ..schedule import TemperatureController

__all__ = ["add_temperature_config", "build_temperature", "masked_kl", "masked_log_softmax"]


def masked_log_softmax(logits: Tensor, mask: Optional[Tensor], dim: int) -> Tensor:
    """``log_softmax`` along ``dim`` over the entries where ``mask`` is True (fp32).

    Masked entries get ``-inf``; a row with no valid entry gives ``-inf`` everywhere (callers
    drop such rows).
    """
    x = logits.float()
    if mask is not None:
        x = x.masked_fill(~mask, float("-inf"))
    return torch.log_softmax(x, dim=dim)


def masked_kl(
    teacher_logits: Tensor, student_logits: Tensor, mask: Optional[Tensor], dim: int
) -> Tensor:
    """Row-wise ``KL(softmax(t) ‖ softmax(s))`` along ``dim`` over the valid entries.

    Args:
        teacher_logits, student_logits: same shape, already divided by the temperature.
        mask: bool, broadcastable to the logits; False entries take no probability mass.
        dim: the softmax axis.

    Returns:
        The per-row KL (the shape of the inputs without ``dim``), 0 for rows with no valid entry.
    """
    log_pt = masked_log_softmax(teacher_logits, mask, dim)
    log_ps = masked_log_softmax(student_logits, mask, dim)
    pt = log_pt.exp()
    terms = pt * (log_pt - log_ps)
    keep = pt > 0
    if mask is not None:
        keep = keep & mask
    return torch.where(keep, terms, torch.zeros_like(terms)).sum(dim=dim)


def build_temperature(node: CN) -> TemperatureController:
    """A :class:`TemperatureController` from ``node.TEMPERATURE``."""
    t = node.TEMPERATURE
    thr = t.THRESHOLD
    if t.TRIGGER == "range" and thr == 0.5:
        thr = -1.0  # the maxprob default makes no sense for a range: use ln(row size)
    return TemperatureController(t.INIT, t.FACTOR, t.TRIGGER, thr, t.ADAPTIVE)
