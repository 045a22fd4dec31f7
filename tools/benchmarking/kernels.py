"""The relation-KL (BCD context) and line-max (BCD boundary) kernels alone, forward + backward."""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Dict, Tuple

import torch

from bcd.utils.analysis import PeakMemory, flop_count, synchronize

__all__ = ["line_max_impls", "measure_line_max", "measure_relation"]


def measure_relation(impl: str, tokens: int, channels: int, batch: int, device: str, clock: str = "wall",
                     threads: int = 0) -> Dict[str, Any]:
    """BCD context relation KL (mean over rows, forward + backward) at ``tokens`` tokens.

    ``impl``: ``"fused"`` (``bcd.distill.functional.relation``), ``"chunked"`` (the reference,
    1024 rows per chunk with activation checkpointing) or ``"attention"``: not the loss but the
    yardstick, PyTorch's ``scaled_dot_product_attention(x_s, x_s, x_t)`` forward + backward on the
    same shapes (one head, the same ``N×N×C`` products); its ``loss`` is NaN.
    """
    from bcd.distill.functional.relation import self_relation_kl_rows
    from bcd.distill.losses.bcd_context import relation_kl

    if threads > 0:
        torch.set_num_threads(threads)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(batch, tokens, channels, generator=g).to(device).requires_grad_(True)
    xt = torch.randn(batch, tokens, channels, generator=g).to(device)
    valid = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    valid[:, -tokens // 10:] = False  # a padded border
    scale = 1.0 / math.sqrt(channels)

    def run() -> float:
        if impl == "fused":
            loss = (self_relation_kl_rows(xs, xt, scale, valid) * valid).sum() / valid.sum()
        elif impl == "attention":
            out = torch.nn.functional.scaled_dot_product_attention(xs[:, None], xs[:, None], xt[:, None], scale=scale)
            out.float().mean().backward()
            return float("nan")
        else:
            loss = relation_kl(xs, xt, valid, 1.0, chunk=1024, use_checkpoint=True)
        loss.backward()
        return float(loss.detach())

    value = run()  # warm-up
    flops = flop_count(run).total  # the attention yardstick too (its fused kernels on every device)
    synchronize(device)
    with PeakMemory(device) as mem:
        t0 = timer()
        run()
        synchronize(device)
        t = timer() - t0
    return {"clock": clock, "impl": impl, "tokens": tokens, "channels": channels, "batch": batch, "time_s": t,
            "peak_bytes": mem.peak, "flops": flops, "loss": value}


def line_max_impls() -> Dict[str, Callable]:
    """The line-max formulations: ``bcd.distill.functional.line_max`` and the shifted-copy one of
    ``bcd_boundary``."""
    from bcd.distill.functional.line_max import LINE_MAX_IMPLS
    from bcd.distill.losses import bcd_boundary

    return dict(LINE_MAX_IMPLS, **{"shifted copies (bcd_boundary.line_max)": bcd_boundary.line_max})


def measure_line_max(impl: str, size: Tuple[int, int], batch: int, radius: int, reps: int,
                     device: str, clock: str = "wall", threads: int = 0) -> Dict[str, Any]:
    """BCD boundary line-max forward + backward on a ``batch×1×h×w`` logit map (median of ``reps``)."""
    if threads > 0:
        torch.set_num_threads(threads)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    fn = line_max_impls()[impl]
    g = torch.Generator().manual_seed(0)
    e = torch.randn(batch, 1, *size, generator=g).to(device).requires_grad_(True)
    ts = []
    for r in range(reps + 1):
        synchronize(device)
        t0 = timer()
        fn(e, radius, -1e4).square().sum().backward()
        synchronize(device)
        if r:
            ts.append(timer() - t0)
    return {"clock": clock, "impl": impl, "size": list(size), "batch": batch, "radius": radius, "median_s": statistics.median(ts),
            "min_s": min(ts), "max_s": max(ts)}
