"""Tiny teacher / student semantic segmentors shared by the distillation tests."""
import os

import pytest
import torch

from bcd.config import get_cfg


def tiny_cfg(width: float, classes: int = 4):
    """A dilated ResNet-18 PSPNet at ``width`` with a 16-channel head (CPU, random init)."""
    c = get_cfg()
    c.MODEL.DEVICE = "cpu"
    c.MODEL.BACKBONE.NORM = "BN"
    c.MODEL.RESNETS.DEPTH = 18
    c.MODEL.RESNETS.WIDTH_MULTIPLIER = width
    c.MODEL.RESNETS.OUTPUT_STRIDE = 8
    c.MODEL.SEM_SEG_HEAD.NAME = "PSPHead"
    c.MODEL.SEM_SEG_HEAD.NORM = "BN"
    c.MODEL.SEM_SEG_HEAD.NUM_CLASSES = classes
    c.MODEL.SEM_SEG_HEAD.CHANNELS = 16
    c.INPUT.SIZE_DIVISIBILITY = 8
    c.KD.SHAPE_PROBE_SIZE = [64, 64]
    c.KD.BCD_HFA.DIM = 8
    c.SOLVER.MAX_ITER = 20
    return c


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """``(config path, weights path)`` of a trained-looking tiny teacher (random weights)."""
    from bcd.modeling import build_model

    d = tmp_path_factory.mktemp("teacher")
    cfg = tiny_cfg(0.5)
    cfg_path = os.path.join(d, "teacher.yaml")
    with open(cfg_path, "w") as f:
        f.write(cfg.dump())
    torch.manual_seed(0)
    model = build_model(cfg)
    w_path = os.path.join(d, "model_final.pth")
    torch.save({"model": model.state_dict()}, w_path)
    return cfg_path, w_path


def make_inputs(n=2, size=(48, 40), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        h, w = size[0] - 8 * i, size[1]
        out.append({
            "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
            "sem_seg": torch.randint(0, classes, (h, w), generator=g),
            "height": h, "width": w, "image_id": i,
        })
    out[0]["sem_seg"][:6] = 255
    return out
