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

# The demo's teacher-student pairs: the configs of each stage and arm. Replicate 0 of a pair uses the
# paths written in its configs (``output/demo_run`` for the default pair).
PAIRS: Dict[str, Dict[str, str]] = {
    "deeplabv3plus": {
        "teacher": "configs/demo/teacher_deeplabv3plus_r18.yaml",
        "warm": "configs/demo/student_deeplabv3plus_r18_w025.yaml",
        "ft": "configs/demo/ft_student_deeplabv3plus_r18_w025.yaml",
        "pixel_kd": "configs/demo/kd_student_deeplabv3plus_r18_w025.yaml",
        "bcd": "configs/demo/bcd_student_deeplabv3plus_r18_w025.yaml",
        "apd": "configs/demo/apd_student_deeplabv3plus_r18_w025.yaml",
        "apd_logit_kd": "configs/demo/apd_logit_kd_student_deeplabv3plus_r18_w025.yaml",
        "apd_bcd": "configs/demo/apd_bcd_student_deeplabv3plus_r18_w025.yaml",
        "output_dir": "output/demo_run",
        "teacher_label": "teacher (DeepLabV3+ R18×0.5)",
        "student_label": "warm start (DeepLabV3+ R18×0.25)",
    },
    "pspnet": {
        "teacher": "configs/demo/teacher_pspnet_r18.yaml",
        "warm": "configs/demo/student_pspnet_r18_w025.yaml",
        "ft": "configs/demo/ft_student_pspnet_r18_w025.yaml",
        "pixel_kd": "configs/demo/kd_student_pspnet_r18_w025.yaml",
        "bcd": "configs/demo/bcd_student_pspnet_r18_w025.yaml",
        "apd": "configs/demo/apd_student_pspnet_r18_w025.yaml",
        "apd_logit_kd": "configs/demo/apd_logit_kd_student_pspnet_r18_w025.yaml",
        "apd_bcd": "configs/demo/apd_bcd_student_pspnet_r18_w025.yaml",
        "output_dir": "output/demo_pspnet",
        "teacher_label": "teacher (PSPNet R18×0.5)",
        "student_label": "warm start (PSPNet R18×0.25)",
    },
}
DEFAULT_PAIR = "deeplabv3plus"

_NO_DECAY = ["KD.BOUNDARY.SCHEDULE.NAME", "constant", "KD.CONTEXT.SCHEDULE.NAME", "constant"]
_BCD_ONLY = ["KD.LOSSES", "['BoundaryDistillation', 'ContextDistillation']"]


def arms_of(pair: str) -> Dict[str, Tuple[str, List[str], str]]:
    """``arm -> (config, extra options, table label)`` of one pair."""
    p = PAIRS[pair]
    bcd = p["bcd"]
    return {
        "plain": (p["ft"], [], "student, no KD"),
        "pixel_kd": (p["pixel_kd"], [], "student + pixel KD (positive control)"),
        "bcd": (bcd, [], "student + BCD (recommended recipe)"),
        # Table I rows: BCD's two terms without the time decay, which bcd_paper adds
        "bd": (bcd, ["KD.LOSSES", "['BoundaryDistillation']", *_NO_DECAY], "student + L_bd"),
        "cd": (bcd, ["KD.LOSSES", "['ContextDistillation']", *_NO_DECAY], "student + L_cd"),
        "both": (bcd, [*_BCD_ONLY, *_NO_DECAY], "student + L_bd + L_cd (no decay)"),
        "bcd_paper": (bcd, _BCD_ONLY, "student + L_bd + L_cd + decay"),
        "bcd_kd": (bcd, ["KD.LOSSES", "['BoundaryDistillation', 'ContextDistillation', 'PixelKD']"],
                   "student + BCD + pixel KD"),
        # APD (projects/apd/README.md): the authors' recipe, its logit term alone, and APD + BCD
        "apd": (p["apd"], [], "student + APD"),
        "apd_logit_kd": (p["apd_logit_kd"], [], "student + APD's logit KD alone"),
        "apd_bcd": (p["apd_bcd"], [], "student + APD + BCD"),
    }


ARMS = arms_of(DEFAULT_PAIR)
TEACHER, WARM, FT = (PAIRS[DEFAULT_PAIR][k] for k in ("teacher", "warm", "ft"))
PIXEL_KD, BCD = PAIRS[DEFAULT_PAIR]["pixel_kd"], PAIRS[DEFAULT_PAIR]["bcd"]


