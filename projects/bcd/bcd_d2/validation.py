"""Checks of a run's config before anything is written to ``OUTPUT_DIR`` (``train_net.py`` calls
:func:`validate_run` before Detectron2's ``default_setup``, which writes ``config.yaml`` and the
log there), so that a wrong dataset name, loss name, teacher file or feature name fails at once
and leaves the output folder as it was."""
from __future__ import annotations

import difflib
import logging
import os
from typing import List

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from bcd.distill.losses import KD_LOSS_REGISTRY
from bcd.distill.recorder import FeatureRecorder
from bcd.utils.registry import lookup

from .config import teacher_config
from .distiller import UNSUPPORTED_LOSSES

__all__ = ["validate_run"]

logger = logging.getLogger(__name__)


def _check_datasets(cfg, splits: List[str]) -> None:
    known = DatasetCatalog.list()
    for split in splits:
        for name in cfg.DATASETS[split]:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
                raise KeyError(
                    f"DATASETS.{split}: dataset '{name}' is not registered in Detectron2's "
                    f"DatasetCatalog (register it before the trainer runs); closest: {close}"
                )


def _meta_model(cfg, key: str) -> torch.nn.Module:
    """The model of ``cfg`` on the meta device (no memory, no weights): its module names only."""
    cls = lookup(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE, key)
    with torch.device("meta"):
        return cls(cfg)


def validate_run(cfg, eval_only: bool = False) -> None:
    """Refuse a run whose config cannot work, naming the key.

    Checks: the datasets of ``DATASETS.TRAIN`` (not with ``eval_only``) and ``DATASETS.TEST``
    are registered; the student's ``MODEL.META_ARCHITECTURE`` is registered; with ``KD.LOSSES``
    (training only): every loss is known and supported, ``KD.TEACHER.CONFIG_FILE`` loads, a local
    ``KD.TEACHER.WEIGHTS`` exists, and every feature name of every loss (and
    ``KD.D2.TEACHER_LOGITS``) is a module of the student / teacher, both built on the meta
    device (seconds, no memory) for this.

    Raises:
        KeyError: an unknown dataset, architecture, loss or module name.
        ValueError: an unsupported loss, an empty ``KD.TEACHER.WEIGHTS``.
        FileNotFoundError: a missing teacher config or weights file.
    """
    _check_datasets(cfg, ["TEST"] if eval_only else ["TRAIN", "TEST"])
    lookup(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE")
    if eval_only or len(cfg.KD.LOSSES) == 0:
        return
    losses = []
    for name in cfg.KD.LOSSES:
        if name in UNSUPPORTED_LOSSES:
            raise ValueError(f"KD.LOSSES: {name} is not supported by the Detectron2 project: "
                             f"{UNSUPPORTED_LOSSES[name]}")
        losses.append(lookup(KD_LOSS_REGISTRY, name, "KD.LOSSES: unknown loss"))
    tcfg = teacher_config(cfg)
    weights = cfg.KD.TEACHER.WEIGHTS
    if not weights:
        raise ValueError("KD.TEACHER.WEIGHTS is empty: a distillation run needs trained teacher weights")
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"KD.TEACHER.WEIGHTS '{weights}' does not exist")
    lookup(META_ARCH_REGISTRY, tcfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE of KD.TEACHER.CONFIG_FILE")
    try:
        student = _meta_model(cfg, "MODEL.META_ARCHITECTURE")
        teacher = _meta_model(tcfg, "MODEL.META_ARCHITECTURE of KD.TEACHER.CONFIG_FILE")
    except Exception as e:  # noqa: BLE001 - an architecture that cannot be built without memory
        logger.info(f"Feature names are checked when the models are built (meta-device build: {e})")
        return
    for cls in losses:
        s_names, t_names = cls.feature_names(cfg)
        for model, names, side, owner in ((student, s_names, "STUDENT", "student"),
                                          (teacher, t_names, "TEACHER", "teacher")):
            try:
                FeatureRecorder(model, names, owner, persistent=False)
            except KeyError as e:
                raise KeyError(f"KD.{cls.CONFIG_KEY}.{side}_FEATURES: {e.args[0]}") from None
    if cfg.KD.D2.TEACHER_LOGITS:
        try:
            FeatureRecorder(teacher, [cfg.KD.D2.TEACHER_LOGITS], "teacher", persistent=False)
        except KeyError as e:
            raise KeyError(f"KD.D2.TEACHER_LOGITS: {e.args[0]}") from None
