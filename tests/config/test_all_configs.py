"""Every YAML under configs/ loads (``_BASE_`` chains merged, every key known), names datasets
the catalog knows, and builds: the model of each config and, for a distillation config, its
teacher's (from ``KD.TEACHER.CONFIG_FILE``), on the meta device (no memory, no weights; each
distinct model once), with every KD loss registered, every feature it records a module of
the student / teacher, and every ``SOLVER.LR_MULTIPLIERS`` prefix a module of the config's
network. ``Base-*.yaml`` mixins are loaded only."""
from __future__ import annotations

import glob
import os
from typing import Dict

import pytest
import torch

from bcd.config import get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
_MODELS: Dict[str, torch.nn.Module] = {}  # one build per distinct MODEL node


def _meta_model(cfg) -> torch.nn.Module:
    """The plain model of ``cfg`` built on the meta device (cached by its MODEL node)."""
    from bcd.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.WEIGHTS = cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "meta"
    cfg.KD.LOSSES = []
    key = cfg.MODEL.dump()
    if key not in _MODELS:
        with torch.device("meta"):
            _MODELS[key] = build_model(cfg)
    return _MODELS[key]


def test_every_config_is_found():
    names = {os.path.relpath(f, os.path.join(ROOT, "configs")) for f in FILES}
    assert len(names) > 150 and "Base-BCD.yaml" in names and "demo/teacher_pspnet_r18.yaml" in names


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "configs")))
def test_config_loads_and_builds(path):
    import bcd.data.datasets  # noqa: F401  (registers the builtin datasets)
    from bcd.data import DatasetCatalog
    from bcd.distill.distiller import teacher_config
    from bcd.distill.losses import KD_LOSS_REGISTRY
    from bcd.distill.recorder import FeatureRecorder
    from bcd.solver.build import _multiplier_rules

    cfg = get_cfg()
    cfg.merge_from_file(path)
    custom = {dict(e).get("NAME") for e in cfg.DATASETS.CUSTOM}
    unknown = [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
               if n not in DatasetCatalog and n not in custom]
    assert not unknown, f"datasets not registered: {unknown}"
    if os.path.basename(path).startswith("Base-"):
        return  # a mixin: merged onto a model config, not a model of its own
    student = _meta_model(cfg)
    assert sum(p.numel() for p in student.parameters()) > 0
    # every SOLVER.LR_MULTIPLIERS prefix names parameters of the config's own network (in a
    # distillation config too: the solver prefixes them with 'student.'); ValueError otherwise
    _multiplier_rules(cfg, student)
    if cfg.KD.LOSSES:
        cfg.MODEL.DEVICE = "meta"
        teacher = _meta_model(teacher_config(cfg))
        for name in cfg.KD.LOSSES:
            s, t = KD_LOSS_REGISTRY.get(name).feature_names(cfg)
            FeatureRecorder(student, s, "student", persistent=False)  # KeyError naming the module
            FeatureRecorder(teacher, t, "teacher", persistent=False)
