"""APD: Adaptive Perspective Distillation (Tian, Chen et al., TPAMI 2023, 45(2):1372-1387).

Exact to the authors' code (``dvlab-research/APD``, ``tool/train.py``: ``CriterionKmeansInterWhole``
and ``train``; docs/methods.md §4). On the decoder feature (``sem_seg_head.feature``: 512 channels at 1/8
for PSPNet / DeepLabV3+) of teacher and student:

* adapters ("perspective transforms"): student ``Tr_S`` and teacher ``Tr_T``, each
  ``Conv1x1(C→D) → ReLU → Conv1x1(D→C_t)`` with biases (``D = ADAPT_DIM`` = 512 in the code).
  ``f_S = Tr_S(x_S)``, ``f_T = Tr_T(sg(x_T))``; the student map is resized to the teacher's grid
  when the two differ (bilinear);
* labels ``y`` nearest-downsampled to the feature grid; for every class ``c`` present (ignore
  excluded), over the pixels ``P_c`` of **all images of the per-process batch** (``SCOPE
  gpu_batch``, the code) or of one image (``SCOPE per_image``, the abstract's wording):
  ``μ^c = normalize(mean_{p∈P_c} f̂(p))`` on each side, ``f̂`` the channel-L2-normalised feature;
* the prototypes of the ``M`` present classes are an adaptive classifier: cosine logits
  ``a = κ⟨f̂, μ⟩ ∈ R^{B×M×h×w}`` (``κ = KAPPA`` = ``kmeans_temp`` = 10), each side its own;
* ``L_ap = KL(softmax_M(sg(a_T)) ‖ softmax_M(a_S))``, elementwise mean over ``B·M·h·w``
  (PyTorch ``KLDivLoss()`` default; every cell, ignore and padding included, as the code:
  ``MASK False``);
* ``L_pa = 0.5 · mean_c (1 − ⟨μ_S^c, sg(μ_T^c)⟩)``;
* ``L_soft = CE(up(ā_T), y)`` (ignore excluded, mean): ``ā_T`` is ``a_T`` scattered to the
  ``K``-class layout with **logit 0 for absent classes**, bilinearly upsampled
  (``align_corners=True``) to the label size. ``L_soft`` trains **only** ``Tr_T``, with its own
  Adam (lr 1e-5, betas (0.9, 0.99), no weight decay, constant lr: the code's poly update of this
  optimiser loops over group indices from 5 while it has one group), and only when ``L_soft > 0``
  (the code's condition). The student's terms see ``a_T`` and ``μ_T`` detached, so nothing of
  them reaches ``Tr_T``, and ``L_soft`` sees the teacher feature detached, so nothing of it
  reaches the student.

Entries: ``loss_kd_apd`` = ``AP_WEIGHT · L_ap`` and ``loss_kd_apd_pa`` = ``PA_WEIGHT · L_pa``
(both then scaled by the scheduled ``WEIGHT``, 1.0), and ``apd_soft`` = ``L_soft`` (with its
graph; not a ``loss`` key, so it is not in the student's objective). The loss declares ``Tr_T``'s
optimizer (:meth:`_APDBase.extra_optimizers`: ``bcd.solver.OptimizerSpec`` with objective
``apd_soft``); the trainer builds it, back-propagates ``apd_soft`` in the step's one backward
pass, steps it after the student's optimizer (not at an iteration where ``L_soft`` is 0 on every
process) and saves its state in every checkpoint (``optimizer.apd.teacher_adapter``). The code
steps ``Tr_T`` before the student's backward; the order does not matter, since the student's
terms were computed from the same forward.
The APD recipe's logit term is :class:`bcd.distill.losses.pixel_kd.PixelKD` with
``REDUCTION elementwise`` and ``RESIZE input`` (docs/methods.md §4.4, §4.6 item 2), weight 10.

A batch without any valid label gives 0 for every term (and no ``Tr_T`` step). The code skips
such an iteration for the student as well (its 60×60 check); here the student's task loss is
still applied: the loss cannot skip a step.

Several processes: the code builds the prototypes per process (per GPU batch, 2-3 images); so
does ``gpu_batch`` here (no all-gather). ``Tr_T`` is its own DDP module in the code, so its
gradient is averaged over processes: here DDP averages it with the student's in the one
backward pass (``L_soft`` is connected to ``Tr_T`` on every process, 0 where nothing is
labelled).

``--resume`` restores ``Tr_T``'s Adam moments and takes the config's hyper-parameters (e.g. a
changed ``TEACHER_ADAPTER_LR``), as for the student's optimizer; the student's
``model_final.pth`` holds neither adapter.

Feature point: the code takes ``x_ppm`` after the merge block's ``Dropout2d(0.1)``; the default
``sem_seg_head.feature`` is before the head's dropout (name ``sem_seg_head.dropout`` for the
code's point; the teacher runs in eval mode, where the two agree).

Detectors (extension, not in the code; docs/methods.md §4.6 item 5 [R]): :class:`APDDetection`.
"""
from __future__ import annotations

