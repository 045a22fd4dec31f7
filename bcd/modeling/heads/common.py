"""Small building blocks shared by the semantic-segmentation heads."""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from ..backbone.backbone import norm_factory

__all__ = ["conv_norm_act", "pooled_conv_norm_act", "PooledBatchNorm2d", "PooledSyncBatchNorm",
           "init_predictor"]


def conv_norm_act(
    in_channels: int, out_channels: int, kernel_size: int, norm: str, dilation: int = 1
) -> Conv2dNormActivation:
    """``Conv(k×k, dilation) -> norm -> ReLU`` keeping the spatial size (torchvision's block).

    The conv has a bias only when there is no norm (``norm == ""``), as in torchvision.
    """
    norm_layer: Optional[object] = norm_factory(norm) if norm else None
    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size,
        norm_layer=norm_layer,
        activation_layer=nn.ReLU,
        dilation=dilation,
        inplace=True,
    )


class PooledBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` for a branch that pools to ``1×1`` (PSP bin 1, ASPP image pooling).

    In training, a ``1×1`` map of one image holds one value per channel: batch statistics do
    not exist there (PyTorch raises "Expected more than 1 value per channel when training"; and
    were they computed, the output would be the bias alone, with no gradient to the conv). With
    one value per channel in this process (``SOLVER.IMS_PER_BATCH`` 1, or 1 image per process),
    this layer normalises with its running statistics and leaves them unchanged for that step,
    as in evaluation; with two or more values it is ``BatchNorm2d`` exactly. Parameters,
    buffers and state-dict keys are ``BatchNorm2d``'s, so checkpoints load either way.

    (Detectron2's ASPP drops the norm of its image-pooling branch instead; keeping it leaves
    models trained with larger batches, and their checkpoints, unchanged.)
    """

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×C×h×w``."""
        if self.training and x.numel() // max(x.shape[1], 1) <= 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                training=False, momentum=0.0, eps=self.eps,
            )
        return super().forward(x)


class PooledSyncBatchNorm(nn.SyncBatchNorm):
    """``SyncBatchNorm`` for ``1×1`` pooled branches: with several processes the statistics
    are pooled over them (one value per process is enough); in a single process with one value
    per channel it normalises with its running statistics, as ``PooledBatchNorm2d``."""

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``B×C×h×w``."""
        import torch.distributed as dist

        synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.training and not synced and x.numel() // max(x.shape[1], 1) <= 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                training=False, momentum=0.0, eps=self.eps,
            )
        return super().forward(x)


def pooled_conv_norm_act(in_channels: int, out_channels: int, norm: str) -> Conv2dNormActivation:
    """The ``1×1`` conv-norm-ReLU of a branch that may see ``1×1`` pooled maps: as
    ``conv_norm_act(in, out, 1, norm)`` but ``"BN"`` / ``"SyncBN"`` give ``PooledBatchNorm2d`` /
    ``PooledSyncBatchNorm`` (they work with one image per process). GN, FrozenBN and no norm
    need no change."""
    block = conv_norm_act(in_channels, out_channels, 1, norm)
    for m in block:
        # Exactly these classes (not FrozenBN or other subclasses); the state is unchanged,
        # only forward differs.
        if type(m) is nn.BatchNorm2d:  # noqa: E721
            m.__class__ = PooledBatchNorm2d
        elif type(m) is nn.SyncBatchNorm:  # noqa: E721
            m.__class__ = PooledSyncBatchNorm
    return block


def init_predictor(conv: nn.Conv2d) -> nn.Conv2d:
    """Initialise a 1×1 classifier as mmseg's ``conv_seg`` (normal, std 0.01; zero bias)."""
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
