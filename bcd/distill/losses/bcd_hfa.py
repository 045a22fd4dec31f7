"""BCD hierarchical feature aggregation (docs/methods.md §2.3), shared by the boundary and context losses.

``HFA``: for each level, ``ReLU(Norm(Conv1x1_{C_l→d}(F_l)))``, resized to the ``1/STRIDE`` grid of
the padded input (bilinear up, adaptive-average-pool down, identity when equal), concatenated:
``B×(L·d)×h×w``. The student has one HFA feeding both losses (kept in the Distiller's
``shared`` dict, keyed by its feature names).

``FixedProjectionHFA`` (teacher context path, A1 ``fixed_projection``): per level, standardise each
channel over the valid cells of ``(B, h, w)`` of the batch (no parameters), project with a fixed random orthogonal
``C_l→d`` matrix (seeded buffer), resize and concatenate. It has no trainable parameters.

Config node ``KD.BCD_HFA``: ``DIM`` (d = 128), ``NORM`` (``"BN"``; ``"GN4"`` is IRNet's),
``STRIDE`` (8).
"""
from __future__ import annotations

import contextlib
import math
import zlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcd.config import CfgNode as CN

from ..connectors import align_spatial, build_norm
from .base import as_tensor_feature

__all__ = [
    "HFA",
    "FixedProjectionHFA",
    "IdentityHFA",
    "frozen_norm_stats",
    "grid_size",
    "masked_resize",
    "student_hfa",
]


def grid_size(image_hw: Sequence[int], stride: int) -> Tuple[int, int]:
    """``(⌈H/stride⌉, ⌈W/stride⌉)``: the common grid of the concatenated features."""
    return int(math.ceil(image_hw[0] / stride)), int(math.ceil(image_hw[1] / stride))


class HFA(nn.Module):
    """Trainable aggregation: per-level 1×1 conv → norm → ReLU, resize, concat.

    Args:
        in_channels: ``C_l`` of each level.
        dim: ``d`` per level.
        norm: norm name (see ``build_norm``).
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 128, norm: str = "BN") -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=norm == ""), build_norm(norm, dim), nn.ReLU())
            for c in in_channels
        )
        self.out_channels = dim * len(in_channels)

    def forward(self, feats: List[Tensor], size: Tuple[int, int]) -> Tensor:
        """``[B×C_l×h_l×w_l]`` → ``B×(L·d)×size``."""
        if len(feats) != len(self.levels):
            raise ValueError(f"HFA built for {len(self.levels)} levels, got {len(feats)}")
        return torch.cat(
            [align_spatial(m(f), size, "pool") for m, f in zip(self.levels, feats)], dim=1
        )


class FixedProjectionHFA(nn.Module):
    """Parameter-free teacher aggregation: standardise, fixed orthogonal projection, concat.

    Args:
        in_channels: ``C_l`` of each level.
        dim: ``d`` per level.
        seed: seed of the random projections (the same seed gives the same matrices).
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 128, seed: int = 0, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = float(eps)
        g = torch.Generator().manual_seed(int(seed))
        for i, c in enumerate(in_channels):
            # Orthonormal rows (d <= C) or columns (d > C) via QR of a Gaussian matrix.
            a = torch.randn(max(dim, c), min(dim, c), generator=g, dtype=torch.float64)
            q, _ = torch.linalg.qr(a)
            w = q if dim >= c else q.t()  # d×C
            self.register_buffer(f"proj{i}", w.float().contiguous())
        self.num_levels = len(in_channels)
        self.out_channels = dim * len(in_channels)

    def forward(self, feats: List[Tensor], size: Tuple[int, int], valid: Optional[Tensor] = None) -> Tensor:
        """``[B×C_l×h_l×w_l]`` → ``B×(L·d)×size`` (no gradients flow to anything here).

        ``valid`` (``B×h×w`` bool on any grid, nearest-resized to each level): invalid cells
        (padding, ignore-labelled) take no part anywhere. The standardisation statistics use the
        valid cells only; a channel whose standard deviation over them is below ``eps`` (e.g. a
        dead ReLU channel) is set to 0 instead of being divided by a tiny number; the projected
        values of invalid cells are set to 0 and, when a level is pooled down to the grid, a token
        is the mean over its *valid* cells only. So nothing an invalid cell holds changes a valid
        token (``tests/distill/test_bcd_calibration.py``).
        """
        outs = []
        for i, f in enumerate(feats):
            f = f.float()
            if valid is None:
                m = torch.ones_like(f[:, :1])
            else:
                m = F.interpolate(valid[:, None].float(), size=f.shape[-2:], mode="nearest")
            n = m.sum().clamp_min(1.0)
            fm = torch.where(m > 0, f, torch.zeros_like(f))  # invalid values never enter a sum
            mu = fm.sum(dim=(0, 2, 3), keepdim=True) / n
            var = (((fm - mu) ** 2) * m).sum(dim=(0, 2, 3), keepdim=True) / n
            sd = var.sqrt()
            live = sd > self.eps
            z = torch.where(live, (fm - mu) / sd.clamp_min(self.eps), torch.zeros_like(fm)) * m
            z = torch.einsum("dc,bchw->bdhw", getattr(self, f"proj{i}"), z)
            outs.append(masked_resize(z, m, size))
        return torch.cat(outs, dim=1)


