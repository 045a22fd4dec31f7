"""Issue 22, item 8: TEST.BEST_CHECKPOINT_METRIC that no evaluation produces (refused at start-up)
or that is NaN / missing at an evaluation (a warning saying why no model_best.pth was written)."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from test_bad_input import REPO, _run, write_coco, write_sem_seg_folder, sem_seg_custom, tiny_sem_seg_opts

RETINANET = os.path.join(REPO, "configs/demo/det_retinanet_student.yaml")


def _small_objects_coco(root, name):
    """Two 64×64 images with small and medium boxes only (no object above 96² pixels, so COCO's
    APl is undefined)."""
    images = [{"id": 1, "file_name": "a.png", "height": 64, "width": 64},
              {"id": 2, "file_name": "b.png", "height": 64, "width": 64}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 0, "area": 400},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 30, 30, 30], "iscrowd": 0, "area": 900},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [10, 20, 12, 12], "iscrowd": 0, "area": 144}]
    cats = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}, {"id": 3, "name": "three"}]
    json_file = write_coco(root, images, anns, cats)
    return {"NAME": name, "TYPE": "coco", "JSON_FILE": json_file, "IMAGE_ROOT": os.path.join(root, "img")}


def _retinanet_opts(out, entries, test, metric, *extra):
    return ["--config-file", RETINANET, "DATASETS.CUSTOM", str(entries),
            "DATASETS.TRAIN", f"('{entries[0]['NAME']}',)", "DATASETS.TEST", str(tuple(test)),
            "TEST.BEST_CHECKPOINT_METRIC", metric, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
            "SOLVER.WARMUP_ITERS", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "SEED", "0", "OUTPUT_DIR", str(out),
            *extra]


# ----------------------------------------------------------------------- at start-up
def test_metric_no_evaluator_produces_is_refused_naming_key_and_valid_names(tmp_path, caplog):
    entry = _small_objects_coco(str(tmp_path / "c"), "t22_best_typo")
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(_retinanet_opts(out, [entry], ["t22_best_typo"], "bbox/APxl"))
    msg = str(e.value)
    assert "TEST.BEST_CHECKPOINT_METRIC is 'bbox/APxl'" in msg and "closest:" in msg
    assert "bbox/AP, bbox/AP50, bbox/AP75, bbox/APs, bbox/APm, bbox/APl, bbox/AP-one" in msg
    assert not out.exists()
    with pytest.raises(ValueError, match=r"'sem_seg/mIoU', which the evaluators"):
        _run(_retinanet_opts(out, [entry], ["t22_best_typo"], "sem_seg/mIoU"))
    assert not out.exists()
    # Evaluation switched off: a warning, not an error (the configs' bases set a metric).
    from bcd.config import get_cfg
    from bcd.engine.validation import check_best_checkpoint_metric

    cfg = get_cfg()
    cfg.TEST.BEST_CHECKPOINT_METRIC = "bbox/AP"
    cfg.DATASETS.TEST = ()
    with caplog.at_level(logging.WARNING):
        check_best_checkpoint_metric(cfg)
    assert any("DATASETS.TEST is empty" in r.getMessage() and "no model_best.pth will be written"
               in r.getMessage() for r in caplog.records)


def test_several_test_datasets_name_the_dataset_in_the_metric(tmp_path):
    from bcd.config import get_cfg
    from bcd.data.datasets import register_from_config
    from bcd.engine.validation import check_best_checkpoint_metric

    a = _small_objects_coco(str(tmp_path / "a"), "t22_best_a")
    b = _small_objects_coco(str(tmp_path / "b"), "t22_best_b")
    cfg = get_cfg()
    cfg.merge_from_file(RETINANET)
    cfg.DATASETS.CUSTOM = [a, b]
    cfg.DATASETS.TRAIN = ("t22_best_a",)
    cfg.DATASETS.TEST = ("t22_best_a", "t22_best_b")
    register_from_config(cfg)
    cfg.TEST.BEST_CHECKPOINT_METRIC = "t22_best_b/bbox/AP50"
    check_best_checkpoint_metric(cfg)  # as DefaultTrainer.test flattens several datasets
    cfg.TEST.BEST_CHECKPOINT_METRIC = "bbox/AP50"
    with pytest.raises(ValueError, match=r"closest: \['t22_best_a/bbox/AP50', 't22_best_b/bbox/AP50'\]"):
        check_best_checkpoint_metric(cfg)


def test_evaluator_without_metric_names_is_not_checked(tmp_path, caplog):
    import engine_toy as T

    out = str(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="bcd"):
        T.train_main(T.parse_args(["--num-gpus", "0"] + T.base_opts(
            out, **{"SOLVER.MAX_ITER": 4, "SOLVER.WARMUP_ITERS": 0, "TEST.EVAL_PERIOD": 2,
                    "TEST.BEST_CHECKPOINT_METRIC": "toy/absent"})))
    log = open(os.path.join(out, "log.txt")).read()
    # At each evaluation: a warning naming the metric, what was returned, and that nothing was saved.
    lines = [line for line in log.splitlines() if "BestCheckpointer" in line]
    assert len(lines) == 2, lines
    assert "iteration 1 returned no 'toy/absent' (TEST.BEST_CHECKPOINT_METRIC); it returned ['toy/count', 'toy/mse']" in lines[0]
    assert "no model_best.pth written (no model_best.pth exists yet)" in lines[0]
    assert "iteration 4" in lines[1]
    assert not os.path.exists(os.path.join(out, "model_best.pth"))


# ----------------------------------------------------------------------- at an evaluation
def test_nan_metric_warns_at_each_evaluation_and_writes_no_best_checkpoint(tmp_path):
    """detectron2#1482: bbox/APl on data without large objects is NaN at every evaluation."""
    entry = _small_objects_coco(str(tmp_path / "c"), "t22_best_nan")
    out = tmp_path / "out"
    res = _run(_retinanet_opts(out, [entry], ["t22_best_nan"], "bbox/APl", "TEST.EVAL_PERIOD", "1"))
    assert np.isnan(res["bbox/APl"]) and np.isfinite(res["bbox/AP"])
    lines = [line for line in (out / "log.txt").read_text().splitlines() if "BestCheckpointer" in line]
    assert len(lines) == 2, lines  # the evaluation after iteration 0 and the final one
    for line, it in zip(lines, (0, 2)):
        assert f"'bbox/APl' (TEST.BEST_CHECKPOINT_METRIC) is nan at iteration {it}" in line
        assert "no model_best.pth written (no model_best.pth exists yet)" in line
        assert "no large objects" in line
    assert not (out / "model_best.pth").exists() and (out / "model_final.pth").is_file()


