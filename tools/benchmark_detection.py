#!/usr/bin/env python
"""Cost of each detector distillation loss (the detector mode of ``tools/benchmark.py``).

    python tools/benchmark_detection.py [--size 320] [--batch 2] [--iters 3] [--device cpu|cuda]
                                        [--output output/benchmark_det]

For the demo detectors (``configs/demo/det_*``; random weights: cost does not depend on
training) on ``size×size`` images with 3 random boxes each: the time of one student training
step (forward + backward + SGD step), of one teacher forward (``extract`` under ``no_grad``) and
of one distillation step per loss. The reported ratio is ``t_kd / (t_student + t_teacher)``
(1.0 = the loss itself is free), as in ``tools/benchmark.py``, whose timing / memory helpers
this reuses. RetinaNet pairs carry BCD (backbone stages at 1/8), PKD, FGD and CWD (FPN levels);
the GFL pair carries LD. Results: ``OUTPUT/benchmark_det.json`` and ``OUTPUT/benchmark_det.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import benchmark as seg_bench  # noqa: E402  (tools/benchmark.py: timing and memory helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = {
    "retinanet": {
        "teacher": os.path.join(ROOT, "configs/demo/det_retinanet_teacher.yaml"),
        "student": os.path.join(ROOT, "configs/demo/det_retinanet_student.yaml"),
        "kd": os.path.join(ROOT, "configs/demo/det_bcd_retinanet_student.yaml"),
    },
    "gfl": {
        "teacher": os.path.join(ROOT, "configs/demo/det_gfl_teacher.yaml"),
        "student": os.path.join(ROOT, "configs/demo/det_gfl_student.yaml"),
        "kd": os.path.join(ROOT, "configs/demo/det_ld_gfl_student.yaml"),
    },
}
# name -> (detector pair, KD.LOSSES)
LOSSES: Dict[str, tuple] = {
    "BCD boundary (C2-C5)": ("retinanet", ["BoundaryDistillation"]),
    "BCD context (C2-C5)": ("retinanet", ["ContextDistillation"]),
    "BCD (both)": ("retinanet", ["BoundaryDistillation", "ContextDistillation"]),
    "PKD (P3-P6)": ("retinanet", ["PKD"]),
    "FGD (P3-P7)": ("retinanet", ["FGD"]),
    "CWD (P3-P7)": ("retinanet", ["ChannelWiseDistillation"]),
    "LD (GFL)": ("gfl", ["LD"]),
}


def det_inputs(size: int, batch: int, boxes: int = 3) -> List[Dict[str, Any]]:
    """Mapper-like detection inputs: random ``size×size`` images with ``boxes`` random boxes."""
    from bcd.structures import Instances

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * size * 0.6
        wh = 16 + torch.rand(boxes, 2, generator=g) * size * 0.35
        inst = Instances((size, size))
        inst.gt_boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        inst.gt_classes = torch.randint(0, 3, (boxes,), generator=g)
        out.append({"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
                    "instances": inst, "height": size, "width": size})
    return out


def measure_detector(pair: str, kind: str, losses: List[str], size: int, batch: int, iters: int,
                     device: str, teacher_weights: str) -> Dict[str, float]:
    """One measurement (``kind`` = "student", "teacher" or "kd") in the current process."""
    from bcd.distill import build_model

    torch.manual_seed(0)
    cfgs = PAIRS[pair]
    inputs = det_inputs(size, batch)
    if kind == "teacher":
        model = build_model(seg_bench._cfg(cfgs["teacher"], device))
        model.load_state_dict(torch.load(teacher_weights, map_location=device)["model"])
        model.eval()

        @torch.no_grad()
        def fn():
            model.extract(model.preprocess(inputs))
    else:
        if kind == "student":
            model = build_model(seg_bench._cfg(cfgs["student"], device))
        else:
            opts = ["KD.LOSSES", losses, "KD.TEACHER.WEIGHTS", teacher_weights,
                    "KD.TEACHER.CONFIG_FILE", cfgs["teacher"]]
            model = build_model(seg_bench._cfg(cfgs["kd"], device, opts))
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        fn = seg_bench._train_step(model, opt, inputs)
    fn()  # first step outside the memory window
    with seg_bench._Mem(device) as mem:
        t = seg_bench._time_steps(fn, iters, device)
    return {"time_s": t, "peak_mem_bytes": mem.peak}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--losses", nargs="*", default=list(LOSSES), help="subset of: " + ", ".join(LOSSES))
    ap.add_argument("--output", default="output/benchmark_det")
    args = ap.parse_args(argv)
    unknown = [n for n in args.losses if n not in LOSSES]
    if unknown:
        raise SystemExit(f"Unknown --losses {unknown}; choose from: {', '.join(LOSSES)}")

    from bcd.modeling import build_model

    os.makedirs(args.output, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bcd_bench_det_")
    res: Dict[str, Any] = {"device": args.device, "size": args.size, "batch": args.batch,
                           "iters": args.iters, "threads": torch.get_num_threads(), "pairs": {}, "losses": {}}
    weights = {}
    for pair in sorted({LOSSES[n][0] for n in args.losses}):
        torch.manual_seed(0)
        weights[pair] = os.path.join(tmp, f"{pair}_teacher.pth")
        torch.save({"model": build_model(seg_bench._cfg(PAIRS[pair]["teacher"], "cpu")).state_dict()},
                   weights[pair])
        common = dict(pair=pair, size=args.size, batch=args.batch, iters=args.iters,
                      teacher_weights=weights[pair])
        res["pairs"][pair] = {
            "student_step": seg_bench.run_isolated(measure_detector, args.device, kind="student", losses=[], **common),
            "teacher_forward": seg_bench.run_isolated(measure_detector, args.device, kind="teacher", losses=[], **common),
        }
    for name in args.losses:
        pair, losses = LOSSES[name]
        base = res["pairs"][pair]
        base_t = base["student_step"]["time_s"] + base["teacher_forward"]["time_s"]
        r = seg_bench.run_isolated(measure_detector, args.device, pair=pair, kind="kd", losses=losses,
                                   size=args.size, batch=args.batch, iters=args.iters,
                                   teacher_weights=weights[pair])
        r["ratio"] = r["time_s"] / base_t
        res["losses"][name] = r
        print(f"{name:22s} step {r['time_s']:.3f}s  ratio {r['ratio']:.2f}  peak +{r['peak_mem_bytes'] / 2**20:.0f} MiB",
              flush=True)
    with open(os.path.join(args.output, "benchmark_det.json"), "w") as f:
        json.dump(res, f, indent=2)

    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    md = ["# Detector distillation cost", "",
          f"Device: {args.device} ({res['threads']} threads); demo detectors (ResNet-18 FPN, teacher ×0.5, "
          f"student ×0.25 width); batch {args.batch} of {args.size}×{args.size}; mean of {args.iters} steps "
          "after one warm-up step.", ""]
    for pair, base in res["pairs"].items():
        md.append(f"{pair}: student training step {base['student_step']['time_s']:.3f} s, teacher forward "
                  f"{base['teacher_forward']['time_s']:.3f} s.")
    md += ["", "| loss | detector | KD step (s) | KD step / (student step + teacher forward) | peak memory (MiB) |",
           "|---|---|---|---|---|"]
    for name, r in res["losses"].items():
        md.append(f"| {name} | {LOSSES[name][0]} | {r['time_s']:.3f} | {r['ratio']:.2f} | {mib(r['peak_mem_bytes'])} |")
    with open(os.path.join(args.output, "benchmark_det.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return res


if __name__ == "__main__":
    main()
