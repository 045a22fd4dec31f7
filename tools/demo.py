#!/usr/bin/env python
"""The README's demo: does distillation help a small student? Teacher, plain student, pixel KD
(the positive control) and BCD on the generated demo data, with paired seeds.

    python tools/demo.py                      # one seed pair: about 7 minutes on 2 CPU cores
    python tools/demo.py --seeds 8            # 8 paired seeds: mean paired differences + 95% CI
    python tools/demo.py --seeds 8 --arms plain,pixel_kd,bd,cd,both,bcd --jobs 2   # Table I ablation

Regime (a *warm-started student*, issue 8): every stage goes through ``tools/train_net.py``
(one process per run), on the GENERATED demo data (``demo_sem_seg_train`` / ``_val``, built on
first use under ``$BCD_DATASETS``, default ``./datasets``):

1. teacher: ``configs/demo/teacher_pspnet_r18.yaml`` (PSPNet, ResNet-18 ×0.5, 800 iterations)
   → ``OUT/teacher``;
2. warm start: the student ``configs/demo/student_pspnet_r18_w025.yaml`` (ResNet-18 ×0.25, 300
   iterations from random initialisation, seed 0) → ``OUT/warm_start``: the initialisation every
   student below starts from;
3. for each seed ``s`` and each arm, the student continues from the warm start for
   ``configs/demo/ft_student_pspnet_r18_w025.yaml``'s iterations with ``SEED s``: the arms of one
   seed share the initialisation, the data order and the augmentation draws (the loaders'
   generator is seeded by ``SEED``) and differ only in their loss (paired seeds,
   ``shared/design/EVIDENCE.md``). Arms (``--arms``):

   ``plain``      no distillation;
   ``pixel_kd``   pixel-wise logit KD (τ 1, λ 1), ``configs/demo/kd_student_pspnet_r18_w025.yaml``;
   ``bcd``        BCD (L_bd + L_cd + time decay), ``configs/demo/bcd_student_pspnet_r18_w025.yaml``;
   ``bd``, ``cd``, ``both``: Table I's ablation rows (L_bd alone, L_cd alone, both; without
   the decay, which ``bcd`` adds; all with the BCD config's calibration).

Each run evaluates on ``demo_sem_seg_val`` at its end: mIoU, boundary IoU (``mBIoU``) and
connectivity (``mConn``: predicted vs true connected regions per class and image, see
``bcd/evaluation/boundary.py``). The table (means over seeds; for each KD arm, the mean paired
difference to ``plain`` with its 95% t-interval) is printed and written to
``OUT/demo_report.{md,json}``. While a stage trains, the trainer's progress lines (iteration,
ETA) are printed. ``--jobs 2`` runs two students at a time (one thread each).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEACHER = "configs/demo/teacher_pspnet_r18.yaml"
WARM = "configs/demo/student_pspnet_r18_w025.yaml"
FT = "configs/demo/ft_student_pspnet_r18_w025.yaml"
PIXEL_KD = "configs/demo/kd_student_pspnet_r18_w025.yaml"
BCD = "configs/demo/bcd_student_pspnet_r18_w025.yaml"
METRICS = ("sem_seg/mIoU", "sem_seg/mBIoU", "sem_seg/mConn")
METRIC_NAMES = {"sem_seg/mIoU": "mIoU", "sem_seg/mBIoU": "boundary IoU", "sem_seg/mConn": "connectivity"}

_NO_DECAY = ["KD.BOUNDARY.SCHEDULE.NAME", "constant", "KD.CONTEXT.SCHEDULE.NAME", "constant"]
# arm -> (config, extra options, table label)
ARMS: Dict[str, Tuple[str, List[str], str]] = {
    "plain": (FT, [], "student, no KD"),
    "pixel_kd": (PIXEL_KD, [], "student + pixel KD (positive control)"),
    "bcd": (BCD, [], "student + BCD (L_bd + L_cd + decay)"),
    # Table I rows: without the time decay, which the last row (bcd) adds
    "bd": (BCD, ["KD.LOSSES", "['BoundaryDistillation']", *_NO_DECAY], "student + L_bd"),
    "cd": (BCD, ["KD.LOSSES", "['ContextDistillation']", *_NO_DECAY], "student + L_cd"),
    "both": (BCD, _NO_DECAY, "student + L_bd + L_cd (no decay)"),
}

# t(0.975, df) for the 95% two-sided interval (standard table; df > 30 uses the normal value
# corrected to second order, within 0.005 of the exact quantile)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """``t(0.975, df)``, the 95% two-sided Student-t quantile (``scipy.stats.t.ppf(0.975, df)``)."""
    if df < 1:
        raise ValueError(f"t975(): df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_summary(diffs: Sequence[float]) -> Dict[str, float]:
    """Mean, sd and 95% t-interval of paired differences (EVIDENCE.md); sd/CI NaN for one pair."""
    n = len(diffs)
    mean = statistics.mean(diffs) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "lo": float("nan"), "hi": float("nan")}
    sd = statistics.stdev(diffs)
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def verdict(s: Dict[str, float]) -> str:
    """EVIDENCE.md wording: "helps" / "hurts" only when the interval excludes 0."""
    if s["n"] < 2 or math.isnan(s["lo"]):
        return "one pair: no interval"
    if s["lo"] > 0:
        return "helps"
    if s["hi"] < 0:
        return "hurts"
    return "no measurable difference"


class Run:
    """One ``tools/train_net.py`` process whose log is followed for progress lines."""

    def __init__(self, name: str, config: str, output_dir: str, opts: List[str], log: str,
                 threads: Optional[int] = None) -> None:
        self.name, self.output_dir, self.log = name, output_dir, log
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config,
               *opts, "OUTPUT_DIR", output_dir]
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        print(f"[demo] {name}: {' '.join(cmd[2:])}", flush=True)
        self._f = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._f, stderr=subprocess.STDOUT, env=env)
        self.t0 = time.time()
        self._seen = 0

    def progress(self) -> None:
        """Print the trainer's new ``eta: ... iter: ...`` lines (from ``OUTPUT_DIR/log.txt``)."""
        path = os.path.join(self.output_dir, "log.txt")
        if not os.path.isfile(path):
            return
        with open(path, errors="replace") as f:
            lines = f.readlines()
        for line in lines[self._seen:]:
            if " eta: " in line and " iter: " in line:
                msg = line.split(" eta: ", 1)[1].split("  ")
                keep = [m for m in msg if m.startswith(("iter:", "total_loss:"))]
                print(f"[demo]   {self.name}: eta {msg[0]}  " + "  ".join(keep), flush=True)
            elif "copypaste: " in line and "mIoU" not in line:
                pass
        self._seen = len(lines)

    def finish(self) -> Dict[str, float]:
        from bcd.distill.report import read_metrics

        self._f.close()
        if self.proc.returncode != 0:
            with open(self.log, errors="replace") as f:
                tail = f.read()[-4000:]
            raise RuntimeError(f"training failed ({self.name}); end of {self.log}:\n{tail}")
        met = read_metrics(self.output_dir) or {}
        met["wall_time_s"] = time.time() - self.t0
        print(f"[demo]   {self.name} done in {met['wall_time_s']:.0f}s: "
              + ", ".join(f"{METRIC_NAMES[k]} {met[k]:.2f}" for k in METRICS if k in met), flush=True)
        return met


