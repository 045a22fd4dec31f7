"""FGD: Focal and Global Distillation for detectors (Yang et al., CVPR 2022), docs/methods.md §5.7.

Per FPN level (reference ``yzd-v/FGD: mmdet/distillation/losses/fgd.py``), for maps
``F ∈ R^{B×C×h×w}`` and temperature ``T``:

* attention from ``|F|``: spatial ``A_S = h·w·softmax_hw(mean_c|F| / T)``, channel
  ``A_C = C·softmax_C(mean_hw|F| / T)``, for teacher and student;
* ground-truth masks on the feature grid (boxes scaled by ``grid / padded input``, floor / ceil
  of the corners, inclusive): ``M_fg`` = max over covering boxes of ``1 / (h_box·w_box)``;
  ``M_bg = 1[not fg] / #bg``;
* focal loss: both maps weighted by the *teacher's* ``√A_S·√A_C``;
  ``L_fg = Σ M_fg (F̃_S − F̃_T)² / B``, ``L_bg`` likewise with ``M_bg``;
* attention loss ``L_at = (Σ|A_C^S − A_C^T| + Σ|A_S^S − A_S^T|) / B``;
* global loss: a GcBlock on each side (context mask 1×1 conv + spatial softmax, attention
  pooling, channel-add transform 1×1 → LayerNorm → ReLU → 1×1 with its last conv zero-initialised),
  ``L_gl = Σ (F_S + add_S − F_T − add_T)² / B``;
* total ``α L_fg + β L_bg + γ L_at + λ L_gl``, summed over the levels.

Deviation (documented): the reference scales boxes by ``grid / unpadded image size``, which
stretches the image over the padding of the batch; here boxes are scaled by the true stride
(``grid / padded size``) so that masks align with the features.

The student map passes a 1×1 align conv when the widths differ. Both GcBlocks are KD modules
(trained by ``L_gl``); the teacher map is detached.

Config ``KD.FGD``: ``WEIGHT`` (1.0: α..λ carry the scale), ``TEMPERATURE`` (0.5), ``ALPHA_FG``
(1e-3), ``BETA_BG`` (5e-4), ``GAMMA_AT`` (5e-4), ``LAMBDA_GL`` (5e-6) — the one-stage
(RetinaNet / GFL) values; features ``backbone[p3]`` .. ``backbone[p7]``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillLoss, KDContext, as_tensor_feature
from .build import KD_LOSS_REGISTRY

__all__ = ["FGD", "GcBlock", "fgd_attention", "fgd_box_masks"]



def fgd_attention(feat: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """``B×C×h×w`` -> spatial attention ``B×h×w`` (sums to ``h·w``) and channel attention
    ``B×C`` (sums to ``C``)."""
    B, C, H, W = feat.shape
    value = feat.float().abs()
    spatial = value.mean(dim=1).reshape(B, -1)
    s_att = (H * W * F.softmax(spatial / temperature, dim=1)).reshape(B, H, W)
    channel = value.mean(dim=(2, 3))
    c_att = C * F.softmax(channel / temperature, dim=1)
    return s_att, c_att


def fgd_box_masks(
    boxes: List[Tensor], grid: Tuple[int, int], padded: Tuple[int, int]
) -> Tuple[Tensor, Tensor]:
    """Foreground / background masks ``B×h×w`` on a feature grid.

    Args:
        boxes: per image ``N_i×4`` XYXY boxes in pixels of the padded input.
        grid: ``(h, w)`` of the feature map.
        padded: ``(H, W)`` of the padded input.

    Returns:
        ``M_fg``: max over boxes covering a cell of ``1 / (cells of the box)``, box cells from
        ``floor`` of the top-left to ``ceil`` of the bottom-right corner, inclusive (reference);
        ``M_bg``: ``1 / #background cells`` on cells with no box, 0 elsewhere.
    """
    h, w = grid
    H, W = padded
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    fg = torch.zeros(len(boxes), h, w, device=device)
    for i, b in enumerate(boxes):
        if b.numel() == 0:
            continue
        b = b.float()
        x0 = torch.floor(b[:, 0] * w / W).long()
        x1 = torch.ceil(b[:, 2] * w / W).long()
        y0 = torch.floor(b[:, 1] * h / H).long()
        y1 = torch.ceil(b[:, 3] * h / H).long()
        area = 1.0 / ((y1 + 1 - y0) * (x1 + 1 - x0)).float()
        ys = torch.arange(h, device=device)[None, :, None]
        xs = torch.arange(w, device=device)[None, None, :]
        inside = (
            (ys >= y0[:, None, None]) & (ys <= y1[:, None, None])
            & (xs >= x0[:, None, None]) & (xs <= x1[:, None, None])
        )  # N×h×w
        fg[i] = (inside.float() * area[:, None, None]).amax(dim=0)
    bg = (fg <= 0).float()
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
    return fg, bg


class GcBlock(nn.Module):
    """FGD's global-context block: attention-pooled context -> channel-add transform."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        hidden = max(channels // 2, 1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        # last conv zero: the block starts as the identity map (reference constant_init 0)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``B×C×h×w`` -> ``x + channel_add(context)`` (same shape)."""
        B, C, H, W = x.shape
        mask = F.softmax(self.conv_mask(x).reshape(B, 1, H * W), dim=-1)  # B×1×HW
        context = torch.bmm(x.reshape(B, C, H * W), mask.transpose(1, 2)).reshape(B, C, 1, 1)
        return x + self.channel_add(context)


