"""BCD boundary distillation: line-max geometry, brute-force agreement, masks, gradients."""
import math

import numpy as np
import pytest
import torch

from bcd.distill.losses.bcd_boundary import (
    disk_directions,
    half_plane_directions,
    line_max,
    line_offsets,
    neighbour_valid,
    pseudo_affinity_loss,
)
from bcd.distill.losses._functional import masked_kl


@pytest.mark.parametrize("r,half,total,sum_omega,max_omega", [
    (3, 12, 24, 56, 7), (5, 34, 68, 242, 11), (8, 96, 192, 1078, 16), (10, 152, 304, 2134, 22),
])
def test_direction_counts_match_methods_table(r, half, total, sum_omega, max_omega):
    h = half_plane_directions(r)
    assert len(h) == half and len(disk_directions(r)) == total
    assert sum(len(line_offsets(*d)) for d in h) == sum_omega
    assert max(len(line_offsets(*d)) for d in h) == max_omega


def _np_offsets(dy, dx):
    """Independent float-geometry version of Ω(δ)."""
    out = set()
    n = math.hypot(dy, dx)
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if abs(y * dx - x * dy) / n < 1.0 - 1e-12:
                out.add((y, x))
    return out


def _brute_line_max(e, r):
    """``{(i, j, δ): B}`` for all pairs inside the map, by direct enumeration."""
    h, w = e.shape
    dirs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if 0 < dy * dy + dx * dx < r * r]
    res = {}
    for y in range(h):
        for x in range(w):
            for dy, dx in dirs:
                ty, tx = y + dy, x + dx
                if 0 <= ty < h and 0 <= tx < w:
                    res[(y, x, dy, dx)] = max(e[y + oy, x + ox] for oy, ox in _np_offsets(dy, dx))
    return res


def test_line_max_matches_brute_force_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    e = torch.rand(1, 1, 7, 9, generator=g)
    r = 4
    out = line_max(e, r)[0].numpy()
    ref = _brute_line_max(e[0, 0].numpy(), r)
    dirs = disk_directions(r)
    assert set(map(tuple, (d for d in dirs))) == {k[2:] for k in ref}
    for (y, x, dy, dx), v in ref.items():
        assert out[dirs.index((dy, dx)), y, x] == pytest.approx(v)
        # symmetry: B(i, i+δ) = B(i+δ, i)
        assert out[dirs.index((-dy, -dx)), y + dy, x + dx] == pytest.approx(v)


def test_step_edge_gives_one_across_and_zero_on_one_side():
    h, w, c, r = 12, 12, 6, 5
    e = torch.zeros(1, 1, h, w)
    e[..., c] = 1.0  # the edge column
    b = line_max(e, r)[0]
    dirs = disk_directions(r)
    n_across = n_side = 0
    for k, (dy, dx) in enumerate(dirs):
        for y in range(h):
            for x in range(w):
                ty, tx = y + dy, x + dx
                if not (0 <= ty < h and 0 <= tx < w):
                    continue
                if (x < c < tx) or (tx < c < x):
                    assert b[k, y, x] == 1.0
                    n_across += 1
                elif (x < c and tx < c) or (x > c and tx > c):
                    assert b[k, y, x] == 0.0
                    n_side += 1
    assert n_across > 100 and n_side > 100


def _kl_rows_np(t, s, mask):
    t = np.where(mask, t, -np.inf)
    s = np.where(mask, s, -np.inf)
    pt = np.exp(t - t.max()); pt /= pt.sum()
    ps = np.exp(s - s.max()); ps /= ps.sum()
    m = mask & (pt > 0)
    return float(np.sum(pt[m] * (np.log(pt[m]) - np.log(ps[m]))))


def test_pairwise_kl_matches_numpy_and_masks():
    from bcd.distill.losses.bcd_boundary import pairwise_boundary_kl

    g = torch.Generator().manual_seed(1)
    r = 3
    m_s = torch.randn(2, 24, 5, 6, generator=g)
    m_t = torch.randn(2, 24, 5, 6, generator=g)
    valid = torch.ones(2, 5, 6, dtype=torch.bool)
    valid[1, :, 4:] = False
    tau = 2.0
    got = pairwise_boundary_kl(m_s, m_t, valid, r, tau)
    col = neighbour_valid(valid, r).numpy()
    vals = []
    for n in range(2):
        for y in range(5):
            for x in range(6):
                if valid[n, y, x] and col[n, :, y, x].any():
                    vals.append(_kl_rows_np(m_t[n, :, y, x].numpy() / tau, m_s[n, :, y, x].numpy() / tau, col[n, :, y, x]))
    assert float(got) == pytest.approx(tau * tau * np.mean(vals), rel=1e-5)
    # identical inputs -> 0
    assert float(pairwise_boundary_kl(m_t, m_t, valid, r, tau)) == pytest.approx(0.0, abs=1e-7)
    # masked cells carry no weight: change values at invalid sources/targets -> same loss
    m_s2 = m_s.clone()
    m_s2[1, :, :, 4:] = 100.0
    full = m_s2.clone()
    assert float(pairwise_boundary_kl(full, m_t, valid, r, tau)) == pytest.approx(float(got), rel=1e-6)


def test_masked_kl_padding_invariance():
    """Extra padded columns (masked) change nothing."""
    g = torch.Generator().manual_seed(2)
    t, s = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    base = masked_kl(t, s, None, dim=1)
    tp = torch.cat([t, torch.randn(4, 5, generator=g) * 50], 1)
    sp = torch.cat([s, torch.randn(4, 5, generator=g) * 50], 1)
    mask = torch.zeros(4, 15, dtype=torch.bool)
    mask[:, :10] = True
    assert torch.allclose(masked_kl(tp, sp, mask, dim=1), base, atol=1e-6)


def test_pseudo_affinity_matches_hand_computation():
    r = 2  # directions: (0,1),(1,-1),(1,0),(1,1) and opposites
    logits = torch.zeros(1, 1, 2, 2)
    m = line_max(logits, r)  # all zero -> softplus(0) = ln 2 everywhere
    labels = torch.tensor([[[0, 1], [0, 1]]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    loss = pseudo_affinity_loss(m, labels, valid, r, bg_class=0)
    # every term is ln 2: same-fg, same-bg and diff pairs all exist
    assert float(loss) == pytest.approx(0.5 * (math.log(2) + math.log(2)), rel=1e-6)
    # gradient: raising boundary logits lowers the diff term and raises the same term
    m = m.clone().requires_grad_(True)
    pseudo_affinity_loss(m, labels, valid, r, 0).backward()
    dirs = disk_directions(r)
    k = dirs.index((0, 1))
    assert m.grad[0, k, 0, 0] < 0  # (0,0)->(0,1): classes 0 vs 1 -> boundary pushed up
    k = dirs.index((1, 0))
    assert m.grad[0, k, 0, 0] > 0  # (0,0)->(1,0): same class -> boundary pushed down
