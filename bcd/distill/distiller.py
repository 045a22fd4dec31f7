"""``Distiller``: a frozen teacher + a trainable student + KD losses, as one meta-architecture.

Built by ``build_model(cfg)`` when ``cfg.KD.LOSSES`` is not empty:

* ``student`` = ``META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)``
  (:meth:`Distiller.build_student`): a registered submodule (optimised, saved, wrapped by DDP with the rest of the Distiller);
* ``teacher`` from ``KD.TEACHER.CONFIG_FILE`` (+ ``KD.TEACHER.OPTS``, same ``MODEL.DEVICE``) with
  the weights of ``KD.TEACHER.WEIGHTS`` loaded strictly (a full checkpoint ``{"model": ...}`` or a
  student-only ``model_final.pth``). The teacher is deliberately **not a registered submodule**:
  it is absent from ``parameters()``, ``state_dict()`` and DDP's view, so it is never optimised,
  never saved in the student's checkpoints and never synchronised. ``Distiller._apply`` forwards
  device / dtype moves to it (``.to()``, ``.cuda()``), and ``train()`` keeps it in eval mode. Its
  parameters have ``requires_grad=False`` and it runs under ``torch.no_grad()``.
* ``kd_modules``: ``nn.ModuleDict`` of the losses (with their connectors / heads) plus
  ``kd_modules.shared`` (modules used by several losses). ``lr_multipliers`` =
  ``{"kd_modules": KD.LR_MULTIPLIER}`` and the student's own rules prefixed with ``student.``
  (e.g. an ``ObjectSegmentor``'s backbone ×0.1); ``SOLVER.LR_MULTIPLIERS`` name the student's
  parameters, without the prefix. ``extra_optimizers()``: the optimizers the losses
  declare for some of their parameters (APD's teacher adapter), built by the trainer.
* Buffers ``kd_iteration`` (the iteration the schedules read: the trainer's, taken from the open
  ``EventStorage`` at each training forward, saved for ``--resume``) and the temperature
  controllers inside the losses.

Training forward (the one training-step path, docs/internals.md): ``batch_s =
student.preprocess(inputs)``, ``batch_t = teacher.preprocess(inputs)``; inside
``FeatureRecorder.recording()`` (hooks exist only there): the teacher's ``extract`` under
``no_grad``, the student's ``forward_train`` (task losses + the outputs it published, e.g. a
detector's anchor assignment) or ``forward_batch``; then each loss of ``KD.LOSSES`` on the
recorded features and a ``KDContext``. The returned dict holds, per loss, the weighted entries
``loss_kd_<x>`` (summed by the trainer), ``kd/<x>/raw`` (the unweighted value, detached) and
``kd/<loss>/weight`` (the scheduled weight), and every ``KD.LOG_GRAD_RATIO.PERIOD`` iterations
``kd/grad_ratio`` (see :meth:`Distiller.grad_ratio`). Eval forward: ``student(inputs)``.
``deploy_model()`` returns the student.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

from bcd.config import CfgNode, get_cfg
from bcd.modeling.d2_convert import maybe_convert_detectron2
from bcd.modeling.hf_checkpoint import hf_checkpoint_state_dict, is_hf_checkpoint
from bcd.modeling.meta_arch.build import META_ARCH_REGISTRY
from bcd.structures import ImageBatch
from bcd.utils.events import current_event_storage
from bcd.utils.registry import lookup
from bcd.utils.state_dict import state_dict_mismatch

from .losses import KD_LOSS_REGISTRY, DistillLoss, FeatureShape, KDContext
from .recorder import FeatureRecorder
from .schedule import WeightSchedule, build_weight_schedule

__all__ = [
    "Distiller",
    "build_teacher",
    "check_teacher",
    "load_teacher_weights",
    "student_config",
    "teacher_config",
]

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


def student_config(cfg: CfgNode) -> CfgNode:
    """The config of the deployable student of a distillation config: ``cfg`` with ``KD.LOSSES``
    emptied (a copy; ``cfg`` itself is left as it is). Evaluating, exporting or analysing the
    student needs no teacher: ``bcd.distill.build_model`` on it builds the student alone, and its
    ``model_final.pth`` (or the ``student.*`` part of a full checkpoint) loads into it."""
    out = cfg.clone()
    out.defrost()
    out.KD.LOSSES = []
    if cfg.is_frozen():
        out.freeze()
    return out


def _teacher_recipe(cfg: CfgNode) -> str:
    """How to make ``KD.TEACHER.WEIGHTS``: the train_net command of ``KD.TEACHER.CONFIG_FILE``
    (with ``KD.TEACHER.OPTS``), writing the file where the config expects it."""
    import shlex

    path = cfg.KD.TEACHER.WEIGHTS
    cmd = ["python", "tools/train_net.py", "--config-file", cfg.KD.TEACHER.CONFIG_FILE, *cfg.KD.TEACHER.OPTS]
    try:
        out_dir = teacher_config(cfg).OUTPUT_DIR
    except (FileNotFoundError, ValueError, KeyError):
        out_dir = ""
    want = os.path.dirname(os.path.normpath(path)) if os.path.basename(path) == "model_final.pth" else ""
    if want and os.path.normpath(out_dir) != want:
        cmd += ["OUTPUT_DIR", want]
    where = (f"it writes {path}" if want else
             f"then set KD.TEACHER.WEIGHTS to its OUTPUT_DIR/model_final.pth")
    return f"{' '.join(shlex.quote(str(c)) for c in cmd)} ({where})"


def check_teacher(cfg: CfgNode) -> None:
    """Before a distillation run writes anything: the teacher's config exists and its weights
    ``KD.TEACHER.WEIGHTS`` are a file (or a transformers checkpoint: an ``hf://`` name or a
    ``save_pretrained`` folder, resolved when loaded). The error says how to make them (the
    train_net command of ``KD.TEACHER.CONFIG_FILE``). Nothing to check when ``KD.LOSSES`` is
    empty.

    Raises:
        FileNotFoundError / ValueError: naming the key, the file and the command.
    """
    if len(cfg.KD.LOSSES) == 0:
        return
    teacher_config(cfg)  # KD.TEACHER.CONFIG_FILE exists and parses
    path = cfg.KD.TEACHER.WEIGHTS
    if not path:
        raise ValueError(
            "KD.TEACHER.WEIGHTS is empty: a distillation run needs trained teacher weights. Train "
            f"the teacher first: {_teacher_recipe(cfg)}"
        )
    if not os.path.isfile(path) and not is_hf_checkpoint(path):  # hf:// names resolve on load
        raise FileNotFoundError(
            f"KD.TEACHER.WEIGHTS '{path}' does not exist: a distillation run needs the trained "
            f"teacher of KD.TEACHER.CONFIG_FILE ({cfg.KD.TEACHER.CONFIG_FILE}). Train it first: "
            f"{_teacher_recipe(cfg)}; or set KD.TEACHER.WEIGHTS to a trained checkpoint (bcd or "
            "Detectron2)"
        )


def load_teacher_weights(model: nn.Module, path: str) -> None:
    """Strictly load ``path`` into the teacher; a mismatch names the file and the keys.

    Accepts ``{"model": state_dict, ...}`` (a training checkpoint or ``model_final.pth``), a
    bare state dict (a ``module.`` prefix, DDP, is stripped), or a transformers checkpoint
    (``hf://<repo_id>`` or a ``save_pretrained`` folder) of a model built on transformers
    (``bcd/modeling/hf_checkpoint.py``).
    """
    if not path:
        raise ValueError("KD.TEACHER.WEIGHTS is empty: a distillation run needs trained teacher weights")
    if is_hf_checkpoint(path):
        # a transformers checkpoint (hf:// name or save_pretrained folder): bcd/modeling/hf_checkpoint.py
        ckpt = {"model": hf_checkpoint_state_dict(path, model, key="KD.TEACHER.WEIGHTS")}
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"KD.TEACHER.WEIGHTS '{path}' does not exist")
    else:
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
    teacher = lookup(META_ARCH_REGISTRY, tcfg.MODEL.META_ARCHITECTURE,
                     f"MODEL.META_ARCHITECTURE of KD.TEACHER.CONFIG_FILE")(tcfg)
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
        loss_classes = {n: lookup(KD_LOSS_REGISTRY, n, "KD.LOSSES: unknown loss") for n in names}

        self.cfg = cfg.clone()
        self.student = self.build_student(cfg)
        teacher, self.teacher_cfg = self.build_teacher(cfg)
        object.__setattr__(self, "_teacher", teacher)  # unregistered on purpose (docstring)

        # Recorders for the union of the requested features; every name checked now.
        s_names: List[str] = []
        t_names: List[str] = []
        for cls in loss_classes.values():
            s, t = cls.feature_names(cfg)
            s_names += s
            t_names += t
        # Hooks only inside recording() (training forward, shape probe): evaluation and the
        # exported student carry none.
        self.student_recorder = FeatureRecorder(self.student, s_names, "student", persistent=False)
        self.teacher_recorder = FeatureRecorder(teacher, t_names, "teacher", detach=True,
                                                persistent=False)

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
        # The KD modules' rule, then the student's own (ObjectSegmentor: backbone x0.1), prefixed
        # with its name here; SOLVER.LR_MULTIPLIERS name the student's parameters and the solver
        # prefixes them (bcd/solver/build.py).
        self.lr_multipliers: Dict[str, float] = {"kd_modules": float(cfg.KD.LR_MULTIPLIER)}
        self.lr_multipliers.update({f"student.{k}": float(v) for k, v in
                                    (getattr(self.student, "lr_multipliers", None) or {}).items()})
        self.register_buffer("kd_iteration", torch.tensor(0, dtype=torch.int64))
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.ignore_value = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        # KD.<LOSS>.MASK is read here and nowhere else (losses without the key use no mask).
        self.masks: Dict[str, bool] = {
            cls.NAME: bool(cls.config_node(cfg).get("MASK", False)) for cls in loss_classes.values()
        }
        self.grad_ratio_period = (
            int(cfg.KD.LOG_GRAD_RATIO.PERIOD) if cfg.KD.LOG_GRAD_RATIO.ENABLED else 0
        )
        if cfg.KD.LOG_GRAD_RATIO.ENABLED:
            if self.grad_ratio_period <= 0:
                raise ValueError(
                    f"KD.LOG_GRAD_RATIO.PERIOD must be > 0 when ENABLED; got {self.grad_ratio_period}"
                )
            if not isinstance(getattr(self.student, "backbone", None), nn.Module):
                raise ValueError(
                    "KD.LOG_GRAD_RATIO needs a student with a 'backbone' submodule; "
                    f"{type(self.student).__name__} has none"
                )
        self.to(torch.device(cfg.MODEL.DEVICE))

    # ------------------------------------------------------------------ the two models
    # The five methods below are the only place that knows how a model is built and run (the
    # meta-architecture contract of docs/internals.md, "Models"). A wrapper for models of another
    # framework overrides them and keeps everything else: recorders, shape probe, losses,
    # schedules, logs (projects/bcd/bcd_d2 runs Detectron2 models this way).
    def build_student(self, cfg: CfgNode) -> nn.Module:
        """The student: ``MODEL.META_ARCHITECTURE`` of ``cfg``, on ``MODEL.DEVICE``."""
        student = lookup(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE")(cfg)
        return student.to(torch.device(cfg.MODEL.DEVICE))

    def build_teacher(self, cfg: CfgNode) -> Tuple[nn.Module, CfgNode]:
        """The frozen teacher and its config (:func:`build_teacher`)."""
        return build_teacher(cfg)

    def preprocess(self, model: nn.Module, batched_inputs: List[Dict[str, Any]]) -> ImageBatch:
        """The ``ImageBatch`` ``model`` works on (``model.preprocess``)."""
        return model.preprocess(batched_inputs)

    def extract(self, model: nn.Module, batch: ImageBatch,
                batched_inputs: List[Dict[str, Any]]) -> Dict[str, Any]:
        """``model``'s raw outputs without loss or post-processing (``model.extract``); the
        recorders capture the features while it runs. Called under ``no_grad`` for the teacher
        and in the shape probe."""
        return model.extract(batch)

    def forward_train(
        self, model: nn.Module, batch: ImageBatch, batched_inputs: List[Dict[str, Any]]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
        """The student's task losses and the outputs it publishes for the KD losses
        (``model.forward_train``; ``forward_batch`` and no outputs without it)."""
        forward_train = getattr(model, "forward_train", None)
        if callable(forward_train):
            return forward_train(batch)
        return model.forward_batch(batch), {}

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

    def extra_optimizers(self) -> Dict[str, Any]:
        """``{"<loss NAME>.<name>": bcd.solver.OptimizerSpec}``: the optimizers the losses declare
        for some of their parameters (APD's ``"apd.teacher_adapter"``); the trainer builds them."""
        return {f"{name}.{k}": spec for name, loss in self.kd_losses.items()
                for k, spec in loss.extra_optimizers().items()}

    @property
    def kd_losses(self) -> Dict[str, DistillLoss]:
        return {k: v for k, v in self.kd_modules.items() if isinstance(v, DistillLoss)}

    @property
    def iteration(self) -> int:
        return int(self.kd_iteration.item())

    def set_iteration(self, iteration: int) -> None:
        """Set the iteration the schedules read (outside a trainer; inside one the training
        forward takes it from the open ``EventStorage``)."""
        self.kd_iteration.fill_(int(iteration))

    def _sync_iteration(self) -> int:
        storage = current_event_storage()
        if storage is not None:  # in a training loop: its iteration is the truth
            self.kd_iteration.fill_(int(storage.iter))
        return self.iteration

    # ------------------------------------------------------------------ dry run
    @torch.no_grad()
    def _probe_shapes(self, cfg: CfgNode) -> Tuple[Dict[str, FeatureShape], Dict[str, FeatureShape]]:
        size = tuple(int(v) for v in cfg.KD.SHAPE_PROBE_SIZE)
        inputs = _dummy_inputs(cfg, size)
        was_training = self.student.training
        self.student.eval()
        try:
            with self.student_recorder.recording(), self.teacher_recorder.recording():
                bs = self.preprocess(self.student, inputs)
                self.extract(self.student, bs, inputs)
                bt = self.preprocess(self.teacher, inputs)
                self.extract(self.teacher, bt, inputs)
                probe_s = tuple(bs.tensor.shape[-2:])
                probe_t = tuple(bt.tensor.shape[-2:])
                s_shapes = {n: _shape_of(self.student_recorder.get(n), probe_s)
                            for n in self.student_recorder.names}
                t_shapes = {n: _shape_of(self.teacher_recorder.get(n), probe_t)
                            for n in self.teacher_recorder.names}
        finally:
            self.student.train(was_training)
        return s_shapes, t_shapes

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """Training: task + KD losses and the KD log scalars (``Dict[str, Tensor]``, see the
        module docstring); eval: the student's results."""
        if not self.training:
            return self.student(batched_inputs)
        it = self._sync_iteration()
        batch_s = self.preprocess(self.student, batched_inputs)
        batch_t = self.preprocess(self.teacher, batched_inputs)
        with self.student_recorder.recording(), self.teacher_recorder.recording():
            with torch.no_grad():
                teacher_out = self.extract(self.teacher, batch_t, batched_inputs)
            task_losses, student_out = self.forward_train(self.student, batch_s, batched_inputs)
            task_losses = dict(task_losses)
            ctx = KDContext(
                student_batch=batch_s,
                teacher_batch=batch_t,
                student=self.student,
                teacher=self.teacher,
                teacher_outputs=teacher_out,
                iteration=it,
                max_iter=self.max_iter,
                ignore_value=self.ignore_value,
                student_outputs=dict(student_out),
            )
            kd_losses, logs = self._kd_losses(
                self.student_recorder.collect(), self.teacher_recorder.collect(), ctx, it
            )
        losses = dict(task_losses)
        for k, v in kd_losses.items():
            if k in losses:
                raise KeyError(f"KD loss entry '{k}' is already in the student's loss dict")
            losses[k] = v
        if self.grad_ratio_period and it % self.grad_ratio_period == 0:
            logs.update(self.grad_ratio(task_losses, kd_losses))
        losses.update(logs)
        return losses

    def _kd_losses(
        self, s_feats: Dict[str, Any], t_feats: Dict[str, Any], ctx: KDContext, it: int
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Run every loss; return the weighted ``loss_kd_*`` entries and the log scalars
        (``kd/<x>/raw``: each scheduled entry unweighted and detached; ``kd/<loss>/weight``)."""
        losses: Dict[str, Tensor] = {}
        logs: Dict[str, Tensor] = {}
        for name, loss in self.kd_losses.items():
            w = float(self.schedules[name](it))
            ctx.mask = self.masks[name]
            out = loss(
                {k: s_feats[k] for k in loss.student_features},
                {k: t_feats[k] for k in loss.teacher_features},
                ctx,
            )
            for k, v in out.items():
                if k in losses:
                    raise KeyError(f"KD loss '{name}' returns '{k}', which another KD loss returned")
                if k in loss.aux_loss_keys:  # fixed-weight auxiliary term: logged as it is
                    losses[k] = v
                    continue
                losses[k] = v * w
                tag = k[len("loss_kd_"):] if k.startswith("loss_kd_") else k
                logs[f"kd/{tag}/raw"] = v.detach()
            logs[f"kd/{name}/weight"] = torch.tensor(w)
        return losses, logs

    def grad_ratio(self, task_losses: Dict[str, Tensor], kd_losses: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """``‖∇_θ L_KD‖ / ‖∇_θ L_task‖`` over the student backbone's trainable parameters θ.

        ``L_task`` is the sum of the student's ``loss*`` entries, ``L_KD`` the sum of the
        weighted KD entries (what the trainer adds to the objective). Both gradients come from
        ``torch.autograd.grad`` (``retain_graph=True``: the trainer's backward follows; the
        parameters' ``.grad`` is untouched), so this costs two extra backward passes and runs
        only every ``KD.LOG_GRAD_RATIO.PERIOD`` iterations.

        Returns:
            ``{"kd/grad_ratio", "kd/grad_norm/task", "kd/grad_norm/kd", "kd/grad_cosine"}``
            (0-dim tensors; the cosine is that of the two flattened gradients).
        """
        params = [p for p in self.student.backbone.parameters() if p.requires_grad]

        def flat_grad(total: Tensor) -> Tensor:
            if not (isinstance(total, Tensor) and total.requires_grad) or not params:
                return torch.zeros(sum(p.numel() for p in params))
            grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
            return torch.cat([
                (g if g is not None else torch.zeros_like(p)).detach().float().reshape(-1).cpu()
                for g, p in zip(grads, params)
            ])

        task = sum((v for k, v in task_losses.items() if k.startswith("loss")), torch.zeros(()))
        kd = sum((v for k, v in kd_losses.items() if k.startswith("loss")), torch.zeros(()))
        g_task, g_kd = flat_grad(task), flat_grad(kd)
        n_task, n_kd = g_task.norm(), g_kd.norm()
        return {
            "kd/grad_ratio": n_kd / n_task.clamp_min(1e-12),
            "kd/grad_norm/task": n_task,
            "kd/grad_norm/kd": n_kd,
            "kd/grad_cosine": (g_task @ g_kd) / (n_task * n_kd).clamp_min(1e-12),
        }

    # ------------------------------------------------------------------ logging
    def temperatures(self) -> Dict[str, Any]:
        """``{"<loss>/<controller>": TemperatureController}`` of every loss."""
        out = {}
        for name, loss in self.kd_losses.items():
            for tag, ctrl in loss.temperatures().items():
                out[f"{name}/{tag}" if tag else name] = ctrl
        return out

    def kd_parameter_count(self) -> int:
        """Number of trainable KD parameters (connectors, HFA, heads): not exported."""
        return sum(p.numel() for p in self.kd_modules.parameters())
