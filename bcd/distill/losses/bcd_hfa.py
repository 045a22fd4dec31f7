"""BCD hierarchical feature aggregation (METHODS §2.3), shared by the boundary and context losses.

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

import math
import zlib
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcd.config import CfgNode as CN

from ..connectors import align_spatial, build_norm

__all__ = ["HFA", "FixedProjectionHFA", "grid_size", "student_hfa"]


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

    def __init__(self, in_channels: Sequence[int], dim: int = 128, seed: int = 0) -> None:
        super().__init__()
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

        ``valid`` (``B×h×w`` bool on any grid, nearest-resized to each level): the statistics of
        the standardisation use the valid cells only, so padding / ignored cells do not shift them.
        """
        outs = []
        for i, f in enumerate(feats):
            f = f.float()
            if valid is not None:
                m = F.interpolate(valid[:, None].float(), size=f.shape[-2:], mode="nearest")
                n = m.sum().clamp_min(1.0)
                mu = (f * m).sum(dim=(0, 2, 3), keepdim=True) / n
                var = (((f - mu) ** 2) * m).sum(dim=(0, 2, 3), keepdim=True) / n
                sd = var.sqrt().clamp_min(1e-6)
            else:
                mu = f.mean(dim=(0, 2, 3), keepdim=True)
                sd = f.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-6)
            z = torch.einsum("dc,bchw->bdhw", getattr(self, f"proj{i}"), (f - mu) / sd)
            outs.append(align_spatial(z, size, "pool"))
        return torch.cat(outs, dim=1)


def student_hfa(loss: nn.Module, cfg: CN, names: Sequence[str], channels: Sequence[int]) -> HFA:
    """The student HFA shared by every BCD loss on the same features (created on first use)."""
    key = "bcd_hfa_s_%08x" % zlib.crc32("|".join(names).encode())
    return loss.shared_module(  # type: ignore[attr-defined]
        key, lambda: HFA(channels, cfg.KD.BCD_HFA.DIM, cfg.KD.BCD_HFA.NORM)
    )


def student_hfa_key(names: Sequence[str]) -> str:
    """Per-step cache key of the student HFA output on ``names``."""
    return "bcd_hfa_s_out_%08x" % zlib.crc32("|".join(names).encode())
