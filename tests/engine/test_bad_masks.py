"""Issue 22, items 1 and 2: invalid instance masks in a COCO json (degenerate polygons, RLE of
another size than its image), on data generated here.

The loader drops an instance without a valid mask with ONE warning per file naming the json, the
annotation ids and the reasons (or refuses the file with ``INVALID_MASKS: error``); evaluation
scores against the same cleaned ground truth, checked against pycocotools run directly on a
cleaned file the test writes itself.
"""
from __future__ import annotations

import copy
import json
import logging
import os

import numpy as np
import pytest
import torch

from test_bad_input import _run, write_coco

H1, W1 = 64, 64
H2, W2 = 48, 64  # image 2: height 48, width 64


def _disc_rle(h, w, cy, cx, r, compressed=True):
    from pycocotools import mask as mask_util

    yy, xx = np.mgrid[:h, :w]
    m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
    rle = mask_util.encode(np.asfortranarray(m))
    if compressed:
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    flat = m.flatten(order="F")  # uncompressed COCO RLE: column-major runs, background first
    runs, v, i = [], 0, 0
    while i < flat.size:
        j = i
        while j < flat.size and flat[j] == v:
            j += 1
        runs.append(j - i)
        v, i = 1 - v, j
    return {"size": [h, w], "counts": runs}


def _ann(aid, image_id, bbox, segm, cat=1, iscrowd=0):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": iscrowd,
            "area": float(bbox[2] * bbox[3]), "segmentation": segm}


# annotation id -> reason it is dropped (the instances the loader must remove)
BAD = {
    2: "polygon with fewer than 3 points",
    3: "empty segmentation []",
    6: "RLE size differs from its image's [height, width]",
    7: "polygon with an odd number of coordinates",
    8: "polygon with non-finite or non-numeric coordinates",
    9: "segmentation that is neither a list of polygons nor an RLE dict",
    10: "RLE that does not decode to its size",
}
GOOD = [1, 4, 5, 11, 12]
TRIMMED = 4  # two polygons, one of 7 coordinates: kept with the valid one


def _masks_coco(root):
    sq = [4, 4, 24, 4, 24, 24, 4, 24]
    images = [{"id": 1, "file_name": "a.png", "height": H1, "width": W1},
              {"id": 2, "file_name": "b.png", "height": H2, "width": W2},
              {"id": 3, "file_name": "c.png", "height": H1, "width": W1}]
    disc = _disc_rle(H2, W2, 20, 20, 10)
    anns = [
        _ann(1, 1, [4, 4, 20, 20], [sq]),
        _ann(2, 1, [30, 30, 20, 20], [[30, 30, 50, 50]]),  # 2 points (detectron2#397)
        _ann(3, 1, [5, 40, 15, 15], []),  # empty
        _ann(4, 1, [40, 4, 20, 20], [[40, 4, 60, 4, 60, 24, 40, 24], [41, 5, 50, 5, 50, 9, 41]], cat=2),
        _ann(5, 2, [10, 10, 21, 21], disc),
        # the same disc at twice the image size (maskrcnn-benchmark#859, cocoapi#488)
        _ann(6, 2, [40, 20, 21, 21], _disc_rle(2 * H2, 2 * W2, 60, 100, 20)),
        _ann(7, 2, [2, 30, 10, 10], [[2, 30, 12, 30, 12, 40, 2]]),  # 7 coordinates
        _ann(8, 2, [30, 2, 10, 10], [[30, 2, 40, 2, 40, float("nan"), 30, 12]]),
        _ann(9, 3, [4, 4, 20, 20], sq),  # a flat list, not a list of polygons
        _ann(10, 3, [30, 30, 10, 10], {"size": [H1, W1], "counts": [100, 50, 20]}),  # short runs
        _ann(11, 2, [45, 30, 11, 11], _disc_rle(H2, W2, 35, 50, 5, compressed=False), iscrowd=1),
        _ann(12, 3, [10, 40, 30, 20], [[10, 40, 40, 40, 25, 60]], cat=2),
    ]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return write_coco(root, images, anns, cats), os.path.join(root, "img")


