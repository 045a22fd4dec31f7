"""COCOEvaluator against pycocotools run directly, and ground truth as predictions."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch

from bcd.data.datasets.coco import register_coco_instances
from bcd.data.catalog import DatasetCatalog
from bcd.evaluation import build_evaluator
from bcd.evaluation.coco_evaluation import COCOEvaluator
from bcd.structures import Instances


@pytest.fixture
def eval_dataset(tmp_path, coco_writer):
    """8 images, 3 categories with ids 1, 5, 9, boxes of several sizes."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(8):
        H, W = 300, 400
        images.append({"id": 10 + i, "file_name": f"{i}.png", "height": H, "width": W})
        for _ in range(int(rng.integers(1, 5))):
            w, h = (float(v) for v in rng.uniform(8, 150, size=2))
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": int(rng.choice([1, 5, 9])),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]
    root = str(tmp_path / "ds")
    path = coco_writer(root, images, anns, cats)
    name = f"t_eval_{tmp_path.name}"
    register_coco_instances(name, path, os.path.join(root, "img"))
    dicts = DatasetCatalog.get(name)
    return {"name": name, "json": path, "dicts": dicts, "rng": rng, "anns": anns}


def _pred(boxes_xyxy, scores, classes, size):
    inst = Instances(size)
    inst.pred_boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    return {"instances": inst}


def test_gt_as_predictions_gives_ap_1(eval_dataset, tmp_path):
    ev = COCOEvaluator(eval_dataset["name"], str(tmp_path / "inference"))
    ev.reset()
    for d in eval_dataset["dicts"]:
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in d["annotations"]]
        classes = [a["category_id"] for a in d["annotations"]]
        ev.process([d], [_pred(boxes, [1.0] * len(boxes), classes, (d["height"], d["width"]))])
    res = ev.evaluate()["bbox"]
    for k in ("AP", "AP50", "AP75", "AP-a", "AP-b", "AP-c"):
        assert res[k] == pytest.approx(100.0), (k, res)
    written = json.load(open(tmp_path / "inference" / "coco_instances_results.json"))
    assert len(written) == len(eval_dataset["anns"])
    assert {r["category_id"] for r in written} <= {1, 5, 9}  # dataset ids, not contiguous