@KD_LOSS_REGISTRY.register()
class FGD(DistillLoss):
    """FGD summed over the configured level pairs; key ``loss_kd_fgd``.

    Needs ground-truth boxes: ``ctx.student_batch.instances[i].gt_boxes``.
    """

    CONFIG_KEY = "FGD"
    NAME = "fgd"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        n = self.node
        self.temperature = float(n.TEMPERATURE)
        self.alpha, self.beta, self.gamma, self.lam = n.ALPHA_FG, n.BETA_BG, n.GAMMA_AT, n.LAMBDA_GL
        self.align = nn.ModuleList()
        self.gc_student = nn.ModuleList()
        self.gc_teacher = nn.ModuleList()
        for s, t in zip(self.student_features, self.teacher_features):
            cs, ct = student_shapes[s].channels, teacher_shapes[t].channels
            self.align.append(nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity())
            self.gc_student.append(GcBlock(ct))
            self.gc_teacher.append(GcBlock(ct))

    def level_loss(self, level: int, fs: Tensor, ft: Tensor, boxes: List[Tensor],
                   padded: Tuple[int, int]) -> Tensor:
        """FGD on one level (see the module docstring); ``fs``, ``ft`` ``B×C×h×w``."""
        fs = self.align[level](fs)
        if fs.shape[-2:] != ft.shape[-2:]:
            fs = F.interpolate(fs, size=ft.shape[-2:], mode="bilinear", align_corners=False)
        ft = ft.detach()
        B = fs.shape[0]
        s_att_t, c_att_t = fgd_attention(ft, self.temperature)
        s_att_s, c_att_s = fgd_attention(fs, self.temperature)
        fg, bg = fgd_box_masks(boxes, tuple(ft.shape[-2:]), padded)
        weight = (s_att_t.sqrt()[:, None] * c_att_t.sqrt()[:, :, None, None])  # teacher attention
        diff2 = ((fs.float() - ft.float()) * weight) ** 2
        loss_fg = (diff2 * fg[:, None]).sum() / B
        loss_bg = (diff2 * bg[:, None]).sum() / B
        loss_at = ((c_att_s - c_att_t).abs().sum() + (s_att_s - s_att_t).abs().sum()) / B
        out_s = self.gc_student[level](fs.float())
        out_t = self.gc_teacher[level](ft.float())
        loss_gl = ((out_s - out_t) ** 2).sum() / B
        return self.alpha * loss_fg + self.beta * loss_bg + self.gamma * loss_at + self.lam * loss_gl

    def forward(self, student_feats: Dict[str, Tensor], teacher_feats: Dict[str, Tensor],
                ctx: KDContext) -> Dict[str, Tensor]:
        batch = ctx.student_batch
        if batch.instances is None:
            raise ValueError("KD loss FGD needs ground-truth boxes (ImageBatch.instances)")
        boxes = [inst.gt_boxes for inst in batch.instances]
        padded = tuple(batch.tensor.shape[-2:])
        total = None
        for i, (s, t) in enumerate(zip(self.student_features, self.teacher_features)):
            loss = self.level_loss(i, as_tensor_feature(student_feats[s], s),
                                   as_tensor_feature(teacher_feats[t], t), boxes, padded)
            total = loss if total is None else total + loss
        return {self.loss_key: total}
