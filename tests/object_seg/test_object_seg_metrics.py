"""ObjectSegEvaluator: hand-computed MAE / F-measure, equality with pysodmetrics used directly,
evaluation at the original size, and merging of the records of several processes."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import py_sod_metrics as psm

from bcd.data.catalog import DatasetCatalog, MetadataCatalog
from bcd.evaluation import build_evaluator
from bcd.evaluation import object_seg_evaluation as ose
from bcd.evaluation.object_seg_evaluation import ObjectSegEvaluator, SodMetrics


def _register(name: str) -> str:
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(evaluator_type="object_seg")
    return name


def _random_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        gt = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        gt[y : y + h // 2, x : x + w // 3] = True
        if i == 0:
            gt[:] = False  # an image without object (SOC has such)
        prob = np.clip(0.7 * gt + rng.normal(0.2, 0.2, size=(h, w)), 0, 1).astype(np.float32)
        pairs.append((prob, gt))
    return pairs


def test_hand_computed_mae_and_fmeasure():
    # 2×4 map: three pixels predicted 1.0, two of them on the 3-pixel object
    pred = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    gt = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool)
    m = SodMetrics(normalize=False)
    m.step(pred, gt)
    res = m.results()
    # MAE: |p - g| = 1 at (0, 2) and (1, 0): 2 / 8
    assert res["MAE"] == pytest.approx(0.25)
    # thresholds 1..255: P = R = 2/3 -> F = 1.3 PR / (0.3 P + R) = 2/3
    f_hi = 1.3 * (2 / 3) * (2 / 3) / (0.3 * (2 / 3) + 2 / 3)
    # threshold 0: every pixel positive, P = 3/8, R = 1
    f_0 = 1.3 * 0.375 * 1.0 / (0.3 * 0.375 + 1.0)
    assert f_hi == pytest.approx(2 / 3)
    assert res["maxF"] == pytest.approx(f_hi)
    assert res["meanF"] == pytest.approx((255 * f_hi + f_0) / 256)
    # adaptive threshold 2·mean(pred) = 0.75 keeps the same three pixels
    assert res["adpF"] == pytest.approx(f_hi)

    # a second, perfect image: dataset figures are the means over images
    m.step(np.array([[0.0, 1.0]]), np.array([[False, True]]))
    res2 = m.results()
    assert res2["MAE"] == pytest.approx(0.125)
    assert res2["adpF"] == pytest.approx((f_hi + 1.0) / 2)


@pytest.mark.parametrize("normalize", [True, False])
def test_each_metric_equals_pysodmetrics(normalize):
    name = _register("test_objseg_eq")
    ev = ObjectSegEvaluator(name, normalize=normalize)
    ev.reset()
    pairs = _random_pairs(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pysodmetrics' Fmeasure announces FmeasureV2
        ref = {"mae": psm.MAE(), "fm": psm.Fmeasure(), "wfm": psm.WeightedFmeasure(),
               "sm": psm.Smeasure(), "em": psm.Emeasure()}
    for i, (prob, gt) in enumerate(pairs):
        inp = {"file_name": f"x{i}.jpg", "height": gt.shape[0], "width": gt.shape[1],
               "sem_seg": torch.from_numpy(gt.astype(np.int64))}
        ev.process([inp], [{"object_seg": torch.from_numpy(prob)}])
        if normalize:
            p_in, g_in = np.round(prob * 255).astype(np.uint8), gt.astype(np.uint8) * 255
        else:
            p_in, g_in = prob.astype(np.float64), gt
        for m in ref.values():
            m.step(pred=p_in, gt=g_in, normalize=normalize)
    res = ev.evaluate()["object_seg"]
    fm = ref["fm"].get_results()["fm"]
    em = ref["em"].get_results()["em"]
    expected = {
        "MAE": ref["mae"].get_results()["mae"],
        "maxF": fm["curve"].max(), "meanF": fm["curve"].mean(), "adpF": fm["adp"],
        "wF": ref["wfm"].get_results()["wfm"],
        "Sm": ref["sm"].get_results()["sm"],
        "maxE": em["curve"].max(), "meanE": em["curve"].mean(), "adpE": em["adp"],
    }
    assert set(res) == set(expected)
    for k, v in expected.items():
        assert res[k] == pytest.approx(float(v), rel=1e-9, abs=1e-12), k


def test_ground_truth_from_file_at_original_size(tmp_path):
    from PIL import Image

    name = _register("test_objseg_file")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:30] = 200
    mask[0, 0] = 128  # not foreground: the threshold is strict (value > 128)
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    prob = (mask > 128).astype(np.float32)
    ev = ObjectSegEvaluator(name, output_dir=str(tmp_path / "ev"), save_predictions=True)
    inp = {"file_name": "a.jpg", "image_id": "a", "height": 30, "width": 40, "mask_file_name": str(path)}
    ev.process([inp], [{"object_seg": torch.from_numpy(prob)}])
    res = ev.evaluate()["object_seg"]
    assert res["MAE"] == 0.0 and res["maxF"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "ev" / "object_seg_evaluation.json").read_text())
    assert saved["num_images"] == 1 and saved["metrics"]["MAE"] == 0.0
    assert (tmp_path / "ev" / "predictions" / "a.png").is_file()

    # a prediction at the network's size (not the original one) is refused
    with pytest.raises(ValueError, match="original size"):
        ev.process([inp], [{"object_seg": torch.zeros(32, 32)}])


def test_merge_across_processes_equals_single_process(monkeypatch):
    name = _register("test_objseg_gather")
    pairs = _random_pairs(7, seed=3)

    def run(ev, items):
        for i, (prob, gt) in items:
            inp = {"file_name": f"{i}.jpg", "height": gt.shape[0], "width": gt.shape[1],
                   "sem_seg": torch.from_numpy(gt.astype(np.int64))}
            ev.process([inp], [{"object_seg": torch.from_numpy(prob)}])

    single = ObjectSegEvaluator(name)
    run(single, list(enumerate(pairs)))
    expected = single.evaluate()["object_seg"]

    rank0, rank1 = ObjectSegEvaluator(name), ObjectSegEvaluator(name)
    run(rank0, list(enumerate(pairs))[0::2])
    run(rank1, list(enumerate(pairs))[1::2])
    monkeypatch.setattr(ose.comm, "gather", lambda data, dst=0: [data, rank1._metrics.records()])
    monkeypatch.setattr(ose.comm, "is_main_process", lambda: True)
    merged = rank0.evaluate()["object_seg"]
    for k, v in expected.items():
        assert merged[k] == pytest.approx(v, rel=1e-12), k

    monkeypatch.setattr(ose.comm, "is_main_process", lambda: False)
    assert rank0.evaluate() == {}


def test_build_evaluator_dispatch(cfg):
    name = _register("test_objseg_build")
    ev = build_evaluator(cfg, name)
    assert isinstance(ev, ObjectSegEvaluator)


def test_bad_output_shape_is_named():
    ev = ObjectSegEvaluator(_register("test_objseg_bad"))
    with pytest.raises(ValueError, match="bad.jpg"):
        ev.process([{"file_name": "bad.jpg"}], [{"object_seg": torch.zeros(2, 3, 4)}])
