"""COCOEvaluator's ``segm`` task against pycocotools run directly, ground truth as predictions,
and masks through the detection mapper (polygons and RLE, resize and flip)."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch

from bcd.data.catalog import DatasetCatalog
from bcd.data.datasets.coco import register_coco_instances
from bcd.evaluation.coco_evaluation import COCOEvaluator
from bcd.structures import Instances


def _polygon(rng, H, W):
    """A random triangle or quadrilateral inside the image; (polygon, bbox)."""
    cx, cy = rng.uniform(40, W - 40), rng.uniform(40, H - 40)
    n = int(rng.integers(3, 5))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(10, 38, n)
    pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return pts.reshape(-1).tolist(), [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


@pytest.fixture
def segm_dataset(tmp_path, coco_writer):
    """6 images, categories 2 / 4, polygon masks, one RLE mask per image, one crowd region."""
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(1)
    images, anns = [], []
    H, W = 120, 160
    for i in range(6):
        images.append({"id": 1 + i, "file_name": f"{i}.png", "height": H, "width": W})
        for k in range(int(rng.integers(2, 5))):
            poly, box = _polygon(rng, H, W)
            seg = [poly]
            if k == 0:  # compressed RLE of the same shape
                rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
                rle["counts"] = rle["counts"].decode("ascii")
                seg = rle
                box = [float(v) for v in mask_util.toBbox(rle)]
            anns.append({"id": len(anns) + 1, "image_id": 1 + i, "category_id": int(rng.choice([2, 4])),
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0, "segmentation": seg})
        if i == 0:
            poly, box = _polygon(rng, H, W)
            rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 2, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 1, "segmentation": rle})
    cats = [{"id": 2, "name": "p"}, {"id": 4, "name": "q"}]
    root = str(tmp_path / "segm")
    path = coco_writer(root, images, anns, cats)
    name = f"t_segm_{tmp_path.name}"
    register_coco_instances(name, path, os.path.join(root, "img"))
    return {"name": name, "json": path, "dicts": DatasetCatalog.get(name), "rng": rng}


def _gt_masks(json_file, image_id):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(json_file)
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    return [coco.annToMask(a).astype(bool) for a in anns], anns


def _pred(boxes, scores, classes, masks, size):
    inst = Instances(size)
    inst.pred_boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4)
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    inst.pred_masks = torch.as_tensor(np.asarray(masks)).reshape(-1, *size).bool()
    return {"instances": inst}


def test_gt_as_predictions_gives_ap_1_for_bbox_and_segm(segm_dataset, tmp_path):
    ev = COCOEvaluator(segm_dataset["name"], str(tmp_path / "inference"))
    contiguous = {2: 0, 4: 1}
    for d in segm_dataset["dicts"]:
        masks, anns = _gt_masks(segm_dataset["json"], d["image_id"])
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                 for a in anns]
        classes = [contiguous[a["category_id"]] for a in anns]
        ev.process([d], [_pred(boxes, [1.0] * len(anns), classes, masks, (d["height"], d["width"]))])
    res = ev.evaluate()
    assert set(res) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for k in ("AP", "AP50", "AP75", "AP-p", "AP-q"):
            assert res[task][k] == pytest.approx(100.0), (task, k, res[task])
    written = json.load(open(tmp_path / "inference" / "coco_instances_results.json"))
    assert all(isinstance(r["segmentation"]["counts"], str) for r in written)


def test_segm_matches_pycocotools(segm_dataset, tmp_path):
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = segm_dataset["rng"]
    ev = COCOEvaluator(segm_dataset["name"], None, tasks=("bbox", "segm"))
    reference = []
    for d in segm_dataset["dicts"]:
        H, W = d["height"], d["width"]
        masks, anns = _gt_masks(segm_dataset["json"], d["image_id"])
        boxes, scores, classes, pmasks = [], [], [], []
        for m, a in zip(masks, anns):  # shifted / eroded true masks, sometimes the wrong class
            dy, dx = (int(v) for v in rng.integers(-6, 7, size=2))
            pm = np.roll(np.roll(m, dy, 0), dx, 1)
            if rng.random() < 0.3:
                pm = pm & np.roll(pm, 3, 1)
            pmasks.append(pm)
            ys, xs = np.where(pm)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            classes.append(0 if a["category_id"] == 2 else 1) if rng.random() < 0.8 else classes.append(int(rng.integers(2)))
            scores.append(float(np.float32(rng.random())))
        fm = np.zeros((H, W), bool)  # a false positive
        fm[5:30, 5:40] = True
        pmasks.append(fm)
        boxes.append([5, 5, 40, 30])
        classes.append(int(rng.integers(2)))
        scores.append(float(np.float32(rng.random())))
        ev.process([d], [_pred(boxes, scores, classes, pmasks, (H, W))])
        for m, s, c in zip(pmasks, scores, classes):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            reference.append({"image_id": d["image_id"], "category_id": [2, 4][c], "segmentation": rle,
                              "score": s})
    res = ev.evaluate()["segm"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(segm_dataset["json"])
        coco_ev = COCOeval(gt, gt.loadRes(reference), "segm")
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
    for k, name in enumerate(["p", "q"]):
        p = coco_ev.eval["precision"][:, :, k, 0, -1]
        assert res[f"AP-{name}"] == pytest.approx(np.mean(p[p > -1]) * 100, abs=1e-9)


def test_mapper_moves_masks_with_boxes(segm_dataset):
    """Polygon and RLE masks through resize + flip stay aligned with their boxes; crowd dropped."""
    from bcd.config import get_cfg
    from bcd.data.mappers.detection import DetectionDatasetMapper

    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MIN_SIZE_TRAIN = (180,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.FLIP = True
    mapper = DetectionDatasetMapper(cfg, is_train=True)
    d = segm_dataset["dicts"][0]
    n_noncrowd = sum(1 for a in d["annotations"] if not a.get("iscrowd", 0))
    flipped = 0
    for seed in range(6):
        out = mapper(d, rng=np.random.default_rng(seed))
        inst = out["instances"]
        assert out["image"].shape[-2:] == (180, 240)
        assert len(inst) == n_noncrowd and inst.gt_masks.shape == (n_noncrowd, 180, 240)
        masks, _ = _gt_masks(segm_dataset["json"], d["image_id"])
        is_flipped = False
        for m, box, gm in zip(inst.gt_masks, inst.gt_boxes, masks):
            ys, xs = torch.where(m.bool())
            # the mask's extent equals its box within the rasterisation of a 1.5x scale
            assert abs(float(xs.min()) - float(box[0])) <= 2.0 and abs(float(xs.max()) + 1 - float(box[2])) <= 2.0
            assert abs(float(ys.min()) - float(box[1])) <= 2.0 and abs(float(ys.max()) + 1 - float(box[3])) <= 2.0
            gx = np.where(gm)[1].mean() * 1.5
            is_flipped |= abs(float(xs.float().mean()) - (240 - gx)) < abs(float(xs.float().mean()) - gx)
        flipped += int(is_flipped)
    assert 0 < flipped < 6  # both branches seen
