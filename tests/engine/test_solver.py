"""Optimizer parameter groups and LR schedules against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bcd.solver import build_gradient_clipper, build_lr_scheduler, build_optimizer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)
        self.head_norm = nn.GroupNorm(1, 2)
        self.frozen = nn.Linear(2, 2)
        for p in self.frozen.parameters():
            p.requires_grad_(False)


def _group_of(opt, param):
    groups = [g for g in opt.param_groups if any(p is param for p in g["params"])]
    assert len(groups) == 1
    return groups[0]


def test_param_groups_weight_decay_and_lr_multipliers(cfg):
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 1e-5
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    cfg.SOLVER.LR_MULTIPLIERS = [["head", 10.0], ["head_norm", 3.0]]
    net = Net()
    net.lr_multipliers = {"backbone.1": 0.5}
    opt = build_optimizer(cfg, net)

    g = _group_of(opt, net.backbone[0].weight)
    assert (g["lr"], g["weight_decay"]) == (pytest.approx(0.1), 1e-4)
    g = _group_of(opt, net.backbone[1].weight)  # BN: norm decay, model multiplier 0.5
    assert (g["lr"], g["weight_decay"]) == (pytest.approx(0.05), 0.0)
    g = _group_of(opt, net.backbone[1].bias)  # norm decay wins over bias decay; bias LR factor
    assert (g["lr"], g["weight_decay"]) == (pytest.approx(0.1), 0.0)
    g = _group_of(opt, net.head.weight)  # "head" prefix matches "head." only, not "head_norm"
    assert (g["lr"], g["weight_decay"]) == (pytest.approx(1.0), 1e-4)
    g = _group_of(opt, net.head.bias)
    assert (g["lr"], g["weight_decay"]) == (pytest.approx(2.0), 1e-5)
    g = _group_of(opt, net.head_norm.weight)
    assert (g["lr"], g["weight_decay"]) == (pytest.approx(0.3), 0.0)
    all_params = [p for g in opt.param_groups for p in g["params"]]
    assert not any(p is net.frozen.weight for p in all_params)  # frozen params are left out
    assert len(all_params) == 7  # conv, BN (2), head (2), GN (2)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_unknown_prefix_and_optimizer_are_errors(cfg):
    cfg.SOLVER.LR_MULTIPLIERS = [["heads", 10.0]]
    with pytest.raises(ValueError, match="heads"):
        build_optimizer(cfg, Net())
    cfg.SOLVER.LR_MULTIPLIERS = []
    net = Net()  # a model's own rule may name modules without parameters (no KD module yet)
    net.lr_multipliers = {"kd_modules": 10.0}
    assert all(g["lr"] == cfg.SOLVER.BASE_LR for g in build_optimizer(cfg, net).param_groups)
    cfg.SOLVER.OPTIMIZER = "Adam2"
    with pytest.raises(ValueError, match="Adam2"):
        build_optimizer(cfg, Net())
    cfg.SOLVER.OPTIMIZER = "AdamW"
    assert isinstance(build_optimizer(cfg, Net()), torch.optim.AdamW)


def _lrs(cfg, n):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_with_linear_warmup(cfg):
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 0.01, 100
    cfg.SOLVER.LR_SCHEDULER_NAME, cfg.SOLVER.POLY_POWER = "WarmupPolyLR", 0.9
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR = 10, 0.1
    lrs = _lrs(cfg, 100)
    for it in range(10, 100):
        assert lrs[it] == pytest.approx(0.01 * (1 - it / 100) ** 0.9)
    # Warm-up: linear from WARMUP_FACTOR * BASE_LR to where the poly schedule is at its end.
    start, end = 0.1 * 0.01, 0.01 * (1 - 10 / 100) ** 0.9
    for it in range(10):
        assert lrs[it] == pytest.approx(start + (end - start) * it / 10)


def test_multistep_and_cosine(cfg):
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 1.0, 30
    cfg.SOLVER.LR_SCHEDULER_NAME, cfg.SOLVER.STEPS, cfg.SOLVER.GAMMA = "WarmupMultiStepLR", (10, 20), 0.1
    lrs = _lrs(cfg, 30)
    assert lrs == pytest.approx([1.0] * 10 + [0.1] * 10 + [0.01] * 10)
    cfg.SOLVER.LR_SCHEDULER_NAME, cfg.SOLVER.COSINE_END_LR_FACTOR = "WarmupCosineLR", 0.0
    lrs = _lrs(cfg, 30)
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 30)) for i in range(30)])
    cfg.SOLVER.LR_SCHEDULER_NAME = "Step"
    with pytest.raises(ValueError, match="Step"):
        _lrs(cfg, 1)


def test_scheduler_state_round_trip(cfg):
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 50, 5
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(17):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state == {"base_lrs": [0.01], "last_epoch": 17}
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    sched2 = build_lr_scheduler(cfg, opt2)
    sched2.load_state_dict(state)
    opt.step(); opt2.step()
    sched.step(); sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_gradient_clipping(cfg):
    assert build_gradient_clipper(cfg) is None
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = "norm", 1.0
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    build_gradient_clipper(cfg)([p])
    assert p.grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = "value", 0.7
    p.grad = torch.tensor([3.0, -0.5])
    build_gradient_clipper(cfg)([p])
    assert p.grad.tolist() == pytest.approx([0.7, -0.5])