def _cleaned(json_file):
    """The cleaned file, written here without bcd: the BAD ids removed, the 7-coordinate
    polygon of annotation 4 removed."""
    data = json.load(open(json_file))
    data["annotations"] = [a for a in data["annotations"] if a["id"] not in BAD]
    for a in data["annotations"]:
        if a["id"] == TRIMMED:
            a["segmentation"] = a["segmentation"][:1]
    path = json_file.replace(".json", "_cleaned.json")
    json.dump(data, open(path, "w"))
    return path


# ----------------------------------------------------------------------- the check itself
@pytest.mark.parametrize("segm,h,w,reason", [
    ([[0, 0, 5, 0, 5, 5]], 8, 8, None),
    ([[0, 0, 5, 5]], 8, 8, "fewer than 3 points"),
    ([[0, 0, 5, 0, 5]], 8, 8, "odd number"),
    ([[0, 0, 5, 0, float("inf"), 5]], 8, 8, "non-finite"),
    ([[0, 0, 5, 0, "5", 5]], 8, 8, "non-numeric"),
    ([], 8, 8, "empty"),
    ([0, 0, 5, 0, 5, 5], 8, 8, "neither"),
    ("0 0 5", 8, 8, "neither"),
    ([{"size": [8, 8], "counts": [10, 54]}], 8, 8, "neither"),
    ({"size": [8, 8], "counts": [10, 54]}, 8, 8, None),
    ({"size": [8, 8], "counts": [10, 50]}, 8, 8, "does not decode"),
    ({"size": [8, 8], "counts": [10, -4, 58]}, 8, 8, "does not decode"),
    ({"size": [8, 8]}, 8, 8, "does not decode"),
    ({"size": [16, 16], "counts": [10, 246]}, 8, 8, "size differs"),
    ({"size": [8, 8], "counts": "\x01\x02"}, 8, 8, "does not decode"),
])
def test_check_instance_mask(segm, h, w, reason):
    from bcd.data.datasets.coco import check_instance_mask

    kept, why, detail = check_instance_mask(segm, h, w)
    if reason is None:
        assert kept is segm and why is None and detail == ""
    else:
        assert kept is None and reason in why and detail


def test_compressed_rle_runs_are_checked_against_the_image_size():
    from pycocotools import mask as mask_util

    from bcd.data.datasets.coco import check_instance_mask, rle_string_counts

    m = np.zeros((6, 7), np.uint8)
    m[1:4, 2:6] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    runs = rle_string_counts(rle["counts"])
    assert sum(runs) == 42 and sum(runs[1::2]) == int(m.sum()) == int(mask_util.area(rle))
    assert check_instance_mask({"size": [6, 7], "counts": rle["counts"].decode()}, 6, 7)[1] is None
    # The same runs claimed for a 6x8 image: pycocotools decodes it without complaint (the
    # tail is uninitialised memory); the check refuses it.
    _, why, detail = check_instance_mask({"size": [6, 8], "counts": rle["counts"].decode()}, 6, 8)
    assert why == "RLE that does not decode to its size" and "42 pixels" in detail and "48" in detail


def test_multi_polygon_instance_keeps_its_valid_polygons():
    from bcd.data.datasets.coco import check_instance_mask

    good = [0, 0, 5, 0, 5, 5]
    kept, why, detail = check_instance_mask([good, [1, 1, 2, 2]], 8, 8)
    assert kept == [good] and why == "polygon with fewer than 3 points" and "1 of 2 polygons" in detail


# ----------------------------------------------------------------------- loading
def test_invalid_masks_are_dropped_with_one_warning_naming_file_ids_and_reasons(tmp_path, caplog):
    from bcd.data import DatasetCatalog
    from bcd.data.datasets.coco import register_coco_instances
    from bcd.evaluation.coco_evaluation import COCOEvaluator

    json_file, image_root = _masks_coco(str(tmp_path / "coco"))
    register_coco_instances("t22_masks_drop", json_file, image_root)
    with caplog.at_level(logging.WARNING):
        dicts = DatasetCatalog.get("t22_masks_drop")
        DatasetCatalog.get("t22_masks_drop")
        COCOEvaluator("t22_masks_drop", None).coco_gt
    warnings = [r.getMessage() for r in caplog.records if "instance masks are invalid" in r.getMessage()]
    assert len(warnings) == 1, warnings
    msg = warnings[0]
    assert json_file in msg and "7 of its 12 instance masks are invalid" in msg
    assert "1 more lose invalid polygons" in msg
    for aid, reason in BAD.items():  # each reason, counted, with its annotation ids
        assert f"{reason}: 1 (annotation ids {aid};" in msg, (reason, msg)
    assert "RLE size [96, 128], image [48, 64]" in msg
    assert f"annotation ids {TRIMMED}; e.g. id {TRIMMED}: polygon with an odd number of coordinates" in msg
    assert "INVALID_MASKS error" in msg

    kept = {a["id"]: a for d in dicts for a in d["annotations"]}
    assert sorted(kept) == GOOD
    assert len(kept[TRIMMED]["segmentation"]) == 1 and len(kept[TRIMMED]["segmentation"][0]) == 8


