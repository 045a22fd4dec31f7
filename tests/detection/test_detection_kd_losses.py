"""PKD, FGD and LD: zero at identical inputs, no teacher gradient, brute-force agreement."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bcd.config import get_cfg
from bcd.distill.losses import KD_LOSS_REGISTRY, FeatureShape, KDContext
from bcd.distill.losses.fgd import fgd_box_masks
from bcd.distill.losses.ld import ld_side_kl, ld_soft_target
from bcd.modeling.meta_arch import build_model
from bcd.structures import ImageBatch, Instances

LEVELS = ["backbone[p3]", "backbone[p4]"]


def _shapes(names, c):
    return {n: FeatureShape(c, 8, 8, (64, 64)) for n in names}


def _batch(boxes):
    insts = []
    for b in boxes:
        inst = Instances((64, 64))
        inst.gt_boxes = torch.tensor(b, dtype=torch.float32).reshape(-1, 4)
        inst.gt_classes = torch.arange(len(b), dtype=torch.int64) % 3
        insts.append(inst)
    return ImageBatch(tensor=torch.zeros(len(boxes), 3, 64, 64), image_sizes=[(64, 64)] * len(boxes),
                      instances=insts)


def _ctx(batch, student=None):
    # What the Distiller hands the losses: the student's published training outputs (LD reads
    # the ATSS assignment there instead of calling the model).
    outputs = {}
    if student is not None:
        with torch.no_grad():
            outputs = student.forward_train(batch)[1]
    return KDContext(student_batch=batch, teacher_batch=batch, student=student, teacher=None,
                     teacher_outputs={}, iteration=0, max_iter=10, student_outputs=outputs)


def _feats(seed, shapes=((2, 6, 8, 8), (2, 6, 4, 4))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def _build(name, cfg_edit=None, c_s=6, c_t=6):
    cfg = get_cfg()
    node = cfg.KD[name]
    node.STUDENT_FEATURES = LEVELS
    node.TEACHER_FEATURES = LEVELS
    if cfg_edit:
        cfg_edit(node)
    return KD_LOSS_REGISTRY.get(name)(cfg, _shapes(LEVELS, c_s), _shapes(LEVELS, c_t))


# --------------------------------------------------------------------------------------- PKD
def test_pkd_zero_identical_and_teacher_gradless():
    loss = _build("PKD")
    fs = _feats(0)
    out = loss(dict(zip(LEVELS, fs)), dict(zip(LEVELS, fs)), _ctx(_batch([[], []])))["loss_kd_pkd"]
    assert out.item() == pytest.approx(0.0, abs=1e-10)
    s = [f.clone().requires_grad_(True) for f in _feats(1)]
    t = [f.clone().requires_grad_(True) for f in _feats(2)]
    out = loss(dict(zip(LEVELS, s)), dict(zip(LEVELS, t)), _ctx(_batch([[], []])))["loss_kd_pkd"]
    out.backward()
    assert all(x.grad is None for x in t) and all(x.grad.abs().sum() > 0 for x in s)


def test_pkd_equals_one_minus_pearson():
    loss = _build("PKD")
    s, t = _feats(3), _feats(4)
    t[0] = 0.5 * s[0] + t[0]  # correlated
    out = loss(dict(zip(LEVELS, s)), dict(zip(LEVELS, t)), _ctx(_batch([[], []])))["loss_kd_pkd"]
    expected = 0.0
    for a, b in zip(s, t):
        a = a.double().numpy().transpose(1, 0, 2, 3).reshape(a.shape[1], -1)
        b = b.double().numpy().transpose(1, 0, 2, 3).reshape(b.shape[1], -1)
        n = a.shape[1]
        r = np.array([np.corrcoef(a[c], b[c])[0, 1] for c in range(a.shape[0])])
        expected += (n - 1) / n * np.mean(1 - r)
    assert out.item() == pytest.approx(expected, rel=1e-4)


def test_pkd_rejects_width_mismatch():
    with pytest.raises(ValueError, match="equal widths"):
        _build("PKD", c_s=4, c_t=6)


# --------------------------------------------------------------------------------------- FGD
BOXES = [[[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]], [[0.0, 0.0, 64.0, 64.0]]]


def _fgd_reference(loss, fs, ft, boxes, padded=(64, 64)):
    """Loop implementation following the reference code, with the same GcBlocks."""
    T = loss.temperature
    total = 0.0
    for lvl, (s, t) in enumerate(zip(fs, ft)):
        s = s.double()
        t = t.double()
        N, C, H, W = s.shape

        def att(x):
            v = x.abs()
            sp = torch.stack([H * W * torch.softmax(v[i].mean(0).flatten() / T, 0).reshape(H, W) for i in range(N)])
            ch = torch.stack([C * torch.softmax(v[i].mean((1, 2)) / T, 0) for i in range(N)])
            return sp, ch

        sa_t, ca_t = att(t)
        sa_s, ca_s = att(s)
        fg = torch.zeros(N, H, W, dtype=torch.float64)
        bg = torch.ones(N, H, W, dtype=torch.float64)
        for i in range(N):
            for b in boxes[i]:
                x0 = math.floor(b[0] / padded[1] * W)
                x1 = math.ceil(b[2] / padded[1] * W)
                y0 = math.floor(b[1] / padded[0] * H)
                y1 = math.ceil(b[3] / padded[0] * H)
                area = 1.0 / ((y1 + 1 - y0) * (x1 + 1 - x0))
                for y in range(y0, min(y1 + 1, H)):
                    for x in range(x0, min(x1 + 1, W)):
                        fg[i, y, x] = max(fg[i, y, x].item(), area)
            bg[i] = (fg[i] == 0).double()
            if bg[i].sum() > 0:
                bg[i] /= bg[i].sum()
        fg_l = bg_l = 0.0
        for i in range(N):
            for c in range(C):
                w = torch.sqrt(sa_t[i]) * torch.sqrt(ca_t[i, c])
                d2 = ((s[i, c] - t[i, c]) * w) ** 2
                fg_l += (d2 * fg[i]).sum().item()
                bg_l += (d2 * bg[i]).sum().item()
        at_l = ((ca_s - ca_t).abs().sum() + (sa_s - sa_t).abs().sum()).item()
        gs, gt = loss.gc_student[lvl].double(), loss.gc_teacher[lvl].double()
        with torch.no_grad():
            gl_l = ((gs(s) - gt(t)) ** 2).sum().item()
        loss.gc_student[lvl].float()
        loss.gc_teacher[lvl].float()
        total += (loss.alpha * fg_l + loss.beta * bg_l + loss.gamma * at_l + loss.lam * gl_l) / N
    return total


def test_fgd_zero_identical_and_teacher_gradless():
    loss = _build("FGD")
    fs = _feats(5)
    batch = _batch(BOXES)
    out = loss(dict(zip(LEVELS, fs)), dict(zip(LEVELS, fs)), _ctx(batch))["loss_kd_fgd"]
    assert out.item() == pytest.approx(0.0, abs=1e-12)
    s = [f.clone().requires_grad_(True) for f in _feats(6)]
    t = [f.clone().requires_grad_(True) for f in _feats(7)]
    out = loss(dict(zip(LEVELS, s)), dict(zip(LEVELS, t)), _ctx(batch))["loss_kd_fgd"]
    out.backward()
    assert all(x.grad is None for x in t) and all(x.grad.abs().sum() > 0 for x in s)
    # the teacher-side GcBlock is a KD module trained by the global loss
    assert loss.gc_teacher[0].channel_add[-1].weight.grad is not None


def test_fgd_matches_loop_reference():
    torch.manual_seed(0)
    loss = _build("FGD", lambda n: (setattr(n, "ALPHA_FG", 1.0), setattr(n, "BETA_BG", 0.5),
                                    setattr(n, "GAMMA_AT", 0.25), setattr(n, "LAMBDA_GL", 0.125)))
    for gc in list(loss.gc_student) + list(loss.gc_teacher):  # non-trivial global blocks
        torch.nn.init.normal_(gc.channel_add[-1].weight, std=0.3)
    s, t = _feats(8), _feats(9)
    out = loss(dict(zip(LEVELS, s)), dict(zip(LEVELS, t)), _ctx(_batch(BOXES)))["loss_kd_fgd"]
    assert out.item() == pytest.approx(_fgd_reference(loss, s, t, BOXES), rel=1e-5)


def test_fgd_masks_hand_values():
    fg, bg = fgd_box_masks([torch.tensor([[8.0, 8.0, 16.0, 24.0]])], (8, 8), (64, 64))
    # stride 8: cells x 1..2, y 1..3 inclusive -> 2·3 = 6 cells of weight 1/6
    expected = torch.zeros(8, 8)
    expected[1:4, 1:3] = 1 / 6
    torch.testing.assert_close(fg[0], expected)
    assert bg[0].sum().item() == pytest.approx(1.0) and bg[0][fg[0] > 0].sum() == 0


def test_fgd_align_conv_when_widths_differ():
    loss = _build("FGD", c_s=4, c_t=6)
    s = [f[:, :4] for f in _feats(10)]
    out = loss(dict(zip(LEVELS, s)), dict(zip(LEVELS, _feats(11))), _ctx(_batch(BOXES)))["loss_kd_fgd"]
    assert torch.isfinite(out) and out > 0


# --------------------------------------------------------------------------------------- LD
@pytest.fixture
def gfl_pair(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("GFL")).train()
    batch = _batch([[[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]], [[10.0, 10.0, 50.0, 44.0]]])
    batch.tensor = torch.randn(2, 3, 64, 64)
    feats = model.backbone(batch.tensor)
    cls, dist = model.head([feats[f] for f in model.in_features])
    return model, batch, cls, dist


def _ld(model, batch, s_out, t_out, T=10.0):
    cfg = get_cfg()
    cfg.KD.LD.TEMPERATURE = T
    loss = KD_LOSS_REGISTRY.get("LD")(cfg, {"head": FeatureShape(0)}, {"head": FeatureShape(0)})
    return loss({"head": s_out}, {"head": t_out}, _ctx(batch, model))["loss_kd_ld"]


def test_ld_zero_identical_and_teacher_gradless(gfl_pair):
    model, batch, cls, dist = gfl_pair
    out = _ld(model, batch, (cls, dist), ([c.detach() for c in cls], [d.detach() for d in dist]))
    assert out.item() == pytest.approx(0.0, abs=1e-7)
    t_dist = [(d.detach() + torch.randn_like(d)).requires_grad_(True) for d in dist]
    out = _ld(model, batch, (cls, dist), ([c.detach() for c in cls], t_dist))
    assert out > 0
    out.backward()
    assert all(t.grad is None for t in t_dist)
    assert model.head.gfl_reg.weight.grad.abs().sum() > 0


def test_ld_brute_force_and_exact_target(gfl_pair):
    model, batch, cls, dist = gfl_pair
    T = 10.0
    torch.manual_seed(1)
    t_dist = [d.detach() + 3 * torch.randn_like(d) for d in dist]
    s_dist = [d.detach().clone().requires_grad_(True) for d in dist]
    out = _ld(model, batch, (cls, s_dist), (cls, t_dist), T)
    # brute force over the ATSS positives, side by side
    anchors = model.anchors(cls)
    labels, _, _ = model.assign(anchors, batch.instances)
    n1 = model.reg_max + 1
    expected, grads = 0.0, {}
    offsets = np.cumsum([0] + [a.shape[0] for a in anchors])
    for b in range(2):
        for m in torch.nonzero(labels[b] < 3).flatten().tolist():
            lvl = int(np.searchsorted(offsets, m, side="right") - 1)
            idx = m - offsets[lvl]
            H, W = cls[lvl].shape[-2:]
            y, x = divmod(idx, W)
            w = torch.sigmoid(cls[lvl][b, :, y, x]).max().item()
            for side in range(4):
                s_log = s_dist[lvl][b, side * n1:(side + 1) * n1, y, x].detach().double()
                t_log = t_dist[lvl][b, side * n1:(side + 1) * n1, y, x].double()
                pt = torch.softmax(t_log / T, 0)
                ps = torch.softmax(s_log / T, 0)
                expected += w * T * T * (pt * (pt.log() - ps.log())).sum().item() / n1 / 4
                grads[(lvl, b, side, y, x)] = w * T * (ps - pt) / n1 / 4
    assert len(grads) > 0
    assert out.item() == pytest.approx(expected, rel=1e-5)
    out.backward()
    for (lvl, b, side, y, x), g in grads.items():
        got = s_dist[lvl].grad[b, side * n1:(side + 1) * n1, y, x].double()
        torch.testing.assert_close(got, g, rtol=1e-4, atol=1e-9)
    # the soft target is exactly softmax(t / T); the KL is zero against itself
    t = torch.randn(5, 17)
    torch.testing.assert_close(ld_soft_target(t, 10.0), torch.softmax(t / 10.0, -1))
    torch.testing.assert_close(ld_side_kl(t, t, 10.0), torch.zeros(5), atol=1e-5, rtol=0)  # T² · fp32 rounding
    # a one-bin-peaked teacher keeps zero-probability bins out of the KL (no NaN)
    peaked = torch.full((1, 17), -1e9)
    peaked[0, 3] = 0.0
    val = ld_side_kl(torch.zeros(1, 17), peaked, 1.0)
    assert val.item() == pytest.approx(math.log(17) / 17, rel=1e-5)


def test_ld_needs_gfl_student(gfl_pair, tiny_cfg):
    _, batch, cls, dist = gfl_pair
    retina = build_model(tiny_cfg("RetinaNet"))  # no ATSS assign()
    with pytest.raises(TypeError, match="GFL student"):
        _ld(retina, batch, (cls, dist), (cls, dist))


# --------------------------------------------------------------------------- BCD per FPN level
def test_bcd_per_fpn_level_is_mean_of_levels():
    from torch import nn

    from bcd.distill.losses.base import FeatureShape as FS

    names = ["backbone[p3]", "backbone[p4]", "backbone[p5]"]
    shapes = {n: FS(6, 128 // s, 128 // s, (128, 128)) for n, s in zip(names, (8, 16, 32))}
    cfg = get_cfg()
    for key in ("BOUNDARY", "CONTEXT"):
        cfg.KD[key].STUDENT_FEATURES = names
        cfg.KD[key].TEACHER_FEATURES = names
    cfg.KD.BCD_HFA.DIM = 8
    shared = nn.ModuleDict()
    torch.manual_seed(0)
    bd = KD_LOSS_REGISTRY.get("BoundaryDistillationFPN")(cfg, shapes, shapes, shared)
    cd = KD_LOSS_REGISTRY.get("ContextDistillationFPN")(cfg, shapes, shapes, shared)
    assert bd.strides == [8, 16, 32] and len(shared) == 1  # one student HFA (φ) for all levels
    g = torch.Generator().manual_seed(0)
    s = {n: torch.randn(2, 6, 128 // st, 128 // st, generator=g).requires_grad_(True)
         for n, st in zip(names, (8, 16, 32))}
    t = {n: torch.randn(2, 6, 128 // st, 128 // st, generator=g).requires_grad_(True)
         for n, st in zip(names, (8, 16, 32))}
    batch = _batch([[[10.0, 10.0, 60.0, 90.0]], [[30.0, 20.0, 120.0, 70.0]]])
    batch.tensor = torch.zeros(2, 3, 128, 128)
    batch.image_sizes = [(128, 128)] * 2
    for loss in (bd, cd):
        loss.eval()  # fixed BN statistics: the per-level reference below sees the same modules
        out = loss(s, t, _ctx(batch))
        ref = {}
        for n, st in zip(names, (8, 16, 32)):
            loss.inner.stride = st
            o = loss.inner({names[0]: s[n]}, {names[0]: t[n]}, _ctx(batch))
            for k, v in o.items():
                ref[k] = ref.get(k, 0.0) + v / 3
        assert set(out) == set(ref)
        for k in out:
            torch.testing.assert_close(out[k], ref[k])
        out[loss.loss_key].backward()
    assert all(x.grad is None for x in t.values())
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s.values())