def masked_resize(z: Tensor, m: Tensor, size: Tuple[int, int]) -> Tensor:
    """Resize ``B×C×h×w`` to ``size`` like ``align_spatial(.., "pool")``, but average-pooled
    cells only average the cells where ``m`` (``B×1×h×w``, 0/1) is 1 (0 where none is);
    upsampling is bilinear of the (already zeroed) values."""
    if tuple(z.shape[-2:]) == tuple(size):
        return z * m
    if z.shape[-2] >= size[0] and z.shape[-1] >= size[1]:
        num = F.adaptive_avg_pool2d(z * m, size)
        den = F.adaptive_avg_pool2d(m, size)
        return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
    return align_spatial(z * m, size, "pool")


class IdentityHFA(nn.Module):
    """Teacher side "identity" (docs/methods.md §2.9, FPN variant): the teacher's features as they are,
    resized to the grid and concatenated (no parameters, no normalisation).

    Args:
        in_channels: ``C_l`` of each level.
    """

    def __init__(self, in_channels: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = int(sum(in_channels))

    def forward(self, feats: List[Tensor], size: Tuple[int, int], valid: Optional[Tensor] = None) -> Tensor:
        """``[B×C_l×h_l×w_l]`` → ``B×ΣC_l×size``."""
        return torch.cat([align_spatial(f.float(), size, "pool") for f in feats], dim=1)


@contextlib.contextmanager
def frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in its current mode but restore every norm layer's running statistics
    (``running_mean``, ``running_var``, ``num_batches_tracked``) on exit.

    ``shared_stopgrad`` applies the *student's* HFA to teacher features: in train mode its
    BatchNorm normalises with the teacher batch's statistics (as the student pass does with its
    own), but teacher features must not move the student's running statistics.
    """
    saved = {
        name: b.detach().clone()
        for name, b in module.named_buffers()
        if name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in saved:
                    b.copy_(saved[name])


def student_hfa(loss: nn.Module, cfg: CN, names: Sequence[str], channels: Sequence[int]) -> HFA:
    """The student HFA shared by every BCD loss on the same features (created on first use)."""
    key = "bcd_hfa_s_%08x" % zlib.crc32("|".join(names).encode())
    return loss.shared_module(  # type: ignore[attr-defined]
        key, lambda: HFA(channels, cfg.KD.BCD_HFA.DIM, cfg.KD.BCD_HFA.NORM)
    )


def student_hfa_key(names: Sequence[str]) -> str:
    """Per-step cache key of the student HFA output on ``names``."""
    return "bcd_hfa_s_out_%08x" % zlib.crc32("|".join(names).encode())


def bcd_inputs(
    loss: nn.Module, student_feats: dict, teacher_feats: dict, ctx, stride: Optional[int]
) -> Tuple[Tensor, List[Tensor], Tuple[int, int]]:
    """The common start of a BCD loss's forward: ``(f_s, t_list, size)``.

    ``f_s``: ``B×D×h×w`` student HFA output on the loss's ``student_features`` at ``size =
    grid_size(input, stride or loss.stride)``, computed once per step and shared by every BCD
    loss on the same features (``ctx.cached``); ``t_list``: the recorded teacher features,
    detached. ``loss`` provides ``student_features``, ``teacher_features``, ``stride``, ``hfa_s``.
    """
    s_list = [as_tensor_feature(student_feats[n], n) for n in loss.student_features]
    t_list = [as_tensor_feature(teacher_feats[n], n).detach() for n in loss.teacher_features]
    size = grid_size(ctx.student_batch.tensor.shape[-2:], int(stride or loss.stride))
    f_s = ctx.cached(student_hfa_key(loss.student_features), lambda: loss.hfa_s(s_list, size))
    return f_s, t_list, size