def test_invalid_masks_refused_at_startup_with_the_strict_switch(tmp_path):
    json_file, image_root = _masks_coco(str(tmp_path / "coco"))
    entry = {"NAME": "t22_masks_strict", "TYPE": "coco", "JSON_FILE": json_file,
             "IMAGE_ROOT": image_root, "INVALID_MASKS": "error"}
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(_tiny_mask_rcnn(out, entry))
    msg = str(e.value)
    assert json_file in msg and "8 of its 12 instance masks are invalid" in msg
    assert "INVALID_MASKS is 'error'" in msg and "annotation ids 6;" in msg
    assert not out.exists()


def test_unknown_invalid_masks_value_names_the_key(tmp_path):
    json_file, image_root = _masks_coco(str(tmp_path / "coco"))
    entry = {"NAME": "t22_masks_badkey", "TYPE": "coco", "JSON_FILE": json_file,
             "IMAGE_ROOT": image_root, "INVALID_MASKS": "ignore"}
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"DATASETS.CUSTOM\['t22_masks_badkey'\].INVALID_MASKS is 'ignore'"):
        _run(_tiny_mask_rcnn(out, entry))
    assert not out.exists()


def test_a_file_whose_masks_are_all_invalid_is_an_error(tmp_path):
    from bcd.data.datasets.coco import load_coco_json

    images = [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}]
    anns = [_ann(1, 1, [2, 2, 10, 10], [[2, 2, 12, 12]]), _ann(2, 1, [12, 12, 8, 8], [])]
    json_file = write_coco(str(tmp_path / "c"), images, anns, [{"id": 1, "name": "a"}])
    with pytest.raises(ValueError) as e:
        load_coco_json(json_file, str(tmp_path / "c" / "img"))
    msg = str(e.value)
    assert json_file in msg and "every one of its 2 instance masks is invalid" in msg
    assert "annotation ids 1;" in msg and "annotation ids 2;" in msg


def test_boxes_only_file_with_empty_segmentations_loads_without_warning(tmp_path, caplog):
    """Box-only exporters write ``segmentation: []``: that is no mask, not an invalid one."""
    from bcd.data.datasets.coco import load_coco_json

    images = [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}]
    anns = [_ann(1, 1, [2, 2, 10, 10], []), _ann(2, 1, [12, 12, 8, 8], [])]
    json_file = write_coco(str(tmp_path / "c"), images, anns, [{"id": 1, "name": "a"}])
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(json_file, str(tmp_path / "c" / "img"))
    assert not [r for r in caplog.records if "invalid" in r.getMessage()]
    assert [a["id"] for a in dicts[0]["annotations"]] == [1, 2]
    assert all("segmentation" not in a for a in dicts[0]["annotations"])


# ----------------------------------------------------------------------- evaluation
def _predictions(cleaned_json):
    """Per image: every kept non-crowd instance found exactly (its box and mask, score 0.6) and
    a confident detection (0.9) on the box of each dropped instance, which counts as a false
    positive against the cleaned ground truth and as a hit against the original file."""
    from pycocotools.coco import COCO

    gt = COCO(cleaned_json)
    original = json.load(open(cleaned_json.replace("_cleaned.json", ".json")))
    out = {}
    for img_id, img in gt.imgs.items():
        h, w = img["height"], img["width"]
        dets = []  # (bbox XYWH, dataset category id, score, mask)
        for a in gt.imgToAnns[img_id]:
            if not a["iscrowd"]:
                dets.append((a["bbox"], a["category_id"], 0.6, gt.annToMask(a).astype(bool)))
        for a in original["annotations"]:
            if a["image_id"] == img_id and a["id"] in BAD:
                x, y, bw, bh = a["bbox"]
                m = np.zeros((h, w), bool)
                m[int(y):int(y + bh), int(x):int(x + bw)] = True
                dets.append((a["bbox"], a["category_id"], 0.9, m))
        out[img_id] = dets
    return out


