"""Pixel KD, CWD, Structured KD, CIRKD (mini-batch term), FitNet: numpy references, zero at
identity, masks, padding invariance and gradients."""
import numpy as np
import pytest
import torch

from bcd.distill.losses.cirkd import minibatch_relation_kl
from bcd.distill.losses.cwd import cwd_loss
from bcd.distill.losses.fitnet import masked_mse
from bcd.distill.losses.pixel_kd import pixel_kd
from bcd.distill.losses.structured_kd import node_features, pairwise_similarity_loss


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _kl(p, q, axis):
    return np.sum(p * (np.log(p) - np.log(q)), axis=axis)


def _maps(seed=0, B=2, C=3, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, h, w, generator=g, dtype=torch.float64)
    t = torch.randn(B, C, h, w, generator=g, dtype=torch.float64)
    valid = torch.ones(B, h, w, dtype=torch.bool)
    valid[1, 3:, :] = False
    return s, t, valid


def test_pixel_kd_numpy():
    s, t, v = _maps()
    tau = 2.0
    kl = _kl(_softmax(t.numpy() / tau, 1), _softmax(s.numpy() / tau, 1), 1)
    ref = tau ** 2 * kl[v.numpy()].mean()
    assert float(pixel_kd(s, t, v, tau)) == pytest.approx(ref, rel=1e-6)


def test_cwd_numpy():
    s, t, v = _maps(1)
    v[:] = True
    tau = 4.0
    B, C = s.shape[:2]
    ps = _softmax(s.numpy().reshape(B, C, -1) / tau, 2)
    pt = _softmax(t.numpy().reshape(B, C, -1) / tau, 2)
    ref = tau ** 2 * _kl(pt, ps, 2).sum() / (B * C)
    assert float(cwd_loss(s, t, v, tau)) == pytest.approx(ref, rel=1e-6)


def test_fitnet_numpy():
    s, t, v = _maps(2)
    m = v.numpy()[:, None]
    ref = (((s.numpy() - t.numpy()) ** 2) * m).sum() / (m.sum() * s.shape[1])
    assert float(masked_mse(s, t, v)) == pytest.approx(ref, rel=1e-6)


def test_structured_kd_numpy_official_nodes():
    s, t, v = _maps(3, h=6, w=6)
    v[:] = True
    fs, vs = node_features(s, v, "official", 0.5)
    ft, _ = node_features(t, v, "official", 0.5)
    got = pairwise_similarity_loss(fs, ft, vs)

    def nodes(x):
        out = []
        for n in range(x.shape[0]):
            cells = [x[n, :, i:i + 3, j:j + 3].reshape(x.shape[1], -1).max(1) for i in (0, 3) for j in (0, 3)]
            f = np.stack(cells)
            out.append(f / np.linalg.norm(f, axis=1, keepdims=True))
        return np.stack(out)

    a_s = np.einsum("bic,bjc->bij", nodes(s.numpy()), nodes(s.numpy()))
    a_t = np.einsum("bic,bjc->bij", nodes(t.numpy()), nodes(t.numpy()))
    ref = ((a_s - a_t) ** 2).sum(axis=(1, 2)).mean() / 16
    assert fs.shape[1] == 4
    assert float(got) == pytest.approx(ref, rel=1e-6)


def test_cirkd_minibatch_numpy():
    s, t, v = _maps(4)
    v[:] = True
    tau = 0.1
    B, C = s.shape[:2]
    xs = s.numpy().reshape(B, C, -1).transpose(0, 2, 1)
    xt = t.numpy().reshape(B, C, -1).transpose(0, 2, 1)
    xs = xs / np.linalg.norm(xs, axis=2, keepdims=True)
    xt = xt / np.linalg.norm(xt, axis=2, keepdims=True)
    vals = [
        _kl(_softmax(xt[i] @ xt[j].T / tau, 1), _softmax(xs[i] @ xs[j].T / tau, 1), 1).mean()
        for i in range(B) for j in range(B)
    ]
    assert float(minibatch_relation_kl(s, t, v, tau)) == pytest.approx(np.mean(vals), rel=1e-5)


LOSSES = {
    "pixel": lambda s, t, v: pixel_kd(s, t, v, 2.0),
    "cwd": lambda s, t, v: cwd_loss(s, t, v, 4.0),
    "fitnet": masked_mse,
    "structured": lambda s, t, v: pairwise_similarity_loss(
        node_features(s, v, "cirkd", 0.5)[0], node_features(t, v, "cirkd", 0.5)[0], node_features(s, v, "cirkd", 0.5)[1]
    ),
    "cirkd": lambda s, t, v: minibatch_relation_kl(s, t, v, 0.1),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_at_identity_and_gradients(name):
    s, t, v = _maps(5)
    fn = LOSSES[name]
    assert float(fn(t.clone(), t, v)) == pytest.approx(0.0, abs=1e-9)
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    fn(s, t, v).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None or t.grad.abs().sum() == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_pixels_carry_no_weight(name):
    s, t, v = _maps(6, h=6, w=6)
    v[1, 4:, :] = False  # whole 2×2 node rows for the structured loss too
    fn = LOSSES[name]
    base = float(fn(s, t, v))
    s2, t2 = s.clone(), t.clone()
    s2.permute(0, 2, 3, 1)[~v] = 37.0
    t2.permute(0, 2, 3, 1)[~v] = -11.0
    assert float(fn(s2, t2, v)) == pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("name", ["pixel", "cwd", "fitnet", "cirkd"])
def test_padding_invariance(name):
    s, t, v = _maps(7)
    fn = LOSSES[name]
    base = float(fn(s, t, v))
    pad = lambda x, val: torch.nn.functional.pad(x, (0, 3, 0, 2), value=val)
    vp = torch.nn.functional.pad(v, (0, 3, 0, 2), value=False)
    assert float(fn(pad(s, 5.0), pad(t, -2.0), vp)) == pytest.approx(base, rel=1e-6)
