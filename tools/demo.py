#!/usr/bin/env python
"""The README's demo: does distillation help a small student? ``tools/evidence.py`` on the demo configs.

    python tools/demo.py                                  # 1 replicate x 3 paired seeds, 2 runs at a time
    python tools/demo.py --replicates 8 --seeds 1         # the evidence design: 8 re-trained replicates
    python tools/demo.py --replicates 8 --seeds 1 --cpu-isa avx2   # the same, as an AVX2 machine
    python tools/demo.py --arms plain,pixel_kd,bd,cd,both,bcd      # Table I's ablation rows

On the GENERATED demo data (``demo_sem_seg_train`` / ``_val``, built on first use under
``$BCD_DATASETS``, default ``./datasets``), every stage through ``tools/train_net.py``, for each
replicate ``r`` (``OUT/rep<r>/``):

1. teacher: ``configs/demo/teacher_pspnet_r18.yaml`` (PSPNet, ResNet-18 x0.5) -> ``teacher/``;
2. warm start: ``configs/demo/student_pspnet_r18_w025.yaml`` (ResNet-18 x0.25 from random
   initialisation) -> ``warm_start/``: the initialisation every student of the replicate starts from;
3. for each paired seed ``s``, every arm continues the warm start with
   ``configs/demo/ft_student_pspnet_r18_w025.yaml``'s schedule and ``SEED s`` -> ``<arm>_seed<s>/``.

Replicate 0 uses exactly the paths and seeds written in the demo configs, so after the demo each
config runs as printed (e.g. ``train_net.py --config-file configs/demo/bcd_student_pspnet_r18_w025.yaml
--eval-only MODEL.WEIGHTS output/demo_run/rep0/bcd_seed0/model_final.pth``). Arms (``--arms``):
``plain`` (no distillation), ``pixel_kd`` (pixel-wise logit KD, the positive control),
``bcd`` (the recommended BCD recipe, ``configs/demo/bcd_student_pspnet_r18_w025.yaml``), Table I's
``bd`` / ``cd`` / ``both`` (L_bd, L_cd, both without the decay) and ``bcd_paper`` (L_bd + L_cd +
decay alone), ``apd`` / ``apd_logit_kd`` / ``apd_bcd`` (APD's recipe, its logit term alone, APD + BCD).
The report (``OUT/demo_report.{md,json}``): each model's mean +- sd, every arm against
``plain`` and every BCD / APD arm against ``pixel_kd`` (replicate-level paired differences with their 95%
interval, ``docs/evidence.md``), the plain arm's spread, per-class IoU, seeds, params and FLOPs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import evidence  # noqa: E402  (tools/evidence.py)

TEACHER = "configs/demo/teacher_pspnet_r18.yaml"
WARM = "configs/demo/student_pspnet_r18_w025.yaml"
FT = "configs/demo/ft_student_pspnet_r18_w025.yaml"
PIXEL_KD = "configs/demo/kd_student_pspnet_r18_w025.yaml"
BCD = "configs/demo/bcd_student_pspnet_r18_w025.yaml"
APD = "configs/demo/apd_student_pspnet_r18_w025.yaml"
APD_LOGIT_KD = "configs/demo/apd_logit_kd_student_pspnet_r18_w025.yaml"
APD_BCD = "configs/demo/apd_bcd_student_pspnet_r18_w025.yaml"

_NO_DECAY = ["KD.BOUNDARY.SCHEDULE.NAME", "constant", "KD.CONTEXT.SCHEDULE.NAME", "constant"]
_BCD_ONLY = ["KD.LOSSES", "['BoundaryDistillation', 'ContextDistillation']"]
# arm -> (config, extra options, table label)
ARMS: Dict[str, Tuple[str, List[str], str]] = {
    "plain": (FT, [], "student, no KD"),
    "pixel_kd": (PIXEL_KD, [], "student + pixel KD (positive control)"),
    "bcd": (BCD, [], "student + BCD (recommended recipe)"),
    # Table I rows: BCD's two terms without the time decay, which bcd_paper adds
    "bd": (BCD, ["KD.LOSSES", "['BoundaryDistillation']", *_NO_DECAY], "student + L_bd"),
    "cd": (BCD, ["KD.LOSSES", "['ContextDistillation']", *_NO_DECAY], "student + L_cd"),
    "both": (BCD, [*_BCD_ONLY, *_NO_DECAY], "student + L_bd + L_cd (no decay)"),
    "bcd_paper": (BCD, _BCD_ONLY, "student + L_bd + L_cd + decay"),
    "bcd_kd": (BCD, ["KD.LOSSES", "['BoundaryDistillation', 'ContextDistillation', 'PixelKD']"],
               "student + BCD + pixel KD"),
    # APD (projects/apd/README.md): the authors' recipe, its logit term alone, and APD + BCD
    "apd": (APD, [], "student + APD"),
    "apd_logit_kd": (APD_LOGIT_KD, [], "student + APD's logit KD alone"),
    "apd_bcd": (APD_BCD, [], "student + APD + BCD"),
}


def _iters(n: int, config: str) -> List[str]:
    """Override ``SOLVER.MAX_ITER``; a short run also gets a warm-up of at most half of it."""
    if not n:
        return []
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, config))
    return ["SOLVER.MAX_ITER", str(n), "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, n // 2))]


def complexity_notes(size: Tuple[int, int] = (128, 128)) -> List[str]:
    """Params and FLOPs (``bcd.utils.analysis.count_flops``: the test-time forward counted by
    ``flop_count``, a multiply-add = 2 FLOPs) of the demo teacher and student."""
    from bcd.config import get_cfg
    from bcd.modeling import build_model
    from bcd.utils.analysis import count_flops, count_params

    rows = []
    for name, config in (("teacher", TEACHER), ("student", WARM)):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, config))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        flops = count_flops(model, size)
        rows.append(f"{name} {count_params(model) / 1e6:.3f} M parameters, "
                    + (f"{flops / 1e9:.3f} GFLOPs" if flops is not None else "FLOPs not counted")
                    + f" at {size[0]}×{size[1]}")
    return ["Models: " + "; ".join(rows) + " (test-time forward; one multiply-add = 2 FLOPs)."]


def build_spec(args: argparse.Namespace, argv: Optional[List[str]]) -> evidence.Spec:
    arms = ["plain"] + [a for a in args.arms.split(",") if a and a != "plain"]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"demo.py: unknown arm(s) {unknown}; choose from {sorted(ARMS)}")
    kd_opts = list(args.opts or [])
    if len(kd_opts) % 2:
        raise SystemExit(f"demo.py: KEY VALUE overrides come in pairs; '{kd_opts[-1]}' has no value")

    def arm(name: str) -> evidence.Arm:
        config, extra, label = ARMS[name]
        return evidence.Arm(name, config, list(extra), label, name != "plain")

    compare = [(a, "pixel_kd") for a in arms if a not in ("plain", "pixel_kd") and "pixel_kd" in arms
               and (a.startswith("bcd") or a.startswith("apd"))]
    compare += evidence.parse_compare(args.compare, arms)
    cmd = "python tools/demo.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return evidence.Spec(
        plain=arm("plain"), arms=[arm(a) for a in arms[1:]], output_dir=args.output_dir,
        teacher=TEACHER, teacher_opts=_iters(args.teacher_iters, TEACHER),
        warm_start=WARM, warm_opts=_iters(args.warm_iters, WARM),
        student_opts=_iters(args.student_iters, FT), kd_opts=kd_opts,
        replicates=args.replicates, seeds=args.seeds, teachers=args.teachers, jobs=args.jobs,
        reuse=args.reuse, cpu_isa=args.cpu_isa, compare=compare, report_name="demo_report",
        title="Demo on GENERATED data (demo_sem_seg_val): does distillation help the small student?",
        command=cmd.strip(), labels={"teacher": "teacher (PSPNet R18×0.5)", "warm_start": "warm start (student R18×0.25)"},
        notes=complexity_notes())


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=1, help="replicates: teacher and warm start re-trained in each")
    ap.add_argument("--seeds", type=int, default=3, help="paired seeds per replicate")
    ap.add_argument("--teachers", type=int, default=0, help="distinct teachers (default: one per replicate)")
    ap.add_argument("--arms", default="plain,pixel_kd,bcd", help=f"comma-separated arms of {sorted(ARMS)}")
    ap.add_argument("--compare", action="append", default=[], metavar="A-B", help="extra comparison A − B")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each if > 1)")
    ap.add_argument("--output-dir", default="output/demo_run")
    ap.add_argument("--teacher-iters", type=int, default=0, help="override the teacher's SOLVER.MAX_ITER")
    ap.add_argument("--warm-iters", type=int, default=0, help="override the warm start's SOLVER.MAX_ITER")
    ap.add_argument("--student-iters", type=int, default=0, help="override the arms' SOLVER.MAX_ITER")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs with the same config and overrides")
    ap.add_argument("--cpu-isa", default="default", choices=sorted(evidence.CPU_ISA_ENV),
                    help="'avx2': run with AVX2 kernels, as a machine without AVX-512 would")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for the KD arms")
    args = ap.parse_args(argv)
    return evidence.run(build_spec(args, argv))


if __name__ == "__main__":
    main()
