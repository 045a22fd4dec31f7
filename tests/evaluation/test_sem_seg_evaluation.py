"""SemSegEvaluator against independent numpy brute force, across two processes, and Boundary
IoU against hand-computed values."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from bcd.data import MetadataCatalog
from bcd.evaluation import EVALUATOR_TYPES, build_evaluator
from bcd.evaluation.boundary import boundary_dilation, boundary_iou_counts, mask_to_boundary
from bcd.evaluation.sem_seg_evaluation import SemSegEvaluator

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_sem_seg_dist_worker", os.path.join(HERE, "_sem_seg_dist_worker.py"))
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


# ------------------------------------------------------------------ brute-force references
def brute_force_metrics(samples, k, ignore):
    """Per-class counts by looping over classes and images (no confusion matrix)."""
    tp = np.zeros(k)
    gt_n = np.zeros(k)
    pred_n = np.zeros(k)
    for gt, scores in samples:
        pred = scores.argmax(0).numpy()
        valid = gt != ignore
        for c in range(k):
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
            gt_n[c] += np.sum((gt == c) & valid)
            pred_n[c] += np.sum((pred == c) & valid)
    present = gt_n > 0
    iou = tp[present] / (gt_n[present] + pred_n[present] - tp[present])
    acc = tp[present] / gt_n[present]
    freq = gt_n[present] / gt_n.sum()
    per_class = {c: (tp[c] / (gt_n[c] + pred_n[c] - tp[c]) if present[c] else math.nan) for c in range(k)}
    return {
        "mIoU": 100 * iou.mean(),
        "fwIoU": 100 * (iou * freq).sum(),
        "mACC": 100 * acc.mean(),
        "pACC": 100 * tp.sum() / gt_n.sum(),
        "per_class": per_class,
    }


def brute_boundary(mask, d):
    """Boundary by definition: a mask pixel with a non-mask pixel (the outside of the image
    included) within chessboard distance d."""
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            y0, y1, x0, x1 = y - d, y + d + 1, x - d, x + d + 1
            if y0 < 0 or x0 < 0 or y1 > h or x1 > w or not mask[y0:y1, x0:x1].all():
                out[y, x] = True
    return out


def brute_biou(samples, k, ignore, ratio):
    inter = np.zeros(k)
    union = np.zeros(k)
    gtb = np.zeros(k)
    for gt, scores in samples:
        pred = scores.argmax(0).numpy()
        d = max(1, int(round(ratio * math.hypot(*gt.shape))))
        valid = gt != ignore
        for c in range(k):
            bg = brute_boundary(gt == c, d)
            bp = brute_boundary((pred == c) & valid, d)  # ignore pixels belong to no class
            inter[c] += (bg & bp).sum()
            union[c] += (bg | bp).sum()
            gtb[c] += bg.sum()
    return {c: (inter[c] / union[c] if gtb[c] > 0 else math.nan) for c in range(k)}


def _close(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-9


# ------------------------------------------------------------------ metrics
def test_metrics_match_brute_force_with_ignore_pixels():
    samples = W.make_sem_seg_samples(seed=3)
    res = W.evaluate(samples, ratio=0.05)["sem_seg"]
    ref = brute_force_metrics(samples, W.NUM_CLASSES, W.IGNORE)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert res[key] == pytest.approx(ref[key], abs=1e-9), key
    for c in range(W.NUM_CLASSES):
        assert _close(res[f"IoU-c{c}"], 100 * ref["per_class"][c]), c
    # class 4 is never in the ground truth: no IoU, and left out of the mean
    assert math.isnan(res["IoU-c4"])
    biou = brute_biou(samples, W.NUM_CLASSES, W.IGNORE, 0.05)
    for c in range(W.NUM_CLASSES):
        assert _close(res[f"BIoU-c{c}"], 100 * biou[c]), c
    valid = [v for v in biou.values() if not math.isnan(v)]
    assert res["mBIoU"] == pytest.approx(100 * np.mean(valid), abs=1e-9)


def test_ignore_pixels_do_not_count():
    """Changing the prediction only on ignore pixels changes nothing."""
    samples = W.make_sem_seg_samples(seed=5, n=3)
    a = W.evaluate(samples)["sem_seg"]
    changed = []
    for gt, scores in samples:
        s = scores.clone()
        ign = torch.from_numpy(gt == W.IGNORE)
        s[:, ign] = 0
        s[3, ign] = 5.0  # predict class 3 everywhere the ground truth is ignored
        changed.append((gt, s))
    b = W.evaluate(changed)["sem_seg"]
    for key in a:
        assert _close(a[key], b[key]), key


def test_perfect_prediction_is_100():
    samples = []
    for gt, _ in W.make_sem_seg_samples(seed=1, n=2):
        g = np.where(gt == W.IGNORE, 0, gt)
        samples.append((gt, torch.nn.functional.one_hot(torch.from_numpy(g), W.NUM_CLASSES).permute(2, 0, 1).float()))
    res = W.evaluate(samples)["sem_seg"]
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "mBIoU"):
        assert res[key] == pytest.approx(100.0)


def test_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "dist.pkl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_sem_seg_dist_worker.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = pickle.loads(out.read_bytes())["sem_seg"]
    single = W.evaluate(W.make_sem_seg_samples())["sem_seg"]
    assert merged.keys() == single.keys()
    for k in single:
        assert _close(merged[k], single[k]), k


def test_gt_read_from_file_and_wrong_size_names_file(tmp_path):
    from PIL import Image

    W._register()
    gt = np.zeros((8, 10), np.uint8)
    gt[2:6, 3:8] = 2
    path = tmp_path / "lab.png"
    Image.fromarray(gt).save(path)
    scores = torch.nn.functional.one_hot(torch.from_numpy(gt.astype(np.int64)), W.NUM_CLASSES).permute(2, 0, 1).float()
    ev = SemSegEvaluator(W.DATASET, boundary_dilation_ratio=0.0)
    ev.process([{"sem_seg_file_name": str(path), "file_name": "img"}], [{"sem_seg": scores}])
    res = ev.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0) and "mBIoU" not in res
    with pytest.raises(ValueError, match="lab.png"):
        ev.process([{"sem_seg_file_name": str(path), "file_name": "img"}], [{"sem_seg": scores[:, :4]}])


def test_out_of_range_ground_truth_is_an_error():
    W._register()
    ev = SemSegEvaluator(W.DATASET)
    gt = torch.full((4, 4), 7)
    with pytest.raises(ValueError, match="outside"):
        ev.process([{"sem_seg": gt, "file_name": "bad.png"}], [{"sem_seg": torch.rand(W.NUM_CLASSES, 4, 4)}])


def test_build_evaluator_writes_json(cfg, tmp_path):
    W._register()
    MetadataCatalog.get(W.DATASET).set(evaluator_type="sem_seg")
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = W.NUM_CLASSES
    ev = build_evaluator(cfg, W.DATASET, str(tmp_path))
    assert isinstance(ev, SemSegEvaluator) and "sem_seg" in EVALUATOR_TYPES
    for gt, scores in W.make_sem_seg_samples(n=2):
        ev.process([{"sem_seg": torch.from_numpy(gt)}], [{"sem_seg": scores}])
    res = ev.evaluate()
    saved = json.loads((tmp_path / "sem_seg_evaluation.json").read_text())
    assert saved["metrics"]["mIoU"] == pytest.approx(res["sem_seg"]["mIoU"])
    assert np.array(saved["confusion_matrix"]).sum() == sum(int((g != W.IGNORE).sum()) for g, _ in W.make_sem_seg_samples(n=2))


# ------------------------------------------------------------------ Boundary IoU by hand
def test_mask_to_boundary_hand_values():
    m = np.zeros((10, 10), bool)
    m[2:8, 2:8] = True  # 6x6 square
    b1 = mask_to_boundary(m, 1)
    assert b1.sum() == 36 - 16  # the square minus its 4x4 interior
    assert not b1[3:7, 3:7].any() and b1[2, 2:8].all()
    b2 = mask_to_boundary(m, 2)
    assert b2.sum() == 36 - 4
    # A mask touching the image border has a boundary along it (outside = background).
    full = np.ones((5, 5), bool)
    assert mask_to_boundary(full, 1).sum() == 25 - 9
    assert boundary_dilation(10, 10, 0.05) == 1  # round(0.05 * 14.14) = 1
    assert boundary_dilation(100, 100, 0.02) == 3  # round(2.83)
    assert boundary_dilation(4, 4, 0.001) == 1  # at least one pixel


def test_boundary_iou_hand_computed_shifted_square():
    """6x6 square vs the same square shifted one pixel right, d = 1: each boundary ring has 20
    pixels; they share the top and bottom rows' 5 common columns (10 pixels): BIoU = 10/30."""
    gt = np.zeros((12, 12), np.int64)
    gt[3:9, 3:9] = 1
    pred = np.zeros_like(gt)
    pred[3:9, 4:10] = 1
    inter, union, gtb = boundary_iou_counts(gt, pred, 2, 255, dilation_ratio=0.05)  # d = round(0.85) = 1
    assert (inter[1], union[1], gtb[1]) == (10, 30, 20)
    # Ignore pixels leave both masks: (3,5) is on both top rows, (5,3) on the gt's left column.
    # gt boundary: 20 - 2 + {(4,4),(4,5),(4,6),(5,4),(6,4)} (next to the holes) = 23;
    # pred boundary: 20 - 1 + {(4,5),(4,6)} = 21; shared: 10 - 1 + the 5 new gt ones = 14.
    gt[3, 5] = 255
    gt[5, 3] = 255
    inter, union, gtb = boundary_iou_counts(gt, pred, 2, 255, dilation_ratio=0.05)
    assert (inter[1], union[1], gtb[1]) == (14, 30, 23)