def _direct_cocoeval(gt_json, preds, iou_type):
    """pycocotools alone: loadRes + COCOeval on ``gt_json`` (segm results without boxes, so
    each detection's area is its mask's, as Detectron2 scores them)."""
    import contextlib
    import io

    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for img_id, dets in preds.items():
        for bbox, cat, score, m in dets:
            r = {"image_id": img_id, "category_id": cat, "score": score}
            if iou_type == "bbox":
                r["bbox"] = list(map(float, bbox))
            else:
                rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_evaluation_scores_the_cleaned_ground_truth_as_pycocotools_does(tmp_path):
    from bcd.data import DatasetCatalog
    from bcd.data.datasets.coco import register_coco_instances
    from bcd.evaluation.coco_evaluation import COCOEvaluator
    from bcd.structures import Instances

    json_file, image_root = _masks_coco(str(tmp_path / "coco"))
    cleaned = _cleaned(json_file)
    preds = _predictions(cleaned)
    register_coco_instances("t22_masks_eval", json_file, image_root)
    dicts = DatasetCatalog.get("t22_masks_eval")
    ev = COCOEvaluator("t22_masks_eval", None, tasks=("bbox", "segm"))
    to_contiguous = {1: 0, 2: 1}
    ev.reset()
    for d in dicts:
        dets = preds[d["image_id"]]
        inst = Instances((d["height"], d["width"]))
        boxes = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), *_ in dets], dtype=torch.float64)
        inst.pred_boxes = boxes.reshape(-1, 4).float()
        inst.scores = torch.tensor([s for _, _, s, _ in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([to_contiguous[c] for _, c, _, _ in dets], dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(np.stack([m for *_, m in dets]))
        ev.process([d], [{"instances": inst}])
    res = ev.evaluate()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    for task in ("bbox", "segm"):
        stats = _direct_cocoeval(cleaned, preds, task)
        for i, k in enumerate(names):
            expected = stats[i] * 100 if stats[i] >= 0 else float("nan")
            assert res[task][k] == pytest.approx(expected, abs=1e-9, nan_ok=True), (task, k)
    # Against the original file the detections on dropped instances would be hits: the numbers
    # differ, so the evaluator did score the cleaned ground truth.
    original_bbox = _direct_cocoeval(json_file, preds, "bbox")
    assert abs(original_bbox[0] * 100 - res["bbox"]["AP"]) > 5

    # The kept instances alone, found exactly: AP 100 for both tasks and both classes (the
    # RLE at twice its image's size no longer stands in the ground truth as an unmatched mask).
    ev.reset()
    for d in dicts:
        dets = [t for t in preds[d["image_id"]] if t[2] == 0.6]
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), *_ in dets]).reshape(-1, 4).float()
        inst.scores = torch.full((len(dets),), 0.6)
        inst.pred_classes = torch.tensor([to_contiguous[c] for _, c, _, _ in dets], dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(np.stack([m for *_, m in dets]))
        ev.process([d], [{"instances": inst}])
    res = ev.evaluate()
    for task in ("bbox", "segm"):
        assert (res[task]["AP"], res[task]["AP-a"], res[task]["AP-b"]) == pytest.approx((100.0,) * 3), task


# ----------------------------------------------------------------------- training
def _tiny_mask_rcnn(out, entry):
    name = entry["NAME"]
    return [
        "--config-file", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "configs/coco/mask_rcnn_r50.yaml"),
        "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.WEIGHTS", "", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.BACKBONE.NORM", "BN", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.125",
        "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.ROI_BOX_HEAD.FC_DIM", "16",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "8", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "3",
        "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATASETS.CUSTOM", str([entry]), "DATASETS.TRAIN", f"('{name}',)",
        "DATASETS.TEST", f"('{name}',)", "SEED", "0", "OUTPUT_DIR", str(out),
    ]


