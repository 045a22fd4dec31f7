#!/usr/bin/env python
"""Parameters, FLOPs and activations per module, and latency / throughput, of a config's model.

    python tools/analyze_model.py --config-file configs/cityscapes/pspnet_r18.yaml --size 512 1024
    python tools/analyze_model.py --config-file X.yaml --tasks latency --device cuda --batch-size 8
    python tools/analyze_model.py --config-file configs/cityscapes/bcd_pspnet_r18.yaml --teacher

The model is the deployable one (a distillation config's student; ``--teacher`` its teacher,
from ``KD.TEACHER.CONFIG_FILE`` + ``KD.TEACHER.OPTS``), built without the ImageNet file. No file
of weights is needed: ``MODEL.WEIGHTS`` (``KD.TEACHER.WEIGHTS`` with ``--teacher``) is loaded
when it exists (trained weights matter for data-dependent work: a detector's RoI heads run on
the proposals and detections of the image) and skipped with a warning when it does not.
FLOPs and activations are those of the model's test-time forward (``model(inputs)`` in eval
mode) on one synthetic image, counted by ``bcd.utils.analysis`` as ``kd_report`` and
``tools/benchmark.py`` count them: FLOPs with a multiply-add = 2 (fvcore / Detectron2's
analyze_model count it as 1, i.e. half). Modules with parameters that did not run on the image
are named in the output as not counted. Latency is the median over ``--iters`` timed runs after
``--warmup`` untimed ones, end to end (``model(inputs)``, post-processing included) and for the
network alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _tool_common import build_deployable, load_config  # noqa: E402

from bcd.utils.analysis import FLOP_UNIT, analyze_model, format_analysis, measure_latency  # noqa: E402

TASKS = ("flop", "activation", "parameter", "latency")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                   help="what to measure (default: all)")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                   help="input size (default: INPUT.CROP.SIZE for semantic segmentation, else "
                   "MIN_SIZE_TEST × MAX_SIZE_TEST)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="images per timed run")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--iters", type=int, default=10, help="timed runs (the median is reported)")
    p.add_argument("--depth", type=int, default=2, help="module depth of the table")
    p.add_argument("--teacher", action="store_true", help="analyse the KD teacher of the config")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def default_size(cfg) -> List[int]:
    """The input size the config trains / tests at: the crop for semantic segmentation, the
    shorter × longer test side for detectors (Detectron2's analyze_model uses real images; a
    fixed size makes numbers comparable across models)."""
    if cfg.MODEL.META_ARCHITECTURE in ("SemanticSegmentor", "Mask2FormerSegmentor", "ObjectSegmentor") and cfg.INPUT.CROP.SIZE:
        return [int(v) for v in cfg.INPUT.CROP.SIZE]
    return [int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Build the model, measure the ``--tasks``, print the table; returns the numbers."""
    cfg = load_config(args.config_file, args.opts, args.device)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {cfg.MODEL.DEVICE}: CUDA is not available")
    # Counting needs no weights: a missing MODEL.WEIGHTS / KD.TEACHER.WEIGHTS file is a warning
    # (the teacher is built from its config alone); trained weights matter only for the latency
    # of data-dependent post-processing.
    model = build_deployable(cfg, "" if args.teacher else cfg.MODEL.WEIGHTS, teacher=args.teacher,
                             missing_ok=True)
    size = args.size or default_size(cfg)
    out: Dict[str, Any] = {"config": args.config_file, "model": type(model).__name__,
                           "teacher": bool(args.teacher), "input_size": list(size)}
    want = set(args.tasks)
    if want & {"flop", "activation", "parameter"}:
        a = analyze_model(model, size, activations="activation" in want)
        out.update(params=a.params, flops=a.flops, flop_unit=FLOP_UNIT, activations=a.activations,
                   flops_by_operator=a.by_operator,
                   not_run=[{"module": n, "params": p} for n, p in a.not_run],
                   by_module=a.by_module)
        print(f"{type(model).__name__} ({args.config_file}{', teacher' if args.teacher else ''}), "
              f"input 3×{size[0]}×{size[1]}")
        print(f"params {a.params / 1e6:.3f} M   FLOPs {a.flops / 1e9:.3f} G (a multiply-add = 2)"
              + (f"   activations {a.activations / 1e6:.3f} M" if a.activations else ""))
        print(format_analysis(a, args.depth))
    if "latency" in want:
        out["latency"] = {}
        for mode in ("inference", "network"):
            lat = measure_latency(model, size, batch_size=args.batch_size, warmup=args.warmup,
                                  iters=args.iters, mode=mode)
            out["latency"][mode] = lat
            print(f"latency ({mode}, {lat['device']}, batch {lat['batch_size']}): median "
                  f"{lat['median_ms']:.2f} ms (min {lat['min_ms']:.2f}, max {lat['max_ms']:.2f}, "
                  f"{lat['iters']} runs after {lat['warmup']} warm-up), "
                  f"{lat['images_per_s']:.1f} images/s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
