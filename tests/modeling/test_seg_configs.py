"""The shipped semantic-segmentation configs load, build, and name their pretrained files."""
from __future__ import annotations

import os

import pytest
import torch

import bcd.data.datasets  # noqa: F401  (registers the builtin datasets)
from bcd.config import get_cfg
from bcd.data.catalog import DatasetCatalog
from bcd.modeling import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = {"voc": 21, "cityscapes": 19, "ade20k": 150}
MODELS = [
    "pspnet_r101", "pspnet_r18", "pspnet_r18_0.5", "deeplabv3plus_r101", "deeplabv3plus_r18",
    "deeplabv3plus_mobilenetv2", "pspnet_efficientnet_b1",
    "semantic_fpn_r101", "semantic_fpn_r50", "semantic_fpn_r18",
]
# the files of this part; the distillation configs beside them are tested with the distillers
CONFIGS = [os.path.join(ROOT, "configs", d, f"{m}.yaml") for d in CLASSES for m in MODELS]


def _load(path: str):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg


def test_every_model_for_every_dataset_exists():
    missing = [f for f in CONFIGS if not os.path.isfile(f)]
    assert not missing
    for d in CLASSES:
        assert os.path.isfile(os.path.join(ROOT, "configs", d, f"Base-{'VOC' if d == 'voc' else 'Cityscapes' if d == 'cityscapes' else 'ADE20K'}.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds(path):
    cfg = _load(path)
    dataset = os.path.basename(os.path.dirname(path))
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == CLASSES[dataset]
    assert cfg.SOLVER.MAX_ITER == (80000 if dataset == "ade20k" else 40000)
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert name in DatasetCatalog, f"{path}: dataset '{name}' is not registered"
    weights = cfg.MODEL.BACKBONE.WEIGHTS
    if "_0.5" in path:
        assert weights == ""  # no ImageNet file exists at width 0.5
    else:
        # a torchvision name whose file (torchvision's enum URL) is known without the network
        from bcd.modeling.backbone.weights import weights_url

        assert weights.startswith("torchvision://") and weights_url(weights).endswith(".pth")
    # build without the (absent) pretrained file, on the meta device: structure only
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    names = dict(model.named_modules())
    for n in ["backbone.res2", "backbone.res5", "sem_seg_head.feature", "sem_seg_head.predictor"]:
        assert n in names
    assert names["sem_seg_head.predictor"].out_channels == CLASSES[dataset]
    assert ("aux_head" in names) == cfg.MODEL.AUX_HEAD.ENABLED


def test_missing_pretrained_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch.hub cache
    monkeypatch.setenv("BCD_OFFLINE", "1")  # and no download
    cfg = _load(os.path.join(ROOT, "configs", "voc", "pspnet_r18.yaml"))
    want = os.path.join(str(tmp_path / "torch"), "hub", "checkpoints", "resnet18-f37072fd.pth")
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth") as e:
        build_model(cfg)
    assert want in str(e.value) and "https://download.pytorch.org/models/" in str(e.value)


@pytest.mark.parametrize("name", ["teacher_pspnet_r18.yaml", "student_pspnet_r18_w025.yaml"])
def test_demo_configs_build_and_train_one_step(name, seg_inputs):
    cfg = _load(os.path.join(ROOT, "configs", "demo", name))
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 6 and cfg.MODEL.BACKBONE.WEIGHTS == ""
    assert cfg.DATASETS.TRAIN == ("demo_sem_seg_train",)
    model = build_model(cfg).train()
    losses = model(seg_inputs(n=2, h=64, w=64, num_classes=6))
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    sum(losses.values()).backward()


def test_demo_student_is_smaller_than_teacher():
    def n_params(name):
        cfg = _load(os.path.join(ROOT, "configs", "demo", name))
        return sum(p.numel() for p in build_model(cfg).parameters())

    assert n_params("student_pspnet_r18_w025.yaml") * 3 < n_params("teacher_pspnet_r18.yaml")
