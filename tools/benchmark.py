#!/usr/bin/env python
"""Cost of each distillation loss, and the memory of context distillation at 4096 tokens.

    python tools/benchmark.py [--size 512] [--batch 2] [--iters 3] [--device cpu|cuda]
                              [--output output/benchmark]
    python tools/benchmark.py --detection [...]   # detector losses (tools/benchmark_detection.py)

1. For the demo teacher / student (``configs/demo``; random weights, their cost does not depend
   on training) at ``size×size``, per loss, in one process: the time of one distillation step
   (teacher forward + student step + the loss, its backward and its modules), of one step of the
   student alone (forward + backward + SGD step) and of one teacher forward (``extract`` under
   ``no_grad``), interleaved, minimum over ``--iters``; the reported ratio is
   ``t_kd / (t_student + t_teacher)`` (1.0 = the loss itself is free).
2. ``relation_kl`` (BCD context distillation) at ``N = 4096`` tokens (64×64, the 1/8 grid of a
   512×512 crop) with ``C = 512`` channels: peak memory of forward + backward unchunked vs
   chunked (1024 rows, with activation checkpointing).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (after a reset); on CPU each measurement
runs in a fresh process and reports its peak resident set size (``ru_maxrss``) minus the resident
size before the measured steps, i.e. the extra memory of the steps. Results go to
``OUTPUT/benchmark.json`` and ``OUTPUT/benchmark.md``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CFG = os.path.join(ROOT, "configs/demo/teacher_pspnet_r18.yaml")
STUDENT_CFG = os.path.join(ROOT, "configs/demo/student_pspnet_r18_w025.yaml")
BCD_CFG = os.path.join(ROOT, "configs/demo/bcd_student_pspnet_r18_w025.yaml")

LOSSES: Dict[str, List[str]] = {
    "BCD boundary": ["BoundaryDistillation"],
    "BCD context": ["ContextDistillation"],
    "BCD (both)": ["BoundaryDistillation", "ContextDistillation"],
    "pixel KD": ["PixelKD"],
    "CWD (logits)": ["ChannelWiseDistillation"],
    "Structured KD": ["StructuredKD"],
    "CIRKD": ["CIRKD"],
    "FitNet": ["FitNet"],
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class _Mem:
    """Extra peak memory of a block: CUDA allocator peak, or peak RSS on CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> "_Mem":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = max(0, _peak_rss_bytes() - self.base)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _inputs(size: int, batch: int, classes: int = 6) -> List[Dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "sem_seg": torch.randint(0, classes, (size, size), generator=g),
            "height": size,
            "width": size,
        }
        for _ in range(batch)
    ]


def _cfg(path: str, device: str, opts: Optional[List[Any]] = None):
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts or []))
    cfg.MODEL.DEVICE = device
    return cfg


def _time_steps(fn, iters: int, device: str) -> float:
    fn()  # warm-up (allocator, lazy init, CIRKD queues)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _train_step(model, opt, inputs):
    def step():
        losses = model(inputs)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    return step


def measure_model(kind: str, losses: List[str], size: int, batch: int, iters: int, device: str,
                  teacher_weights: str) -> Dict[str, float]:
    """One measurement in the current process.

    ``kind="kd"``: the Distiller with ``losses``; the distillation step, the step of its student
    alone and the forward of its teacher alone are timed interleaved, ``iters`` times each, and
    the minimum of each is kept (robust to other processes sharing the CPU); the peak memory is
    that of the distillation steps. ``kind="baseline"``: the peak memory of a plain student step
    plus a teacher forward.
    """
    from bcd.distill import build_model

    torch.manual_seed(0)
    inputs = _inputs(size, batch)
    opts = ["KD.LOSSES", losses or ["PixelKD"], "KD.TEACHER.WEIGHTS", teacher_weights,
            "KD.TEACHER.CONFIG_FILE", TEACHER_CFG]
    model = build_model(_cfg(BCD_CFG, device, opts))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    kd_step = _train_step(model, opt, inputs)
    student, teacher = model.student, model.teacher

    def student_step():
        losses_ = student(inputs)
        opt.zero_grad(set_to_none=True)
        sum(losses_.values()).backward()
        opt.step()

    @torch.no_grad()
    def teacher_fwd():
        teacher.extract(teacher.preprocess(inputs))

    if kind == "baseline":
        student_step()
        teacher_fwd()
        with _Mem(device) as mem:
            student_step()
            teacher_fwd()
        return {"peak_mem_bytes": mem.peak}
    kd_step()  # warm-up (allocator, lazy state such as CIRKD's queues)
    student_step()
    teacher_fwd()
    times: Dict[str, List[float]] = {"kd": [], "student": [], "teacher": []}
    with _Mem(device) as mem:
        for _ in range(iters):
            for key, fn in (("kd", kd_step), ("student", student_step), ("teacher", teacher_fwd)):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[key].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    return {"time_s": best["kd"], "student_step_s": best["student"], "teacher_forward_s": best["teacher"],
            "ratio": best["kd"] / (best["student"] + best["teacher"]), "peak_mem_bytes": mem.peak}


