"""Tiny semantic-segmentation models saved as config + weights, for the tools' tests."""
from __future__ import annotations

import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, "tools")
if TOOLS not in sys.path:  # the tools import their helper module _tool_common
    sys.path.insert(0, TOOLS)


def tiny_seg_cfg(width: float = 0.25, classes: int = 4, channels: int = 16):
    """A dilated ResNet-18 PSPNet at ``width`` with a small head, on the demo dataset's names."""
    from bcd.config import get_cfg

    c = get_cfg()
    c.merge_from_file(os.path.join(REPO, "configs", "demo", "student_pspnet_r18_w025.yaml"))
    c.MODEL.DEVICE = "cpu"
    c.MODEL.RESNETS.WIDTH_MULTIPLIER = width
    c.MODEL.SEM_SEG_HEAD.NUM_CLASSES = classes
    c.MODEL.SEM_SEG_HEAD.CHANNELS = channels
    c.MODEL.AUX_HEAD.CHANNELS = 8
    c.INPUT.CROP.SIZE = [64, 64]
    return c


def save_run(directory, cfg, seed: int = 0):
    """Write ``config.yaml`` and ``model_final.pth`` (random weights, BN statistics made
    non-trivial) into ``directory``; returns their paths."""
    from bcd.modeling import build_model

    os.makedirs(directory, exist_ok=True)
    cfg_path = os.path.join(directory, "config.yaml")
    with open(cfg_path, "w") as f:
        f.write(cfg.dump())
    torch.manual_seed(seed)
    model = build_model(cfg)
    for m in model.modules():  # eval-mode BN must do something for the comparisons to bite
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    w_path = os.path.join(directory, "model_final.pth")
    torch.save({"model": model.state_dict()}, w_path)
    return cfg_path, w_path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``(config path, weights path)`` of a tiny 4-class PSPNet student."""
    return save_run(str(tmp_path_factory.mktemp("tiny_run")), tiny_seg_cfg())
