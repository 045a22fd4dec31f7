"""COCO loading and validation, registration, demo data, transforms and the detection mapper."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

import bcd.data.datasets  # noqa: F401  (registers builtin / demo datasets)
from bcd.data.catalog import DatasetCatalog, MetadataCatalog
from bcd.data.datasets import register_from_config
from bcd.data.datasets.builtin_coco import check_coco_split
from bcd.data.datasets.coco import load_coco_json
from bcd.data.datasets.demo_coco import build_demo_coco
from bcd.data.detection_transforms import HFlipTransform, ResizeShortestEdge, ResizeTransform
from bcd.data.mappers.detection import DetectionDatasetMapper
from bcd.structures import Instances


def _listing(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_load_valid(small_coco):
    dicts = load_coco_json(small_coco["json"], small_coco["image_root"], "t_valid_load")
    assert [d["image_id"] for d in dicts] == [1, 2]
    assert dicts[0]["height"] == 40 and dicts[0]["width"] == 50
    a0, a1 = dicts[0]["annotations"]
    # categories 3, 7 -> contiguous 0, 1 in increasing id order
    assert a0["category_id"] == 1 and a1["category_id"] == 0
    assert a0["bbox"] == [2.0, 3.0, 10.0, 12.0] and a0["bbox_mode"] == "XYWH_ABS"
    assert a0["segmentation"] == [[2, 3, 12, 3, 12, 15, 2, 15]]
    meta = MetadataCatalog.get("t_valid_load")
    assert meta.thing_classes == ["cat3", "cat7"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert meta.evaluator_type == "coco"


def _broken(small_coco, coco_writer, tmp_path, edit):
    images = copy.deepcopy(small_coco["images"])
    anns = copy.deepcopy(small_coco["annotations"])
    cats = copy.deepcopy(small_coco["categories"])
    edit(images, anns, cats)
    root = str(tmp_path / "broken")
    path = coco_writer(root, images, anns, cats)
    if any(im["file_name"] == "missing.png" for im in images):
        os.remove(os.path.join(root, "img", "missing.png"))
    return path, os.path.join(root, "img")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda i, a, c: i[1].update(file_name="missing.png"), ["image id 2", "missing.png"]),
        (lambda i, a, c: [x.update(id=x["id"] - 1) for x in a], ["annotation id 0", "start at 1"]),
        (lambda i, a, c: a[1].update(bbox=[20, 5, 0, 30]), ["annotation id 2", "non-positive"]),
        (lambda i, a, c: a[2].update(bbox=[10, 10, 30, 5]), ["annotation id 3", "outside"]),
        (lambda i, a, c: a[0].update(category_id=99), ["annotation id 1", "unknown category_id 99"]),
    ],
    ids=["missing_image", "ids_from_0", "zero_width", "outside", "unknown_category"],
)
def test_validation_errors_name_file_and_annotation(small_coco, coco_writer, tmp_path, edit, expected):
    path, image_root = _broken(small_coco, coco_writer, tmp_path, edit)
    before = _listing(str(tmp_path))
    with pytest.raises(ValueError) as e:
        load_coco_json(path, image_root)
    msg = str(e.value)
    assert path in msg
    for part in expected:
        assert part in msg, msg
    assert _listing(str(tmp_path)) == before  # nothing written


def test_invalid_boxes_drop_mode(small_coco, coco_writer, tmp_path):
    path, image_root = _broken(
        small_coco, coco_writer, tmp_path, lambda i, a, c: a[1].update(bbox=[20, 5, 0, 30])
    )
    dicts = load_coco_json(path, image_root, invalid_boxes="drop")
    assert [len(d["annotations"]) for d in dicts] == [1, 1]


def test_box_overshoot_within_tolerance_is_clipped(small_coco, coco_writer, tmp_path):
    path, image_root = _broken(
        small_coco, coco_writer, tmp_path, lambda i, a, c: a[2].update(bbox=[0, 0, 30.5, 30])
    )
    d = load_coco_json(path, image_root)[1]
    assert d["annotations"][0]["bbox"] == [0.0, 0.0, 30.0, 30.0]


def test_register_custom_from_config(small_coco, cfg):
    cfg.DATASETS.CUSTOM = [{"NAME": "t_custom_coco", "TYPE": "coco", "JSON_FILE": small_coco["json"],
                            "IMAGE_ROOT": small_coco["image_root"]}]
    register_from_config(cfg)
    assert MetadataCatalog.get("t_custom_coco").evaluator_type == "coco"
    dicts = DatasetCatalog.get("t_custom_coco")
    assert len(dicts) == 2 and MetadataCatalog.get("t_custom_coco").thing_classes == ["cat3", "cat7"]
    cfg.DATASETS.CUSTOM = [{"NAME": "t_custom_bad", "TYPE": "coco", "JSON_FILE": small_coco["json"]}]
    with pytest.raises(ValueError, match="IMAGE_ROOT"):
        register_from_config(cfg)


def test_builtin_coco_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("coco_2017_train")
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "coco") in msg and "datasets/README.md" in msg
    # with the coco folder but no images the image folder is named
    os.makedirs(tmp_path / "coco" / "annotations")
    with pytest.raises(FileNotFoundError, match="train2017"):
        check_coco_split("coco_2017_train")


def test_demo_data_deterministic_and_valid(tmp_path):
    a = build_demo_coco(str(tmp_path / "a"))
    b = build_demo_coco(str(tmp_path / "b"))
    ja = json.load(open(os.path.join(a, "annotations", "train.json")))
    jb = json.load(open(os.path.join(b, "annotations", "train.json")))
    assert ja == jb
    img_a = open(os.path.join(a, "train", "000005.png"), "rb").read()
    assert img_a == open(os.path.join(b, "train", "000005.png"), "rb").read()
    dicts = load_coco_json(os.path.join(a, "annotations", "val.json"), os.path.join(a, "val"))
    assert len(dicts) == 24
    segs = [o["segmentation"] for d in dicts for o in d["annotations"]]
    assert any(isinstance(s, dict) for s in segs) and any(isinstance(s, list) for s in segs)
    sizes = [max(o["bbox"][2:]) for d in dicts for o in d["annotations"]]
    assert min(sizes) < 24 and max(sizes) > 40  # several scales
    # RLE masks decode to their boxes' extents
    from pycocotools import mask as mask_util

    for d in dicts:
        for o in d["annotations"]:
            if isinstance(o["segmentation"], dict):
                m = mask_util.decode(o["segmentation"])
                ys, xs = np.nonzero(m)
                assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == o["bbox"]


def test_transforms_boxes_follow_image():
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 5:15] = 255  # a white box [5, 10, 15, 20] XYXY
    box = np.array([[5.0, 10.0, 15.0, 20.0]])
    t = ResizeShortestEdge([80], 1000).get_transform(img, np.random.default_rng(0))
    assert isinstance(t, ResizeTransform) and (t.new_h, t.new_w) == (80, 120)
    np.testing.assert_allclose(t.apply_box(box), [[10, 20, 30, 40]])
    # max size caps the long side: 40x60 with short 80 and max 90 -> 60x90
    assert ResizeShortestEdge.get_output_shape(40, 60, 80, 90) == (60, 90)
    f = HFlipTransform(60)
    fb = f.apply_box(box)
    np.testing.assert_allclose(fb, [[45, 10, 55, 20]])
    flipped = f.apply_image(img)
    ys, xs = np.nonzero(flipped[:, :, 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (45, 55, 10, 20)
    polys = f.apply_polygons([np.array([5.0, 10, 15, 10, 15, 20])])
    np.testing.assert_allclose(polys[0], [55, 10, 45, 10, 45, 20])


def test_mapper_output(small_coco, tiny_cfg):
    cfg = tiny_cfg("RetinaNet")
    cfg.INPUT.MIN_SIZE_TRAIN = (80,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.FLIP = False
    dicts = load_coco_json(small_coco["json"], small_coco["image_root"])
    out = DetectionDatasetMapper(cfg, is_train=True)(dicts[0])
    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, 80, 100)
    assert (out["height"], out["width"]) == (40, 50)
    assert out["image_id"] == 1 and out["file_name"].endswith("a.png")
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (80, 100)
    torch.testing.assert_close(inst.gt_boxes, torch.tensor([[4.0, 6, 24, 30], [40, 10, 90, 70]]))
    assert inst.gt_classes.tolist() == [1, 0] and inst.gt_classes.dtype == torch.int64
    # masks on request: polygon rasterised inside its moved box
    m = DetectionDatasetMapper(cfg, is_train=True, use_masks=True)(dicts[0])["instances"].gt_masks
    assert m.shape == (2, 80, 100) and m[0, 10:28, 6:22].all() and m[0].sum() < 26 * 30
    # evaluation resizes to MIN_SIZE_TEST
    cfg.INPUT.MIN_SIZE_TEST = 20
    ev = DetectionDatasetMapper(cfg, is_train=False)(dicts[1])
    assert tuple(ev["image"].shape) == (3, 20, 20)


def test_mapper_unreadable_image_names_file(small_coco, tiny_cfg, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    d = {"file_name": str(bad), "height": 10, "width": 10, "image_id": 1, "annotations": []}
    with pytest.raises(OSError, match="bad.png"):
        DetectionDatasetMapper(tiny_cfg("RetinaNet"), is_train=True)(d)


def test_instances_ops():
    inst = Instances((10, 20), boxes=torch.arange(12.0).view(3, 4), cls=torch.tensor([0, 1, 2]))
    inst.names = ["a", "b", "c"]
    assert len(inst) == 3 and inst.has("cls") and not inst.has("x")
    sel = inst[torch.tensor([True, False, True])]
    assert sel.cls.tolist() == [0, 2] and sel.names == ["a", "c"]
    assert inst[1].cls.tolist() == [1] and inst[-1].names == ["c"]
    assert inst[1:].boxes.shape == (2, 4)
    assert inst[torch.tensor([2, 0])].names == ["c", "a"]
    cat = Instances.cat([inst, sel])
    assert len(cat) == 5 and cat.cls.tolist() == [0, 1, 2, 0, 2] and cat.names[-1] == "c"
    with pytest.raises(ValueError, match="length"):
        inst.bad = torch.zeros(2)
    with pytest.raises(AttributeError, match="missing_field"):
        inst.missing_field
    moved = inst.to(torch.float64)
    assert moved.boxes.dtype == torch.float64 and moved.image_size == (10, 20)
    import pickle  # data-loader workers pickle mapped inputs

    back = pickle.loads(pickle.dumps(inst))
    assert back.image_size == (10, 20) and torch.equal(back.boxes, inst.boxes) and back.names == inst.names
