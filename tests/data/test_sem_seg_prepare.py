"""The dataset preparation scripts of datasets/ on tiny generated inputs."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "datasets")


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_cityscapes_creates_label_train_ids(tmp_path):
    """A polygon file -> labelTrainIds through cityscapesscripts: road (id 7) is train id 0,
    car (id 26) is 13, the unlabeled rest is 255."""
    city = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau"
    city.mkdir(parents=True)
    poly = {
        "imgHeight": 20, "imgWidth": 40,
        "objects": [
            {"label": "road", "polygon": [[0, 10], [39, 10], [39, 19], [0, 19]]},
            {"label": "car", "polygon": [[5, 2], [15, 2], [15, 8], [5, 8]]},
        ],
    }
    (city / "lindau_000000_000019_gtFine_polygons.json").write_text(json.dumps(poly))
    _script("prepare_cityscapes").main(["--root", str(tmp_path / "cityscapes"), "--workers", "1"])
    lab = np.asarray(Image.open(city / "lindau_000000_000019_gtFine_labelTrainIds.png"))
    assert lab.shape == (20, 40)
    assert lab[15, 20] == 0 and lab[5, 10] == 13 and lab[0, 30] == 255


def test_ade20k_and_coco_stuff_label_maps():
    ade = _script("prepare_ade20k").convert_ade20k_label(np.array([[0, 1, 150]], np.uint8))
    assert ade.tolist() == [[255, 0, 149]]
    lut = _script("prepare_coco_stuff_10k").coco_stuff_lut()
    assert lut[0] == 255 and lut[1] == 0 and lut[12] == 255  # 12 is an unused thing id
    assert lut[11] == 10 and lut[13] == 11 and lut[182] == 170
    assert (lut[1:183] != 255).sum() == 171
