"""A teacher built from KD.TEACHER.WEIGHTS never asks for its config's ImageNet file: every
teacher weight comes from that checkpoint (no cache, no network here)."""
import os

import pytest
import torch

from bcd.distill import build_model  # plain models and the Distiller
from bcd.modeling.backbone import weights as W

from .conftest import tiny_cfg


def test_teacher_config_naming_imagenet_weights_builds_offline(teacher_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty torch.hub cache
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    cfg_path, w_path = teacher_files
    tcfg = tiny_cfg(0.5)
    tcfg.merge_from_file(cfg_path)
    tcfg.MODEL.BACKBONE.WEIGHTS = "torchvision://resnet18"
    named = str(tmp_path / "teacher_named.yaml")
    with open(named, "w") as f:
        f.write(tcfg.dump())
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd"):
        build_model(tcfg)  # built on its own, it does ask for the file

    c = tiny_cfg(0.25)
    c.KD.LOSSES = ["PixelKD"]
    c.KD.TEACHER.CONFIG_FILE, c.KD.TEACHER.WEIGHTS = named, w_path
    distiller = build_model(c)
    ref = torch.load(w_path, weights_only=True)["model"]
    torch.testing.assert_close(distiller.teacher.state_dict()["backbone.res3.0.conv1.weight"],
                               ref["backbone.res3.0.conv1.weight"])
