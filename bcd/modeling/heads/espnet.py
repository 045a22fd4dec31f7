"""ESPNet's light-weight decoder (Mehta et al., ECCV 2018, Fig. 4d), on the encoder of
``bcd/modeling/backbone/espnet.py``.

The encoder's ``res3`` (stride 8) is projected to ``K`` class maps (1×1 conv, BN) and upsampled
×2 by a deconvolution; ``res2`` (stride 4) is projected to ``K`` maps (1×1 conv); both are
concatenated, BN + PReLU, fused by an ESP module (2K → K channels, no residual), upsampled ×2 by a
deconvolution + BN + PReLU; concatenated with the encoder's ``stem`` (stride 2, 19 channels) and
fused by a 3×3 conv-BN-PReLU to ``K`` channels (``feature``); a last ×2 deconvolution gives the
full-resolution logits (``predictor``). Every map of the decoder has ``K`` = number of classes
channels, as in the paper.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from ..backbone.backbone import ShapeSpec, get_norm
from ..backbone.espnet import ESPModule, norm_prelu
from .build import SEM_SEG_HEAD_REGISTRY

__all__ = ["ESPNetHead"]

_NEEDED = ("stem", "res2", "res3")


@SEM_SEG_HEAD_REGISTRY.register()
class ESPNetHead(nn.Module):
    """ESPNet's decoder on ``{stem, res2, res3}`` (``MODEL.SEM_SEG_HEAD.IN_FEATURES``).

    Named modules: ``project3`` (1×1 conv of ``res3`` to K + BN), ``up3``, ``project2``,
    ``fuse2`` (BN + PReLU + ESP module), ``up2``, ``feature`` (3×3 conv-BN-PReLU at stride 2,
    ``B×K×H/2×W/2``: the decoder feature before the classifier), ``predictor`` (×2
    deconvolution, ``B×K×H×W`` logits at stride 1).
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        h = cfg.MODEL.SEM_SEG_HEAD
        names = list(h.IN_FEATURES)
        if sorted(names) != sorted(_NEEDED) or any(n not in input_shape for n in _NEEDED):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES must be {list(_NEEDED)} for ESPNetHead (the "
                f"ESPNet encoder's levels); got {names} with backbone outputs {list(input_shape)}"
            )
        k, norm = int(h.NUM_CLASSES), h.NORM
        ch = {n: input_shape[n].channels for n in _NEEDED}
        bn3 = get_norm(norm, k)
        if isinstance(bn3, nn.modules.batchnorm._BatchNorm):
            bn3.eps = 1e-3  # the authors' BatchNorm epsilon (see norm_prelu)
        self.project3 = nn.Sequential(nn.Conv2d(ch["res3"], k, 1, bias=False), bn3)
        self.up3 = nn.ConvTranspose2d(k, k, 2, stride=2, bias=False)
        self.project2 = nn.Conv2d(ch["res2"], k, 1, bias=False)
        self.fuse2 = nn.Sequential(*norm_prelu(2 * k, norm), ESPModule(2 * k, k, residual=False, norm=norm))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(k, k, 2, stride=2, bias=False), *norm_prelu(k, norm))
        self.feature = nn.Sequential(nn.Conv2d(ch["stem"] + k, k, 3, padding=1, bias=False), *norm_prelu(k, norm))
        self.predictor = nn.ConvTranspose2d(k, k, 2, stride=2, bias=False)
        self.common_stride = 1

    def forward(self, features: Dict[str, Tensor]) -> Tensor:
        """``{stem, res2, res3}`` at strides 2, 4, 8 -> ``B×K×H×W`` logits."""
        x3 = self.up3(self.project3(features["res3"]))
        x2 = self.up2(self.fuse2(torch.cat([self.project2(features["res2"]), x3], dim=1)))
        x = self.feature(torch.cat([x2, features["stem"]], dim=1))
        return self.predictor(x)
