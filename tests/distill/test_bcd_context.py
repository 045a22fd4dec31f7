"""BCD context distillation: relation KL vs numpy, chunking, token cap, masks, gradients."""
import numpy as np
import pytest
import torch

from bcd.distill.losses.bcd_context import cap_tokens, relation_kl
from bcd.distill.losses.bcd_hfa import HFA, FixedProjectionHFA, grid_size
from bcd.distill.schedule import TemperatureController


def _np_relation_kl(xs, xt, valid, tau):
    B, N, C = xs.shape
    vals = []
    for b in range(B):
        cols = valid[b]
        for i in range(N):
            if not valid[b, i]:
                continue
            a_s = xs[b, i] @ xs[b, cols].T / np.sqrt(C) / tau
            a_t = xt[b, i] @ xt[b, cols].T / np.sqrt(C) / tau
            ps = np.exp(a_s - a_s.max()); ps /= ps.sum()
            pt = np.exp(a_t - a_t.max()); pt /= pt.sum()
            vals.append(np.sum(pt * (np.log(pt) - np.log(ps))))
    return float(np.mean(vals))


def _data(seed=0, B=2, N=40, C=8):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    xt = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    valid = torch.rand(B, N, generator=g) > 0.3
    return xs, xt, valid


def test_relation_kl_matches_numpy():
    xs, xt, valid = _data()
    got = relation_kl(xs, xt, valid, tau=1.5)
    ref = _np_relation_kl(xs.numpy(), xt.numpy(), valid.numpy(), 1.5)
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_identical_inputs_give_zero():
    xs, _, valid = _data()
    assert float(relation_kl(xs, xs.clone(), valid, 1.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("chunk,ckpt", [(7, False), (7, True), (16, True)])
def test_chunked_equals_unchunked_value_and_gradient(chunk, ckpt):
    xs, xt, valid = _data(1)
    a = xs.clone().float().requires_grad_(True)
    b = xs.clone().float().requires_grad_(True)
    full = relation_kl(a, xt.float(), valid, 1.0, chunk=0)
    part = relation_kl(b, xt.float(), valid, 1.0, chunk=chunk, use_checkpoint=ckpt)
    full.backward()
    part.backward()
    assert float(part) == pytest.approx(float(full), rel=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_masked_tokens_carry_no_weight_and_padding_invariance():
    xs, xt, valid = _data(2)
    base = relation_kl(xs, xt, valid, 1.0)
    xs2, xt2 = xs.clone(), xt.clone()
    xs2[~valid] = 1e3  # garbage at masked tokens
    xt2[~valid] = -1e3
    assert float(relation_kl(xs2, xt2, valid, 1.0)) == pytest.approx(float(base), rel=1e-6)
    # extra padding tokens appended: same value
    pad = torch.randn(2, 10, xs.shape[2], dtype=torch.float64)
    v = torch.cat([valid, torch.zeros(2, 10, dtype=torch.bool)], 1)
    got = relation_kl(torch.cat([xs, pad], 1), torch.cat([xt, pad * 3], 1), v, 1.0)
    assert float(got) == pytest.approx(float(base), rel=1e-6)


def test_gradient_reaches_student_not_teacher():
    xs, xt, valid = _data(3)
    s = xs.float().requires_grad_(True)
    t = xt.float().requires_grad_(True)
    relation_kl(s, t, valid, 1.0, chunk=5, use_checkpoint=True).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_temperature_observer_sees_teacher_rows():
    xs, xt, valid = _data(4)
    ctrl = TemperatureController(threshold=0.0)  # any mean max-prob > 0 fires
    relation_kl(xs, xt, valid, 1.0, chunk=9, observer=ctrl)
    assert ctrl._stat_count == float(valid.sum())
    assert ctrl.step() and ctrl.value == pytest.approx(1.05)


def test_token_cap_pools_to_the_cap():
    x = torch.randn(1, 4, 70, 70)
    valid = torch.ones(1, 70, 70, dtype=torch.bool)
    valid[:, 60:] = False
    xp, vp = cap_tokens(x, valid, 4096)  # 4900 > 4096 -> stride 2 -> 35×35
    assert xp.shape[-2:] == (35, 35) and vp.shape == (1, 35, 35)
    assert vp[0, :30].all() and not vp[0, 30:].any()
    assert torch.allclose(xp[0, :, 0, 0], x[0, :, :2, :2].mean(dim=(1, 2)))
    same, v2 = cap_tokens(x[..., :64, :64], valid[..., :64, :64], 4096)
    assert same.shape[-2:] == (64, 64)


def test_hfa_shapes_and_fixed_projection_is_orthogonal():
    feats = [torch.randn(2, c, s, s) for c, s in ((8, 16), (16, 8), (32, 8), (64, 8))]
    size = grid_size((64, 64), 8)
    hfa = HFA([8, 16, 32, 64], dim=4, norm="GN4")
    assert hfa(feats, size).shape == (2, 16, 8, 8)
    fp = FixedProjectionHFA([8, 16, 32, 64], dim=12, seed=3)
    assert fp(feats, size).shape == (2, 48, 8, 8)
    w = fp.proj3  # 12×64: orthonormal rows
    assert torch.allclose(w @ w.t(), torch.eye(12), atol=1e-5)
    w0 = fp.proj0  # 12×8: orthonormal columns
    assert torch.allclose(w0.t() @ w0, torch.eye(8), atol=1e-5)
    assert not list(fp.parameters())
    assert torch.equal(FixedProjectionHFA([8, 16, 32, 64], 12, seed=3).proj2, fp.proj2)
