#!/usr/bin/env python
"""Convert a Detectron2 checkpoint (RetinaNet, Mask R-CNN, Cascade Mask R-CNN) into a ``bcd``
checkpoint and a ready ``bcd`` config.

    python tools/convert_detectron2.py --d2-config d2/config.yaml --input d2/model_final.pth \
        --output converted/model_final.pth
    python tools/convert_detectron2.py --config-file configs/coco/cascade_mask_rcnn_r50.yaml \
        --input d2/model_final.pth --output converted/model_final.pth [KEY VALUE ...]

With ``--d2-config`` (Detectron2's dumped ``config.yaml``) nothing is guessed: every key that
decides the model (depth, ``STRIDE_IN_1X1``, norm, FPN width and levels, class count, head
convs, anchor sizes and aspect ratios, RPN / RoI-head settings, input format, pixel statistics in
RGB order, test sizes and thresholds; ``bcd.modeling.d2_convert.config_from_detectron2``) is read
from it and set on the base config: ``--config-file``, by default the repository's
``configs/coco/Base-RetinaNet.yaml``, ``Base-CascadeMaskRCNN.yaml`` or ``mask_rcnn_r50.yaml``.
The keys that differ from the base config are printed, and the complete config is written to
``--output-config`` (default ``config.yaml`` beside ``--output``) with ``MODEL.WEIGHTS`` naming
the converted file: ``tools/train_net.py --config-file converted/config.yaml --eval-only`` runs it,
and ``KD.TEACHER.CONFIG_FILE converted/config.yaml KD.TEACHER.WEIGHTS converted/model_final.pth``
makes it a teacher. Without ``--d2-config`` the ``--config-file`` must already describe the model.

What the conversion does to the weights is in ``bcd/modeling/d2_convert.py`` (key names, BGR
stem, anchor order); the result loads strictly. Every tensor whose shape does not fit is listed
at once. Input: ``.pth`` (``{"model": state_dict}`` or a bare state dict) or Detectron2's ``.pkl``
(numpy arrays). Detectron2 files also load directly as ``MODEL.WEIGHTS`` / ``KD.TEACHER.WEIGHTS``
(the same conversion runs on the fly).
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bcd.config import CfgNode, get_cfg  # noqa: E402

# bcd meta-architecture -> the repository config a converted model is based on
BASE_CONFIGS = {
    "RetinaNet": "configs/coco/Base-RetinaNet.yaml",
    "CascadeMaskRCNN": "configs/coco/Base-CascadeMaskRCNN.yaml",
    "MaskRCNN": "configs/coco/mask_rcnn_r50.yaml",
}


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


def read_d2_config(d2_config: str) -> Dict[str, Any]:
    """Detectron2's dumped ``config.yaml`` as a dict; a missing file is an error naming it."""
    import yaml

    if not os.path.isfile(d2_config):
        raise FileNotFoundError(f"--d2-config '{d2_config}' does not exist")
    with open(d2_config) as f:
        return yaml.safe_load(f) or {}


def d2_input_settings(d2_config: str) -> Dict[str, Any]:
    """``INPUT.FORMAT``, pixel mean / std (in the checkpoint's channel order) and
    ``STRIDE_IN_1X1`` from Detectron2's config.yaml."""
    d2 = read_d2_config(d2_config)
    model = d2.get("MODEL", {})
    return {
        "format": d2.get("INPUT", {}).get("FORMAT", "BGR"),
        "mean": list(model.get("PIXEL_MEAN", [103.53, 116.28, 123.675])),
        "std": list(model.get("PIXEL_STD", [1.0, 1.0, 1.0])),
        "stride_in_1x1": bool(model.get("RESNETS", {}).get("STRIDE_IN_1X1", True)),
    }


