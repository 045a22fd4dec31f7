#!/usr/bin/env python
"""APD vs the plain student vs the APD recipe's logit KD on the generated demo data, paired seeds.

    python projects/apd/demo_compare.py --teacher output/demo_run/rep0/teacher/model_final.pth \
        --warm-start output/demo_run/rep0/warm_start/model_final.pth --out output/apd_demo --seeds 0 1 2
    python projects/apd/demo_compare.py ... --report-only

The demo regime of ``tools/demo.py``: the demo teacher (``configs/demo/teacher_pspnet_r18.yaml``)
and the warm start (the plain student of ``configs/demo/student_pspnet_r18_w025.yaml`` after its
300 iterations), both trained by ``tools/demo.py`` (or by hand). Every arm continues from the warm
start for 150 iterations through ``tools/train_net.py`` (one process each, evaluated on
``demo_sem_seg_val`` at its end) with ``SEED <k>``:

* ``plain``: ``configs/demo/ft_student_pspnet_r18_w025.yaml`` (no distillation);
* ``pixel_kd``: ``configs/demo/kd_student_pspnet_r18_w025.yaml`` (the demo's pixel KD: CIRKD's
  τ = 1, λ = 1, mean over pixels);
* ``logit_kd``: ``configs/demo/apd_logit_kd_student_pspnet_r18_w025.yaml`` (APD's L_kl alone);
* ``apd``: ``configs/demo/apd_student_pspnet_r18_w025.yaml`` (L_kl + L_ap + L_pa, Tr_S / Tr_T).

A finished run (its ``metrics.json`` has ``sem_seg/mIoU``) is not trained again (a run of another
tool with the same config, seed, teacher and warm start can be linked in as ``<variant>_seed<k>``).
The report gives per-seed mIoU / boundary IoU and, for each pair of variants, the mean paired
difference over the seeds both finished, with its 95% Student-t interval (docs/evidence.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

VARIANTS = {
    "plain": "configs/demo/ft_student_pspnet_r18_w025.yaml",
    "pixel_kd": "configs/demo/kd_student_pspnet_r18_w025.yaml",
    "logit_kd": "configs/demo/apd_logit_kd_student_pspnet_r18_w025.yaml",
    "apd": "configs/demo/apd_student_pspnet_r18_w025.yaml",
}
METRICS = ("sem_seg/mIoU", "sem_seg/mBIoU")
PAIRS = (("apd", "plain"), ("pixel_kd", "plain"), ("apd", "pixel_kd"), ("logit_kd", "plain"),
         ("apd", "logit_kd"))


def run(variant: str, seed: int, teacher: str, warm: str, out: str, extra: List[str]) -> Dict[str, float]:
    """Train one variant for one seed (skipped when already finished); its final metrics."""
    from bcd.distill.report import read_metrics

    d = os.path.join(out, f"{variant}_seed{seed}")
    met = read_metrics(d)
    if "sem_seg/mIoU" in met:
        return met
    opts = ["SEED", str(seed), "OUTPUT_DIR", d, "MODEL.WEIGHTS", warm, *extra]
    if variant != "plain":
        opts += ["KD.TEACHER.WEIGHTS", teacher, "KD.BASELINE_OUTPUT_DIR", os.path.join(out, f"plain_seed{seed}")]
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", VARIANTS[variant], *opts]
    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{variant}_seed{seed}.log"), "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed} failed; see {out}/{variant}_seed{seed}.log")
    met = read_metrics(d)
    print(f"[apd demo] {variant} seed {seed}: {time.time() - t0:.0f}s, "
          + ", ".join(f"{k} {met.get(k, float('nan')):.2f}" for k in METRICS), flush=True)
    return met


def t_interval(diffs: List[float]) -> Dict[str, float]:
    """Mean of paired differences and its two-sided 95% Student-t interval (n - 1 dof)."""
    from scipy import stats

    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "lo": float("nan"), "hi": float("nan")}
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / n ** 0.5
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half}


def report(out: str, seeds: List[int]) -> Dict:
    """Collect the finished runs of ``out`` and write ``out/apd_demo_report.{json,md}``."""
    from bcd.distill.report import read_metrics

    res = {v: {s: read_metrics(os.path.join(out, f"{v}_seed{s}")) for s in seeds} for v in VARIANTS}
    done = {v: [s for s in seeds if "sem_seg/mIoU" in res[v][s]] for v in VARIANTS}
    lines = ["| variant | " + " | ".join(f"seed {s} mIoU / BIoU" for s in seeds) + " | mean mIoU (n) |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for v in VARIANTS:
        if not done[v]:
            continue
        cells = [f"{res[v][s]['sem_seg/mIoU']:.2f} / {res[v][s]['sem_seg/mBIoU']:.2f}" if s in done[v] else "—"
                 for s in seeds]
        mean = statistics.fmean(res[v][s]["sem_seg/mIoU"] for s in done[v])
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {mean:.2f} ({len(done[v])}) |")
    summary = {}
    lines += ["", "Paired differences (mean over the seeds both arms finished, 95% t-interval):", ""]
    for a, b in PAIRS:
        both = [s for s in done[a] if s in done[b]]
        if not both:
            continue
        for m in METRICS:
            ci = t_interval([res[a][s][m] - res[b][s][m] for s in both])
            ci["seeds"] = both
            summary[f"{a}-{b}/{m}"] = ci
            lines.append(f"* {a} − {b}, {m}: {ci['mean']:+.2f} [{ci['lo']:+.2f}, {ci['hi']:+.2f}] "
                         f"(n = {ci['n']}, seeds {both})")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "apd_demo_report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "apd_demo_report.json"), "w") as f:
        json.dump({"runs": {v: {str(s): res[v][s] for s in done[v]} for v in VARIANTS}, "paired": summary},
                  f, indent=1)
    print(text)
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="the demo teacher's model_final.pth")
    p.add_argument("--warm-start", required=True, help="the warm-start student's model_final.pth")
    p.add_argument("--out", default="output/apd_demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra KEY VALUE overrides for every run")
    a = p.parse_args(argv)
    if not a.report_only:
        for flag, path in (("--teacher", a.teacher), ("--warm-start", a.warm_start)):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{flag} {path} does not exist (run tools/demo.py first)")
        for s in a.seeds:
            for v in a.variants:
                run(v, s, a.teacher, a.warm_start, a.out, a.opts)
    report(a.out, a.seeds)


if __name__ == "__main__":
    main()
