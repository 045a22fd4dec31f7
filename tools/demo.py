#!/usr/bin/env python
"""The README's demo: teacher, plain student and BCD student on the generated demo data.

    python tools/demo.py                      # one seed, about 10 minutes on 2 CPU cores
    python tools/demo.py --seeds 3            # plain and BCD students for seeds 0, 1, 2: means
    python tools/demo.py --seeds 2 --start-seed 1 --reuse-teacher   # add seeds 1, 2 to a run

All training and evaluation goes through ``tools/train_net.py`` (one process per run):

1. ``configs/demo/teacher_pspnet_r18.yaml`` (PSPNet, ResNet-18 ×0.5) → ``OUT/teacher``;
2. ``configs/demo/student_pspnet_r18_w025.yaml`` (ResNet-18 ×0.25), no distillation
   → ``OUT/student_seed<k>``;
3. ``configs/demo/bcd_student_pspnet_r18_w025.yaml``: the same student with BCD (boundary +
   context distillation, time decay) from the teacher of step 1 → ``OUT/bcd_seed<k>``
   (it writes its own ``kd_report.md``).

Each run evaluates on ``demo_sem_seg_val`` at its end (mIoU and boundary IoU of the semantic
segmentation evaluator). The table (mIoU, boundary IoU, params, FLOPs of a 128×128 input) is
printed and written to ``OUT/demo_report.{md,json}``. The demo data (GENERATED, not a real
dataset) is built on first use under ``$BCD_DATASETS`` (default ``./datasets``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEACHER = "configs/demo/teacher_pspnet_r18.yaml"
STUDENT = "configs/demo/student_pspnet_r18_w025.yaml"
BCD = "configs/demo/bcd_student_pspnet_r18_w025.yaml"
METRICS = ("sem_seg/mIoU", "sem_seg/mBIoU")


def train(config: str, output_dir: str, opts: List[str], log) -> Dict[str, float]:
    """Run ``tools/train_net.py`` and return the final metrics of ``output_dir/metrics.json``."""
    from bcd.distill.report import read_metrics

    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config,
           *opts, "OUTPUT_DIR", output_dir]
    t0 = time.time()
    print(f"[demo] {' '.join(cmd[1:])}", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"training failed ({config}); end of {log}:\n{tail}")
    met = read_metrics(output_dir)
    print(f"[demo]   done in {time.time() - t0:.0f}s: "
          + ", ".join(f"{k} {met[k]:.2f}" for k in METRICS if k in met), flush=True)
    return met


def complexity(config: str, size) -> Dict[str, Optional[float]]:
    """Params and FLOPs (fvcore) of the model of ``config`` on one ``size`` input."""
    from bcd.config import get_cfg
    from bcd.distill.report import count_flops, count_params
    from bcd.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.KD.LOSSES = []
    model = build_model(cfg)
    return {"params": count_params(model), "flops": count_flops(model, size)}


def _mean_std(values: List[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds of the two students")
    ap.add_argument("--output-dir", default="output/demo_run")
    ap.add_argument("--teacher-iters", type=int, default=0, help="override SOLVER.MAX_ITER (0: config)")
    ap.add_argument("--student-iters", type=int, default=0, help="override SOLVER.MAX_ITER (0: config)")
    ap.add_argument("--reuse-teacher", action="store_true", help="keep OUT/teacher if it is trained")
    ap.add_argument("--start-seed", type=int, default=0,
                    help="train seeds start..start+seeds-1; seeds below start are read from OUT "
                         "(finished runs of an earlier call), so the table covers them all")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for all runs")
    args = ap.parse_args(argv)

    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    common = list(args.opts or [])
    t_opts = common + (["SOLVER.MAX_ITER", str(args.teacher_iters)] if args.teacher_iters else [])
    s_opts = common + (["SOLVER.MAX_ITER", str(args.student_iters)] if args.student_iters else [])

    teacher_dir = os.path.join(out, "teacher")
    teacher_w = os.path.join(teacher_dir, "model_final.pth")
    if args.reuse_teacher and os.path.isfile(teacher_w):
        from bcd.distill.report import read_metrics

        t_met = read_metrics(teacher_dir)
    else:
        t_met = train(TEACHER, teacher_dir, t_opts, os.path.join(out, "teacher.log"))

    plain: List[Dict[str, float]] = []
    bcd: List[Dict[str, float]] = []
    from bcd.distill.report import read_metrics

    for seed in range(args.start_seed):
        earlier = [read_metrics(os.path.join(out, f"{kind}_seed{seed}")) for kind in ("student", "bcd")]
        if not all(earlier):
            raise FileNotFoundError(f"--start-seed {args.start_seed}: no finished runs of seed {seed} in {out}")
        plain.append(earlier[0])
        bcd.append(earlier[1])
    for seed in range(args.start_seed, args.start_seed + args.seeds):
        sd = os.path.join(out, f"student_seed{seed}")
        plain.append(train(STUDENT, sd, s_opts + ["SEED", str(seed)], os.path.join(out, f"student_seed{seed}.log")))
        bd = os.path.join(out, f"bcd_seed{seed}")
        bcd.append(train(BCD, bd, s_opts + ["SEED", str(seed), "KD.TEACHER.WEIGHTS", teacher_w,
                                             "KD.TEACHER_OUTPUT_DIR", teacher_dir,
                                             "KD.BASELINE_OUTPUT_DIR", sd],
                         os.path.join(out, f"bcd_seed{seed}.log")))

    size = (128, 128)
    t_cx, s_cx = complexity(TEACHER, size), complexity(STUDENT, size)
    rows = [("teacher (PSPNet R18×0.5)", [t_met], t_cx),
            ("student (R18×0.25), no KD", plain, s_cx),
            ("student (R18×0.25) + BCD", bcd, s_cx)]
    head = ["model", "mIoU", "boundary IoU", "params (M)", "GFLOPs (128×128)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table = []
    for name, mets, cx in rows:
        vals = {m: [r[m] for r in mets if m in r] for m in METRICS}
        flops = f"{cx['flops'] / 1e9:.3f}" if cx["flops"] is not None else "–"
        lines.append(f"| {name} | {_mean_std(vals['sem_seg/mIoU'])} | {_mean_std(vals['sem_seg/mBIoU'])} | "
                     f"{cx['params'] / 1e6:.3f} | {flops} |")
        table.append({"name": name, "runs": mets, "params": cx["params"], "flops": cx["flops"]})
    gains = {m: [b[m] - p[m] for b, p in zip(bcd, plain) if m in b and m in p] for m in METRICS}
    summary = ", ".join(f"{m.split('/')[1]} {_mean_std(v)}" for m, v in gains.items() if v)
    elapsed = time.time() - t_start
    text = "\n".join([
        f"Demo on GENERATED data (demo_sem_seg_val, 60 images), {len(plain)} seed(s) of the students "
        + ("(mean ± std over seeds)" if len(plain) > 1 else ""), "", *lines, "",
        f"BCD − plain student: {summary}" if summary else "", f"Wall time: {elapsed / 60:.1f} min.", ""])
    print("\n" + text)
    rep = {"seeds": len(plain), "rows": table, "gain": gains, "wall_time_s": elapsed}
    with open(os.path.join(out, "demo_report.json"), "w") as f:
        json.dump(rep, f, indent=2)
    with open(os.path.join(out, "demo_report.md"), "w") as f:
        f.write(text)
    return rep


if __name__ == "__main__":
    main()
