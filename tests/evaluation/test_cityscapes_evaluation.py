"""CityscapesSemSegEvaluator against cityscapesscripts' command-line evaluation on generated
Cityscapes-format files (GENERATED data: random label maps in the official folder layout)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data import DatasetCatalog, MetadataCatalog
from bcd.evaluation import build_evaluator
from bcd.evaluation.cityscapes_evaluation import CityscapesSemSegEvaluator, train_id_to_label_id

cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")

FRAMES = [("aachen", "000000", "000019"), ("aachen", "000001", "000019"), ("bochum", "000000", "000313")]
H, W = 32, 64


def _make_cityscapes(root: str, seed: int = 0):
    """gtFine/val/<city>/*_gtFine_{labelIds,labelTrainIds,instanceIds}.png and leftImg8bit/val;
    every train class appears in the ground truth; some pixels have ignored label ids."""
    rng = np.random.default_rng(seed)
    train = [l for l in cs_labels.labels if 0 <= l.trainId < 255]
    ignored_ids = [0, 1, 4, 5, 6]  # unlabeled, ego vehicle, static, dynamic, ground
    dicts, preds = [], []
    for i, (city, seq, frame) in enumerate(FRAMES):
        base = f"{city}_{seq}_{frame}"
        gdir = os.path.join(root, "gtFine", "val", city)
        idir = os.path.join(root, "leftImg8bit", "val", city)
        os.makedirs(gdir, exist_ok=True)
        os.makedirs(idir, exist_ok=True)
        small = rng.choice([l.id for l in train] + ignored_ids, size=(H // 4, W // 4))
        label_ids = np.kron(small, np.ones((4, 4), np.int64)).astype(np.uint8)
        if i == 0:  # make sure every class is present
            label_ids[0, : len(train)] = [l.id for l in train]
        train_ids = np.vectorize(lambda v: cs_labels.id2label[int(v)].trainId)(label_ids).astype(np.uint8)
        train_ids[train_ids == 255] = 255
        inst = label_ids.astype(np.uint16)  # 16-bit PNG as the official files
        for cls in (24, 26):  # person, car: instance ids id*1000 + k by connected 4x4 block
            m = label_ids == cls
            inst[m] = cls * 1000 + (np.arange(m.sum()) // 16)
        Image.fromarray(label_ids).save(os.path.join(gdir, f"{base}_gtFine_labelIds.png"))
        Image.fromarray(train_ids).save(os.path.join(gdir, f"{base}_gtFine_labelTrainIds.png"))
        Image.fromarray(inst).save(os.path.join(gdir, f"{base}_gtFine_instanceIds.png"))
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            os.path.join(idir, f"{base}_leftImg8bit.png"))
        dicts.append({
            "file_name": os.path.join(idir, f"{base}_leftImg8bit.png"),
            "sem_seg_file_name": os.path.join(gdir, f"{base}_gtFine_labelTrainIds.png"),
            "height": H, "width": W, "image_id": base,
        })
        # prediction right on ~60% of the pixels
        gt_t = np.where(train_ids == 255, 0, train_ids).astype(np.int64)
        pred = np.where(rng.random((H, W)) < 0.6, gt_t, rng.integers(0, 19, (H, W)))
        preds.append(torch.nn.functional.one_hot(torch.from_numpy(pred), 19).permute(2, 0, 1).float())
    return dicts, preds


def _official_cli(root: str, pred_dir: str, work: str) -> dict:
    """cityscapesscripts' own command line (no arguments: it finds gt and predictions through
    its environment variables) run in ``work``; returns its JSON export."""
    env = dict(os.environ, CITYSCAPES_DATASET=root, CITYSCAPES_RESULTS=pred_dir, CITYSCAPES_EXPORT_DIR=work)
    proc = subprocess.run(
        [sys.executable, "-m", "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(os.path.join(work, "resultPixelLevelSemanticLabeling.json")) as f:
        return json.load(f)


def test_cityscapes_evaluator_equals_official_cli(tmp_path, cfg):
    root = str(tmp_path / "cityscapes")
    dicts, preds = _make_cityscapes(root)
    name = "_test_cityscapes_val"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(
            stuff_classes=[l.name for l in sorted((l for l in cs_labels.labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)],
            ignore_label=255, evaluator_type="cityscapes_sem_seg",
        )
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    out_dir = str(tmp_path / "output")
    ev = build_evaluator(cfg, name, out_dir)
    assert isinstance(ev, CityscapesSemSegEvaluator)
    ev.reset()
    cwd_before = set(os.listdir(os.getcwd()))
    for d, p in zip(dicts, preds):
        ev.process([d], [{"sem_seg": p}])
    res = ev.evaluate()
    assert set(os.listdir(os.getcwd())) == cwd_before, "the evaluation wrote into the cwd"
    pred_dir = os.path.join(out_dir, "inference", "cityscapes_sem_seg")
    assert len(os.listdir(pred_dir)) == len(FRAMES)

    work = str(tmp_path / "cli")
    os.makedirs(work)
    official = _official_cli(root, pred_dir, work)
    cs = res["cityscapes_sem_seg"]
    assert cs["IoU"] == pytest.approx(100 * official["averageScoreClasses"], abs=1e-9)
    assert cs["IoU_sup"] == pytest.approx(100 * official["averageScoreCategories"], abs=1e-9)
    assert cs["iIoU"] == pytest.approx(100 * official["averageScoreInstClasses"], abs=1e-9)
    assert cs["iIoU_sup"] == pytest.approx(100 * official["averageScoreInstCategories"], abs=1e-9)
    # Every class is in the ground truth, so the train-id mIoU equals the official class IoU,
    # and each per-class IoU matches.
    assert res["sem_seg"]["mIoU"] == pytest.approx(cs["IoU"], abs=1e-9)
    assert len(ev._class_names) == 19
    for cls in ev._class_names:
        score = official["classScores"][cls]
        assert res["sem_seg"][f"IoU-{cls}"] == pytest.approx(100 * score, abs=1e-9), cls


def test_train_id_to_label_id():
    pred = np.array([[0, 1, 2], [13, 18, 10]])
    assert train_id_to_label_id(pred).tolist() == [[7, 8, 11], [26, 33, 23]]


def test_cityscapes_evaluator_without_output_dir_cleans_up(tmp_path):
    """Without an output_dir the predictions go to a temporary folder, removed afterwards; the
    numbers are those of the run with an output_dir."""
    root = str(tmp_path / "cityscapes")
    dicts, preds = _make_cityscapes(root, seed=1)
    name = "_test_cityscapes_val_tmp"
    if name not in MetadataCatalog or MetadataCatalog.get(name).get("stuff_classes") is None:
        MetadataCatalog.get(name).set(
            stuff_classes=[l.name for l in sorted((l for l in cs_labels.labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)],
            ignore_label=255,
        )
    results = []
    for out in (None, str(tmp_path / "out")):
        ev = CityscapesSemSegEvaluator(name, output_dir=out)
        for d, p in zip(dicts, preds):
            ev.process([d], [{"sem_seg": p}])
        tmp_dir = ev._pred_dir
        results.append(ev.evaluate())
        if out is None:
            assert not os.path.exists(tmp_dir)
    assert results[0]["cityscapes_sem_seg"] == results[1]["cityscapes_sem_seg"]
    assert set(results[0]["cityscapes_sem_seg"]) == {"IoU", "IoU_sup", "iIoU", "iIoU_sup"}
