#!/usr/bin/env python
"""Paired-seed evidence for SKD on the GENERATED demo data (docs: projects/skd/README.md).

    python projects/skd/run_evidence.py                       # sod + cod, 5 seeds, 3 methods
    python projects/skd/run_evidence.py --seeds 8 --methods inference skd byot dks
    python projects/skd/run_evidence.py --eval-only           # re-evaluate every model_final.pth

For task t in ``--tasks``, seed s and method m it trains ``configs/demo/skd_demo_<t>_<m>.yaml``
with ``SEED s`` through ``tools/train_net.py`` (one process per run, ``--jobs`` at a time) into
``OUT/<t>/<m>_seed<s>``. Runs of one seed share the initialisation of the inference network
(it is built before the auxiliary network), the data order and the augmentation draws: only
the training losses differ (EVIDENCE.md "paired seeds"). Then, per metric, the paired
difference d_s = metric(m, s) − metric(inference, s) is summarised by its mean, standard
deviation and 95% t-interval (``scipy.stats.t``); the table goes to ``OUT/evidence.{md,json}``.

``--eval-only`` runs ``train_net.py --eval-only MODEL.WEIGHTS <run>/model_final.pth`` for every
run and checks that the figures equal those recorded at the end of training.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = ("object_seg/Sm", "object_seg/maxF", "object_seg/wF", "object_seg/maxE", "object_seg/MAE")


def _metrics_file(path: str) -> Dict[str, float]:
    """The last line of ``metrics.json`` that holds ``object_seg/*`` figures."""
    best: Dict[str, float] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if any(k.startswith("object_seg/") for k in rec):
                best = {k: float(v) for k, v in rec.items() if k.startswith("object_seg/")}
    return best


def _run(cmd: List[str], log: str, env: Dict[str, str]) -> float:
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"failed: {' '.join(cmd)}\n{tail}")
    return time.time() - t0


def train_one(task: str, method: str, seed: int, out: str, extra: List[str], env) -> Dict[str, float]:
    run_dir = os.path.join(out, task, f"{method}_seed{seed}")
    done = os.path.join(run_dir, "model_final.pth")
    if not os.path.isfile(done):
        cfg = os.path.join(ROOT, "configs", "demo", f"skd_demo_{task}_{method}.yaml")
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", cfg,
               "SEED", str(seed), "OUTPUT_DIR", run_dir, *extra]
        os.makedirs(run_dir, exist_ok=True)
        secs = _run(cmd, os.path.join(run_dir, "run.log"), env)
        with open(os.path.join(run_dir, "wall_seconds.txt"), "w") as f:
            f.write(f"{secs:.1f}\n")
    met = _metrics_file(os.path.join(run_dir, "metrics.json"))
    print(f"[skd] {task} {method} seed {seed}: " + ", ".join(f"{k.split('/')[1]} {met[k]:.4f}" for k in METRICS if k in met), flush=True)
    return met


def eval_one(task: str, method: str, seed: int, out: str, env) -> Dict[str, float]:
    run_dir = os.path.join(out, task, f"{method}_seed{seed}")
    ev_dir = os.path.join(run_dir, "eval_only")
    cfg = os.path.join(ROOT, "configs", "demo", f"skd_demo_{task}_{method}.yaml")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", cfg, "--eval-only",
           "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"), "OUTPUT_DIR", ev_dir]
    _run(cmd, os.path.join(run_dir, "eval_only.log"), env)
    with open(_find(ev_dir, "object_seg_evaluation.json")) as f:
        res = json.load(f)["metrics"]
    return {f"object_seg/{k}": float(v) for k, v in res.items()}


def _find(folder: str, name: str) -> str:
    for root, _, files in os.walk(folder):
        if name in files:
            return os.path.join(root, name)
    raise FileNotFoundError(f"no {name} under {folder}")


def t_interval(diffs: List[float]) -> Dict[str, Optional[float]]:
    """Mean, sd and 95% t-interval of paired differences (EVIDENCE.md)."""
    from scipy.stats import t

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "lo": None, "hi": None}
    sd = statistics.stdev(diffs)
    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def verdict(ci: Dict[str, Optional[float]], lower_is_better: bool) -> str:
    if ci["lo"] is None:
        return "n < 2"
    lo, hi = ci["lo"], ci["hi"]
    if lower_is_better:
        lo, hi = -hi, -lo
    if lo > 0:
        return "helps"
    if hi < 0:
        return "hurts"
    return "no measurable difference"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "output", "skd_evidence"))
    p.add_argument("--tasks", nargs="+", default=["sod", "cod"])
    p.add_argument("--methods", nargs="+", default=["inference", "skd", "byot"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--start-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = p.parse_args()
    if "inference" not in args.methods:
        args.methods.insert(0, "inference")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    seeds = list(range(args.start_seed, args.start_seed + args.seeds))
    jobs = [(t, m, s) for s in seeds for t in args.tasks for m in args.methods]
    t0 = time.time()
    results: Dict[tuple, Dict[str, float]] = {}
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(train_one, t, m, s, args.out, list(args.opts), env): (t, m, s) for t, m, s in jobs}
        for fut in cf.as_completed(futs):
            results[futs[fut]] = fut.result()
    if args.eval_only:
        mismatches = []
        with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futs = {pool.submit(eval_one, t, m, s, args.out, env): (t, m, s) for t, m, s in jobs}
            for fut in cf.as_completed(futs):
                key, ev = futs[fut], fut.result()
                for k in METRICS:
                    if not math.isclose(ev[k], results[key][k], rel_tol=1e-6, abs_tol=1e-9):
                        mismatches.append(f"{key} {k}: trained {results[key][k]} vs eval-only {ev[k]}")
        print("[skd] --eval-only reproduces every figure" if not mismatches else "\n".join(mismatches))
        if mismatches:
            sys.exit(1)
        return

    table: Dict[str, Dict] = {}
    lines = [f"# SKD evidence on GENERATED demo data ({len(seeds)} paired seeds, {time.time() - t0:.0f} s)", ""]
    for task in args.tasks:
        table[task] = {}
        lines += [f"## {task.upper()}", "", "| method | " + " | ".join(k.split("/")[1] for k in METRICS) + " |",
                  "|---" * (len(METRICS) + 1) + "|"]
        for m in args.methods:
            means = [statistics.fmean(results[(task, m, s)][k] for s in seeds) for k in METRICS]
            lines.append(f"| {m} (mean) | " + " | ".join(f"{v:.4f}" for v in means) + " |")
        lines += ["", "Paired difference vs the inference network alone (mean [95% t-interval]):", "",
                  "| method | " + " | ".join(k.split("/")[1] for k in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for m in args.methods:
            if m == "inference":
                continue
            cells, table[task][m] = [], {}
            for k in METRICS:
                diffs = [results[(task, m, s)][k] - results[(task, "inference", s)][k] for s in seeds]
                ci = t_interval(diffs)
                ci["verdict"] = verdict(ci, lower_is_better=k.endswith("MAE"))
                ci["diffs"] = diffs
                table[task][m][k] = ci
                cells.append(f"{ci['mean']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}] {ci['verdict']}"
                             if ci["lo"] is not None else f"{ci['mean']:+.4f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if "skd" in args.methods and "byot" in args.methods:
            # the paper's second claim: SKD beats the self-distillation baselines (BYOT here)
            cells, table[task]["skd-byot"] = [], {}
            for k in METRICS:
                diffs = [results[(task, "skd", s)][k] - results[(task, "byot", s)][k] for s in seeds]
                ci = t_interval(diffs)
                ci["verdict"] = verdict(ci, lower_is_better=k.endswith("MAE"))
                table[task]["skd-byot"][k] = dict(ci, diffs=diffs)
                cells.append(f"{ci['mean']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}] {ci['verdict']}"
                             if ci["lo"] is not None else f"{ci['mean']:+.4f}")
            lines.append("| skd − byot | " + " | ".join(cells) + " |")
        lines.append("")
    walls = {}
    for t, m, s in jobs:
        wf = os.path.join(args.out, t, f"{m}_seed{s}", "wall_seconds.txt")
        if os.path.isfile(wf):
            walls.setdefault(m, []).append(float(open(wf).read()))
    lines.append("Wall time per run (s, mean; shared, loaded CPU): "
                 + ", ".join(f"{m} {statistics.fmean(v):.0f}" for m, v in walls.items()))
    md = "\n".join(lines) + "\n"
    print(md)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "evidence.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "evidence.json"), "w") as f:
        json.dump({"seeds": seeds, "methods": args.methods, "tasks": args.tasks, "opts": args.opts,
                   "per_run": {f"{t}/{m}/seed{s}": v for (t, m, s), v in results.items()},
                   "paired": table}, f, indent=1)


if __name__ == "__main__":
    main()
