"""The interface every distillation loss implements (``DistillLoss``) and what it is given.

A loss is one file in ``bcd/distill/losses/``. It

* has its config node ``KD.<CONFIG_KEY>`` declared in ``bcd/config/kd_defaults.py`` (torch-free;
  at least ``WEIGHT``, ``STUDENT_FEATURES``, ``TEACHER_FEATURES`` and a ``SCHEDULE`` node, which
  :func:`add_common_loss_config` adds), never in the loss file;
* registers a ``DistillLoss`` subclass in ``KD_LOSS_REGISTRY`` under the name used in
  ``cfg.KD.LOSSES`` (e.g. ``"BoundaryDistillation"``);
* is built once by the ``Distiller`` as
  ``cls(cfg, student_shapes, teacher_shapes, shared)``:

  - ``student_shapes`` / ``teacher_shapes``: ``Dict[str, FeatureShape]``, the shape of every
    feature the loss asked for, recorded in one dry-run forward (``Distiller`` builds both models,
    runs ``extract`` on a small dummy batch of ``KD.SHAPE_PROBE_SIZE`` under ``no_grad`` in eval
    mode, and records). Channel counts are exact; spatial sizes are those of the probe and only
    tell the stride (connectors align spatial sizes at run time);
  - ``shared``: a ``nn.ModuleDict`` owned by the ``Distiller`` in which losses put modules that
    several losses use (BCD's student HFA feeds both the boundary and the context loss); use
    :meth:`DistillLoss.shared_module`.

  Every trainable module a loss creates (connectors, adapters, heads) is a submodule of the loss,
  so it lives under ``Distiller.kd_modules`` and gets ``KD.LR_MULTIPLIER``;
* ``forward(student_feats, teacher_feats, ctx) -> Dict[str, Tensor]`` returns scalar losses named
  ``loss_kd_<name>``. ``student_feats`` / ``teacher_feats`` map each configured feature name
  (``module.path`` or ``module.path[key]``) to the recorded output (a tensor, or whatever the
  module returns when no key is given). Teacher features are already detached. The entries are
  *unweighted*: the ``Distiller`` multiplies each by the loss's scheduled weight, except the keys
  in ``aux_loss_keys`` (e.g. the BCD teacher-head pseudo-affinity loss, which trains only KD
  modules at its own fixed weight).
* A loss whose own parameters train on an objective of their own (APD's teacher adapter, on
  ``L_soft``) declares their optimizer in :meth:`DistillLoss.extra_optimizers`
  (``bcd.solver.OptimizerSpec``: parameters, the loss-dict entries to minimise, optimizer and
  hyper-parameters) and returns the objective as an entry with its graph (a key in
  ``aux_loss_keys``, not starting with ``loss``). The trainer builds, steps and checkpoints that
  optimizer (``bcd/engine/train_loop.py``); a loss never steps an optimizer itself.
* Losses with an adaptive temperature own :class:`bcd.distill.schedule.TemperatureController`
  submodules; they call ``controller.observe(...)`` in ``forward`` (no grad) and the Distiller's
  hook calls ``controller.step()`` after the optimizer step. ``temperatures()`` lists them for
  logging.

Masks (docs/methods.md §1.2): ``ctx.valid_mask(size)`` is ``B×h×w`` bool. The ``Distiller``
alone reads ``KD.<LOSS>.MASK`` and sets ``ctx.mask`` before each loss: with it, True where a cell
is inside its image (not padding) and, when labels exist, its label is not the ignore value
(``ImageBatch.valid_mask``); without it, all True. Losses always call ``ctx.valid_mask`` and never
read ``MASK`` themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bcd.config import CfgNode as CN
from bcd.config.kd_defaults import add_common_loss_config

__all__ = [
    "DistillLoss",
    "as_tensor_feature",
    "FeatureShape",
    "KDContext",
    "add_common_loss_config",
]


@dataclass(frozen=True)
class FeatureShape:
    """Shape of one recorded feature in the dry-run forward.

    Attributes:
        channels: ``C`` of a ``B×C×h×w`` (or ``B×C``) tensor; 0 when the output is not a tensor.
        height, width: spatial size in the probe (0 for non-spatial outputs).
        probe_size: ``(H, W)`` of the padded probe input, so that ``stride = H / height``.
    """

    channels: int
    height: int = 0
    width: int = 0
    probe_size: Tuple[int, int] = (0, 0)

    @property
    def stride(self) -> float:
        """Input pixels per feature cell (probe height / feature height); 0 if unknown."""
        return self.probe_size[0] / self.height if self.height else 0.0


@dataclass
class KDContext:
    """Everything a loss may need besides the recorded features, for one training step.

    Attributes:
        student_batch, teacher_batch: the ``ImageBatch`` each model saw (they differ only by
            normalisation / padding when the two configs differ).
        student, teacher: the two models (the teacher is frozen, in eval mode). Losses do not
            call them: what they need is published in ``student_outputs`` / ``teacher_outputs``.
        teacher_outputs: ``teacher.extract(teacher_batch)`` (e.g. ``{"logits": B×K×h×w}``).
        student_outputs: what the student published in its training forward
            (``forward_train``: ``extract`` outputs plus, for detectors, ``"assignment"``:
            ``{"labels": B×M, "boxes": B×M×4}`` per anchor, and ``"anchors"`` / ``"strides"``);
            ``{}`` for a student without ``forward_train``.
        iteration, max_iter: current iteration (0-based) and ``SOLVER.MAX_ITER``.
        ignore_value: the label ignored in ``sem_seg`` (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).
        mask: ``KD.<LOSS>.MASK`` of the loss being run (set by the ``Distiller``): whether
            ``valid_mask`` masks padding and ignored labels (True) or nothing (False).
        cache: per-step scratch space shared by the losses (e.g. the student HFA output, so a
            module shared by two losses runs once per step). Cleared every step.
    """

    student_batch: Any
    teacher_batch: Any
    student: nn.Module
    teacher: nn.Module
    teacher_outputs: Dict[str, Any]
    iteration: int
    max_iter: int
    ignore_value: int = 255
    mask: bool = True
    student_outputs: Dict[str, Any] = field(default_factory=dict)
    cache: Dict[str, Any] = field(default_factory=dict)

    def valid_mask(self, size: Tuple[int, int], side: str = "student") -> Tensor:
        """``B×h×w`` bool mask of the cells of an ``h×w`` grid that carry weight (see the module
        docstring): ``ImageBatch.valid_mask`` when ``mask``, else all True. Cached per step."""
        batch = self.student_batch if side == "student" else self.teacher_batch
        key = f"valid/{side}/{size[0]}x{size[1]}/{int(self.mask)}"
        if key not in self.cache:
            if self.mask:
                self.cache[key] = batch.valid_mask(size, self.ignore_value)
            else:
                B = batch.tensor.shape[0]
                self.cache[key] = torch.ones(B, *size, dtype=torch.bool, device=batch.tensor.device)
        return self.cache[key]

    def pseudo_labels(self, size: Tuple[int, int]) -> Tensor:
        """``B×h×w`` long dense class labels of the teacher's batch on an ``h×w`` grid, for losses
        that need a segmentation of the scene without the student's prediction (e.g. the
        pseudo-affinity fit of BCD's teacher boundary head, docs/methods.md §2.4).

        A teacher that publishes dense ``"logits"`` (``B×K×h'×w'``, segmentors): their argmax after
        bilinear resizing. Otherwise the ground-truth boxes the batch carries (detectors):
        :meth:`ImageBatch.box_label_map` (class + 1 of the smallest covering box, 0 = background).
        Cached per step.

        Raises:
            ValueError: the teacher publishes no dense logits and the batch has no instances.
        """
        key = f"pseudo_labels/{size[0]}x{size[1]}"
        if key not in self.cache:
            outputs = self.teacher_outputs if isinstance(self.teacher_outputs, dict) else {}
            logits = outputs.get("logits")
            if isinstance(logits, Tensor) and logits.dim() == 4:
                labels = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).argmax(1)
            elif getattr(self.teacher_batch, "instances", None) is not None:
                labels = self.teacher_batch.box_label_map(size)
            else:
                raise ValueError(
                    "no dense labels for this step: the teacher publishes no 'logits' (B×K×h×w) and "
                    "the batch carries no ground-truth instances"
                )
            self.cache[key] = labels
        return self.cache[key]

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        """Compute ``fn()`` once per step under ``key`` (shared work between losses)."""
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]


class DistillLoss(nn.Module):
    """Base class of the losses in ``KD_LOSS_REGISTRY`` (see the module docstring).

    Subclasses set ``CONFIG_KEY`` (the ``KD.<CONFIG_KEY>`` node) and ``NAME`` (the loss-dict key is
    ``loss_kd_<NAME>``), and implement ``forward``.
    """

    CONFIG_KEY: str = ""
    NAME: str = ""

    def __init__(
        self,
        cfg: CN,
        student_shapes: Dict[str, FeatureShape],
        teacher_shapes: Dict[str, FeatureShape],
        shared: Optional[nn.ModuleDict] = None,
    ) -> None:
        super().__init__()
        if not self.CONFIG_KEY or not self.NAME:
            raise TypeError(f"{type(self).__name__} must set CONFIG_KEY and NAME")
        self.node = self.config_node(cfg)
        self.student_shapes = dict(student_shapes)
        self.teacher_shapes = dict(teacher_shapes)
        if shared is None:  # stand-alone use: the loss owns its shared modules
            shared = nn.ModuleDict()
            self.own_shared = shared
        # Otherwise not registered as a child: the Distiller owns it (one state_dict path).
        object.__setattr__(self, "_shared", shared)
        self.aux_loss_keys: List[str] = []

    # ------------------------------------------------------------------ config helpers
    @classmethod
    def config_node(cls, cfg: CN) -> CN:
        """The ``KD.<CONFIG_KEY>`` node, with a clear error when it was never declared."""
        if cls.CONFIG_KEY not in cfg.KD:
            raise KeyError(
                f"Config node KD.{cls.CONFIG_KEY} of loss {cls.__name__} is missing; "
                "declare it in bcd/config/kd_defaults.py and build the config with "
                "bcd.config.get_cfg()"
            )
        return cfg.KD[cls.CONFIG_KEY]

    @classmethod
    def feature_names(cls, cfg: CN) -> Tuple[List[str], List[str]]:
        """``(student names, teacher names)`` this loss needs recorded."""
        node = cls.config_node(cfg)
        s, t = list(node.STUDENT_FEATURES), list(node.TEACHER_FEATURES)
        if len(s) != len(t):
            raise ValueError(
                f"KD.{cls.CONFIG_KEY}.STUDENT_FEATURES ({len(s)} names) and TEACHER_FEATURES "
                f"({len(t)} names) must pair up one to one"
            )
        return s, t

    @property
    def loss_key(self) -> str:
        """The key of the main entry in the loss dict: ``loss_kd_<NAME>``."""
        return f"loss_kd_{self.NAME}"

    @property
    def student_features(self) -> List[str]:
        return list(self.node.STUDENT_FEATURES)

    @property
    def teacher_features(self) -> List[str]:
        return list(self.node.TEACHER_FEATURES)

    def shared_module(self, key: str, factory: Callable[[], nn.Module]) -> nn.Module:
        """Get ``shared[key]``, creating it with ``factory()`` the first time.

        Keep the result with ``object.__setattr__`` (not as a child), so that its parameters
        have one name (``kd_modules.shared.<key>``) in ``state_dict`` and the optimizer.
        """
        if key not in self._shared:
            self._shared[key] = factory()
        return self._shared[key]

    def extra_optimizers(self) -> Dict[str, Any]:
        """``{name: bcd.solver.OptimizerSpec}``: parameters of this loss that train with an
        optimizer of their own on an entry this loss returns (the module docstring); the
        ``Distiller`` publishes them as ``<NAME>.<name>``. None by default."""
        return {}

    def temperatures(self) -> Dict[str, Any]:
        """``{tag: TemperatureController}`` of this loss (for the step hook and logging)."""
        from ..schedule import TemperatureController

        return {
            name: m for name, m in self.named_modules() if isinstance(m, TemperatureController)
        }

    # Subclasses implement forward(student_feats, teacher_feats, ctx) -> Dict[str, Tensor].


class FeaturePairLoss(DistillLoss):
    """A loss over ``(student, teacher)`` feature pairs (``STUDENT_FEATURES[i]`` with
    ``TEACHER_FEATURES[i]``), each pair joined by a ``Connector`` that maps the student feature to
    the teacher's channels and spatial size (CWD, FitNet, structured KD ...)."""

    def build_connectors(self, cfg: CN, norm: str, force_conv: bool = False) -> None:
        """One ``Connector`` per pair, in ``self.connectors`` (trained with the student).

        Args:
            norm: the connectors' norm layer (``KD.CONNECTOR.NORM`` or the loss's own).
            force_conv: a 1×1 conv even when the channel counts already agree (FitNet).
        """
        from ..connectors import Connector

        self.connectors = nn.ModuleList(
            Connector(self.student_shapes[sn].channels, self.teacher_shapes[tn].channels, norm,
                      cfg.KD.CONNECTOR.SPATIAL, force_conv=force_conv)
            for sn, tn in zip(self.student_features, self.teacher_features)
        )

    def aligned_pairs(
        self, student_feats: Dict[str, Any], teacher_feats: Dict[str, Any], ctx: KDContext
    ) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        """Yield, per pair, ``(student, teacher, valid)``: the student feature through its
        connector and the detached teacher feature, both ``B×C_t×h×w`` on the teacher's grid, and
        the ``B×h×w`` bool mask of cells that carry weight (``ctx.valid_mask``)."""
        for conn, sn, tn in zip(self.connectors, self.student_features, self.teacher_features):
            t = as_tensor_feature(teacher_feats[tn], tn).detach()
            size = (int(t.shape[-2]), int(t.shape[-1]))
            s = conn(as_tensor_feature(student_feats[sn], sn), size)
            yield s, t, ctx.valid_mask(size)


def as_tensor_feature(value: Any, name: str) -> Tensor:
    """Check that a recorded feature is a ``B×C×h×w`` tensor, naming the feature otherwise."""
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        desc = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(
            f"Feature '{name}' must be a B×C×h×w tensor for this loss, got {desc}; "
            "select one entry of a dict/tuple output with 'name[key]'"
        )
    return value
