#!/usr/bin/env python
"""Cost of each distillation loss: step-time ratio, extra peak memory and the loss's own FLOPs.

    python tools/benchmark.py [--pairs NAME ...] [--losses NAME ...] [--batch 2]
                              [--warmup 1] [--iters 3] [--device cpu|cuda] [--output DIR]
    python tools/benchmark.py --detection [...]          # the detector pairs (default: segmentation)
    python tools/benchmark.py --relation [...]           # the relation-loss kernels only
    python tools/benchmark.py --list                     # pairs and loss sets
    python tools/benchmark.py --merge A/benchmark_det.json B/benchmark_det.json --output DIR
                                                         # one report from runs split over processes

Pairs (``PAIRS``; random weights, the cost does not depend on training): the paper's sizes,
PSPNet-R101 → PSPNet-R18 and DeepLabV3+-R101 → DeepLabV3+-MobileNetV2 at 512×512,
RetinaNet-R101 → R50, GFL-R101 → R50 (and Cascade Mask R-CNN when ``configs/coco`` has it) at
800×1333, all batch 2; and the demo pairs (``configs/demo``) for quick runs and tests.

**One timing method.** Each (pair, loss set) runs in a fresh process (on CPU: a clean memory
peak) that builds the ``Distiller`` once and times, interleaved in the same loop, ``--iters``
times each: the distillation step as the trainer does it (``Distiller`` forward, one backward of
the loss entries the trainer sums, i.e. keys starting with ``loss``, plus the objectives of the
model's extra optimizers, e.g. APD's teacher adapter; SGD step at lr 0, extra optimizers at lr 0), a plain step of its student
(same inputs, same summation, backward, step) and a forward of its teacher (``extract`` under
``no_grad``), after ``--warmup`` untimed rounds. Reported: the median of each and the spread
(min–max) over the steps.

**One ratio.** ``ratio = median(KD step) / (median(student step) + median(teacher forward))``:
1.0 means the loss (its forward, backward, modules and feature recording) costs nothing. The
spread of the ratio is that of the per-round ratios ``kd_i / (student_i + teacher_i)``.

**Memory.** The peak of each phase above the memory before it: on CUDA
``max_memory_allocated`` after a reset; on CPU the resident-set high-water mark ``VmHWM``
after resetting it (``/proc/self/clear_refs``). "Extra" is the KD step's peak minus the larger of
the plain student step's and the teacher forward's.

**FLOPs.** ``bcd.utils.analysis.flop_count`` (``torch.utils.flop_counter.FlopCounterMode``, the
counting function of ``tools/analyze_model.py`` and ``kd_report`` too; a multiply-add = 2 FLOPs;
matrix products and convolutions; element-wise work is not counted) over the first warm-up
round: the loss's own FLOPs are the KD step's minus the student step's and the teacher forward's.

Results: ``OUTPUT/benchmark_<task>.json`` and ``.md``, written after every measurement (a long
run leaves usable partial results), with the machine, the thread count and the load average.

The parts live in ``tools/benchmarking/`` (pairs, inputs, measurement, kernels, report, merge);
this file is the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import _tool_common  # noqa: E402,F401  (puts the repository on sys.path for `import bcd`)
from benchmarking.inputs import det_inputs, seg_inputs  # noqa: E402,F401
from benchmarking.kernels import line_max_impls, measure_line_max, measure_relation  # noqa: E402,F401
from benchmarking.measure import (  # noqa: E402,F401
    SGD_LR,
    measure_pair,
    run_isolated,
    save_teacher_weights,
    total_loss,
)
from benchmarking.merge import merge_results  # noqa: E402
from benchmarking.pairs import DEFAULT_PAIRS, PAIRS  # noqa: E402
from benchmarking.report import flop_ratio, machine, write_report  # noqa: E402,F401
from bcd.utils.analysis import PeakMemory  # noqa: E402,F401


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detection", action="store_true", help="detector pairs (default: segmentation)")
    ap.add_argument("--relation", action="store_true", help="only the relation-KL and line-max kernels")
    ap.add_argument("--list", action="store_true", help="print the pairs and loss sets and exit")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="combine benchmark_<task>.json files of earlier runs into one report in --output "
                         "(nothing is measured)")
    ap.add_argument("--pairs", nargs="*", default=None, help="pair names (see --list)")
    ap.add_argument("--losses", nargs="*", default=None, help="loss-set names (default: all of each pair)")
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="override the pair's input size")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--relation-tokens", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--relation-channels", type=int, default=512)
    ap.add_argument("--relation-batch", type=int, default=2)
    ap.add_argument("--relation-impls", nargs="*", default=["fused", "chunked", "attention"],
                    help="fused, chunked (the reference) and attention (SDPA on the same shapes: the speed yardstick)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time, or the process's CPU time (a CPU shared with other jobs; use --threads 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the measuring processes (0: torch's default)")
    ap.add_argument("--note", default="", help="free text stored with the machine (e.g. 'shared CPU')")
    ap.add_argument("--output", default="output/benchmark")
    args = ap.parse_args(argv)

    if args.list:
        for name, spec in PAIRS.items():
            print(f"{name} [{spec['task']}] {spec['what']}: " + ", ".join(spec["sets"]))
        return {}
    if args.merge:
        out = {}
        for name, (res, sources) in merge_results(args.merge).items():
            write_report(res, args.output, name, stamp_load=False)
            print(f"{name}: {len(sources)} runs -> {os.path.join(args.output, name)}.{{json,md}}")
            out[name] = res
        return out
    # glibc raises its mmap threshold after large frees and then keeps freed blocks resident, so a
    # warm-up would hide the next step's peak from VmHWM; a fixed threshold returns blocks of 4 MiB
    # and more (the measuring processes are spawned after this and inherit it). Not lower: every
    # mmap is page-faulted anew, which slows steps made of many small tensors.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * 2**20))
    if args.clock == "cpu" and str(args.device).startswith("cuda"):
        raise SystemExit("--clock cpu measures CPU work; use the wall clock on CUDA")
    timing = {"clock": args.clock, "threads": args.threads}
    res: Dict[str, Any] = {"machine": machine(args.device), "note": args.note, "batch": args.batch,
                           "warmup": args.warmup, "iters": args.iters, "clock": args.clock,
                           "threads": args.threads or torch.get_num_threads()}
    if args.relation:
        name = "benchmark_relation"
        res["relation"], res["line_max"] = [], []
        for n in args.relation_tokens:
            for impl in args.relation_impls:
                r = run_isolated(measure_relation, args.device, impl=impl, tokens=n,
                                 channels=args.relation_channels, batch=args.relation_batch, **timing)
                r.setdefault("impl", impl)
                res["relation"].append(r)
                write_report(res, args.output, name)
                print(json.dumps(r), flush=True)
        for size in ((64, 64), (100, 167)):
            for impl in line_max_impls():
                res["line_max"].append(run_isolated(measure_line_max, args.device, impl=impl, size=size,
                                                    batch=args.relation_batch, radius=5, reps=5, **timing))
                write_report(res, args.output, name)
        print(open(os.path.join(args.output, name + ".md")).read())
        return res

    task = "det" if args.detection else "seg"
    name = f"benchmark_{task}"
    pairs = args.pairs or DEFAULT_PAIRS[task]
    for p in pairs:
        if p not in PAIRS or PAIRS[p]["task"] != task:
            known = [k for k, v in PAIRS.items() if v["task"] == task]
            raise SystemExit(f"Unknown {task} pair '{p}'; choose from {known} (--detection for detectors)")
    tmp = tempfile.mkdtemp(prefix="bcd_bench_")
    res["pairs"] = {}
    for p in pairs:
        spec = PAIRS[p]
        sets = args.losses or list(spec["sets"])
        unknown = [s for s in sets if s not in spec["sets"]]
        if unknown:
            raise SystemExit(f"Unknown loss sets {unknown} for pair {p}; choose from {list(spec['sets'])}")
        size = tuple(args.size) if args.size else tuple(spec["size"])
        block = {"size": list(size), "losses": {}}
        res["pairs"][p] = block
        weights = save_teacher_weights(p, tmp)
        for s in sets:
            r = run_isolated(measure_pair, args.device, pair=p, loss_set=s, batch=args.batch, warmup=args.warmup,
                             iters=args.iters, teacher_weights=weights, size=size, **timing)
            block["losses"][s] = r
            write_report(res, args.output, name)
            if "error" in r:
                print(f"{p} / {s}: failed: {r['error']}", flush=True)
            else:
                print(f"{p} / {s}: KD {r['median_s']['kd']:.3f}s, student {r['median_s']['student']:.3f}s, "
                      f"teacher {r['median_s']['teacher']:.3f}s, ratio {r['ratio']:.2f} "
                      f"({r['ratio_spread'][0]:.2f}–{r['ratio_spread'][1]:.2f}), extra "
                      f"{r['extra_peak_bytes'] / 2**20:.0f} MiB, loss {r['loss_flops'] / 1e9:.1f} GFLOPs", flush=True)
    print(open(os.path.join(args.output, name + ".md")).read())
    return res


if __name__ == "__main__":
    main()