def run_all(jobs: List[Tuple[str, str, str, List[str]]], out: str, parallel: int) -> Dict[str, Dict[str, float]]:
    """Run ``(name, config, output_dir, opts)`` jobs, ``parallel`` at a time; metrics by name.

    A job whose ``OUTPUT_DIR`` already holds final metrics is not run again (``--resume-demo``)."""
    from bcd.distill.report import read_metrics

    results: Dict[str, Dict[str, float]] = {}
    pending = list(jobs)
    running: List[Run] = []
    threads = 1 if parallel > 1 else None
    while pending or running:
        while pending and len(running) < parallel:
            name, config, odir, opts = pending.pop(0)
            done = read_metrics(odir) if os.path.isfile(os.path.join(odir, "model_final.pth")) else None
            if done and all(k in done for k in METRICS):
                print(f"[demo] {name}: reusing finished run in {odir}", flush=True)
                results[name] = done
                continue
            running.append(Run(name, config, odir, opts, os.path.join(out, f"{name}.log"), threads))
        time.sleep(2.0)
        for r in list(running):
            r.progress()
            if r.proc.poll() is not None:
                r.progress()
                results[r.name] = r.finish()
                running.remove(r)
    return results


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


def _mean_sd(values: List[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _diff(s: Dict[str, float]) -> str:
    if s["n"] < 2:
        return f"{s['mean']:+.2f}"
    return f"{s['mean']:+.2f} [{s['lo']:+.2f}, {s['hi']:+.2f}]"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1, help="number of paired seeds (0..N-1)")
    ap.add_argument("--start-seed", type=int, default=0, help="first seed")
    ap.add_argument("--arms", default="plain,pixel_kd,bcd",
                    help=f"comma-separated arms of {sorted(ARMS)} ('plain' is always run)")
    ap.add_argument("--jobs", type=int, default=1, help="students trained at a time (1 thread each if > 1)")
    ap.add_argument("--output-dir", default="output/demo_run")
    ap.add_argument("--teacher-iters", type=int, default=0,
                    help="override the teacher's SOLVER.MAX_ITER (the --*-iters options also cap "
                         "SOLVER.WARMUP_ITERS at half the run)")
    ap.add_argument("--warm-iters", type=int, default=0, help="override the warm start's SOLVER.MAX_ITER")
    ap.add_argument("--student-iters", type=int, default=0, help="override the arms' SOLVER.MAX_ITER")
    ap.add_argument("--reuse", action="store_true",
                    help="keep finished runs in OUTPUT (teacher, warm start, arms) instead of retraining")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for the KD arms")
    args = ap.parse_args(argv)

    arms = ["plain"] + [a for a in args.arms.split(",") if a and a != "plain"]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; choose from {sorted(ARMS)}")
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    if not args.reuse:
        import shutil

        for d in os.listdir(out):  # stale runs would be reused by run_all
            p = os.path.join(out, d)
            if os.path.isdir(p):
                shutil.rmtree(p)
    t_start = time.time()
    seeds = list(range(args.start_seed, args.start_seed + args.seeds))

    teacher_dir, warm_dir = os.path.join(out, "teacher"), os.path.join(out, "warm_start")
    def it(n: int, config: str = WARM) -> List[str]:
        """Override SOLVER.MAX_ITER; a short run also gets a warm-up of at most half of it."""
        if not n:
            return []
        from bcd.config import get_cfg

        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, config))
        return ["SOLVER.MAX_ITER", str(n), "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, n // 2))]

    # Teacher and warm start do not depend on each other: run them side by side with --jobs 2.
    stage1 = run_all([("teacher", TEACHER, teacher_dir, it(args.teacher_iters, TEACHER)),
                      ("warm_start", WARM, warm_dir, ["SEED", "0", *it(args.warm_iters)])],
                     out, min(2, args.jobs))
    t_met = stage1["teacher"]
    teacher_w, warm_w = os.path.join(teacher_dir, "model_final.pth"), os.path.join(warm_dir, "model_final.pth")

    jobs = []
    for seed in seeds:
        for arm in arms:
            config, extra, _ = ARMS[arm]
            opts = ["MODEL.WEIGHTS", warm_w, "SEED", str(seed), *it(args.student_iters, config), *extra]
            if arm != "plain":
                opts += ["KD.TEACHER.WEIGHTS", teacher_w, "KD.TEACHER_OUTPUT_DIR", teacher_dir,
                         "KD.BASELINE_OUTPUT_DIR", os.path.join(out, f"plain_seed{seed}"),
                         *list(args.opts or [])]
            jobs.append((f"{arm}_seed{seed}", config, os.path.join(out, f"{arm}_seed{seed}"), opts))
    res = run_all(jobs, out, max(1, args.jobs))

    size = (128, 128)
    t_cx, s_cx = complexity(TEACHER, size), complexity(WARM, size)
    head = ["model", "mIoU", "boundary IoU", "connectivity", "params (M)", "GFLOPs (128×128)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, mets, cx):
        vals = [_mean_sd([m[k] for m in mets if k in m]) for k in METRICS]
        flops = f"{cx['flops'] / 1e9:.3f}" if cx["flops"] is not None else "–"
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {cx['params'] / 1e6:.3f} | {flops} |")

    row("teacher (PSPNet R18×0.5, 800 it.)", [t_met], t_cx)
    row("warm start (student, 300 it., seed 0)", [stage1["warm_start"]], s_cx)
    table: Dict[str, Any] = {"teacher": t_met, "warm_start": stage1["warm_start"], "arms": {}}
    for arm in arms:
        mets = [res[f"{arm}_seed{s}"] for s in seeds]
        row(ARMS[arm][2], mets, s_cx)
        table["arms"][arm] = {"runs": mets}

    dlines = ["| arm − plain (paired, mean [95% CI]) | " + " | ".join(METRIC_NAMES[k] for k in METRICS)
              + " | verdict (mIoU) |", "|" + "---|" * (len(METRICS) + 2)]
    for arm in arms[1:]:
        sums = {}
        for k in METRICS:
            d = [res[f"{arm}_seed{s}"][k] - res[f"plain_seed{s}"][k] for s in seeds
                 if k in res[f"{arm}_seed{s}"] and k in res[f"plain_seed{s}"]]
            sums[k] = paired_summary(d)
            sums[k]["diffs"] = d
        table["arms"][arm]["paired_difference"] = sums
        dlines.append(f"| {ARMS[arm][2]} | " + " | ".join(_diff(sums[k]) for k in METRICS)
                      + f" | {verdict(sums['sem_seg/mIoU'])} |")
    step = {arm: statistics.mean(res[f"{arm}_seed{s}"]["wall_time_s"] for s in seeds)
            for arm in arms if all("wall_time_s" in res[f"{arm}_seed{s}"] for s in seeds)}
    elapsed = time.time() - t_start
    text = "\n".join([
        f"Demo on GENERATED data (demo_sem_seg_val, 60 images); {len(seeds)} paired seed(s) "
        f"{seeds[0]}..{seeds[-1]} of the students (mean ± sd over seeds); students continue from "
        "one warm start.", "", *lines, "", *dlines, "",
        "Mean wall time of one student run (s): " + ", ".join(f"{a} {t:.0f}" for a, t in step.items()),
        f"Wall time: {elapsed / 60:.1f} min.", ""])
    print("\n" + text, flush=True)
    rep = {"seeds": seeds, "arms": arms, "table": table, "wall_time_s": elapsed,
           "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if argv is None else "tools/demo.py",
                                *(sys.argv[1:] if argv is None else argv)]),
           "params": {"teacher": t_cx, "student": s_cx}}
    with open(os.path.join(out, "demo_report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    with open(os.path.join(out, "demo_report.md"), "w") as f:
        f.write(text)
    return rep


if __name__ == "__main__":
    main()
