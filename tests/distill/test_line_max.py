"""bcd/distill/functional/line_max.py equals BCD boundary's reference line-max (values, gradients)."""
from __future__ import annotations

import pytest
import torch

from bcd.distill.functional import line_max as lm
from bcd.distill.losses import bcd_boundary as bb


def test_geometry_matches_reference():
    for r in (2, 3, 5, 8):
        assert lm.disk_directions(r) == bb.disk_directions(r)
        assert all(lm.line_offsets(*d) == bb.line_offsets(*d) for d in lm.disk_directions(r))
    assert len(lm.disk_directions(5)) == 68


@pytest.mark.parametrize("impl", sorted(lm.LINE_MAX_IMPLS))
@pytest.mark.parametrize("size,radius,pad", [((7, 9), 5, -1e4), ((12, 10), 3, 0.0), ((3, 4), 5, 0.0)])
def test_line_max_equals_reference(impl, size, radius, pad):
    torch.manual_seed(0)
    e = torch.randn(2, 1, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, len(lm.disk_directions(radius)), *size, dtype=torch.float64)
    ref = bb.line_max(e, radius, pad)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), e)
    out = lm.LINE_MAX_IMPLS[impl](e, radius, pad)
    (g_out,) = torch.autograd.grad((out * w).sum(), e)
    assert out.shape == ref.shape and torch.equal(out, ref)  # max is exact: bit-identical values
    torch.testing.assert_close(g_out, g_ref, rtol=1e-12, atol=1e-12)  # continuous inputs: no ties


def test_views_plan_shares_sub_lines():
    plan = lm._views_plan(5)
    assert sorted(d for d, _, _ in plan) == sorted(lm.half_plane_directions(5))
    maxima = sum(len(extra) - (1 if base == (0, 0) else 0) for _, base, extra in plan)
    assert maxima == 76  # vs 208 = Σ(|Ω(δ)| − 1) without sharing
    for d, base, extra in plan:  # each line is rebuilt exactly
        got = set(extra) | (set(lm.line_offsets(*base)) if base != (0, 0) else set())
        assert got == set(lm.line_offsets(*d))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="B×1×h×w"):
        lm.line_max_views(torch.zeros(1, 2, 4, 4), 5)
    with pytest.raises(ValueError, match="radius"):
        lm.line_max_gather(torch.zeros(1, 1, 4, 4), 1)
