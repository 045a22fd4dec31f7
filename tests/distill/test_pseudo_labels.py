"""Dense labels the distillation context publishes to losses (``KDContext.pseudo_labels``) and the
box rasterisation the batch publishes (``ImageBatch.box_label_map``), against hand-drawn grids."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bcd.distill.losses.base import KDContext
from bcd.structures import Instances
from bcd.structures.image_batch import ImageBatch


def _batch(with_instances: bool = True) -> ImageBatch:
    inst = Instances((8, 8))
    # a large box of class 2 over the left half, a small class-0 box inside it, a class-1 box
    # in the bottom-right corner; a second image without boxes
    inst.gt_boxes = torch.tensor([[0.0, 0.0, 4.0, 8.0], [0.0, 0.0, 2.0, 2.0], [6.0, 6.0, 8.0, 8.0]])
    inst.gt_classes = torch.tensor([2, 0, 1])
    empty = Instances((8, 8))
    empty.gt_boxes = torch.zeros(0, 4)
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    return ImageBatch(torch.zeros(2, 3, 8, 8), [(8, 8), (8, 8)],
                      instances=[inst, empty] if with_instances else None)


def _ctx(batch: ImageBatch, teacher_outputs) -> KDContext:
    return KDContext(batch, batch, nn.Identity(), nn.Identity(), teacher_outputs, 0, 10)


def test_box_label_map_small_box_wins_and_cell_centres_decide():
    got = _batch().box_label_map((4, 4))  # cells of 2×2 pixels, centres at 1, 3, 5, 7
    expected = torch.tensor([[1, 3, 0, 0],   # cell (0,0): inside the small class-0 box -> 0 + 1
                             [3, 3, 0, 0],   # left half: class 2 -> 3
                             [3, 3, 0, 0],
                             [3, 3, 0, 2]])  # bottom-right: class 1 -> 2
    assert torch.equal(got[0], expected)
    assert torch.equal(got[1], torch.zeros(4, 4, dtype=torch.long))


def test_pseudo_labels_prefer_published_teacher_logits_then_boxes_then_refuse():
    batch = _batch()
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 1, :, 0] = 5.0  # class 1 on the left column, class 2 on the right
    logits[:, 2, :, 1] = 5.0
    ctx = _ctx(batch, {"logits": logits})
    labels = ctx.pseudo_labels((2, 2))
    assert torch.equal(labels, torch.tensor([[1, 2], [1, 2]]).expand(2, 2, 2))
    assert ctx.pseudo_labels((2, 2)) is labels  # cached for the step
    # a detector publishes no dense logits: the GT boxes
    assert torch.equal(_ctx(batch, {"p3": torch.zeros(2, 4, 4, 4)}).pseudo_labels((4, 4)), batch.box_label_map((4, 4)))
    with pytest.raises(ValueError, match="no 'logits'.*no ground-truth instances"):
        _ctx(_batch(with_instances=False), {}).pseudo_labels((4, 4))
