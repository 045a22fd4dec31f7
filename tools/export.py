#!/usr/bin/env python
"""Export the deployable network of a config + weights to ONNX (and TorchScript), checked against
PyTorch with onnxruntime on real images.

    python tools/export.py --config-file configs/demo/student_pspnet_r18_w025.yaml \
        --output out/export MODEL.WEIGHTS output/demo_run/bcd/model_final.pth
    python tools/export.py --config-file X.yaml --size 512 1024 --images a.png b.png \
        --output out/export MODEL.WEIGHTS model_final.pth

A distillation config exports its student (``deploy_model()``): the teacher and the KD modules
are training-only. The graph (``bcd/utils/export.py``) takes ``images``: ``1×3×H×W`` float32 RGB
0..255 at ``--size`` and returns the raw head outputs (segmentation ``logits``; detectors'
per-level class / box outputs); post-processing stays in Python.

The check: the images given with ``--images``, else the first ``--num-images`` of the config's
first test dataset (resized to ``--size``), through PyTorch and through onnxruntime (and the
TorchScript file); the maximum absolute difference per output is printed and written to
``export_report.json``. The exit status is 1 when an output differs by more than
``--atol + --rtol·|PyTorch|`` (defaults 1e-4, 1e-3 for float32).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _tool_common import build_deployable, load_config  # noqa: E402

from bcd.utils.export import (  # noqa: E402
    DeployNetwork,
    compare_outputs,
    export_onnx,
    export_torchscript,
    load_images,
    run_onnx,
    torch_outputs,
)

logger = logging.getLogger("bcd.export")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model.onnx, model.ts, export_report.json")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                   help="input size of the exported graph (default: INPUT.CROP.SIZE for "
                   "segmentation, else MIN_SIZE_TEST × MAX_SIZE_TEST)")
    p.add_argument("--images", nargs="+", metavar="IMG", help="images for the check (default: the test dataset's)")
    p.add_argument("--num-images", type=int, default=2, help="images taken from the test dataset")
    p.add_argument("--formats", nargs="+", default=["onnx", "torchscript"], choices=["onnx", "torchscript"])
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--teacher", action="store_true", help="export the KD teacher of the config")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS ...)")
    args = p.parse_args(argv)
    # "--images a.png b.png MODEL.WEIGHTS w.pth": the image list swallows the overrides; give
    # them back from the first config key (upper-case dotted name) on
    if args.images:
        for i, item in enumerate(args.images):
            if _CONFIG_KEY.match(item):
                args.opts = args.images[i:] + list(args.opts)
                args.images = args.images[:i] or None
                break
    return args


def dataset_images(cfg, n: int) -> List[str]:
    """File names of the first ``n`` images of ``DATASETS.TEST[0]`` (registered from the config;
    a missing dataset is an error naming it and ``--images``)."""
    from bcd.data import DatasetCatalog
    from bcd.data.datasets import register_from_config

    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: give the check's images with --images")
    name = cfg.DATASETS.TEST[0]
    try:
        register_from_config(cfg, splits=("TEST",))
        dicts = DatasetCatalog.get(name)
    except (FileNotFoundError, KeyError) as e:
        raise FileNotFoundError(f"Cannot read test dataset '{name}' for the check ({e}); give --images") from e
    return [d["file_name"] for d in dicts[:n]]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Export, check, write ``export_report.json``; returns the report."""
    from analyze_model import default_size

    cfg = load_config(args.config_file, args.opts, "cpu")  # exported and checked on the CPU
    if not cfg.MODEL.WEIGHTS and not args.teacher:
        raise ValueError("MODEL.WEIGHTS is empty: export needs trained weights (MODEL.WEIGHTS path/to/model_final.pth)")
    model = build_deployable(cfg, cfg.MODEL.WEIGHTS, teacher=args.teacher)
    size = tuple(args.size or default_size(cfg))
    net = DeployNetwork(model, size).eval()
    files = args.images or dataset_images(cfg, args.num_images)
    images = load_images(files, size)
    reference = torch_outputs(net, images)
    os.makedirs(args.output, exist_ok=True)
    report: Dict[str, Any] = {
        "config": args.config_file, "weights": cfg.MODEL.WEIGHTS or cfg.KD.TEACHER.WEIGHTS,
        "model": type(model).__name__, "input": {"name": "images", "shape": ["batch", 3, *size],
                                                 "dtype": "float32", "range": "RGB 0..255"},
        "outputs": list(net.output_names), "check_images": list(files),
    }
    ok = True
    if "onnx" in args.formats:
        path = export_onnx(net, os.path.join(args.output, "model.onnx"), args.opset)
        cmp = compare_outputs(net.output_names, reference, run_onnx(path, images), args.atol, args.rtol)
        report["onnx"] = {"file": path, "opset": args.opset, **cmp}
        ok &= cmp["ok"]
        print(f"ONNX: {path}; onnxruntime vs PyTorch on {len(files)} images: max |diff| "
              f"{cmp['max_abs_diff']:.3g} ({'within' if cmp['ok'] else 'OUTSIDE'} atol {args.atol} "
              f"+ rtol {args.rtol}·|ref|)")
    if "torchscript" in args.formats:
        path = os.path.join(args.output, "model.ts")
        try:
            export_torchscript(net, path)
        except Exception as e:  # data-dependent code does not trace: report, keep the ONNX file
            report["torchscript"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"TorchScript: not traceable ({type(e).__name__}: {e})")
        else:
            traced = torch.jit.load(path)
            with torch.no_grad():  # traced at batch 1, like the ONNX graph: image by image
                per_image = [traced(im[None]) for im in images]
            ts = [torch.cat([o[i] for o in per_image]) for i in range(len(per_image[0]))]
            cmp = compare_outputs(net.output_names, reference, ts, args.atol, args.rtol)
            report["torchscript"] = {"file": path, **cmp}
            ok &= cmp["ok"]
            print(f"TorchScript: {path}; vs PyTorch: max |diff| {cmp['max_abs_diff']:.3g}")
    report["ok"] = bool(ok)
    with open(os.path.join(args.output, "export_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    report = run(parse_args(argv))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
