"""bcd/distill/functional/relation.py: the O(N·C) relation KL equals the N×N reference.

References: an independent float64 computation on the full score matrices (``log_softmax`` of
``s·Q Kᵀ`` with ``-inf`` at invalid columns), and the chunked ``relation_kl`` of BCD context
distillation (the ``IMPL="chunked"`` path) at N = 4096 in fp32. Memory: the peak resident size
of a fresh process stays far below one ``N×N`` matrix.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bcd.distill.functional.relation import relation_kl_rows, self_relation_kl_rows

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _direct_rows(q_s, k_s, q_t, k_t, scale, row_valid, col_valid):
    """Per-row KL from the full score matrices, in the inputs' dtype (independent reference)."""
    m = col_valid[:, None, :]
    lt = torch.log_softmax((scale * q_t @ k_t.transpose(1, 2)).masked_fill(~m, float("-inf")), dim=2)
    ls = torch.log_softmax((scale * q_s @ k_s.transpose(1, 2)).masked_fill(~m, float("-inf")), dim=2)
    terms = torch.where(m.expand_as(lt), lt.exp() * (lt - ls), torch.zeros_like(lt))
    kl = terms.sum(2)
    return torch.where(row_valid, kl, torch.zeros_like(kl))


def _masks(B, N, p, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(B, N, generator=g) > p
    v[:, 0] = True
    return v


@pytest.mark.parametrize("block", [1 << 30, 97])  # one block; blocks that do not divide N
def test_self_relation_float64_matches_direct(block):
    torch.manual_seed(0)
    B, N, C, s = 2, 53, 7, 0.6
    x_t = torch.randn(B, N, C, dtype=torch.float64)
    x_s = (x_t + 0.7 * torch.randn(B, N, C, dtype=torch.float64)).requires_grad_(True)
    valid = _masks(B, N, 0.3, 1)
    w = torch.randn(B, N, dtype=torch.float64)  # an arbitrary upstream gradient per row

    ref = _direct_rows(x_s, x_s, x_t, x_t, s, valid, valid)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x_s)
    out = self_relation_kl_rows(x_s, x_t, s, valid, max_block_elems=block)
    (g_out,) = torch.autograd.grad((out * w).sum(), x_s)

    assert out.dtype == torch.float64 and out.shape == (B, N)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-9, atol=1e-12)
    assert bool((out[~valid] == 0).all()) and bool((out[valid] > 0).all())
    # invalid tokens are neither rows nor columns: changing them changes nothing
    x_s2 = x_s.detach().clone()
    x_s2[~valid] = 100.0
    torch.testing.assert_close(self_relation_kl_rows(x_s2, x_t, s, valid), out.detach(), rtol=1e-10, atol=1e-12)


def test_cross_relation_float64_matches_direct_and_gradcheck():
    torch.manual_seed(1)
    B, N, M, C, s = 2, 19, 13, 5, 0.8
    q_t, k_t = torch.randn(B, N, C, dtype=torch.float64), torch.randn(B, M, C, dtype=torch.float64)
    q_s = (q_t + 0.5 * torch.randn(B, N, C, dtype=torch.float64)).requires_grad_(True)
    k_s = (k_t + 0.5 * torch.randn(B, M, C, dtype=torch.float64)).requires_grad_(True)
    rv, cv = _masks(B, N, 0.2, 2), _masks(B, M, 0.3, 3)
    w = torch.randn(B, N, dtype=torch.float64)
    ref = _direct_rows(q_s, k_s, q_t, k_t, s, rv, cv)
    g_ref = torch.autograd.grad((ref * w).sum(), (q_s, k_s))
    out = relation_kl_rows(q_s, k_s, q_t, k_t, s, rv, cv, max_block_elems=40)
    g_out = torch.autograd.grad((out * w).sum(), (q_s, k_s))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda q, k: relation_kl_rows(q, k, q_t, k_t, s, rv, cv, max_block_elems=40), (q_s, k_s)
    )


def test_fully_masked_image_gives_zero_without_nan():
    torch.manual_seed(2)
    x_s = torch.randn(2, 16, 4, requires_grad=True)
    x_t = torch.randn(2, 16, 4)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1] = False  # the whole second image is padding
    out = self_relation_kl_rows(x_s, x_t, 0.5, valid)
    out.sum().backward()
    assert bool((out[1] == 0).all()) and bool((out[0] > 0).all())
    assert bool(torch.isfinite(x_s.grad).all()) and bool((x_s.grad[1] == 0).all())


