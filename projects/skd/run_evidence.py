#!/usr/bin/env python
"""Paired evidence for SKD on the GENERATED demo data: ``tools/evidence.py`` per task (docs:
projects/skd/README.md).

    python projects/skd/run_evidence.py                               # sod + cod, 8 replicates, 96 px
    python projects/skd/run_evidence.py --replicates 8 --methods skd byot dks
    python projects/skd/run_evidence.py --size 48                     # the earlier 48 px setting
    python projects/skd/run_evidence.py --eval-only                   # re-evaluate every model_final.pth

For each task ``t`` of ``--tasks`` it runs ``tools/evidence.py``'s design with the inference network
alone (``configs/demo/skd_demo_<t>_inference.yaml``) as the plain arm and each method
``configs/demo/skd_demo_<t>_<m>.yaml`` as an arm, into ``OUT/<t>/``. Self-distillation has no
teacher and no warm start, so a replicate is one seed: the arms of a seed share the inference
network's initialisation (it is built before the auxiliary network), the data order and the
augmentation draws, and only the losses differ. Input size ``--size`` (train and test; default 96:
the coarsest pyramid map, res5 at 1/32, is 3×3, not the 2×2 of the 48 px setting). The report of
each task (``OUT/<t>/evidence_report.{md,json}``) compares every method with the inference network
alone and SKD with BYOT (MAE: lower is better).

``--eval-only`` runs ``train_net.py --eval-only MODEL.WEIGHTS <run>/model_final.pth`` for every
finished run and checks that the figures equal those recorded at the end of training.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import evidence  # noqa: E402  (tools/evidence.py)


def spec_for(task: str, args: argparse.Namespace) -> evidence.Spec:
    """The evidence design of one task."""
    cfg = lambda m: f"configs/demo/skd_demo_{task}_{m}.yaml"  # noqa: E731
    size = f"[{args.size}, {args.size}]"
    methods = [m for m in args.methods if m != "inference"]
    compare = [("skd", "byot")] if {"skd", "byot"} <= set(methods) else []
    return evidence.Spec(
        plain=evidence.Arm("inference", cfg("inference"), [], "inference network alone"),
        arms=[evidence.Arm(m, cfg(m), [], f"+ {m.upper()}" + (" (reconstruction)" if m == "skd" else ""))
              for m in methods],
        output_dir=os.path.join(args.out, task), replicates=args.replicates, seeds=1, jobs=args.jobs,
        reuse=args.reuse, cpu_isa=args.cpu_isa, compare=compare,
        student_opts=["INPUT.OBJECT_SEG.TRAIN_SIZE", size, "INPUT.OBJECT_SEG.TEST_SIZE", size, *args.opts],
        title=f"SKD evidence on GENERATED {task.upper()} demo data ({args.size} px)",
        command="python projects/skd/run_evidence.py " + " ".join(sys.argv[1:]))


def eval_only(spec: evidence.Spec) -> List[str]:
    """Re-evaluate every finished run of ``spec``; the mismatches with its training-time figures."""
    bad = []
    for job in evidence.plan(spec):
        rec = evidence.finished(job, spec.cpu_isa)
        if rec is None:
            bad.append(f"{job.name}: not finished")
            continue
        out = os.path.join(job.out_dir, "eval_only")
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
               os.path.join(ROOT, job.config), "--eval-only", *job.opts,
               "MODEL.WEIGHTS", os.path.join(job.out_dir, "model_final.pth"), "OUTPUT_DIR", out]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        from bcd.distill.report import read_metrics

        again = read_metrics(out)
        for k, v in rec["metrics"].items():
            if k.startswith("object_seg/") and not math.isclose(again.get(k, float("nan")), v, rel_tol=1e-6, abs_tol=1e-9):
                bad.append(f"{job.name} {k}: trained {v} vs --eval-only {again.get(k)}")
    return bad


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "output", "skd_evidence"))
    p.add_argument("--tasks", nargs="+", default=["sod", "cod"], choices=["sod", "cod"])
    p.add_argument("--methods", nargs="+", default=["skd", "byot"], choices=["inference", "skd", "byot", "dks"])
    p.add_argument("--replicates", type=int, default=8, help="replicates (one paired seed each)")
    p.add_argument("--size", type=int, default=96, help="train and test input size (px)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    p.add_argument("--reuse", action="store_true", help="keep finished runs")
    p.add_argument("--cpu-isa", default="default", choices=sorted(evidence.CPU_ISA_ENV))
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = p.parse_args(argv)
    if args.eval_only:
        bad = [m for t in args.tasks for m in eval_only(spec_for(t, args))]
        print("[skd] --eval-only reproduces every figure" if not bad else "\n".join(bad))
        if bad:
            sys.exit(1)
        return {}
    return {t: evidence.run(spec_for(t, args)) for t in args.tasks}


if __name__ == "__main__":
    main()