def _iters(n: int, config: str) -> List[str]:
    """Override ``SOLVER.MAX_ITER``; a short run also gets a warm-up of at most half of it."""
    if not n:
        return []
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, config))
    return ["SOLVER.MAX_ITER", str(n), "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, n // 2))]


def complexity_notes(pair: str = DEFAULT_PAIR, size: Tuple[int, int] = (128, 128)) -> List[str]:
    """Params and FLOPs (``bcd.utils.analysis.count_flops``: the test-time forward counted by
    ``flop_count``, a multiply-add = 2 FLOPs) of the demo teacher and student."""
    from bcd.config import get_cfg
    from bcd.modeling import build_model
    from bcd.utils.analysis import count_flops, count_params

    rows = []
    for name, config in (("teacher", PAIRS[pair]["teacher"]), ("student", PAIRS[pair]["warm"])):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, config))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        flops = count_flops(model, size)
        rows.append(f"{name} {count_params(model) / 1e6:.3f} M parameters, "
                    + (f"{flops / 1e9:.3f} GFLOPs" if flops is not None else "FLOPs not counted")
                    + f" at {size[0]}×{size[1]}")
    return ["Models: " + "; ".join(rows) + " (test-time forward; one multiply-add = 2 FLOPs)."]


def build_spec(args: argparse.Namespace, argv: Optional[List[str]] = None) -> evidence.Spec:
    """The evidence design of the demo from ``build_parser()``'s arguments."""
    p, table = PAIRS[args.pair], arms_of(args.pair)
    arms = ["plain"] + [a for a in args.arms.split(",") if a and a != "plain"]
    unknown = [a for a in arms if a not in table]
    if unknown:
        raise SystemExit(f"demo.py: unknown arm(s) {unknown}; choose from {sorted(table)}")
    kd_opts = list(args.opts or [])
    if len(kd_opts) % 2:
        raise SystemExit(f"demo.py: KEY VALUE overrides come in pairs; '{kd_opts[-1]}' has no value")

    def arm(name: str) -> evidence.Arm:
        config, extra, label = table[name]
        return evidence.Arm(name, config, list(extra), label, name != "plain")

    compare = [(a, "pixel_kd") for a in arms if a not in ("plain", "pixel_kd") and "pixel_kd" in arms
               and (a.startswith("bcd") or a.startswith("apd"))]
    compare += evidence.parse_compare(args.compare, arms)
    cmd = "python tools/demo.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return evidence.Spec(
        plain=arm("plain"), arms=[arm(a) for a in arms[1:]], output_dir=args.output_dir or p["output_dir"],
        teacher=p["teacher"], teacher_opts=_iters(args.teacher_iters, p["teacher"]),
        warm_start=p["warm"], warm_opts=_iters(args.warm_iters, p["warm"]),
        student_opts=_iters(args.student_iters, p["ft"]), kd_opts=kd_opts,
        replicates=args.replicates, seeds=args.seeds, teachers=args.teachers, jobs=args.jobs,
        reuse=args.reuse, cpu_isa=args.cpu_isa, compare=compare, report_name="demo_report",
        title="Demo on GENERATED data (demo_sem_seg_val): does distillation help the small student?",
        command=cmd.strip(), labels={"teacher": p["teacher_label"], "warm_start": p["student_label"]},
        notes=complexity_notes(args.pair))


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default=DEFAULT_PAIR, choices=sorted(PAIRS),
                    help="teacher-student pair (default: the DeepLabV3+ pair; pspnet: the earlier demo)")
    ap.add_argument("--replicates", type=int, default=1, help="replicates: teacher and warm start re-trained in each")
    ap.add_argument("--seeds", type=int, default=3, help="paired seeds per replicate")
    ap.add_argument("--teachers", type=int, default=0, help="distinct teachers (default: one per replicate)")
    ap.add_argument("--arms", default="plain,pixel_kd,bcd", help=f"comma-separated arms of {sorted(ARMS)}")
    ap.add_argument("--compare", action="append", default=[], metavar="A-B", help="extra comparison A − B")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each if > 1)")
    ap.add_argument("--output-dir", default="", help="default: output/demo_run (output/demo_pspnet for --pair pspnet)")
    ap.add_argument("--teacher-iters", type=int, default=0, help="override the teacher's SOLVER.MAX_ITER")
    ap.add_argument("--warm-iters", type=int, default=0, help="override the warm start's SOLVER.MAX_ITER")
    ap.add_argument("--student-iters", type=int, default=0, help="override the arms' SOLVER.MAX_ITER")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs with the same config and overrides")
    ap.add_argument("--cpu-isa", default="default", choices=sorted(evidence.CPU_ISA_ENV),
                    help="'avx2': run with AVX2 kernels, as a machine without AVX-512 would")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for the KD arms")
    return ap


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    return evidence.run(build_spec(args, argv))


if __name__ == "__main__":
    main()