def test_matches_pycocotools_on_random_detections(eval_dataset, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = eval_dataset["rng"]
    ev = build_evaluator(None, eval_dataset["name"], str(tmp_path / "inf"))
    assert isinstance(ev, COCOEvaluator)
    ev.reset()
    reference = []
    id_of = {0: 1, 1: 5, 2: 9}
    for d in eval_dataset["dicts"]:
        boxes, scores, classes = [], [], []
        for a in d["annotations"]:  # jittered true boxes and random false ones
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.15 * min(w, h), size=4)
            boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
            classes.append(a["category_id"] if rng.random() < 0.8 else int(rng.integers(3)))
            scores.append(float(rng.random()))
        for _ in range(3):
            x0, y0 = rng.uniform(0, 300), rng.uniform(0, 200)
            boxes.append([x0, y0, x0 + rng.uniform(5, 100), y0 + rng.uniform(5, 100)])
            classes.append(int(rng.integers(3)))
            scores.append(float(rng.random()))
        ev.process([d], [_pred(boxes, scores, classes, (d["height"], d["width"]))])
        for b, s, c in zip(np.asarray(boxes, dtype=np.float32), scores, classes):
            b = b.astype(np.float64)
            reference.append({"image_id": d["image_id"], "category_id": id_of[c],
                              "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(np.float32(s))})
    res = ev.evaluate()["bbox"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(eval_dataset["json"])
        coco_ev = COCOeval(gt, gt.loadRes(reference), "bbox")
        coco_ev.evaluate()
        coco_ev.accumulate()
        coco_ev.summarize()
    for i, k in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
        expected = coco_ev.stats[i] * 100
        if expected < 0:
            assert np.isnan(res[k])
        else:
            assert res[k] == pytest.approx(expected, abs=1e-9), k
    assert 0 < res["AP"] < 100
    # per-category AP = mean precision over IoUs and recalls at area "all", 100 dets
    for k, name in enumerate(["a", "b", "c"]):
        p = coco_ev.eval["precision"][:, :, k, 0, -1]
        assert res[f"AP-{name}"] == pytest.approx(np.mean(p[p > -1]) * 100, abs=1e-9)


def test_no_detections_gives_zero(eval_dataset):
    ev = COCOEvaluator(eval_dataset["name"], None)
    ev.reset()
    for d in eval_dataset["dicts"]:
        ev.process([d], [_pred(np.zeros((0, 4)), [], [], (d["height"], d["width"]))])
    assert ev.evaluate()["bbox"]["AP"] == 0.0


def test_out_of_range_class_is_an_error(eval_dataset):
    ev = COCOEvaluator(eval_dataset["name"], None)
    d = eval_dataset["dicts"][0]
    ev.process([d], [_pred([[0, 0, 5, 5]], [0.9], [7], (d["height"], d["width"]))])
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        ev.evaluate()


@pytest.mark.slow  # two spawned Gloo processes importing torch: 20-60 s on 2 shared cores
def test_two_processes_equal_one(eval_dataset, tmp_path):
    """Two Gloo processes, half of the images each: rank 0's result equals one process's."""
    import importlib.util
    import pickle
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("_coco_dist_worker", os.path.join(here, "_coco_dist_worker.py"))
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    image_root = os.path.join(os.path.dirname(eval_dataset["json"]), "img")
    out = tmp_path / "merged.pkl"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(here)))
    proc = subprocess.run([sys.executable, os.path.join(here, "_coco_dist_worker.py"), eval_dataset["json"],
                           image_root, str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = pickle.loads(out.read_bytes())["bbox"]
    single = worker.evaluate(eval_dataset["json"], image_root)["bbox"]
    assert merged.keys() == single.keys()
    for k in single:
        assert merged[k] == pytest.approx(single[k], abs=1e-12), k
    assert 0 < single["AP"] < 100


def test_coco_tables_are_compact(tmp_path, coco_writer, caplog):
    """Logs (issue 21): 80 categories: the per-category table is 27 rows of three (category, AP) pairs, under
    100 columns; the summary has the six AP numbers. Scores equal the returned results."""
    import os

    import numpy as np

    from bcd.data.catalog import DatasetCatalog
    from bcd.data.datasets.coco import register_coco_instances
    from bcd.evaluation import COCOEvaluator
    from bcd.structures import Instances

    rng = np.random.default_rng(0)
    cats = [{"id": i + 1, "name": f"category_{i:02d}"} for i in range(80)]
    images = [{"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64} for i in range(4)]
    anns = []
    for img in images:
        for _ in range(20):
            x, y = (float(v) for v in rng.uniform(0, 40, 2))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(rng.integers(1, 81)),
                         "bbox": [x, y, 20.0, 20.0], "area": 400.0, "iscrowd": 0})
    root = str(tmp_path / "ds")
    path = coco_writer(root, images, anns, cats)
    register_coco_instances("t_logs_coco80", path, os.path.join(root, "img"))
    import logging

    log = logging.getLogger("bcd")  # set up without propagation by the trainer's logger
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="bcd")
    ev = COCOEvaluator("t_logs_coco80")
    ev.reset()
    for d in DatasetCatalog.get("t_logs_coco80"):
        inst = Instances((64, 64))
        b = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + 20, a["bbox"][1] + 20] for a in d["annotations"]])
        inst.pred_boxes = b + torch.from_numpy(rng.uniform(-3, 3, b.shape)).float()
        inst.scores = torch.rand(len(b))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        ev.process([d], [{"instances": inst}])
    try:
        res = ev.evaluate()["bbox"]
    finally:
        log.removeHandler(caplog.handler)
    (text,) = {r.getMessage() for r in caplog.records if r.getMessage().startswith("bbox AP on 't_logs_coco80'")}
    block = text.split("\n")
    assert block[0] == "bbox AP on 't_logs_coco80' (4 images):"
    summary_head = block[1]
    assert [c.strip() for c in summary_head.strip("|").split("|")] == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert f"{res['AP']:.2f}" in block[3]
    per_cat = [line for line in block[block.index("Per-category bbox AP:") + 1:] if line.startswith("|")]
    assert len(per_cat) == 2 + 27  # header, rule, 80 / 3 rounded up
    assert max(len(line) for line in per_cat) < 100
    first = [c.strip() for c in per_cat[2].strip("|").split("|")]
    assert first == ["category_00", f"{res['AP-category_00']:.2f}", "category_01",
                     f"{res['AP-category_01']:.2f}", "category_02", f"{res['AP-category_02']:.2f}"]
