"""The SOD / COD / demo configs of SKD: they merge, carry the README's recipe, name registered
datasets and the method their file name says; the demo ones build."""
from __future__ import annotations

import glob
import os

import pytest

from bcd.config import get_cfg
import bcd.data.datasets  # noqa: F401  (registers the builtin and demo datasets)
from bcd.data.catalog import DatasetCatalog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "configs", "sod", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "configs", "cod", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "configs", "demo", "skd_demo_*.yaml"))
)


def _load(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_config_merges_and_follows_recipe(path):
    cfg = _load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "ObjectSegmentor"
    assert cfg.INPUT.DATASET_MAPPER_NAME == "ObjectSegDatasetMapper"
    s = cfg.SOLVER
    # xfflyer/SKDforSegmentation README: SGD, lr 0.05, momentum 0.9, wd 5e-4, warm-up + linear decay
    assert (s.OPTIMIZER, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY) == ("SGD", 0.05, 0.9, 0.0005)
    assert s.LR_SCHEDULER_NAME == "WarmupPolyLR" and s.POLY_POWER == 1.0 and s.WARMUP_ITERS > 0
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        assert name in DatasetCatalog, name
    base = os.path.basename(path)
    if not base.startswith("Base"):
        method = {"inference": "none"}.get(base.split("_")[-1][:-5] if "demo" in base else base.split("_")[0],
                                          base.split("_")[-1][:-5] if "demo" in base else base.split("_")[0])
        assert cfg.MODEL.SKD.METHOD == method
    if "/demo/" not in path and not base.startswith("Base"):
        assert s.IMS_PER_BATCH == 10
        n_train = 10553 if "/sod/" in path else 4040
        assert s.MAX_ITER == round(20 * n_train / 10)  # 20 epochs of the training set


@pytest.mark.parametrize("method", ["inference", "skd", "byot", "dks"])
def test_demo_configs_build(method):
    from bcd.modeling import build_model

    cfg = _load(os.path.join(ROOT, "configs", "demo", f"skd_demo_cod_{method}.yaml"))
    model = build_model(cfg)
    assert (model.aux is None) == (method == "inference")