import math
import re
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcd.modeling.heads.roi_heads import assign_fpn_levels
from bcd.modeling.meta_arch.build import class_count_key
from bcd.structures.image_batch import box_index_map
from bcd.solver.build import OptimizerSpec

from .base import DistillLoss, KDContext, as_tensor_feature
from .build import KD_LOSS_REGISTRY

__all__ = [
    "APD",
    "APDDetection",
    "TeacherAdapter",
    "apd_terms",
    "assign_fpn_levels",
    "detection_level_labels",
    "perspective_logits",
]

_SCOPES = ("gpu_batch", "per_image")


# ------------------------------------------------------------------------------- adapters
def _adapter(c_in: int, dim: int, c_out: int) -> List[nn.Module]:
    # The code: Conv2d(512, D, 1) -> ReLU -> Conv2d(D, 512, 1), default (kaiming-uniform) init.
    return [nn.Conv2d(c_in, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, c_out, 1)]


class StudentAdapter(nn.Sequential):
    """``Tr_S``: ``B×C_s×h×w → B×C_t×h×w``; trained with the student (KD lr multiplier)."""

    def __init__(self, c_in: int, dim: int, c_out: int) -> None:
        super().__init__(*_adapter(c_in, dim, c_out))


class TeacherAdapter(nn.Sequential):
    """``Tr_T``: ``B×C_t×h×w → B×C_t×h×w``, trained only by ``L_soft`` with its own optimiser
    (declared by the loss, :meth:`_APDBase.extra_optimizers`)."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__(*_adapter(channels, dim, channels))


# ------------------------------------------------------------------------------- numerics
def _prototypes(feat: Tensor, labels: Tensor, classes: Tensor, normalize: bool) -> Tensor:
    """``M×C`` class prototypes: mean of ``feat`` over the cells of each class (re-normalised).

    Args:
        feat: ``B×C×h×w`` (already channel-normalised when ``normalize``).
        labels: ``B×h×w`` int64.
        classes: ``M`` class ids present in ``labels``.
    """
    onehot = (labels[None] == classes[:, None, None, None]).to(feat.dtype)  # M×B×h×w
    sums = torch.einsum("mbhw,bchw->mc", onehot, feat)
    mean = sums / onehot.sum(dim=(1, 2, 3))[:, None]
    return F.normalize(mean, p=2, dim=1) if normalize else mean


def perspective_logits(feat: Tensor, protos: Tensor, kappa: float) -> Tensor:
    """``κ⟨feat, μ_m⟩``: ``B×C×h×w`` features × ``M×C`` prototypes → ``B×M×h×w``."""
    return kappa * torch.einsum("bchw,mc->bmhw", feat, protos)


def _elementwise_kl(t_logits: Tensor, s_logits: Tensor, valid: Optional[Tensor]) -> Tensor:
    """``KLDivLoss()(log_softmax(s), softmax(t))`` over dim 1: mean over all ``B·M·h·w``
    elements, or over the ``M`` channels of the valid cells (``valid`` ``B×h×w``)."""
    log_pt = F.log_softmax(t_logits, dim=1)
    log_ps = F.log_softmax(s_logits, dim=1)
    terms = log_pt.exp() * (log_pt - log_ps)
    if valid is None:
        return terms.mean()
    n = valid.sum() * terms.shape[1]
    return (terms * valid[:, None]).sum() / n.clamp_min(1)


def apd_terms(
    f_s: Tensor,
    f_t: Tensor,
    labels: Tensor,
    labels_full: Optional[Tensor],
    num_classes: int,
    kappa: float = 10.0,
    ignore_value: int = 255,
    normalize: bool = True,
    scope: str = "gpu_batch",
    valid: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """The three APD terms on adapted features (see the module docstring).

    Args:
        f_s: ``B×C×h×w`` student feature after ``Tr_S`` (on the teacher's grid).
        f_t: ``B×C×h×w`` teacher feature after ``Tr_T`` (its graph reaches ``Tr_T`` only).
        labels: ``B×h×w`` int64 labels on the feature grid (``ignore_value`` = no class).
        labels_full: ``B×H×W`` labels at which ``L_soft`` is computed (the code: the crop's
            labels, logits bilinearly upsampled, ``align_corners=True``); None = ``labels``.
        num_classes: ``K``: the layout of ``L_soft``'s logits (absent classes get logit 0).
        kappa: ``κ`` (``kmeans_temp``).
        normalize: channel-L2-normalise features and prototypes (``kmeans_norm``).
        scope: ``"gpu_batch"`` (prototypes over the batch) or ``"per_image"`` (per image; the
            terms are averaged over the images that have a labelled cell).
        valid: optional ``B×h×w`` bool: ``L_ap`` only over these cells (``MASK``; the code: all).

    Returns:
        ``{"ap": L_ap, "pa": L_pa, "soft": L_soft, "present": number of present classes}``;
        ``ap`` / ``pa`` reach the student side only, ``soft`` the teacher side only. All 0 (still
        connected to ``f_s`` / ``f_t``) when no class is present.

    Raises:
        ValueError: unknown ``scope``, or a label outside ``0..K-1`` that is not the ignore value.
    """
    if scope not in _SCOPES:
        raise ValueError(f"KD.APD.SCOPE must be one of {_SCOPES}; got '{scope}'")
    if labels_full is None:
        labels_full = labels
    if normalize:
        f_s = F.normalize(f_s, p=2, dim=1)
        f_t = F.normalize(f_t, p=2, dim=1)
    zero_s = f_s.sum() * 0.0  # keeps Tr_S in the graph (DDP) when nothing is present
    zero_t = f_t.sum() * 0.0
    if scope == "gpu_batch":
        groups = [slice(None)]
    else:
        groups = [slice(i, i + 1) for i in range(f_s.shape[0])]
    ap, pa, soft = [], [], []
    present = 0
    for g in groups:
        lab = labels[g]
        classes = torch.unique(lab)
        classes = classes[classes != ignore_value]
        if classes.numel() == 0:
            continue
        if int(classes.min()) < 0 or int(classes.max()) >= num_classes:
            raise ValueError(
                f"APD: label {int(classes.max())} is outside 0..{num_classes - 1} and is not the "
                f"ignore value {ignore_value}"
            )
        present += int(classes.numel())
        fs, ft = f_s[g], f_t[g]
        mu_s = _prototypes(fs, lab, classes, normalize)
        mu_t = _prototypes(ft, lab, classes, normalize)
        a_s = perspective_logits(fs, mu_s, kappa)
        a_t = perspective_logits(ft, mu_t, kappa)
        ap.append(_elementwise_kl(a_t.detach(), a_s, None if valid is None else valid[g]))
        pa.append(0.5 * (1.0 - (mu_s * mu_t.detach()).sum(dim=1)).mean())
        # K-class layout: absent classes keep logit 0 (the code's scatter through a one-hot conv)
        full = a_t.new_zeros((a_t.shape[0], num_classes) + tuple(a_t.shape[-2:]))
        full[:, classes] = a_t
        lab_full = labels_full[g]
        if full.shape[-2:] != lab_full.shape[-2:]:
            full = F.interpolate(full, size=lab_full.shape[-2:], mode="bilinear", align_corners=True)
        if bool((lab_full != ignore_value).any()):
            soft.append(F.cross_entropy(full, lab_full, ignore_index=ignore_value))
    if not ap:
        return {"ap": zero_s, "pa": zero_s, "soft": zero_t, "present": 0}
    return {
        "ap": torch.stack(ap).mean(),
        "pa": torch.stack(pa).mean(),
        "soft": torch.stack(soft).mean() if soft else zero_t,
        "present": present,
    }


# ------------------------------------------------------------------------------- the loss
class _APDBase(DistillLoss):
    """Adapters and the teacher adapter's optimizer declaration (shared by both APD losses)."""

    CONFIG_KEY = "APD"

    def _build_adapters(self, c_s: int, c_t: int) -> None:
        n = self.node
        dim = int(n.ADAPT_DIM) or c_t
        if n.STUDENT_ADAPTER:
            self.student_adapter: nn.Module = StudentAdapter(c_s, dim, c_t)
        elif c_s != c_t:
            raise ValueError(
                f"KD.APD.STUDENT_ADAPTER False needs equal widths; the student feature has {c_s} "
                f"channels, the teacher's {c_t}"
            )
        else:
            self.student_adapter = nn.Identity()
        self.teacher_adapter: Optional[TeacherAdapter] = (
            TeacherAdapter(c_t, dim) if n.TEACHER_ADAPTER else None)
        self.aux_loss_keys = ["apd_soft"]

    def _check_config(self) -> None:
        n = self.node
        if n.SCOPE not in _SCOPES:
            raise ValueError(f"KD.APD.SCOPE must be one of {_SCOPES}; got '{n.SCOPE}'")
        if len(n.TEACHER_ADAPTER_BETAS) != 2:
            raise ValueError(f"KD.APD.TEACHER_ADAPTER_BETAS must be 2 numbers; got {n.TEACHER_ADAPTER_BETAS}")

    def extra_optimizers(self) -> Dict[str, OptimizerSpec]:
        """``{"teacher_adapter": Adam(Tr_T; TEACHER_ADAPTER_LR, TEACHER_ADAPTER_BETAS, no weight
        decay) minimising apd_soft}``; ``{}`` without ``TEACHER_ADAPTER``."""
        if self.teacher_adapter is None:
            return {}
        n = self.node
        return {"teacher_adapter": OptimizerSpec(
            params=tuple(self.teacher_adapter.parameters()), objective=("apd_soft",),
            optimizer="Adam", lr=float(n.TEACHER_ADAPTER_LR),
            betas=tuple(float(b) for b in n.TEACHER_ADAPTER_BETAS), weight_decay=0.0,
        )}

    def adapt_teacher(self, x_t: Tensor) -> Tensor:
        """``Tr_T(sg(x_t))`` (identity when ``TEACHER_ADAPTER`` is off)."""
        x_t = x_t.detach()
        return x_t if self.teacher_adapter is None else self.teacher_adapter(x_t)


def _no_autocast(device_type: str):
    # APD's softmaxes over M classes and the teacher adapter run in fp32.
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


@KD_LOSS_REGISTRY.register()
class APD(_APDBase):
    """APD for semantic segmentation; entries ``loss_kd_apd`` (``L_ap``), ``loss_kd_apd_pa``
    (``L_pa``) and ``apd_soft`` (``L_soft``, the objective of ``Tr_T``'s optimizer).

    One feature pair (``KD.APD.STUDENT_FEATURES`` / ``TEACHER_FEATURES``, default
    ``sem_seg_head.feature``); needs labels (``ImageBatch.sem_seg``).
    """

    NAME = "apd"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        self._check_config()
        if len(self.student_features) != 1:
            raise ValueError(
                "KD.APD takes one feature pair (the decoder feature, e.g. sem_seg_head.feature); "
                f"got STUDENT_FEATURES {self.student_features}"
            )
        sn, tn = self.student_features[0], self.teacher_features[0]
        c_s, c_t = student_shapes[sn].channels, teacher_shapes[tn].channels
        if c_s <= 0 or c_t <= 0:
            raise ValueError(f"KD.APD: features '{sn}' / '{tn}' must be B×C×h×w tensors")
        self.num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self._build_adapters(c_s, c_t)
        self.last_stats: Dict[str, float] = {}

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        sn, tn = self.student_features[0], self.teacher_features[0]
        x_s = as_tensor_feature(student_feats[sn], sn)
        x_t = as_tensor_feature(teacher_feats[tn], tn)
        batch = ctx.teacher_batch if ctx.teacher_batch.sem_seg is not None else ctx.student_batch
        if batch.sem_seg is None:
            raise ValueError("KD loss APD needs labels (ImageBatch.sem_seg) in training")
        size = tuple(x_t.shape[-2:])
        with _no_autocast(x_s.device.type):
            f_s = self.student_adapter(x_s.float())
            if tuple(f_s.shape[-2:]) != size:
                f_s = F.interpolate(f_s, size=size, mode="bilinear", align_corners=False)
            f_t = self.adapt_teacher(x_t.float())
            labels_full = batch.sem_seg
            labels = F.interpolate(labels_full[:, None].float(), size=size, mode="nearest")[:, 0].long()
            # all True unless KD.APD.MASK (the Distiller sets ctx.mask from it)
            valid = ctx.valid_mask(size, side="teacher")
            out = apd_terms(
                f_s, f_t, labels, labels_full, self.num_classes, float(self.node.KAPPA),
                ctx.ignore_value, bool(self.node.NORMALIZE), self.node.SCOPE, valid,
            )
        self.last_stats = {"present": float(out["present"])}
        return {
            self.loss_key: float(self.node.AP_WEIGHT) * out["ap"],
            f"{self.loss_key}_pa": float(self.node.PA_WEIGHT) * out["pa"],
            "apd_soft": out["soft"],  # Tr_T's objective (extra_optimizers)
        }


# ------------------------------------------------------------------------------- detectors
def detection_level_labels(
    boxes: Sequence[Tensor],
    classes: Sequence[Tensor],
    levels: Sequence[Tensor],
    level: int,
    grid: Tuple[int, int],
    padded: Tuple[int, int],
    image_sizes: Sequence[Tuple[int, int]],
    num_classes: int,
    ignore_value: int = -1,
) -> Tensor:
    """``B×h×w`` labels of one FPN level for APD on a detector ([R], docs/methods.md §4.6 item 5).

    A cell (centre ``((x + 0.5)·W/w, (y + 0.5)·H/h)`` in input pixels, the boxes rasterised by
    ``bcd.structures.box_index_map``) is

    * class ``c`` when it lies in a box of class ``c`` assigned to this level (the smaller box
      wins where boxes overlap);
    * ``ignore_value`` when it lies in a box assigned to another level, or in the padding;
    * background ``num_classes`` otherwise (its own prototype).

    Args:
        boxes, classes, levels: per image ``N_i×4`` XYXY input pixels, ``N_i`` class ids, ``N_i``
            assigned levels.
        grid: ``(h, w)`` of the level; ``padded``: ``(H, W)`` of the padded input.
        image_sizes: per image ``(h, w)`` before padding.
    """
    h, w = grid
    H, W = padded
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (H / h)  # cell centres
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (W / w)
    out = torch.full((len(boxes), h, w), num_classes, dtype=torch.long, device=device)
    for i, (b, c, lv) in enumerate(zip(boxes, classes, levels)):
        ih, iw = image_sizes[i]
        if b.numel():
            idx = box_index_map(b, grid, padded)  # the smallest box containing each cell centre
            inside = idx >= 0
            j = idx[inside]
            out[i][inside] = torch.where(lv.to(device)[j] == level, c.to(device)[j].long(),
                                         torch.full_like(j, ignore_value))
        out[i][~((ys[:, None] < ih) & (xs[None, :] < iw))] = ignore_value
    return out


def _detector_num_classes(cfg) -> int:
    """The student detector's class count, from its meta-architecture's ``CLASS_COUNT``."""
    arch = cfg.MODEL.META_ARCHITECTURE
    key = class_count_key(arch)
    if key is None or key.metadata_field != "thing_classes" or not key.num_classes_key:
        raise ValueError(
            f"KD loss APDDetection: MODEL.META_ARCHITECTURE '{arch}' is not a detector with a "
            f"configured class count (its CLASS_COUNT); use the loss 'APD' for segmentation"
        )
    return key.num_classes(cfg)


@KD_LOSS_REGISTRY.register()
class APDDetection(_APDBase):
    """APD on FPN levels of a detector — an **extension** (the paper reports detection gains; the
    code has no detection part). Config ``KD.APD`` with ``KD.APD.DET``; entries as :class:`APD`.

    Per configured level pair (``backbone[p3]`` ..): labels from the GT boxes assigned to that
    level by the FPN scale rule (``DET.CANONICAL_BOX_SIZE`` / ``CANONICAL_LEVEL``, level = log2 of
    the teacher feature's stride), background as class ``K`` (its own prototype), other levels'
    boxes and padding ignored (:func:`detection_level_labels`; the level of a feature is the ``N`` of
    its ``[pN]`` name, else log2 of its stride); then the segmentation terms at
    the level's resolution (``L_soft`` at the level's grid, ``K+1`` classes). One ``Tr_S`` /
    ``Tr_T`` pair shared by all levels (FPN heads are shared across levels too). Terms are
    averaged over the levels.
    """

    NAME = "apd_det"

    def __init__(self, cfg, student_shapes, teacher_shapes, shared=None) -> None:
        super().__init__(cfg, student_shapes, teacher_shapes, shared)
        self._check_config()
        widths_s = {student_shapes[n].channels for n in self.student_features}
        widths_t = {teacher_shapes[n].channels for n in self.teacher_features}
        if len(widths_s) != 1 or len(widths_t) != 1 or 0 in widths_s | widths_t:
            raise ValueError(
                "KD.APD (detection): every configured FPN level must be a B×C×h×w map of one "
                f"width per side; got student {sorted(widths_s)}, teacher {sorted(widths_t)}"
            )
        self.levels = [self._fpn_level(n, teacher_shapes[n].stride) for n in self.teacher_features]
        self.num_classes = _detector_num_classes(cfg)
        self._build_adapters(widths_s.pop(), widths_t.pop())

    @staticmethod
    def _fpn_level(name: str, stride: float) -> int:
        """The FPN level of a feature: from its name (``backbone[p4]`` → 4), else log2(stride)
        (the probe's stride is inexact for the coarsest levels of a small probe)."""
        m = re.search(r"\[p(\d+)\]$", name)
        if m:
            return int(m.group(1))
        if stride <= 0 or abs(math.log2(stride) - round(math.log2(stride))) > 1e-6:
            raise ValueError(f"KD.APD (detection): feature '{name}' has stride {stride}, not a power of 2")
        return int(round(math.log2(stride)))

    def forward(self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext):
        batch = ctx.teacher_batch
        if batch.instances is None:
            raise ValueError("KD loss APDDetection needs ground-truth boxes (ImageBatch.instances)")
        num_classes = self.num_classes
        det = self.node.DET
        boxes = [inst.gt_boxes for inst in batch.instances]
        classes = [inst.gt_classes for inst in batch.instances]
        lo, hi = min(self.levels), max(self.levels)
        levels = [assign_fpn_levels(b.float(), lo, hi, float(det.CANONICAL_BOX_SIZE),
                                    int(det.CANONICAL_LEVEL)) for b in boxes]
        padded = tuple(batch.tensor.shape[-2:])
        ap, pa, soft = [], [], []
        with _no_autocast(batch.tensor.device.type):
            for lvl, sn, tn in zip(self.levels, self.student_features, self.teacher_features):
                x_s = as_tensor_feature(student_feats[sn], sn).float()
                x_t = as_tensor_feature(teacher_feats[tn], tn).float()
                size = tuple(x_t.shape[-2:])
                f_s = self.student_adapter(x_s)
                if tuple(f_s.shape[-2:]) != size:
                    f_s = F.interpolate(f_s, size=size, mode="bilinear", align_corners=False)
                f_t = self.adapt_teacher(x_t)
                labels = detection_level_labels(boxes, classes, levels, lvl, size, padded,
                                                batch.image_sizes, num_classes, -1)
                out = apd_terms(f_s, f_t, labels, None, num_classes + 1, float(self.node.KAPPA),
                                -1, bool(self.node.NORMALIZE), self.node.SCOPE, None)
                ap.append(out["ap"])
                pa.append(out["pa"])
                soft.append(out["soft"])
            loss_soft = torch.stack(soft).mean()
        return {
            self.loss_key: float(self.node.AP_WEIGHT) * torch.stack(ap).mean(),
            f"{self.loss_key}_pa": float(self.node.PA_WEIGHT) * torch.stack(pa).mean(),
            "apd_soft": loss_soft,  # Tr_T's objective (extra_optimizers)
        }