def _node_value(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def apply_d2_config(cfg: CfgNode, values: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """Set ``values`` (``config_from_detectron2``) on ``cfg``; returns ``(key, old, new)`` of every
    key whose value changed. Ints become floats where the config holds a float."""
    changed = []
    for key, new in values.items():
        old = _node_value(cfg, key)
        if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
            new = float(new)
        if _same(old, new):
            continue
        cfg.merge_from_list([key, new])
        changed.append((key, old, new))
    return changed


def _resolve(path: str) -> str:
    return path if os.path.isfile(path) or os.path.isabs(path) else os.path.join(ROOT, path)


def _yaml_value(v: Any) -> str:
    import yaml

    return yaml.safe_dump(list(v) if isinstance(v, tuple) else v, default_flow_style=True, width=1000).strip() \
        .removesuffix("...").strip()


def main(argv: Optional[List[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", help="the bcd config of the model (default with --d2-config: "
                   "the repository's base config of its architecture)")
    p.add_argument("--input", required=True, help="Detectron2 checkpoint (.pth or .pkl)")
    p.add_argument("--output", required=True, help="where to write {'model': state_dict}")
    p.add_argument("--d2-config", default="", help="Detectron2's config.yaml of the checkpoint")
    p.add_argument("--output-config", default="", help="where to write the bcd config (with --d2-config; "
                   "default: config.yaml beside --output)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the bcd config (applied last)")
    args = p.parse_args(argv)

    from bcd.modeling import build_model
    from bcd.modeling.d2_convert import (
        config_from_detectron2,
        convert_detectron2_state_dict,
        is_detectron2_state_dict,
    )

    if not args.config_file and not args.d2_config:
        p.error("give --d2-config (Detectron2's config.yaml) or --config-file (a bcd config of the model)")
    derived = config_from_detectron2(read_d2_config(args.d2_config)) if args.d2_config else None
    base = args.config_file or BASE_CONFIGS[derived["MODEL.META_ARCHITECTURE"]]
    if not os.path.isfile(_resolve(base)):
        raise FileNotFoundError(f"Config file not found: {base}")
    cfg = get_cfg()
    cfg.merge_from_file(_resolve(base))
    changed = apply_d2_config(cfg, derived) if derived is not None else []
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.BACKBONE.WEIGHTS = ""  # every weight comes from the checkpoint
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    if len(cfg.KD.LOSSES):
        raise ValueError(f"{base} is a distillation config: give the teacher's (or student's) own config")
    out_cfg = ""
    if derived is not None:
        out_cfg = args.output_config or os.path.join(os.path.dirname(args.output) or ".", "config.yaml")
        if os.path.abspath(out_cfg) == os.path.abspath(args.d2_config):
            raise ValueError(f"--output-config {out_cfg} would overwrite --d2-config; choose another folder")
    state = read_detectron2_checkpoint(args.input)
    if not is_detectron2_state_dict(state):
        raise ValueError(f"'{args.input}' does not have Detectron2 key names (backbone.bottom_up.*, "
                         "backbone.fpn_lateral*, ...)")
    model = build_model(cfg)
    try:
        converted = convert_detectron2_state_dict(state, model, cfg.MODEL.D2_INPUT_FORMAT, args.input)
    except ValueError as e:
        if derived is None:
            raise ValueError(f"{e}\nGive --d2-config <Detectron2's config.yaml>: every model key is read "
                             "from it") from e
        raise
    model.load_state_dict(converted, strict=True)  # proves it fits
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": converted, "__converted_from__": os.path.abspath(args.input)}, args.output)
    print(f"wrote {args.output} ({len(converted)} tensors) for {cfg.MODEL.META_ARCHITECTURE}")
    if derived is not None:
        cfg.MODEL.WEIGHTS = args.output
        header = [f"# bcd config of the Detectron2 model {args.d2_config} ({args.input}), written by",
                  "# tools/convert_detectron2.py: " + base + " with these keys read from Detectron2's config",
                  *[f"#   {k}: {_yaml_value(new)}" for k, _, new in changed],
                  "# and MODEL.WEIGHTS naming the converted checkpoint."]
        os.makedirs(os.path.dirname(os.path.abspath(out_cfg)), exist_ok=True)
        with open(out_cfg, "w") as f:
            f.write("\n".join(header) + "\n" + cfg.dump())
        print(f"wrote {out_cfg}: {base} + {len(changed)} keys from {args.d2_config} "
              f"(+ MODEL.WEIGHTS {args.output}):")
        for k, old, new in changed:
            print(f"  {k}: {_yaml_value(new)}   (was {_yaml_value(old)})")
    else:
        print(f"the model follows {base}"
              + (f" with {' '.join(args.opts)}" if args.opts else "")
              + "; MODEL.D2_INPUT_FORMAT matters only for loading the unconverted file")
    return args.output


if __name__ == "__main__":
    main()
