"""The APD configs (configs/*/apd_*.yaml) load, carry the recipe of the authors' code
(docs/methods.md §4.4), are small deltas over the Base-APD-<dataset>.yaml / Base-APD.yaml mixins
and name teachers that exist."""
import glob
import os

import pytest

from bcd.config import get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "apd_*.yaml")))
# dataset -> (crop, batch, base lr, iterations = images x epochs / batch)
RECIPE = {"cityscapes": (713, 8, 0.005, 2975 * 200 // 8), "ade20k": (473, 8, 0.005, 20210 * 100 // 8),
          "pascal_context": (473, 12, 0.00075, 4998 * 100 // 12)}


def _load(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg


def test_there_are_configs_for_every_dataset_and_student():
    names = {os.path.relpath(f, os.path.join(ROOT, "configs")) for f in FILES}
    for ds in RECIPE:
        for st in ("pspnet_r18", "pspnet_efficientnet_b1", "deeplabv3plus_mobilenetv2"):
            assert f"{ds}/apd_{st}.yaml" in names and f"{ds}/apd_plain_{st}.yaml" in names
        assert f"{ds}/apd_bcd_pspnet_r18.yaml" in names


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_with_the_recipe(path):
    cfg = _load(path)
    ds = os.path.basename(os.path.dirname(path))
    if ds in RECIPE and "teacher" not in path:
        crop, batch, lr, iters = RECIPE[ds]
        assert list(cfg.INPUT.CROP.SIZE) == [crop, crop] and cfg.SOLVER.IMS_PER_BATCH == batch
        assert cfg.SOLVER.BASE_LR == lr and cfg.SOLVER.MAX_ITER == iters
        assert cfg.SOLVER.OPTIMIZER == "SGD" and cfg.SOLVER.WEIGHT_DECAY == 1e-4
        assert cfg.MODEL.SEM_SEG_HEAD.CHANNELS == 512
        # the student's names in a plain and an APD config alike (the Distiller applies them)
        assert [p for p, _ in cfg.SOLVER.LR_MULTIPLIERS] == ["sem_seg_head", "aux_head"]
    if "APD" in cfg.KD.LOSSES:
        assert "PixelKD" in cfg.KD.LOSSES
        px = cfg.KD.PIXEL_KD
        assert (px.WEIGHT, px.REDUCTION, px.RESIZE, px.MASK) == (10.0, "elementwise", "input", False)
        a = cfg.KD.APD
        assert (a.AP_WEIGHT, a.PA_WEIGHT, a.KAPPA, a.SCOPE) == (10.0, 10.0, 10.0, "gpu_batch")
        assert a.TEACHER_ADAPTER_LR == 1e-5 and list(a.TEACHER_ADAPTER_BETAS) == [0.9, 0.99]
        assert os.path.isfile(os.path.join(ROOT, cfg.KD.TEACHER.CONFIG_FILE))
        _load(os.path.join(ROOT, cfg.KD.TEACHER.CONFIG_FILE))


@pytest.mark.parametrize("ds", sorted(RECIPE))
def test_configs_are_deltas_over_the_mixins(ds):
    import yaml

    mixin = {"cityscapes": "Base-APD-Cityscapes.yaml", "ade20k": "Base-APD-ADE20K.yaml",
             "pascal_context": "Base-APD-PascalContext.yaml"}[ds]
    for st in ("pspnet_r18", "pspnet_efficientnet_b1", "deeplabv3plus_mobilenetv2"):
        plain = yaml.safe_load(open(os.path.join(ROOT, "configs", ds, f"apd_plain_{st}.yaml")))
        assert plain["_BASE_"][1] == mixin and set(plain) == {"_BASE_", "OUTPUT_DIR"}
        kd = yaml.safe_load(open(os.path.join(ROOT, "configs", ds, f"apd_{st}.yaml")))
        assert kd["_BASE_"] == [f"apd_plain_{st}.yaml", "../Base-APD.yaml"]
        assert set(kd) == {"_BASE_", "KD", "OUTPUT_DIR"} and set(kd["KD"]) == {"TEACHER", "BASELINE_OUTPUT_DIR"}
