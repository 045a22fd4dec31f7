"""Issue 8 calibration switches and teacher-side fixes of BCD, against independent computations:
reductions, the cosine relation, warm-up × decay, the fitted-then-frozen teacher boundary head,
invalid cells of the fixed projection, the temperature feed of literal_joint, BatchNorm
statistics under shared_stopgrad, and the FPN variant's strides and teacher side."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcd.config import get_cfg
from bcd.distill.losses import FeatureShape, KDContext
from bcd.distill.losses.bcd_boundary import BoundaryDistillation, neighbour_valid, pairwise_boundary_kl
from bcd.distill.losses.bcd_context import ContextDistillation, relation_kl
from bcd.distill.losses.bcd_fpn import BoundaryDistillationFPN, ContextDistillationFPN
from bcd.distill.losses.bcd_hfa import FixedProjectionHFA
from bcd.distill.schedule import WeightSchedule, build_weight_schedule
from bcd.structures.image_batch import ImageBatch

LEVELS = ["backbone.res2", "backbone.res3", "backbone.res4", "backbone.res5"]
CH = {"backbone.res2": 8, "backbone.res3": 16, "backbone.res4": 16, "backbone.res5": 16}
STRIDE = {"backbone.res2": 4, "backbone.res3": 8, "backbone.res4": 8, "backbone.res5": 8}


def _cfg(**boundary):
    c = get_cfg()
    c.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    c.KD.BCD_HFA.DIM = 4
    c.KD.BOUNDARY.RADIUS = 3
    for k, v in boundary.items():
        setattr(c.KD.BOUNDARY, k, v)
    return c


def _shapes(names, size=64):
    return {n: FeatureShape(CH[n], size // STRIDE[n], size // STRIDE[n], (size, size)) for n in names}


def _feats(seed, requires_grad=False, size=64):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(2, CH[n], size // STRIDE[n], size // STRIDE[n], generator=g).requires_grad_(requires_grad)
            for n in LEVELS}


def _ctx(iteration=0, size=64):
    B = 2
    g = torch.Generator().manual_seed(9)
    sem = torch.randint(0, 5, (B, size, size), generator=g)
    sem[0, :8, :8] = 255
    batch = ImageBatch(torch.zeros(B, 3, size, size), [(size, size), (size, size)], sem_seg=sem)
    logits = torch.randn(B, 5, size // 8, size // 8, generator=g)
    return KDContext(batch, batch, nn.Identity(), nn.Identity(), {"logits": logits}, iteration, 100)


# ------------------------------------------------------------------ reductions
def test_boundary_element_mean_is_row_mean_over_row_length():
    g = torch.Generator().manual_seed(0)
    r = 3
    m_s, m_t = torch.randn(2, 24, 6, 7, generator=g), torch.randn(2, 24, 6, 7, generator=g)
    valid = torch.ones(2, 6, 7, dtype=torch.bool)
    valid[0, :2, :3] = False
    row = pairwise_boundary_kl(m_s, m_t, valid, r, 1.0, reduction="row_mean")
    elem = pairwise_boundary_kl(m_s, m_t, valid, r, 1.0, reduction="element_mean")
    col = neighbour_valid(valid, r)
    rows = valid & col.any(1)
    pairs = (col & rows[:, None]).sum()
    assert float(elem) == pytest.approx(float(row) * float(rows.sum()) / float(pairs), rel=1e-6)
    with pytest.raises(ValueError, match="REDUCTION"):
        pairwise_boundary_kl(m_s, m_t, valid, r, 1.0, reduction="sum")


def _relation_reference(x_s, x_t, valid, scale):
    """Loop over images and rows with F.kl_div (independent of the chunked code)."""
    tot, rows, elems = 0.0, 0, 0
    for b in range(x_s.shape[0]):
        v = valid[b]
        xs, xt = x_s[b][v].double(), x_t[b][v].double()
        ls = F.log_softmax(xs @ xs.T * scale, dim=1)
        lt = F.log_softmax(xt @ xt.T * scale, dim=1)
        tot += float(F.kl_div(ls, lt, log_target=True, reduction="sum"))
        rows += int(v.sum())
        elems += int(v.sum()) ** 2
    return tot, rows, elems


@pytest.mark.parametrize("relation", ["dot", "cosine"])
def test_relation_reductions_and_cosine_match_reference(relation):
    g = torch.Generator().manual_seed(1)
    x_s, x_t = torch.randn(2, 30, 6, generator=g), torch.randn(2, 30, 6, generator=g)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, 20:] = False
    if relation == "cosine":
        scale = 1.0 / 0.1
        ref_s, ref_t = F.normalize(x_s, dim=-1), F.normalize(x_t, dim=-1)
    else:
        scale = 1.0 / math.sqrt(6)
        ref_s, ref_t = x_s, x_t
    tot, rows, elems = _relation_reference(ref_s, ref_t, valid, scale)
    for reduction, n in (("row_mean", rows), ("element_mean", elems)):
        got = relation_kl(x_s, x_t, valid, 1.0, chunk=7, reduction=reduction, relation=relation, cos_tau=0.1)
        assert float(got) == pytest.approx(tot / n, rel=1e-5)


# ------------------------------------------------------------------ schedule
def test_warmup_times_linear_decay_by_hand():
    s = WeightSchedule("linear_decay", 10.0, max_iter=100, warmup_iters=10)
    assert s(0) == pytest.approx(10.0 * 1.0 * 0.1)
    assert s(4) == pytest.approx(10.0 * (1 - 4 / 100) * 5 / 10)
    assert s(9) == pytest.approx(10.0 * (1 - 9 / 100))
    assert s(50) == pytest.approx(5.0)
    cfg = get_cfg()
    cfg.KD.SCHEDULE.WARMUP_ITERS = 10
    b = build_weight_schedule(cfg.KD.BOUNDARY, cfg.KD.SCHEDULE, 100)  # BOUNDARY: linear_decay
    assert b(4) == pytest.approx(cfg.KD.BOUNDARY.WEIGHT * (1 - 4 / 100) * 5 / 10)


# ------------------------------------------------------------------ teacher boundary head
def _boundary(fit_iters):
    cfg = _cfg(TEACHER_HEAD_FIT_ITERS=fit_iters)
    return BoundaryDistillation(cfg, _shapes(LEVELS), _shapes(LEVELS)).train()


def test_teacher_head_is_fitted_then_frozen():
    loss = _boundary(fit_iters=3)
    head = list(loss.hfa_t.parameters()) + list(loss.conv_t.parameters())
    # fitting phase: the head learns the pseudo-affinity loss, the student gets no L_bd
    s = _feats(0, requires_grad=True)
    out = loss(s, _feats(1), _ctx(iteration=2))
    assert float(out["loss_kd_boundary"].detach()) == 0.0
    sum(out.values()).backward()
    assert all(p.grad is not None for p in head)
    assert any(float(p.grad.abs().sum()) > 0 for p in head)
    assert all(float(v.grad.abs().sum()) == 0 for v in s.values())
    # from FIT_ITERS on: frozen; L_bd reaches the student, nothing reaches the head
    bn = [m for m in loss.hfa_t.modules() if isinstance(m, nn.BatchNorm2d)][0]
    stats = bn.running_mean.clone()
    s = _feats(0, requires_grad=True)
    out = loss(s, _feats(1), _ctx(iteration=3))
    assert float(out["loss_kd_boundary"].detach()) > 0
    (out["loss_kd_boundary"] + out["loss_kd_boundary_teacher_head"]).backward()
    assert all(p.grad is None and not p.requires_grad for p in head)
    assert any(float(v.grad.abs().sum()) > 0 for v in s.values())
    assert torch.equal(bn.running_mean, stats)  # eval mode: fitted statistics kept
    loss.train()
    assert not loss.hfa_t.training and bool(loss.teacher_head_frozen)
    # an optimizer step leaves the head as it is
    before = [p.detach().clone() for p in head]
    opt = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad] + head, lr=0.1)
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, head))


def test_resumed_past_the_fit_phase_freezes_from_the_iteration():
    loss = _boundary(fit_iters=3)
    fresh = _boundary(fit_iters=3)
    fresh.load_state_dict(loss.state_dict())
    out = fresh(_feats(0, requires_grad=True), _feats(1), _ctx(iteration=10))
    assert not fresh.conv_t.weight.requires_grad
    assert float(out["loss_kd_boundary_teacher_head"]) == 0.0


def test_fit_iters_zero_trains_the_head_throughout():
    loss = _boundary(fit_iters=0)
    out = loss(_feats(0, requires_grad=True), _feats(1), _ctx(iteration=10_000))
    assert float(out["loss_kd_boundary"].detach()) > 0
    out["loss_kd_boundary_teacher_head"].backward()
    assert loss.conv_t.weight.grad is not None


# ------------------------------------------------------------------ fixed projection, invalid cells
def test_invalid_cells_never_change_a_valid_token():
    hfa = FixedProjectionHFA([CH[n] for n in LEVELS], dim=4, seed=0)
    feats = [v.clone() for v in _feats(3).values()]
    feats[1][:, 2] = 0.7  # a constant (dead) channel over the batch: sd 0, set to 0, not / 1e-6
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[0, :3, :5] = False
    valid[1, 6:, :] = False
    base = hfa(feats, (8, 8), valid)
    assert torch.isfinite(base).all() and float(base.abs().max()) < 100
    g = torch.Generator().manual_seed(5)
    wild = []
    for f in feats:
        m = F.interpolate(valid[:, None].float(), size=f.shape[-2:], mode="nearest") > 0
        noise = 1e6 * torch.randn(f.shape, generator=g)
        wild.append(torch.where(m, f, noise))  # only invalid cells change
    out = hfa(wild, (8, 8), valid)
    assert torch.allclose(out.permute(0, 2, 3, 1)[valid], base.permute(0, 2, 3, 1)[valid], atol=1e-5)


# ------------------------------------------------------------------ literal_joint, shared_stopgrad
def test_literal_joint_context_feeds_the_temperature_controller():
    cfg = _cfg()
    cfg.KD.CONTEXT.TEACHER_HEAD = "literal_joint"
    cfg.KD.CONTEXT.TEMPERATURE.TRIGGER = "range"
    cfg.KD.CONTEXT.TEMPERATURE.THRESHOLD = 1e-3
    loss = ContextDistillation(cfg, _shapes(LEVELS), _shapes(LEVELS)).train()
    loss(_feats(0, requires_grad=True), _feats(1), _ctx())
    assert loss.temperature.step() is True
    assert loss.temperature.value == pytest.approx(1.05)


@pytest.mark.parametrize("kind", ["boundary", "context"])
def test_shared_stopgrad_keeps_the_student_bn_statistics(kind):
    cfg = _cfg()
    cfg.KD.BOUNDARY.TEACHER_HEAD = "shared_stopgrad"
    cfg.KD.CONTEXT.TEACHER_HEAD = "shared_stopgrad"
    cls = BoundaryDistillation if kind == "boundary" else ContextDistillation
    loss = cls(cfg, _shapes(LEVELS), _shapes(LEVELS)).train()
    s = _feats(0)
    ref = cls(cfg, _shapes(LEVELS), _shapes(LEVELS)).train()
    ref.load_state_dict(loss.state_dict())
    loss(s, _feats(1), _ctx())
    ref.hfa_s(list(s.values()), (8, 8))  # the student pass alone
    for (n, a), (_, b) in zip(loss.hfa_s.named_buffers(), ref.hfa_s.named_buffers()):
        assert torch.equal(a, b), n


# ------------------------------------------------------------------ FPN variant
def test_fpn_variant_passes_strides_and_uses_the_teacher_features_as_they_are():
    names = ["backbone[p3]", "backbone[p4]"]
    shapes = {"backbone[p3]": FeatureShape(16, 8, 8, (64, 64)), "backbone[p4]": FeatureShape(16, 4, 4, (64, 64))}
    cfg = _cfg()
    for node in (cfg.KD.BOUNDARY, cfg.KD.CONTEXT):
        node.STUDENT_FEATURES = names
        node.TEACHER_FEATURES = names
    g = torch.Generator().manual_seed(0)
    feats = {"backbone[p3]": torch.randn(2, 16, 8, 8, generator=g), "backbone[p4]": torch.randn(2, 16, 4, 4, generator=g)}
    for cls in (BoundaryDistillationFPN, ContextDistillationFPN):
        loss = cls(cfg, shapes, shapes).train()
        assert loss.strides == [8, 16]
        before = loss.inner.stride
        out = loss(feats, feats, _ctx(iteration=1000))
        assert loss.inner.stride == before  # nothing overwritten
        assert all(torch.isfinite(v) for v in out.values())
    ctx_loss = ContextDistillationFPN(cfg, shapes, shapes)
    assert ctx_loss.inner.head == "identity" and sum(p.numel() for p in ctx_loss.inner.hfa_t.parameters()) == 0
    bd = BoundaryDistillationFPN(cfg, shapes, shapes)
    assert bd.inner.conv_t.in_channels == 16  # Conv_T reads the FPN feature itself
