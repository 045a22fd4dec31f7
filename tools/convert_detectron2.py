#!/usr/bin/env python
"""Convert a Detectron2 checkpoint (RetinaNet, Mask R-CNN, Cascade Mask R-CNN) for a ``bcd`` config.

    python tools/convert_detectron2.py --config-file configs/coco/cascade_mask_rcnn_r50.yaml \
        --input d2/model_final.pth --output converted/model_final.pth [--d2-config d2/config.yaml] \
        [KEY VALUE ...]

The config decides the model the weights must fit (architecture, classes, widths, anchors). What
the conversion does is in ``bcd/modeling/d2_convert.py`` (key names, BGR stem, anchor order).
With ``--d2-config`` (Detectron2's dumped ``config.yaml``) the input format and the pixel mean /
std are read from it and the ``bcd`` config keys the converted model needs are printed (pixel
statistics in RGB order, ``MODEL.RESNETS.STRIDE_IN_1X1``); the result loads strictly through
``MODEL.WEIGHTS`` or ``KD.TEACHER.WEIGHTS`` (Detectron2 files also load there directly: the same
conversion runs on the fly). Input: ``.pth`` (``{"model": state_dict}`` or a bare state dict) or
Detectron2's ``.pkl`` (numpy arrays).
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bcd.config import get_cfg  # noqa: E402


def read_detectron2_checkpoint(path: str) -> Dict[str, Any]:
    """The state dict of a Detectron2 ``.pth`` / ``.pkl`` file; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Detectron2 checkpoint '{path}' does not exist")
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
        else:
            data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"Cannot read Detectron2 checkpoint '{path}': {type(e).__name__}: {e}") from e
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"'{path}' holds no state dict")
    return state


def d2_input_settings(d2_config: str) -> Dict[str, Any]:
    """``INPUT.FORMAT``, pixel mean / std (in the checkpoint's channel order) and
    ``STRIDE_IN_1X1`` from Detectron2's config.yaml."""
    import yaml

    with open(d2_config) as f:
        d2 = yaml.safe_load(f)
    model = d2.get("MODEL", {})
    return {
        "format": d2.get("INPUT", {}).get("FORMAT", "BGR"),
        "mean": list(model.get("PIXEL_MEAN", [103.53, 116.28, 123.675])),
        "std": list(model.get("PIXEL_STD", [1.0, 1.0, 1.0])),
        "stride_in_1x1": bool(model.get("RESNETS", {}).get("STRIDE_IN_1X1", True)),
    }


def main(argv: List[str] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the bcd config of the model")
    p.add_argument("--input", required=True, help="Detectron2 checkpoint (.pth or .pkl)")
    p.add_argument("--output", required=True, help="where to write {'model': state_dict}")
    p.add_argument("--d2-config", default="", help="Detectron2's config.yaml of the checkpoint")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the bcd config")
    args = p.parse_args(argv)

    from bcd.modeling import build_model
    from bcd.modeling.d2_convert import convert_detectron2_state_dict, is_detectron2_state_dict

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.BACKBONE.WEIGHTS = ""  # every weight comes from the checkpoint
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    if len(cfg.KD.LOSSES):
        raise ValueError(f"{args.config_file} is a distillation config: give the teacher's (or student's) own config")
    settings = d2_input_settings(args.d2_config) if args.d2_config else None
    if settings:
        cfg.MODEL.D2_INPUT_FORMAT = settings["format"]
    model = build_model(cfg)
    state = read_detectron2_checkpoint(args.input)
    if not is_detectron2_state_dict(state):
        raise ValueError(f"'{args.input}' does not have Detectron2 key names (backbone.bottom_up.*, "
                         "backbone.fpn_lateral*, ...)")
    converted = convert_detectron2_state_dict(state, model, cfg.MODEL.D2_INPUT_FORMAT, args.input)
    model.load_state_dict(converted, strict=True)  # proves it fits
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": converted, "__converted_from__": os.path.abspath(args.input)}, args.output)
    print(f"wrote {args.output} ({len(converted)} tensors) for {cfg.MODEL.META_ARCHITECTURE}")
    if settings:
        rgb = settings["format"] == "BGR"
        mean = settings["mean"][::-1] if rgb else settings["mean"]
        std = settings["std"][::-1] if rgb else settings["std"]
        print("bcd config keys for this checkpoint:")
        print(f"  MODEL.PIXEL_MEAN: {mean}\n  MODEL.PIXEL_STD: {std}")
        print(f"  MODEL.RESNETS.STRIDE_IN_1X1: {settings['stride_in_1x1']}")
        print(f"  MODEL.D2_INPUT_FORMAT: {settings['format']}  (only for loading the unconverted file)")
    return args.output


if __name__ == "__main__":
    main()