def measure_context(chunk: int, n_tokens: int, channels: int, batch: int, device: str) -> Dict[str, float]:
    """Peak memory / time of relation_kl forward + backward at ``n_tokens``."""
    from bcd.distill.losses.bcd_context import relation_kl

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(batch, n_tokens, channels, generator=g).to(device).requires_grad_(True)
    xt = torch.randn(batch, n_tokens, channels, generator=g).to(device)
    valid = torch.ones(batch, n_tokens, dtype=torch.bool, device=device)
    with _Mem(device) as mem:
        t0 = time.perf_counter()
        loss = relation_kl(xs, xt, valid, 1.0, chunk=chunk, use_checkpoint=chunk > 0)
        loss.backward()
        _sync(device)
        t = time.perf_counter() - t0
    return {"time_s": t, "peak_mem_bytes": mem.peak, "loss": float(loss.detach())}


def _child(q, fn, kwargs):
    try:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        q.put(("ok", fn(**kwargs)))
    except Exception as e:  # report, the parent decides
        q.put(("error", f"{type(e).__name__}: {e}"))


def run_isolated(fn, device: str, **kwargs) -> Dict[str, Any]:
    """Run ``fn`` in a fresh process on CPU (clean peak RSS); in-process on CUDA."""
    if device.startswith("cuda"):
        return fn(device=device, **kwargs)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, dict(kwargs, device=device)))
    p.start()
    status, value = q.get()
    p.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--detection" in argv:  # detector losses: tools/benchmark_detection.py (same helpers)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import benchmark_detection

        return benchmark_detection.main([a for a in argv if a != "--detection"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--losses", nargs="*", default=list(LOSSES), help="subset of: " + ", ".join(LOSSES))
    ap.add_argument("--context-tokens", type=int, default=4096)
    ap.add_argument("--context-channels", type=int, default=512)
    ap.add_argument("--context-batch", type=int, default=2)
    ap.add_argument("--output", default="output/benchmark")
    args = ap.parse_args(argv)

    from bcd.modeling import build_model

    os.makedirs(args.output, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bcd_bench_")
    teacher_weights = os.path.join(tmp, "teacher.pth")
    torch.manual_seed(0)
    torch.save({"model": build_model(_cfg(TEACHER_CFG, "cpu")).state_dict()}, teacher_weights)

    common = dict(size=args.size, batch=args.batch, iters=args.iters, teacher_weights=teacher_weights)
    res: Dict[str, Any] = {"device": args.device, "size": args.size, "batch": args.batch,
                           "iters": args.iters, "threads": torch.get_num_threads(), "losses": {}}
    res["baseline"] = run_isolated(measure_model, args.device, kind="baseline", losses=[], **common)
    base_m = res["baseline"]["peak_mem_bytes"]
    for name in args.losses:
        r = run_isolated(measure_model, args.device, kind="kd", losses=LOSSES[name], **common)
        res["losses"][name] = r
        print(f"{name:16s} step {r['time_s']:.3f}s  ratio {r['ratio']:.2f}  peak +{r['peak_mem_bytes'] / 2**20:.0f} MiB", flush=True)
    res["context"] = {}
    for label, chunk in (("unchunked", 0), ("chunk 1024 + checkpoint", 1024)):
        res["context"][label] = run_isolated(
            measure_context, args.device, chunk=chunk, n_tokens=args.context_tokens,
            channels=args.context_channels, batch=args.context_batch,
        )
    with open(os.path.join(args.output, "benchmark.json"), "w") as f:
        json.dump(res, f, indent=2)

    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    md = [
        "# Distillation cost", "",
        f"Device: {args.device} ({res['threads']} threads); demo teacher (PSPNet R18×0.5) and student "
        f"(PSPNet R18×0.25); batch {args.batch} of {args.size}×{args.size}; minimum over {args.iters} steps "
        "after one warm-up step.", "",
        "Times are the minimum over the steps (other processes share the CPU); student step and "
        "teacher forward are timed in the same process, interleaved with the distillation step.", "",
        "| loss | KD step (s) | student step (s) | teacher forward (s) | KD step / (student step + teacher forward) | peak memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["losses"].items():
        md.append(f"| {name} | {r['time_s']:.3f} | {r['student_step_s']:.3f} | {r['teacher_forward_s']:.3f} | "
                  f"{r['ratio']:.2f} | {mib(r['peak_mem_bytes'])} |")
    md += ["", f"Plain student step + teacher forward peak: {mib(base_m)} MiB.", "",
           f"BCD context distillation, relation at N = {args.context_tokens} tokens, C = {args.context_channels}, "
           f"batch {args.context_batch} (forward + backward):", "",
           "| variant | time (s) | peak memory (MiB) | loss |", "|---|---|---|---|"]
    for label, r in res["context"].items():
        md.append(f"| {label} | {r['time_s']:.2f} | {mib(r['peak_mem_bytes'])} | {r['loss']:.6f} |")
    md.append("")
    md.append("CPU memory = peak RSS of a fresh process minus its RSS before the measured steps; "
              "CUDA memory = torch.cuda.max_memory_allocated above the allocation before them.")
    with open(os.path.join(args.output, "benchmark.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return res


if __name__ == "__main__":
    main()
