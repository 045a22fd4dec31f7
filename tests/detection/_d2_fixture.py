"""Helpers for the Detectron2 fixture tests: build our model for a fixture folder, run it."""
from __future__ import annotations

import os
from typing import Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# BCD_D2_FIXTURES: another folder of fixtures made the same way (other photos, other seed)
FIXTURES = os.environ.get("BCD_D2_FIXTURES") or os.path.join(os.path.dirname(REPO), "shared", "fixtures", "detectron2")


def d2_cfg(kind: str):
    """Our config of the fixture's model: ``bcd.modeling.d2_convert.config_from_detectron2`` of
    its Detectron2 ``config.yaml`` on the defaults (``get_cfg()``), on the CPU."""
    import yaml

    from bcd.config import get_cfg
    from bcd.modeling.d2_convert import config_from_detectron2

    d2 = yaml.safe_load(open(os.path.join(FIXTURES, kind, "config.yaml")))
    cfg = get_cfg()
    for key, value in config_from_detectron2(d2).items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def convert_with_tool(kind: str, out_dir: str):
    """``tools/convert_detectron2.py --d2-config ... --input ... --output out_dir/model_final.pth``
    (the repository's base config of the architecture); returns ``(config path, printed text)``."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("convert_detectron2", os.path.join(REPO, "tools", "convert_detectron2.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tool.main(["--d2-config", os.path.join(FIXTURES, kind, "config.yaml"),
                   "--input", os.path.join(FIXTURES, kind, "model_final.pth"),
                   "--output", os.path.join(out_dir, "model_final.pth")])
    return os.path.join(out_dir, "config.yaml"), buf.getvalue()


def load_model(kind: str):
    """Our model for the fixture, weights through the automatic Detectron2 path, fp32, eval."""
    from bcd.engine.checkpoint import Checkpointer
    from bcd.modeling import build_model

    cfg = d2_cfg(kind)
    model = build_model(cfg)
    Checkpointer(model).load(os.path.join(FIXTURES, kind, "model_final.pth"))
    return model.float().eval(), cfg


def reference(kind: str) -> Dict:
    return torch.load(os.path.join(FIXTURES, kind, "reference.pt"), weights_only=True)


def inputs(ref: Dict) -> List[Dict]:
    """Our input dicts (RGB) of the fixture's BGR images, at their own size."""
    out = []
    for img in ref["images_bgr"]:
        out.append({"image": img.flip(0).contiguous(), "height": img.shape[1], "width": img.shape[2]})
    return out


def match_detections(ours, ref_boxes, ref_scores, ref_classes, iou_min: float = 0.99):
    """Greedy one-to-one matching of reference detections (by score) to ours: same class, box
    IoU >= iou_min. Returns (matched pairs [(ref_i, our_j)], box IoUs)."""
    from torchvision.ops import box_iou

    if len(ours.pred_boxes) == 0 or len(ref_boxes) == 0:
        return [], torch.zeros(0)
    iou = box_iou(ref_boxes, ours.pred_boxes)
    iou[ref_classes[:, None] != ours.pred_classes[None, :]] = -1
    used = torch.zeros(iou.shape[1], dtype=torch.bool)
    pairs, ious = [], []
    for i in range(iou.shape[0]):
        row = iou[i].clone()
        row[used] = -1
        # prefer the closest score among near-identical boxes
        cand = torch.where(row >= iou_min)[0]
        if cand.numel() == 0:
            continue
        j = cand[(ours.scores[cand] - ref_scores[i]).abs().argmin()]
        used[j] = True
        pairs.append((i, int(j)))
        ious.append(float(row[j]))
    return pairs, torch.tensor(ious)