def test_kept_instances_train_and_evaluate(tmp_path, caplog):
    """Mask R-CNN (tiny) trains two iterations on the file with invalid masks (it died at
    iteration 0 in pycocotools before) and reports bbox and segm AP on the kept instances."""
    json_file, image_root = _masks_coco(str(tmp_path / "coco"))
    entry = {"NAME": "t22_masks_train", "TYPE": "coco", "JSON_FILE": json_file, "IMAGE_ROOT": image_root}
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        res = _run(_tiny_mask_rcnn(out, entry))
    assert {"bbox/AP", "segm/AP", "segm/AP-a", "segm/AP-b"} <= set(res)
    # One warning over the whole run (start-up check, trainer, evaluator): records before the
    # logger is set up reach caplog, later ones log.txt.
    early = [r.getMessage() for r in caplog.records if "instance masks are invalid" in r.getMessage()]
    later = (out / "log.txt").read_text().count("instance masks are invalid")
    assert len(early) + later == 1 and json_file in (early or [(out / "log.txt").read_text()])[0]
    assert (out / "model_final.pth").is_file()


# ======================================================================= object segmentation
# Items 3 and 4: masks stored as 0 / 1, masks of another size than their image.
SKD_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "configs", "demo", "skd_demo_sod_inference.yaml")


def write_object_seg(root, n=4, size=(32, 40), fg=1, sizes=None, values=None):
    """``root/image/<i>.png`` (RGB) and ``root/mask/<i>.png``: a rectangle of value ``fg`` (or
    ``values[i]``) on 0; ``sizes[i]`` overrides one mask's (h, w)."""
    from PIL import Image

    os.makedirs(os.path.join(root, "image"), exist_ok=True)
    os.makedirs(os.path.join(root, "mask"), exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(root, "image", f"{i}.png"))
        mh, mw = (sizes or {}).get(i, size)
        m = np.zeros((mh, mw), np.uint8)
        m[mh // 4: mh // 4 + mh // 2, mw // 8 + i: mw // 8 + i + mw // 2] = (values or {}).get(i, fg)
        Image.fromarray(m).save(os.path.join(root, "mask", f"{i}.png"))
    return os.path.join(root, "image"), os.path.join(root, "mask")


def _object_seg_entry(name, image_dir, mask_dir, **kw):
    return dict({"NAME": name, "TYPE": "object_seg", "IMAGE_DIR": image_dir, "MASK_DIR": mask_dir}, **kw)


def _object_seg_opts(out, entries, train, test, *extra):
    return ["--config-file", SKD_CONFIG, "DATASETS.CUSTOM", str(entries),
            "DATASETS.TRAIN", str(tuple(train)), "DATASETS.TEST", str(tuple(test)),
            "INPUT.OBJECT_SEG.TRAIN_SIZE", "[32, 32]", "INPUT.OBJECT_SEG.TEST_SIZE", "[32, 32]",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0",
            "SEED", "0", "OUTPUT_DIR", str(out), *extra]


def test_zero_one_masks_are_read_as_binary_with_a_warning(tmp_path, caplog):
    """The issue's case: 0 / 1 masks trained and evaluated as empty (maxF 0.0000) without a word.
    Now one warning names the dataset, a mask and the key; training and evaluation read 1 as
    the object."""
    from bcd.data import DatasetCatalog
    from bcd.data.mappers.object_seg import ObjectSegDatasetMapper

    img, msk = write_object_seg(str(tmp_path / "d"))
    entry = _object_seg_entry("t22_os01", img, msk)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        res = _run(_object_seg_opts(out, [entry], ["t22_os01"], ["t22_os01"]))
    warnings = [r.getMessage() for r in caplog.records if "only the values 0 and 1" in r.getMessage()]
    warnings += [line for line in (out / "log.txt").read_text().splitlines() if "only the values 0 and 1" in line]
    assert len(warnings) == 1, warnings
    msg = warnings[0]
    assert "'t22_os01'" in msg and os.path.join(msk, "0.png") in msg and "4 of its 4 masks checked" in msg
    assert "INPUT.OBJECT_SEG.MASK_THRESHOLD" in msg and "INPUT.OBJECT_SEG.ZERO_ONE_MASKS error" in msg
    assert res["object_seg/maxF"] > 0.0  # 0.0 exactly when every ground truth mask is empty
    # What the model was given: the mask's 1-pixels as the object, at training and at test.
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(SKD_CONFIG)
    d = DatasetCatalog.get("t22_os01")[1]
    raw = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(d["mask_file_name"]))
    test = ObjectSegDatasetMapper(cfg, is_train=False)(d)
    assert torch.equal(test["sem_seg"], torch.from_numpy((raw == 1).astype(np.int64)))


