"""Connectivity metric of the semantic-segmentation evaluator on hand-built masks, against
hand-counted region numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bcd.data import MetadataCatalog
from bcd.evaluation.boundary import connected_component_counts
from bcd.evaluation.sem_seg_evaluation import SemSegEvaluator

IGN = 255


def _image_a():
    """8×8, classes 0 (bg), 1, 2. Hand count: gt has 1 bg region, one 3×3 square of class 1,
    two separate 2×2 blobs of class 2. The prediction cuts the square in two (its middle column
    predicted bg, which joins the outer bg), misses the right blob of class 2 and invents one
    class-2 pixel in the top-right corner: n_gt = (1, 1, 2), n_pred = (1, 2, 2)."""
    gt = np.zeros((8, 8), np.int64)
    gt[1:4, 1:4] = 1
    gt[5:7, 0:2] = 2
    gt[5:7, 5:7] = 2
    pred = gt.copy()
    pred[1:4, 2] = 0
    pred[5:7, 5:7] = 0
    pred[0, 7] = 2
    return gt, pred


def _image_b():
    """8×8 all bg except two diagonal class-1 pixels (one region with 8-connectivity, two with
    4-connectivity) and one ignored pixel at (5, 5) where the prediction says class 2 (not
    counted: ignored pixels are removed from both masks). The prediction is right elsewhere."""
    gt = np.zeros((8, 8), np.int64)
    gt[0, 0] = 1
    gt[1, 1] = 1
    gt[5, 5] = IGN
    pred = np.where(gt == IGN, 2, gt)
    return gt, pred


def test_component_counts_by_hand():
    gt, pred = _image_a()
    n_g, n_p = connected_component_counts(gt, pred, 3, IGN)
    assert n_g.tolist() == [1, 1, 2]
    assert n_p.tolist() == [1, 2, 2]
    gt, pred = _image_b()
    n_g, n_p = connected_component_counts(gt, pred, 3, IGN)
    assert n_g.tolist() == [1, 1, 0]
    assert n_p.tolist() == [1, 1, 0]  # the class-2 pixel lies on an ignored pixel
    n_g4, _ = connected_component_counts(gt, pred, 3, IGN, connectivity=4)
    assert n_g4.tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="connectivity"):
        connected_component_counts(gt, pred, 3, IGN, connectivity=6)
    with pytest.raises(ValueError, match="differ"):
        connected_component_counts(gt, pred[:4], 3, IGN)


def _scores(pred, k):
    return torch.nn.functional.one_hot(torch.from_numpy(pred), k).permute(2, 0, 1).float()


def test_evaluator_connectivity_by_hand():
    MetadataCatalog.get("_test_conn_hand").set(stuff_classes=["bg", "one", "two"], ignore_label=IGN)
    ev = SemSegEvaluator("_test_conn_hand", boundary_dilation_ratio=0.0)
    ev.reset()
    for gt, pred in (_image_a(), _image_b()):
        ev.process([{"sem_seg": torch.from_numpy(gt), "file_name": "x"}], [{"sem_seg": _scores(pred, 3)}])
    res = ev.evaluate()["sem_seg"]
    # Summed over the two images: bg min 2 / max 2; class 1: n_g = 1 + 1, n_p = 2 + 1, min 1 + 1,
    # max 2 + 1 -> 2/3; class 2: n_g = 2, n_p = 2, min 2 / max 2 -> 1.
    assert res["Conn-bg"] == pytest.approx(100.0)
    assert res["Conn-one"] == pytest.approx(100.0 * 2 / 3)
    assert res["Conn-two"] == pytest.approx(100.0)
    assert res["mConn"] == pytest.approx(100.0 * (1 + 2 / 3 + 1) / 3)
    assert res["Frag-one"] == pytest.approx(3 / 2)
    assert res["Frag-two"] == pytest.approx(1.0)
    assert res["mFrag"] == pytest.approx((1 + 1.5 + 1) / 3)


def test_evaluator_connectivity_absent_class_and_switch_off():
    MetadataCatalog.get("_test_conn_absent").set(stuff_classes=["bg", "one", "two"], ignore_label=IGN)
    gt = np.zeros((6, 6), np.int64)
    pred = gt.copy()
    pred[2, 2] = 2  # class 2 never in the ground truth: no score (NaN), out of the means
    ev = SemSegEvaluator("_test_conn_absent", boundary_dilation_ratio=0.0)
    ev.reset()
    ev.process([{"sem_seg": torch.from_numpy(gt), "file_name": "x"}], [{"sem_seg": _scores(pred, 3)}])
    res = ev.evaluate()["sem_seg"]
    assert math.isnan(res["Conn-two"]) and math.isnan(res["Conn-one"])
    # bg: one true region, the prediction's bg is one region with a hole -> 1/1
    assert res["mConn"] == pytest.approx(100.0)
    off = SemSegEvaluator("_test_conn_absent", boundary_dilation_ratio=0.0, connectivity=False)
    off.reset()
    off.process([{"sem_seg": torch.from_numpy(gt), "file_name": "x"}], [{"sem_seg": _scores(pred, 3)}])
    assert "mConn" not in off.evaluate()["sem_seg"]
