"""``Distiller``: a frozen teacher + a trainable student + KD losses, as one meta-architecture.

Built by ``build_model(cfg)`` when ``cfg.KD.LOSSES`` is not empty:

* ``student`` = ``META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)``: a registered
  submodule (optimised, saved, wrapped by DDP with the rest of the Distiller);
* ``teacher`` from ``KD.TEACHER.CONFIG_FILE`` (+ ``KD.TEACHER.OPTS``, same ``MODEL.DEVICE``) with
  the weights of ``KD.TEACHER.WEIGHTS`` loaded strictly (a full checkpoint ``{"model": ...}`` or a
  student-only ``model_final.pth``). The teacher is deliberately **not a registered submodule**:
  it is absent from ``parameters()``, ``state_dict()`` and DDP's view, so it is never optimised,
  never saved in the student's checkpoints and never synchronised. ``Distiller._apply`` forwards
  device / dtype moves to it (``.to()``, ``.cuda()``), and ``train()`` keeps it in eval mode. Its
  parameters have ``requires_grad=False`` and it runs under ``torch.no_grad()``.
* ``kd_modules``: ``nn.ModuleDict`` of the losses (with their connectors / heads) plus
  ``kd_modules.shared`` (modules used by several losses). ``lr_multipliers`` =
  ``{"kd_modules": KD.LR_MULTIPLIER}``.
* Buffers ``kd_iteration`` (the iteration the schedules read; set by the training hook, saved
  for ``--resume``) and the temperature controllers inside the losses.

Training forward: ``batch_s = student.preprocess(inputs)``, ``batch_t = teacher.preprocess(inputs)``;
the teacher's ``extract`` under ``no_grad``; the student's ``forward_batch`` (task losses); the
recorded features of both go to each loss; each loss's entries are multiplied by its scheduled
weight. Eval forward: ``student(inputs)``. ``deploy_model()`` returns the student.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from bcd.config import CfgNode, get_cfg
from bcd.engine.checkpoint import state_dict_mismatch
from bcd.modeling.d2_convert import maybe_convert_detectron2
from bcd.modeling.meta_arch.build import META_ARCH_REGISTRY

from .losses import KD_LOSS_REGISTRY, DistillLoss, FeatureShape, KDContext
from .recorder import FeatureRecorder
from .schedule import WeightSchedule, build_weight_schedule

__all__ = ["Distiller", "build_teacher", "load_teacher_weights", "teacher_config"]

logger = logging.getLogger(__name__)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def teacher_config(cfg: CfgNode) -> CfgNode:
    """The teacher's config: ``get_cfg()`` + ``KD.TEACHER.CONFIG_FILE`` + ``KD.TEACHER.OPTS``.

    ``MODEL.DEVICE`` follows the student; ``KD.LOSSES`` is emptied (the teacher is a plain model);
    ``MODEL.BACKBONE.WEIGHTS`` / ``MODEL.WEIGHTS`` are cleared because the complete teacher
    weights come from ``KD.TEACHER.WEIGHTS``.
    """
    path = cfg.KD.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError("KD.TEACHER.CONFIG_FILE is empty: a distillation run needs the teacher's config")
    if not os.path.isfile(path):
        # Configs name teachers relative to the repository root (configs/...): accept that from
        # any working directory.
        in_repo = os.path.join(_REPO_ROOT, path)
        if os.path.isabs(path) or not os.path.isfile(in_repo):
            raise FileNotFoundError(
                f"KD.TEACHER.CONFIG_FILE '{path}' does not exist (nor under {_REPO_ROOT})"
            )
        path = in_repo
    tcfg = get_cfg()
    tcfg.merge_from_file(path)
    tcfg.merge_from_list(list(cfg.KD.TEACHER.OPTS))
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    tcfg.MODEL.BACKBONE.WEIGHTS = ""
    tcfg.MODEL.WEIGHTS = ""
    tcfg.KD.LOSSES = []
    return tcfg


def load_teacher_weights(model: nn.Module, path: str) -> None:
    """Strictly load ``path`` into the teacher; a mismatch names the file and the keys.

    Accepts ``{"model": state_dict, ...}`` (a training checkpoint or ``model_final.pth``) or a
    bare state dict; a ``module.`` prefix (DDP) is stripped.
    """
    if not path:
        raise ValueError("KD.TEACHER.WEIGHTS is empty: a distillation run needs trained teacher weights")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"KD.TEACHER.WEIGHTS '{path}' does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"KD.TEACHER.WEIGHTS '{path}' holds no state dict (got {type(ckpt).__name__})")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    if any(k.startswith("student.") for k in state):  # a Distiller checkpoint: take its student
        state = {k[8:]: v for k, v in state.items() if k.startswith("student.")}
    # a Detectron2 checkpoint as the teacher: bcd/modeling/d2_convert.py
    state = maybe_convert_detectron2(state, model, source=path)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise ValueError(
            f"KD.TEACHER.WEIGHTS '{path}' does not fit the model of KD.TEACHER.CONFIG_FILE: {problem}"
        )
    model.load_state_dict(state, strict=True)


def build_teacher(cfg: CfgNode) -> Tuple[nn.Module, CfgNode]:
    """Build the frozen teacher (eval mode, no gradients, on ``MODEL.DEVICE``) and its config."""
    tcfg = teacher_config(cfg)
    teacher = META_ARCH_REGISTRY.get(tcfg.MODEL.META_ARCHITECTURE)(tcfg)
    load_teacher_weights(teacher, cfg.KD.TEACHER.WEIGHTS)
    teacher.requires_grad_(False)
    teacher.eval()
    teacher.to(torch.device(cfg.MODEL.DEVICE))
    return teacher, tcfg


def _dummy_inputs(cfg: CfgNode, size: Tuple[int, int], n: int = 2) -> List[Dict[str, Any]]:
    """Dataset-mapper-like inputs of random uint8 images (shape probe of the dry run)."""
    g = torch.Generator().manual_seed(0)
    h, w = int(size[0]), int(size[1])
    return [
        {
            "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
            "height": h,
            "width": w,
            "image_id": i,
        }
        for i in range(n)
    ]


def _shape_of(x: Any, probe: Tuple[int, int]) -> FeatureShape:
    if isinstance(x, Tensor) and x.dim() == 4:
        return FeatureShape(int(x.shape[1]), int(x.shape[2]), int(x.shape[3]), probe)
    if isinstance(x, Tensor) and x.dim() >= 2:
        return FeatureShape(int(x.shape[1]), 0, 0, probe)
    return FeatureShape(0, 0, 0, probe)


@META_ARCH_REGISTRY.register()
class Distiller(nn.Module):
    """Teacher → student distillation wrapper (see the module docstring)."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        names = list(cfg.KD.LOSSES)
        if not names:
            raise ValueError("Distiller needs at least one loss in KD.LOSSES")
        if len(set(names)) != len(names):
            raise ValueError(f"KD.LOSSES lists a loss twice: {names}")
        loss_classes = {}
        for n in names:
            try:
                loss_classes[n] = KD_LOSS_REGISTRY.get(n)
            except KeyError:
                known = ", ".join(sorted(k for k, _ in KD_LOSS_REGISTRY))
                raise KeyError(f"KD.LOSSES: unknown loss '{n}'; registered: {known}") from None

        self.cfg = cfg.clone()
        self.student = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
        self.student.to(torch.device(cfg.MODEL.DEVICE))
        teacher, self.teacher_cfg = build_teacher(cfg)
        object.__setattr__(self, "_teacher", teacher)  # unregistered on purpose (docstring)

        # Recorders for the union of the requested features; every name checked now.
        s_names: List[str] = []
        t_names: List[str] = []
        for cls in loss_classes.values():
            s, t = cls.feature_names(cfg)
            s_names += s
            t_names += t
        self.student_recorder = FeatureRecorder(self.student, s_names, "student")
        self.teacher_recorder = FeatureRecorder(teacher, t_names, "teacher", detach=True)

        s_shapes, t_shapes = self._probe_shapes(cfg)
        self.kd_modules = nn.ModuleDict()
        shared = nn.ModuleDict()
        for n, cls in loss_classes.items():
            s, t = cls.feature_names(cfg)
            loss = cls(
                cfg, {k: s_shapes[k] for k in s}, {k: t_shapes[k] for k in t}, shared
            )
            self.kd_modules[cls.NAME] = loss
        self.kd_modules["shared"] = shared
        self.schedules: Dict[str, WeightSchedule] = {
            cls.NAME: build_weight_schedule(cls.config_node(cfg), cfg.KD.SCHEDULE, cfg.SOLVER.MAX_ITER)
            for cls in loss_classes.values()
        }
        self.lr_multipliers = {"kd_modules": float(cfg.KD.LR_MULTIPLIER)}
        self.register_buffer("kd_iteration", torch.tensor(0, dtype=torch.int64))
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.ignore_value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        self.last_weights: Dict[str, float] = {}
        self.to(torch.device(cfg.MODEL.DEVICE))

    # ------------------------------------------------------------------ teacher handling
    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (not a registered submodule)."""
        return self._teacher

    def _apply(self, fn, *args, **kwargs):  # noqa: D401 - nn.Module hook
        """Move / cast the teacher together with the registered modules."""
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True) -> "Distiller":
        """Set the student and KD modules' mode; the teacher always stays in eval mode."""
        super().train(mode)
        self._teacher.eval()
        return self

    def deploy_model(self) -> nn.Module:
        """The student alone (``model_final.pth`` and export)."""
        return self.student

    @property
    def kd_losses(self) -> Dict[str, DistillLoss]:
        return {k: v for k, v in self.kd_modules.items() if isinstance(v, DistillLoss)}

    @property
    def iteration(self) -> int:
        return int(self.kd_iteration.item())

    def set_iteration(self, iteration: int) -> None:
        """Called by the training hook before each step (the schedules read it)."""
        self.kd_iteration.fill_(int(iteration))

    # ------------------------------------------------------------------ dry run
    @torch.no_grad()
    def _probe_shapes(self, cfg: CfgNode) -> Tuple[Dict[str, FeatureShape], Dict[str, FeatureShape]]:
        size = tuple(int(v) for v in cfg.KD.SHAPE_PROBE_SIZE)
        inputs = _dummy_inputs(cfg, size)
        was_training = self.student.training
        self.student.eval()
        try:
            bs = self.student.preprocess(inputs)
            self.student.extract(bs)
            bt = self.teacher.preprocess(inputs)
            self.teacher.extract(bt)
            probe_s = tuple(bs.tensor.shape[-2:])
            probe_t = tuple(bt.tensor.shape[-2:])
            s_shapes = {n: _shape_of(self.student_recorder.get(n), probe_s) for n in self.student_recorder.names}
            t_shapes = {n: _shape_of(self.teacher_recorder.get(n), probe_t) for n in self.teacher_recorder.names}
        finally:
            self.student.train(was_training)
            self.student_recorder.clear()
            self.teacher_recorder.clear()
        return s_shapes, t_shapes

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """Training: task + KD losses (``Dict[str, Tensor]``); eval: the student's results."""
        if not self.training:
            return self.student(batched_inputs)
        it = self.iteration
        batch_s = self.student.preprocess(batched_inputs)
        batch_t = self.teacher.preprocess(batched_inputs)
        self.student_recorder.clear()
        self.teacher_recorder.clear()
        try:
            with torch.no_grad():
                teacher_out = self.teacher.extract(batch_t)
            losses = dict(self.student.forward_batch(batch_s))
            s_feats = self.student_recorder.collect()
            t_feats = self.teacher_recorder.collect()
            ctx = KDContext(
                student_batch=batch_s,
                teacher_batch=batch_t,
                student=self.student,
                teacher=self.teacher,
                teacher_outputs=teacher_out,
                iteration=it,
                max_iter=self.max_iter,
                ignore_value=self.ignore_value,
            )
            for name, loss in self.kd_losses.items():
                w = self.schedules[name](it)
                self.last_weights[name] = w
                ctx.use_label_mask = bool(loss.node.MASK)
                out = loss(
                    {k: s_feats[k] for k in loss.student_features},
                    {k: t_feats[k] for k in loss.teacher_features},
                    ctx,
                )
                for k, v in out.items():
                    if k in losses:
                        raise KeyError(f"KD loss '{name}' returns '{k}', which is already in the loss dict")
                    losses[k] = v if k in loss.aux_loss_keys else v * w
        finally:
            # Release recorded tensors every step (also on error).
            self.student_recorder.clear()
            self.teacher_recorder.clear()
        return losses

    # ------------------------------------------------------------------ hooks / logging
    def temperatures(self) -> Dict[str, Any]:
        """``{"<loss>/<controller>": TemperatureController}`` of every loss."""
        out = {}
        for name, loss in self.kd_losses.items():
            for tag, ctrl in loss.temperatures().items():
                out[f"{name}/{tag}" if tag else name] = ctrl
        return out

    def training_hooks(self) -> List[Any]:
        """Hooks the trainer adds: KD schedule / temperature stepping + logging, and the report."""
        from .hooks import KDReportHook, KDScheduleHook

        hooks: List[Any] = [KDScheduleHook(self)]
        if self.cfg.KD.REPORT:
            hooks.append(KDReportHook(self))
        return hooks

    def kd_parameter_count(self) -> int:
        """Number of trainable KD parameters (connectors, HFA, heads): not exported."""
        return sum(p.numel() for p in self.kd_modules.parameters())
