"""``Distiller`` for Detectron2 models: ``bcd``'s distillation core around a Detectron2 student and a
frozen Detectron2 teacher.

It is ``bcd.distill.Distiller`` (recorders, shape probe, KD losses, schedules, temperatures,
``kd/*`` logs, gradient ratio, ``deploy_model``: docs/internals.md "Distillation") with the five
methods that build and run the models overridden:

* ``build_student``: ``detectron2.modeling.build_model(cfg)``, the config's own
  ``MODEL.META_ARCHITECTURE`` (any architecture registered in Detectron2's registry);
* ``build_teacher``: the same from ``KD.TEACHER.CONFIG_FILE`` (``config.teacher_config``), the
  weights of ``KD.TEACHER.WEIGHTS`` loaded strictly by Detectron2's ``DetectionCheckpointer``,
  frozen and kept in eval mode (unregistered, as in ``bcd``: never optimised, saved or synced);
* ``preprocess``: the ``bcd.structures.ImageBatch`` the losses read (padded size, image sizes,
  ``sem_seg`` padded with the ignore value, ground-truth boxes and classes), from the model's
  own ``preprocess_image`` (Detectron2's meta-architectures have it) or, without one, from its
  ``pixel_mean`` / ``pixel_std`` and ``backbone.size_divisibility`` as Detectron2's
  ``SemanticSegmentor`` pads;
* ``extract``: the model's inference forward (the recorders capture the features), stopped
  once every recorded module has run (``KD.D2.TEACHER_EARLY_EXIT``); the teacher publishes
  ``{"logits": ...}`` when ``KD.D2.TEACHER_LOGITS`` names its class-score module;
* ``forward_train``: the model's training forward, ``model(batched_inputs)``: Detectron2's loss
  dict, to which the KD entries are added.

Feature names are the Detectron2 module paths (``backbone.bottom_up.res2``, ``backbone[p3]``,
``sem_seg_head.predictor``), which are also the names of ``bcd``'s own detectors.

``Distiller`` is registered in Detectron2's ``META_ARCH_REGISTRY``; as in ``bcd`` it is chosen by
``KD.LOSSES`` (:func:`build_model`), not by ``MODEL.META_ARCHITECTURE``, which stays the
student's (so a model-zoo config is the student's config as it is).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling import build_model as build_d2_model
from detectron2.structures import ImageList
from torch import Tensor, nn

from bcd.distill import Distiller as _Distiller
from bcd.distill.recorder import FeatureRecorder, parse_feature_name
from bcd.structures import ImageBatch, Instances

from .checkpoint import load_weights
from .config import teacher_config

__all__ = ["Distiller", "UNSUPPORTED_LOSSES", "build_model", "build_student", "image_batch"]

# Losses of bcd that need what a Detectron2 model or trainer does not provide.
UNSUPPORTED_LOSSES = {
    "APD": "its teacher adapter is stepped by a second optimizer that this project's trainer does not own",
    "APDDetection": "its teacher adapter is stepped by a second optimizer that this project's trainer does not own",
    "LocalizationDistillation": "it reads GFL's published side distributions; Detectron2 has no GFL",
}


def build_student(cfg) -> nn.Module:
    """The plain Detectron2 model of ``cfg`` (``MODEL.META_ARCHITECTURE``), without the KD
    wrapper: the student of a distillation config, on ``MODEL.DEVICE``, no weights loaded."""
    return build_d2_model(cfg)


def build_model(cfg) -> nn.Module:
    """:class:`Distiller` when ``cfg.KD.LOSSES`` is not empty, else the plain Detectron2 model
    (``bcd.distill.build_model``'s rule)."""
    if len(cfg.KD.LOSSES) == 0:
        return build_student(cfg)
    model = Distiller(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model


def _images(model: nn.Module, batched_inputs: List[Dict[str, Any]]) -> ImageList:
    """Normalised, padded images exactly as ``model`` builds them for itself."""
    own = getattr(model, "preprocess_image", None)
    if callable(own):
        return own(batched_inputs)
    mean, std = getattr(model, "pixel_mean", None), getattr(model, "pixel_std", None)
    backbone = getattr(model, "backbone", None)
    if mean is None or std is None or not hasattr(backbone, "size_divisibility"):
        raise TypeError(
            f"{type(model).__name__}: distillation needs either a preprocess_image(batched_inputs) "
            "method returning an ImageList, or pixel_mean / pixel_std buffers and a backbone with "
            "size_divisibility (as Detectron2's meta-architectures have)"
        )
    images = [(x["image"].to(mean.device) - mean) / std for x in batched_inputs]
    return ImageList.from_tensors(images, backbone.size_divisibility,
                                  padding_constraints=getattr(backbone, "padding_constraints", None))


def image_batch(model: nn.Module, batched_inputs: List[Dict[str, Any]], ignore_value: int) -> ImageBatch:
    """The ``ImageBatch`` of ``batched_inputs`` as ``model`` sees them.

    Args:
        model: a Detectron2 model (see the module docstring for what it must provide).
        batched_inputs: Detectron2's model inputs (``DatasetMapper`` dicts: ``image`` ``3×H×W``
            in ``INPUT.FORMAT``, optional ``instances`` with ``gt_boxes`` / ``gt_classes`` in
            pixels of ``image``, optional ``sem_seg`` ``H×W`` int64).
        ignore_value: the label padded into ``sem_seg`` (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).

    Returns:
        ``ImageBatch`` with ``tensor`` ``B×3×H×W`` (normalised, padded), ``image_sizes``,
        ``sem_seg`` ``B×H×W`` (or None) and ``instances`` (``bcd.structures.Instances`` with
        ``gt_boxes`` ``N×4`` XYXY and ``gt_classes``, or None).
    """
    images = _images(model, batched_inputs)
    tensor = images.tensor
    H, W = int(tensor.shape[-2]), int(tensor.shape[-1])
    sem_seg = None
    if batched_inputs and all("sem_seg" in x for x in batched_inputs):
        sem_seg = torch.stack([
            F.pad(x["sem_seg"].to(tensor.device), (0, W - x["sem_seg"].shape[-1], 0, H - x["sem_seg"].shape[-2]),
                  value=ignore_value)
            for x in batched_inputs
        ])
    instances = None
    if batched_inputs and all("instances" in x for x in batched_inputs):
        instances = [
            Instances(tuple(x["instances"].image_size),
                      gt_boxes=x["instances"].gt_boxes.tensor.to(tensor.device),
                      gt_classes=x["instances"].gt_classes.to(tensor.device))
            for x in batched_inputs
        ]
    sizes = [(int(h), int(w)) for h, w in images.image_sizes]
    return ImageBatch(tensor, sizes, sem_seg, instances, list(batched_inputs))


class _AllRecorded(Exception):
    """Raised by a forward hook once every module that feeds a feature has run."""


@contextmanager
def _stop_when_run(model: nn.Module, paths: Sequence[str]) -> Iterator[None]:
    """Forward hooks that end ``model``'s forward (:class:`_AllRecorded`) once each module in
    ``paths`` has produced its output. Registered after the recorders' hooks, so those have
    stored the output first."""
    pending = set(paths)
    handles = []

    def make(path: str):
        def hook(_module, _inputs, _output) -> None:
            pending.discard(path)
            if not pending:
                raise _AllRecorded

        return hook

    modules = dict(model.named_modules())
    for path in paths:
        handles.append(modules[path].register_forward_hook(make(path)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@META_ARCH_REGISTRY.register()
class Distiller(_Distiller):
    """A frozen Detectron2 teacher → a Detectron2 student, with ``bcd``'s KD losses (see the
    module docstring). Built from a config with :func:`add_bcd_config`'s keys."""

    def __init__(self, cfg) -> None:
        for name in cfg.KD.LOSSES:
            if name in UNSUPPORTED_LOSSES:
                raise ValueError(f"KD.LOSSES: {name} is not supported by the Detectron2 project: "
                                 f"{UNSUPPORTED_LOSSES[name]}")
        super().__init__(cfg)

    # ------------------------------------------------------------------ the two models
    def build_student(self, cfg) -> nn.Module:
        """``detectron2.modeling.build_model(cfg)``; its weights come from the trainer
        (``MODEL.WEIGHTS``, ``--resume``)."""
        return build_student(cfg)

    def build_teacher(self, cfg) -> Tuple[nn.Module, Any]:
        """The teacher of ``KD.TEACHER`` with ``KD.TEACHER.WEIGHTS`` (strict), frozen, eval."""
        tcfg = teacher_config(cfg)
        teacher = build_d2_model(tcfg)
        load_weights(teacher, cfg.KD.TEACHER.WEIGHTS, "KD.TEACHER.WEIGHTS")
        teacher.requires_grad_(False)
        teacher.eval()
        logits = cfg.KD.D2.TEACHER_LOGITS
        self._logits_recorder = (
            FeatureRecorder(teacher, [logits], "teacher", detach=True, persistent=False) if logits else None
        )
        return teacher, tcfg

    def preprocess(self, model: nn.Module, batched_inputs: List[Dict[str, Any]]) -> ImageBatch:
        return image_batch(model, batched_inputs, int(self.cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))

    def extract(self, model: nn.Module, batch: ImageBatch,
                batched_inputs: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Run ``model``'s inference forward (eval mode: the teacher always, the student in the
        shape probe) while the recorders capture; stop it early when configured."""
        is_teacher = model is self.teacher
        logits = self._logits_recorder if is_teacher else None
        recorders = [self.teacher_recorder if is_teacher else self.student_recorder]
        recorders += [logits] if logits is not None else []
        paths = list(dict.fromkeys(parse_feature_name(n)[0] for r in recorders for n in r.names))
        out: Dict[str, Any] = {}
        with ExitStack() as stack:
            if logits is not None:
                stack.enter_context(logits.recording())
            if self.cfg.KD.D2.TEACHER_EARLY_EXIT and paths:
                # after the recorders' hooks (entered before): they store the output first
                stack.enter_context(_stop_when_run(model, paths))
            try:
                model(batched_inputs)
            except _AllRecorded:
                pass
            if logits is not None:
                out["logits"] = logits.get(logits.names[0])
        return out

    def forward_train(self, model: nn.Module, batch: ImageBatch,
                      batched_inputs: List[Dict[str, Any]]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
        """Detectron2's training forward: its loss dict; nothing else is published."""
        return model(batched_inputs), {}