# ----------------------------------------------------------------------- the names are the results
def test_metric_names_are_exactly_the_flattened_results(tmp_path):
    """What each evaluator lists equals what its evaluate() returns (so the start-up check
    neither refuses a metric that would exist nor accepts one that never does)."""
    from bcd.data import DatasetCatalog, MetadataCatalog
    from bcd.data.datasets.coco import register_coco_instances
    from bcd.evaluation import flatten_results_dict
    from bcd.evaluation.coco_evaluation import COCOEvaluator
    from bcd.evaluation.object_seg_evaluation import ObjectSegEvaluator
    from bcd.evaluation.sem_seg_evaluation import SemSegEvaluator
    from bcd.structures import Instances

    MetadataCatalog.get("t22_names_ss").set(stuff_classes=["a", "b", "c"], ignore_label=255)
    gt = torch.tensor([[0, 1, 2, 2], [0, 1, 1, 2], [0, 0, 1, 2], [255, 0, 1, 2]])
    scores = torch.nn.functional.one_hot(gt.clamp(max=2), 3).permute(2, 0, 1).float()
    for ratio, conn in [(0.02, True), (0.0, False), (0.0, True)]:
        ev = SemSegEvaluator("t22_names_ss", num_classes=3, boundary_dilation_ratio=ratio, connectivity=conn)
        ev.reset()
        ev.process([{"sem_seg": gt, "file_name": "x"}], [{"sem_seg": scores}])
        assert ev.metric_names() == list(flatten_results_dict(ev.evaluate())), (ratio, conn)

    MetadataCatalog.get("t22_names_os").set(evaluator_type="object_seg")
    ev = ObjectSegEvaluator("t22_names_os")
    ev.process([{"sem_seg": torch.tensor([[0, 1], [1, 1]]), "height": 2, "width": 2, "file_name": "y"}],
               [{"object_seg": torch.tensor([[0.1, 0.8], [0.7, 0.9]])}])
    assert ev.metric_names() == list(flatten_results_dict(ev.evaluate()))

    entry = _small_objects_coco(str(tmp_path / "c"), "t22_names_coco")
    data = json.load(open(entry["JSON_FILE"]))
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    json.dump(data, open(entry["JSON_FILE"], "w"))
    register_coco_instances("t22_names_coco", entry["JSON_FILE"], entry["IMAGE_ROOT"])
    ev = COCOEvaluator("t22_names_coco", None, tasks=("bbox", "segm"))
    for d in DatasetCatalog.get("t22_names_coco"):
        inst = Instances((64, 64))
        inst.pred_boxes = torch.tensor([[4.0, 4.0, 24.0, 24.0]])
        inst.scores = torch.tensor([0.5])
        inst.pred_classes = torch.tensor([0])
        inst.pred_masks = torch.zeros(1, 64, 64, dtype=torch.bool)
        inst.pred_masks[0, 4:24, 4:24] = True
        ev.process([d], [{"instances": inst}])
    assert ev.metric_names() == list(flatten_results_dict(ev.evaluate()))