def test_zero_one_masks_refused_naming_the_key(tmp_path):
    img, msk = write_object_seg(str(tmp_path / "d"))
    entry = _object_seg_entry("t22_os01_err", img, msk, MASK_THRESHOLD=100)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(_object_seg_opts(out, [entry], ["t22_os01_err"], [], "INPUT.OBJECT_SEG.ZERO_ONE_MASKS", "error"))
    msg = str(e.value)
    assert "'t22_os01_err'" in msg and os.path.join(msk, "0.png") in msg
    assert "INPUT.OBJECT_SEG.ZERO_ONE_MASKS is 'error'" in msg
    assert "value > 100 (DATASETS.CUSTOM['t22_os01_err'].MASK_THRESHOLD)" in msg
    assert not out.exists()


def test_zero_one_and_255_masks_mixed_are_refused(tmp_path):
    img, msk = write_object_seg(str(tmp_path / "d"), values={2: 255})
    entry = _object_seg_entry("t22_os_mixed", img, msk)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(_object_seg_opts(out, [entry], ["t22_os_mixed"], []))
    msg = str(e.value)
    assert "mixes masks stored as 0 / 1" in msg and os.path.join(msk, "2.png") in msg
    assert not out.exists()


def test_0_255_masks_pass_without_warning(tmp_path, caplog):
    from bcd.config import get_cfg
    from bcd.data.datasets import register_from_config
    from bcd.data.datasets.object_seg import check_object_seg_masks

    img, msk = write_object_seg(str(tmp_path / "d"), fg=255)
    cfg = get_cfg()
    cfg.DATASETS.CUSTOM = [_object_seg_entry("t22_os255", img, msk)]
    cfg.DATASETS.TRAIN = ("t22_os255",)
    cfg.DATASETS.TEST = ()
    register_from_config(cfg)
    with caplog.at_level(logging.WARNING):
        check_object_seg_masks(cfg, ["t22_os255"])
    assert not caplog.records
    from bcd.data import MetadataCatalog

    assert MetadataCatalog.get("t22_os255").get("mask_threshold") is None  # the default rule


def test_values_of_a_sample_of_a_large_dataset_are_read(tmp_path, monkeypatch):
    """Above MASK_VALUE_CHECKS images, that many masks spread evenly (first and last among them)
    are read; every mask's size is still checked."""
    import bcd.data.datasets.object_seg as OS
    from bcd.config import get_cfg
    from bcd.data.datasets import register_from_config

    img, msk = write_object_seg(str(tmp_path / "d"), n=7, fg=255)
    cfg = get_cfg()
    cfg.DATASETS.CUSTOM = [_object_seg_entry("t22_os_sample", img, msk)]
    cfg.DATASETS.TRAIN = ("t22_os_sample",)
    cfg.DATASETS.TEST = ()
    register_from_config(cfg)
    read = []
    real = OS.read_image
    monkeypatch.setattr(OS, "MASK_VALUE_CHECKS", 3)
    monkeypatch.setattr(OS, "read_image", lambda p, **k: read.append(os.path.basename(p)) or real(p, **k))
    OS.check_object_seg_masks(cfg, ["t22_os_sample"])
    assert read == ["0.png", "3.png", "6.png"]


def test_mask_of_another_size_refused_before_training_naming_both_files(tmp_path, monkeypatch):
    """detectron2#5349: a validation mask of another size failed only after training. Now the
    start-up check refuses it, before any model is built or anything written."""
    from bcd.modeling.meta_arch.object_seg import ObjectSegmentor

    img, msk = write_object_seg(str(tmp_path / "train"), fg=255)
    vimg, vmsk = write_object_seg(str(tmp_path / "val"), fg=255, sizes={3: (32, 41)})
    entries = [_object_seg_entry("t22_os_size_tr", img, msk), _object_seg_entry("t22_os_size_val", vimg, vmsk)]

    def _built(*a, **k):
        raise AssertionError("a model was built before the mask check")

    monkeypatch.setattr(ObjectSegmentor, "__init__", _built)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(_object_seg_opts(out, entries, ["t22_os_size_tr"], ["t22_os_size_val"]))
    msg = str(e.value)
    assert os.path.join(vmsk, "3.png") in msg and os.path.join(vimg, "3.png") in msg
    assert "32×41" in msg and "32×40" in msg and "'t22_os_size_val'" in msg
    assert not out.exists()