def test_boundary_iou_in_evaluator_hand_computed():
    """Evaluator's BIoU of class 1 for the shifted square, and 100 for an exact copy."""
    MetadataCatalog.get("_test_biou_hand").set(stuff_classes=["bg", "sq"], ignore_label=255)
    gt = np.zeros((12, 12), np.int64)
    gt[3:9, 3:9] = 1
    pred = np.zeros_like(gt)
    pred[3:9, 4:10] = 1
    ev = SemSegEvaluator("_test_biou_hand", boundary_dilation_ratio=0.05)
    onehot = lambda p: torch.nn.functional.one_hot(torch.from_numpy(p), 2).permute(2, 0, 1).float()  # noqa: E731
    ev.process([{"sem_seg": torch.from_numpy(gt)}], [{"sem_seg": onehot(pred)}])
    assert ev.evaluate()["sem_seg"]["BIoU-sq"] == pytest.approx(100 * 10 / 30)
    ev.reset()
    ev.process([{"sem_seg": torch.from_numpy(gt)}], [{"sem_seg": onehot(gt)}])
    assert ev.evaluate()["sem_seg"]["BIoU-sq"] == pytest.approx(100.0)


def test_pipeline_loader_mapper_inference_evaluator(tmp_path, cfg):
    """Dataset dicts -> SemSegDatasetMapper -> test loader -> inference_on_dataset -> evaluator,
    with a 'model' that outputs the ground truth at (height, width) on labelled pixels and
    class 0 on the ignored ones: 100 on every metric, the exact pixel count in the matrix."""
    from PIL import Image

    from bcd.data import DatasetCatalog
    from bcd.data.build import build_test_loader
    from bcd.evaluation import inference_on_dataset

    rng = np.random.default_rng(0)
    dicts, total = [], 0
    for i, (h, w) in enumerate([(20, 30), (26, 18)]):
        lab = np.kron(rng.integers(0, 3, (h // 2, w // 2)), np.ones((2, 2), np.int64)).astype(np.uint8)
        lab[0, :5] = 255
        total += int((lab != 255).sum())
        Image.fromarray(lab).save(tmp_path / f"l{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"i{i}.png")
        dicts.append({"file_name": str(tmp_path / f"i{i}.png"), "sem_seg_file_name": str(tmp_path / f"l{i}.png"),
                      "height": h, "width": w, "image_id": i})
    name = "_test_pipeline_sem_seg"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=255, evaluator_type="sem_seg")
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.INPUT.BASE_SIZE = [16, 16]  # the test image is resized; outputs and labels are not
    cfg.DATALOADER.NUM_WORKERS = 0

    def model(batch):
        outs = []
        for inp in batch:
            assert inp["image"].shape[1:] != (inp["height"], inp["width"])  # resized input
            gt = read_gt(inp["sem_seg_file_name"])
            outs.append({"sem_seg": torch.nn.functional.one_hot(torch.from_numpy(np.where(gt == 255, 0, gt)), 3)
                         .permute(2, 0, 1).float()})
        return outs

    def read_gt(path):
        return np.asarray(Image.open(path)).astype(np.int64)

    ev = build_evaluator(cfg, name, str(tmp_path / "out"))
    res = inference_on_dataset(model, build_test_loader(cfg, name), ev)["sem_seg"]
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "mBIoU"):
        assert res[key] == pytest.approx(100.0), key
    saved = json.loads((tmp_path / "out" / "sem_seg_evaluation.json").read_text())
    assert np.array(saved["confusion_matrix"]).sum() == total


@pytest.mark.parametrize("offset", [0, 300])  # uint8 and uint16 code paths
def test_label_map_boundary_equals_per_class_brute_force(offset):
    from bcd.evaluation.boundary import label_map_boundary

    rng = np.random.default_rng(offset)
    for _ in range(10):
        h, w = (int(v) for v in rng.integers(3, 20, size=2))
        d = int(rng.integers(1, 4))
        lab = rng.integers(0, 4, (h, w)) + offset
        ref = np.zeros((h, w), bool)
        for c in np.unique(lab):
            ref |= brute_boundary(lab == c, d)
        np.testing.assert_array_equal(label_map_boundary(lab, d), ref)
