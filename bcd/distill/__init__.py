"""Knowledge distillation core: the ``Distiller`` meta-architecture, ``build_model``, feature
recorders, connectors, weight / temperature schedules and the losses of ``KD_LOSS_REGISTRY``.

Importing this package registers ``"Distiller"`` in ``META_ARCH_REGISTRY`` and every loss of
``bcd.distill.losses``. It imports ``bcd.config``, ``bcd.modeling`` and ``bcd.utils``, never
``bcd.engine`` (docs/internals.md, "Layers"). See docs/internals.md ("Distillation") for the loss
interface.
"""
from .build import build_model
from .connectors import Connector, align_spatial
from .distiller import (
    Distiller,
    build_teacher,
    check_teacher,
    load_teacher_weights,
    student_config,
    teacher_config,
)
from .losses import KD_LOSS_REGISTRY, DistillLoss, FeatureShape, KDContext
from .recorder import FeatureRecorder
from .schedule import TemperatureController, WeightSchedule

__all__ = [
    "Connector",
    "Distiller",
    "DistillLoss",
    "FeatureRecorder",
    "FeatureShape",
    "KDContext",
    "KD_LOSS_REGISTRY",
    "TemperatureController",
    "WeightSchedule",
    "align_spatial",
    "build_model",
    "build_teacher",
    "check_teacher",
    "load_teacher_weights",
    "student_config",
    "teacher_config",
]