def test_teacher_rows_hook_sees_masked_teacher_scores():
    torch.manual_seed(3)
    x_s, x_t = torch.randn(1, 10, 3), torch.randn(1, 10, 3)
    valid = torch.ones(1, 10, dtype=torch.bool)
    valid[0, 7:] = False
    seen = []
    self_relation_kl_rows(x_s, x_t, 0.5, valid, max_block_elems=40,
                          teacher_rows_hook=lambda sc, rows: seen.append((sc.clone(), rows.clone())))
    scores = torch.cat([sc for sc, _ in seen], dim=1)
    rows = torch.cat([r for _, r in seen])
    assert rows.tolist() == list(range(10)) and len(seen) == 3  # 40 // 10 = 4 rows per block
    expected = (0.5 * x_t @ x_t.transpose(1, 2)).masked_fill(~valid[:, None, :], float("-inf"))
    torch.testing.assert_close(scores, expected)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="must match"):
        relation_kl_rows(torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.randn(1, 5, 3), torch.randn(1, 4, 3), 1.0)
    with pytest.raises(ValueError, match="row_valid"):
        self_relation_kl_rows(torch.randn(1, 4, 3), torch.randn(1, 4, 3), 1.0, torch.ones(1, 5, dtype=torch.bool))


def test_fp32_n4096_matches_chunked_reference_with_mask():
    """fp32 at the VOC grid (N = 4096): fused == the chunked ``relation_kl`` (value, gradient)."""
    from bcd.distill.losses.bcd_context import relation_kl

    torch.manual_seed(4)
    B, N, C, tau = 1, 4096, 32, 1.0
    base = torch.randn(B, N, C)
    x_t = base
    x_s = (base + 0.5 * torch.randn(B, N, C)).requires_grad_(True)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[:, -700:] = False  # a padded border
    ref = relation_kl(x_s, x_t, valid, tau, chunk=1024, use_checkpoint=True)
    (g_ref,) = torch.autograd.grad(ref, x_s)
    rows = self_relation_kl_rows(x_s, x_t, 1.0 / (math.sqrt(C) * tau), valid)
    out = (rows * valid).sum() / valid.sum()
    (g_out,) = torch.autograd.grad(out, x_s)
    assert float(ref) > 0.1  # a KL well above fp32 noise
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=0)
    assert float((g_out - g_ref).norm() / g_ref.norm()) < 1e-4
    assert bool((g_out[~valid] == 0).all())


_MEM_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {repo!r})
    from bcd.distill.functional.relation import self_relation_kl_rows

    def status_kib(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))

    torch.set_num_threads(1)
    N, C, blk = {n}, {c}, {blk}
    g = torch.Generator().manual_seed(0)
    x_s = torch.randn(1, N, C, generator=g).requires_grad_(True)
    x_t = torch.randn(1, N, C, generator=g)
    valid = torch.ones(1, N, dtype=torch.bool)
    valid[:, -N // 8:] = False
    self_relation_kl_rows(x_s[:, :64], x_t[:, :64], 0.25, valid[:, :64]).sum().backward()  # warm-up
    # high-water mark of this process's memory, reset now (Linux >= 4.0); ru_maxrss would keep
    # the parent's size across fork + exec
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    self_relation_kl_rows(x_s, x_t, 0.25, valid, max_block_elems=blk).sum().backward()
    print(max(0, status_kib("VmHWM") - before) * 1024)
    """
)


def _peak_extra_bytes(n: int, c: int, blk: int) -> int:
    script = _MEM_SCRIPT.format(repo=REPO, n=n, c=c, blk=blk)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_peak_memory_below_one_relation_matrix_n4096():
    """Fast check: forward + backward at N = 4096 stays far below one N×N fp32 matrix (64 MiB)."""
    n = 4096
    extra = _peak_extra_bytes(n, 16, 1 << 18)  # 1 MiB score blocks
    assert extra < (n * n * 4) // 4, f"peak {extra / 2**20:.1f} MiB"


@pytest.mark.slow  # ~1 min on 2 shared cores
def test_peak_memory_is_o_nc_at_n16384():
    """N = 16 384 (the COCO 1/8 grid): one N×N fp32 matrix is 1 GiB; the fused loss, default
    block budget (16 MiB blocks), stays below 160 MiB in all."""
    n = 16384
    extra = _peak_extra_bytes(n, 16, 1 << 22)
    assert extra < 160 * 2**20, f"peak {extra / 2**20:.1f} MiB"


def test_cirkd_minibatch_fused_equals_chunked_with_masks():
    """CIRKD term (i): all B² cross-image pairs at once == the per-pair N×N reference."""
    from bcd.distill.losses.cirkd import minibatch_relation_kl

    torch.manual_seed(5)
    B, C, h, w = 3, 8, 6, 7
    ft = torch.randn(B, C, h, w)
    fs = (ft + 0.6 * torch.randn(B, C, h, w)).requires_grad_(True)
    valid = torch.rand(B, h, w) > 0.25
    valid[2] = False  # an image without valid cells: its pairs are skipped
    ref = minibatch_relation_kl(fs, ft, valid, 0.1, impl="chunked")
    (g_ref,) = torch.autograd.grad(ref, fs)
    out = minibatch_relation_kl(fs, ft, valid, 0.1, impl="fused")
    (g_out,) = torch.autograd.grad(out, fs)
    assert float(ref) > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="KD.CIRKD.IMPL"):
        minibatch_relation_kl(fs, ft, valid, 0.1, impl="dense")
