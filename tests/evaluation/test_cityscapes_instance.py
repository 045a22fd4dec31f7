"""Cityscapes instance segmentation: datasets from gtFine polygons and the official AP through
cityscapesscripts, on a tiny generated Cityscapes-layout folder (GENERATED, not real data)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data.datasets.cityscapes_instance import (
    CITYSCAPES_THING_CLASSES,
    load_cityscapes_instances,
    register_cityscapes_instances,
)
from bcd.structures import Instances

H, W = 64, 128


def _objects(i):
    """Drawing order: road (stuff), a person, a car partly over the person, a car group (crowd)."""
    dx = 10 * i
    return [
        {"label": "road", "polygon": [[0, 40], [127, 40], [127, 63], [0, 63]]},
        {"label": "person", "polygon": [[10 + dx, 10], [30 + dx, 10], [30 + dx, 50], [10 + dx, 50]]},
        {"label": "car", "polygon": [[25 + dx, 20], [70 + dx, 20], [70 + dx, 45], [25 + dx, 45]]},
        {"label": "cargroup", "polygon": [[90, 5], [120, 5], [120, 30], [90, 30]]},
    ]


@pytest.fixture
def cityscapes_root(tmp_path):
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

    root = tmp_path / "cityscapes"
    for i in range(2):
        stem = f"testcity_000000_00001{i}"
        img_dir, gt_dir = root / "leftImg8bit" / "val" / "testcity", root / "gtFine" / "val" / "testcity"
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 90 + i, np.uint8)).save(img_dir / f"{stem}_leftImg8bit.png")
        poly = gt_dir / f"{stem}_gtFine_polygons.json"
        poly.write_text(json.dumps({"imgHeight": H, "imgWidth": W, "objects": _objects(i)}))
        ann = Annotation()
        ann.fromJsonFile(str(poly))
        createInstanceImage(ann, "ids").save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    return root


def test_instances_from_polygons(cityscapes_root):
    dicts = load_cityscapes_instances(str(cityscapes_root / "leftImg8bit" / "val"),
                                      str(cityscapes_root / "gtFine" / "val"))
    assert len(dicts) == 2
    from pycocotools import mask as mask_util

    for d in dicts:
        assert (d["height"], d["width"]) == (H, W)
        names = [(CITYSCAPES_THING_CLASSES[a["category_id"]], a["iscrowd"]) for a in d["annotations"]]
        assert names == [("person", 0), ("car", 0), ("car", 1)]  # road is stuff: not an instance
        person, car = (mask_util.decode(a["segmentation"]).astype(bool) for a in d["annotations"][:2])
        assert not (person & car).any()  # the car, drawn later, hides part of the person
        ids = np.array(Image.open(d["instance_ids_file"]))
        # the visible masks equal the official instanceIds rendering
        assert np.array_equal(person, ids == 24000) and np.array_equal(car, ids == 26000)
        x, y, w, h = d["annotations"][1]["bbox"]
        ys, xs = np.where(car)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_official_ap(cityscapes_root, tmp_path, monkeypatch):
    from bcd.evaluation import build_evaluator
    from bcd.evaluation.cityscapes_evaluation import CityscapesInstanceEvaluator

    name = f"t_cs_inst_{tmp_path.name}"
    register_cityscapes_instances(name, str(cityscapes_root / "leftImg8bit" / "val"),
                                  str(cityscapes_root / "gtFine" / "val"))
    from bcd.data.catalog import DatasetCatalog

    dicts = DatasetCatalog.get(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def run(perturb):
        out_dir = tmp_path / f"out_{perturb}"
        ev = build_evaluator(None, name, str(out_dir))
        assert isinstance(ev, CityscapesInstanceEvaluator)
        ev.reset()
        for d in dicts:
            ids = np.array(Image.open(d["instance_ids_file"]))
            masks = [ids == 24000, ids == 26000]
            if perturb:  # the car prediction misses most of its pixels: IoU < 0.5
                masks[1] = masks[1] & (np.arange(W)[None, :] < 35 + 10 * int(d["image_id"][-1]))
            inst = Instances((H, W))
            inst.pred_masks = torch.as_tensor(np.stack(masks))
            inst.pred_boxes = torch.zeros(2, 4)
            inst.scores = torch.tensor([0.9, 0.8])
            inst.pred_classes = torch.tensor([CITYSCAPES_THING_CLASSES.index("person"),
                                              CITYSCAPES_THING_CLASSES.index("car")])
            ev.process([{"file_name": d["file_name"], "image_id": d["image_id"]}], [{"instances": inst}])
        res = ev.evaluate()["segm"]
        assert (out_dir / "cityscapes_instance" / "matches.json").is_file()
        return res

    perfect = run(False)
    assert perfect["AP"] == pytest.approx(100.0) and perfect["AP50"] == pytest.approx(100.0)
    assert perfect["AP-person"] == pytest.approx(100.0) and perfect["AP-car"] == pytest.approx(100.0)
    assert np.isnan(perfect["AP-truck"])  # no ground truth of that class
    worse = run(True)
    assert worse["AP-person"] == pytest.approx(100.0) and worse["AP-car"] == pytest.approx(0.0)
    assert worse["AP"] == pytest.approx(50.0)
    assert not (cwd / "matches.json").exists()  # nothing written into the current directory
