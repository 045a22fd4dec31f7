#!/usr/bin/env python
"""Export the deployable network of a config + weights to ONNX (and TorchScript), checked against
PyTorch with onnxruntime on real images, at the export size and at a second one.

    python tools/export.py --config-file configs/demo/ft_student_deeplabv3plus_r18_w025.yaml \
        --output output/export MODEL.WEIGHTS output/demo_run/rep0/plain_seed0/model_final.pth
    python tools/export.py --config-file X.yaml --size 512 1024 --dynamic --images a.png b.png \
        --output out/export MODEL.WEIGHTS model_final.pth

A distillation config exports its student (``deploy_model()``): the teacher and the KD modules
are training-only, and no teacher file is read. The graph (``bcd/utils/export.py``) takes
``images``: ``1×3×H×W`` float32 RGB 0..255 at ``--size`` (with ``--dynamic``: any batch, height
and width) and returns the raw head outputs (segmentation ``logits``; detectors' per-level class
/ box outputs); post-processing stays in Python. TorchScript (``model.ts``) is traced at
``1×3×H×W``; it is saved as it is when the trace gives PyTorch's outputs at the second size and
batch 3 (shape-generic), else wrapped so that any other shape raises an error.

The check: the images given with ``--images``, else the first ``--num-images`` of the config's
first test dataset, resized to ``--size``, through PyTorch, onnxruntime and the TorchScript file;
then at ``--check-size`` (default ``H-3 × W+3``) as a batch of 3: a dynamic ONNX file and a
shape-generic TorchScript file must match PyTorch there too, a fixed-size one must refuse that
input. The maximum absolute difference per output and what was exported and checked are
written to ``export_report.json``. The exit status is 1 when an output differs by more than
``--atol + --rtol·|PyTorch|`` (defaults 1e-4, 1e-3 for float32) or a fixed-size file accepts
another size.
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
    onnx_input_shape,
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
    p.add_argument("--dynamic", action="store_true",
                   help="ONNX with dynamic batch, height and width (default: fixed 1×3×H×W)")
    p.add_argument("--check-size", nargs=2, type=int, metavar=("H", "W"),
                   help="the second size of the check (default: H-3 × W+3 of --size)")
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


def _batch_of(images, n: int):
    """``n`` images (the given ones repeated) as one batch."""
    return torch.cat([images] * -(-n // len(images)))[:n]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Export, check, write ``export_report.json``; returns the report."""
    from analyze_model import default_size

    cfg = load_config(args.config_file, args.opts, "cpu")  # exported and checked on the CPU
    if not cfg.MODEL.WEIGHTS and not args.teacher:
        raise ValueError("MODEL.WEIGHTS is empty: export needs trained weights (MODEL.WEIGHTS path/to/model_final.pth)")
    model = build_deployable(cfg, cfg.MODEL.WEIGHTS, teacher=args.teacher)
    size = tuple(args.size or default_size(cfg))
    second = tuple(args.check_size or (max(8, size[0] - 3), size[1] + 3))
    net = DeployNetwork(model, size).eval()
    files = args.images or dataset_images(cfg, args.num_images)
    images = load_images(files, size)
    images2 = _batch_of(load_images(files, second), 3)  # the second check: batch 3, another size
    reference = torch_outputs(net, images)
    reference2 = torch_outputs(net, images2)
    os.makedirs(args.output, exist_ok=True)
    shape = ["batch", 3, "height", "width"] if args.dynamic else [1, 3, *size]
    report: Dict[str, Any] = {
        "config": args.config_file, "weights": cfg.MODEL.WEIGHTS or cfg.KD.TEACHER.WEIGHTS,
        "model": type(model).__name__, "size": list(size),
        "input": {"name": "images", "onnx_shape": shape, "dtype": "float32", "range": "RGB 0..255"},
        "outputs": list(net.output_names), "check_images": list(files),
        "checks": {"export_size": [len(files), 3, *size], "second_size": [3, 3, *second]},
    }
    ok = True
    tol = f"atol {args.atol} + rtol {args.rtol}·|ref|"
    if "onnx" in args.formats:
        path = export_onnx(net, os.path.join(args.output, "model.onnx"), args.opset, dynamic=args.dynamic)
        cmp = compare_outputs(net.output_names, reference, run_onnx(path, images), args.atol, args.rtol)
        entry: Dict[str, Any] = {"file": path, "opset": args.opset, "input_shape": onnx_input_shape(path),
                                 "dynamic": bool(args.dynamic), **cmp}
        ok &= cmp["ok"]
        if args.dynamic:
            cmp2 = compare_outputs(net.output_names, reference2, run_onnx(path, images2), args.atol, args.rtol)
            entry["second_size"] = cmp2
            ok &= cmp2["ok"]
            second_txt = f"at 3×3×{second[0]}×{second[1]} max |diff| {cmp2['max_abs_diff']:.3g}"
        else:
            try:
                run_onnx(path, images2)
            except Exception as e:  # noqa: BLE001 - onnxruntime's own error is the expected answer
                entry["second_size"] = {"refused": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                second_txt = f"refuses 1×3×{second[0]}×{second[1]} (fixed input 1×3×{size[0]}×{size[1]})"
            else:
                entry["second_size"] = {"refused": None}
                ok = False
                second_txt = f"ACCEPTED 1×3×{second[0]}×{second[1]} although its input is fixed"
        report["onnx"] = entry
        print(f"ONNX: {path} (input {entry['input_shape']}); onnxruntime vs PyTorch on {len(files)} images: "
              f"max |diff| {cmp['max_abs_diff']:.3g} ({'within' if cmp['ok'] else 'OUTSIDE'} {tol}); {second_txt}")
    if "torchscript" in args.formats:
        path = os.path.join(args.output, "model.ts")
        try:
            ts_info = export_torchscript(net, path, check_sizes=[(3, *second)])
        except Exception as e:  # data-dependent code does not trace: report, keep the ONNX file
            report["torchscript"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"TorchScript: not traceable ({type(e).__name__}: {e})")
        else:
            traced = torch.jit.load(path)
            with torch.no_grad():  # traced at batch 1: image by image
                per_image = [traced(im[None]) for im in images]
            ts = [torch.cat([o[i] for o in per_image]) for i in range(len(per_image[0]))]
            cmp = compare_outputs(net.output_names, reference, ts, args.atol, args.rtol)
            entry = {**ts_info, **cmp}
            ok &= cmp["ok"]
            if ts_info["shape_generic"]:
                with torch.no_grad():
                    cmp2 = compare_outputs(net.output_names, reference2, list(traced(images2)), args.atol, args.rtol)
                entry["second_size"] = cmp2
                ok &= cmp2["ok"]
                second_txt = f"shape-generic: at 3×3×{second[0]}×{second[1]} max |diff| {cmp2['max_abs_diff']:.3g}"
            else:
                try:
                    with torch.no_grad():
                        traced(images2)
                except (RuntimeError, torch.jit.Error) as e:
                    entry["second_size"] = {"refused": str(e).strip().splitlines()[-1][:300]}
                    second_txt = f"fixed size ({ts_info['mismatch']}): refuses other shapes"
                else:
                    entry["second_size"] = {"refused": None}
                    ok = False
                    second_txt = "fixed size, but ACCEPTED another shape"
            report["torchscript"] = entry
            print(f"TorchScript: {path}; vs PyTorch: max |diff| {cmp['max_abs_diff']:.3g}; {second_txt}")
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
