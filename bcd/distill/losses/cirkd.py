"""CIRKD: cross-image relational KD (Yang et al., CVPR 2022; docs/methods.md §5.4).

Three terms on the final decoder embeddings (``sem_seg_head.feature``), returned as
``loss_kd_cirkd`` (their weighted sum: ``MINIBATCH_WEIGHT``·(i) + ``PIXEL_MEMORY_WEIGHT``·(ii) +
``REGION_MEMORY_WEIGHT``·(iii); CIRKD's 1 / 0.1 / 0.1 with the overall ``WEIGHT`` 1):

(i) mini-batch pixel-to-pixel: for every ordered image pair ``(i, j)`` of the batch (i = j
    included), L2-normalised embeddings, ``S_ij = f̂_i f̂_jᵀ`` (``N×N``), row-wise
    ``KL(softmax(S^T/τ) ‖ softmax(S^S/τ))`` averaged over rows, then over the ``B²`` pairs (τ = 0.1).
    No projector; a connector (1×1 conv + norm) is used only when the widths differ.
(ii) memory pixel-to-pixel: student embeddings pass a projector (1×1 conv s→t, no bias → BN →
    ReLU → 1×1 conv t→t) and are L2-normalised; anchors are labelled pixels (at most
    ``MAX_ANCHORS`` sampled); keys are ``PIXEL_CONTRAST/K + 1`` entries per class sampled from a
    per-class queue of teacher pixel embeddings (``PIXEL_QUEUE`` per class, ``PIXELS_PER_CLASS``
    per image and class enqueued after each step); ``KL(softmax(a_T·k/τ) ‖ softmax(a_S·k/τ))``.
(iii) memory pixel-to-region: same with a queue of per-image class-mean teacher embeddings
    (``REGION_QUEUE`` per class, ``REGION_CONTRAST/K + 1`` keys per class).

The queues are plain tensors (not buffers): they are neither saved in checkpoints (CIRKD's are
hundreds of MB) nor broadcast by DDP, and each rank fills its own (CIRKD gathers across GPUs).
With ``MASK`` term (i) drops invalid rows and columns (CIRKD does not).
``IMPL``: ``"fused"`` (default) computes term (i) for all pairs without the ``N×N`` matrices
(``bcd/distill/functional/relation.py``, equal to the reference up to fp32 rounding);
``"chunked"`` is the reference, one ``N×N`` pair at a time.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..connectors import Connector
from ..functional.relation import relation_kl_rows
from ._functional import masked_kl
from .base import DistillLoss, KDContext, as_tensor_feature
from .build import KD_LOSS_REGISTRY

__all__ = ["CIRKD", "minibatch_relation_kl"]


_IMPLS = ("fused", "chunked")


def minibatch_relation_kl(fs: Tensor, ft: Tensor, valid: Tensor, tau: float, impl: str = "fused") -> Tensor:
    """Term (i): mean over the ``B²`` ordered pairs of the mean row KL of ``S_ij``.

    Args:
        fs, ft: ``B×C×h×w`` student / teacher embeddings (same C).
        valid: ``B×h×w`` bool (rows of image i and columns of image j; pairs where either image
            has no valid cell are skipped).
        tau: relation temperature.
        impl: ``"fused"`` (all pairs at once through :func:`bcd.distill.functional.relation_kl_rows`,
            ``O(B²·N·C)`` memory, no ``N×N`` matrix) or ``"chunked"`` (the reference: one ``N×N``
            pair at a time with ``masked_kl``).

    Raises:
        ValueError: on an unknown ``impl``.
    """
    if impl not in _IMPLS:
        raise ValueError(f"KD.CIRKD.IMPL '{impl}' not in {_IMPLS}")
    B = fs.shape[0]
    xs = F.normalize(fs.float().flatten(2).transpose(1, 2), dim=2)
    xt = F.normalize(ft.float().detach().flatten(2).transpose(1, 2), dim=2)
    v = valid.flatten(1)
    if impl == "fused":
        i = torch.arange(B, device=xs.device).repeat_interleave(B)  # pair p = (i, j), row-major
        j = torch.arange(B, device=xs.device).repeat(B)
        rows = relation_kl_rows(xs[i], xs[j], xt[i], xt[j], 1.0 / tau, v[i], v[j])  # B²×N
        keep = v[i].any(1) & v[j].any(1)
        per_pair = (rows * v[i]).sum(1) / v[i].sum(1).clamp_min(1)
        return (per_pair * keep).sum() / keep.sum().clamp_min(1)
    total = xs.new_zeros(())
    pairs = 0
    for i in range(B):
        for j in range(B):
            rows = v[i]
            if not bool(rows.any()) or not bool(v[j].any()):
                continue
            kl = masked_kl(xt[i] @ xt[j].t() / tau, xs[i] @ xs[j].t() / tau, v[j][None, :], dim=1)
            total = total + (kl * rows).sum() / rows.sum()
            pairs += 1
    return total / max(pairs, 1)


@KD_LOSS_REGISTRY.register()
class CIRKD(DistillLoss):
    """CIRKD's three relational terms; entry ``loss_kd_cirkd``."""

    CONFIG_KEY = "CIRKD"
    NAME = "cirkd"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        if len(self.student_features) != 1:
            raise ValueError("KD.CIRKD works on one embedding: give one STUDENT/TEACHER_FEATURES name")
        if self.node.IMPL not in _IMPLS:
            raise ValueError(f"KD.CIRKD.IMPL '{self.node.IMPL}' not in {_IMPLS}")
        sn, tn = self.student_features[0], self.teacher_features[0]
        c_s, c_t = student_shapes[sn].channels, teacher_shapes[tn].channels
        self.connector = Connector(c_s, c_t, cfg.KD.CONNECTOR.NORM, cfg.KD.CONNECTOR.SPATIAL)
        self.use_memory = self.node.PIXEL_MEMORY_WEIGHT > 0 or self.node.REGION_MEMORY_WEIGHT > 0
        # Only built when a memory term is on (an unused module would stall DDP).
        self.projector: Optional[nn.Module] = nn.Sequential(
            nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t), nn.ReLU(), nn.Conv2d(c_t, c_t, 1)
        ) if self.use_memory else None
        self.num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self.channels = c_t
        self.pixel_queue: Optional[Tensor] = None  # K×Q×C
        self.region_queue: Optional[Tensor] = None
        self.pixel_ptr = [0] * self.num_classes
        self.region_ptr = [0] * self.num_classes
        self.pixel_fill = [0] * self.num_classes
        self.region_fill = [0] * self.num_classes

    def _labels(self, ctx: KDContext, size) -> Optional[Tensor]:
        sem = ctx.student_batch.sem_seg
        if sem is None:
            return None
        return F.interpolate(sem[:, None].float(), size=size, mode="nearest")[:, 0].long()

    def _sample_keys(self, queue: Tensor, fill, per_class: int) -> Tensor:
        keys = []
        for k in range(self.num_classes):
            if fill[k] == 0:
                continue
            idx = torch.randint(0, fill[k], (per_class,), device=queue.device)
            keys.append(queue[k, idx])
        return torch.cat(keys, dim=0) if keys else queue.new_zeros(0, self.channels)

    def _memory_kl(self, a_s: Tensor, a_t: Tensor, keys: Tensor) -> Tensor:
        if keys.shape[0] == 0 or a_s.shape[0] == 0:
            return a_s.new_zeros(())
        tau = float(self.node.KD_TEMPERATURE)
        t_logits = a_t @ keys.t() / float(self.node.TEMPERATURE)
        s_logits = a_s @ keys.t() / float(self.node.TEMPERATURE)
        return masked_kl(t_logits / tau, s_logits / tau, None, dim=1).mean() * tau * tau

    @torch.no_grad()
    def _enqueue(self, ft: Tensor, labels: Tensor) -> None:
        B, C = ft.shape[:2]
        K = self.num_classes
        if self.pixel_queue is None or self.pixel_queue.device != ft.device:
            self.pixel_queue = ft.new_zeros(K, int(self.node.PIXEL_QUEUE), C)
            self.region_queue = ft.new_zeros(K, int(self.node.REGION_QUEUE), C)
        x = F.normalize(ft.float(), dim=1).flatten(2).transpose(1, 2)  # B×N×C
        lab = labels.flatten(1)
        for n in range(B):
            for k in torch.unique(lab[n]).tolist():
                if k < 0 or k >= K:
                    continue
                feats = x[n][lab[n] == k]
                take = feats[torch.randperm(feats.shape[0], device=feats.device)[: int(self.node.PIXELS_PER_CLASS)]]
                self._push(self.pixel_queue, self.pixel_ptr, self.pixel_fill, k, take)
                self._push(self.region_queue, self.region_ptr, self.region_fill, k,
                           F.normalize(feats.mean(0, keepdim=True), dim=1))

    @staticmethod
    def _push(queue: Tensor, ptr, fill, k: int, items: Tensor) -> None:
        Q = queue.shape[1]
        for row in items:
            queue[k, ptr[k]] = row
            ptr[k] = (ptr[k] + 1) % Q
            fill[k] = min(fill[k] + 1, Q)

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        sn, tn = self.student_features[0], self.teacher_features[0]
        t = as_tensor_feature(teacher_feats[tn], tn).detach()
        s_raw = as_tensor_feature(student_feats[sn], sn)
        size = tuple(t.shape[-2:])
        s = self.connector(s_raw, size)
        valid = ctx.valid_mask(size)
        s_mb, t_mb, v_mb = s, t, valid
        if self.node.POOL:
            s_mb, t_mb = F.avg_pool2d(s, 2, 2, ceil_mode=True), F.avg_pool2d(t, 2, 2, ceil_mode=True)
            v_mb = F.max_pool2d(valid[:, None].float(), 2, 2, ceil_mode=True)[:, 0] > 0.5
        loss = float(self.node.MINIBATCH_WEIGHT) * minibatch_relation_kl(
            s_mb, t_mb, v_mb, float(self.node.TEMPERATURE), str(self.node.IMPL)
        )
        labels = self._labels(ctx, size)
        use_memory = labels is not None and self.projector is not None
        if use_memory:
            proj = F.normalize(align(self.projector(s_raw), size), dim=1).flatten(2).transpose(1, 2)
            tt = F.normalize(t.float(), dim=1).flatten(2).transpose(1, 2)
            lab = labels.flatten(1)
            anchor = (lab >= 0) & (lab < self.num_classes)
            a_s, a_t = proj[anchor], tt[anchor]
            if a_s.shape[0] > int(self.node.MAX_ANCHORS):
                pick = torch.randperm(a_s.shape[0], device=a_s.device)[: int(self.node.MAX_ANCHORS)]
                a_s, a_t = a_s[pick], a_t[pick]
            if self.pixel_queue is not None:
                K = self.num_classes
                pk = self._sample_keys(self.pixel_queue, self.pixel_fill, int(self.node.PIXEL_CONTRAST) // K + 1)
                rk = self._sample_keys(self.region_queue, self.region_fill, int(self.node.REGION_CONTRAST) // K + 1)
                loss = loss + float(self.node.PIXEL_MEMORY_WEIGHT) * self._memory_kl(a_s, a_t, pk)
                loss = loss + float(self.node.REGION_MEMORY_WEIGHT) * self._memory_kl(a_s, a_t, rk)
            elif self.training:
                # First step: queues are empty. Keep the projector in the graph (DDP) at zero cost.
                loss = loss + 0.0 * proj.sum()
            if self.training:
                self._enqueue(t, labels)
        return {self.loss_key: loss}


def align(x: Tensor, size) -> Tensor:
    """Bilinear resize of ``B×C×h×w`` to ``size`` (identity when equal)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
