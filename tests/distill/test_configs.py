"""Every distillation config of the segmentation datasets loads, names registered losses and an
existing teacher config, and its feature names exist in the models it builds."""
import glob
import os

import pytest

from bcd.config import get_cfg
from bcd.distill import KD_LOSS_REGISTRY
from bcd.distill.recorder import FeatureRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KD_CONFIGS = sorted(
    p for ds in ("voc", "cityscapes", "ade20k")
    for pat in ("bcd_*.yaml", "kd_*.yaml", "cwd_*.yaml", "cirkd_*.yaml", "ablation_*.yaml")
    for p in glob.glob(os.path.join(ROOT, "configs", ds, pat))
)


def _load(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg


def test_there_are_configs_for_every_dataset():
    names = {os.path.relpath(p, ROOT) for p in KD_CONFIGS}
    for ds in ("voc", "cityscapes", "ade20k"):
        assert f"configs/{ds}/bcd_pspnet_r18.yaml" in names
        assert f"configs/{ds}/bcd_cirkd_pspnet_r18.yaml" in names
    assert "configs/voc/ablation_bcd_boundary_pspnet_r18.yaml" in names


@pytest.mark.parametrize("path", KD_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads(path):
    cfg = _load(path)
    assert cfg.KD.LOSSES
    for name in cfg.KD.LOSSES:
        KD_LOSS_REGISTRY.get(name)
    assert os.path.isfile(os.path.join(ROOT, cfg.KD.TEACHER.CONFIG_FILE))
    tcfg = get_cfg()
    tcfg.merge_from_file(os.path.join(ROOT, cfg.KD.TEACHER.CONFIG_FILE))
    assert tcfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES


@pytest.mark.parametrize("student", ["pspnet_r18", "deeplabv3plus_mobilenetv2", "pspnet_efficientnet_b1"])
def test_feature_names_exist_in_the_student(student):
    from bcd.modeling.meta_arch.build import META_ARCH_REGISTRY

    cfg = _load(os.path.join(ROOT, "configs", "voc", f"bcd_{student}.yaml"))
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    names = list(cfg.KD.BOUNDARY.STUDENT_FEATURES) + list(cfg.KD.CONTEXT.STUDENT_FEATURES)
    rec = FeatureRecorder(model, names, "student")
    assert len(rec) == 4
    rec.remove()
