"""Random mapper-style inputs of a benchmark pair (the cost does not depend on the values)."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

__all__ = ["det_inputs", "num_classes", "seg_inputs"]


def seg_inputs(size: Tuple[int, int], batch: int, classes: int) -> List[Dict[str, Any]]:
    """Random uint8 images and labels in ``[0, classes)``, mapper-style dicts."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
             "sem_seg": torch.randint(0, classes, (h, w), generator=g), "height": h, "width": w}
            for _ in range(batch)]


def det_inputs(size: Tuple[int, int], batch: int, classes: int, boxes: int = 8,
               masks: bool = False) -> List[Dict[str, Any]]:
    """Random images with ``boxes`` random boxes each (``Instances`` as the detection mapper).

    ``masks``: also ``gt_masks`` (``boxes×H×W`` uint8, each box filled), as the mapper gives
    ``MODEL.MASK_ON`` models.
    """
    from bcd.structures import Instances

    g = torch.Generator().manual_seed(0)
    h, w = size
    out = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([w, h]) * 0.6
        wh = 16 + torch.rand(boxes, 2, generator=g) * torch.tensor([w, h]) * 0.35
        inst = Instances((h, w))
        inst.gt_boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)
        inst.gt_classes = torch.randint(0, classes, (boxes,), generator=g)
        if masks:
            m = torch.zeros(boxes, h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.round().long().tolist()):
                m[i, y0:y1, x0:x1] = 1
            inst.gt_masks = m
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                    "instances": inst, "height": h, "width": w})
    return out


def num_classes(cfg, task: str) -> int:
    """Label range of the random inputs: the segmentor's classes; 3 box classes for detectors."""
    return int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) if task == "seg" else 3

