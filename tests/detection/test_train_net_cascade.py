"""tools/train_net.py with the Cascade Mask R-CNN configs: the missing COCO folder fails at once;
(slow) a custom COCO json trains and evaluates bbox + segm; (slow) the demo model reaches a
clearly non-trivial box and mask AP and --eval-only reproduces it."""
from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(argv):
    from bcd.engine import default_argument_parser

    spec = importlib.util.spec_from_file_location("bcd_train_net", os.path.join(REPO, "tools", "train_net.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(default_argument_parser().parse_args(argv))


def _task(res, task):
    if task in res:
        return dict(res[task])
    return {k.split("/", 1)[1]: v for k, v in res.items() if k.startswith(task + "/")}


def test_cascade_config_missing_coco_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(REPO)
    from bcd.modeling.meta_arch.cascade_rcnn import CascadeMaskRCNN

    def _built(*a, **k):
        raise AssertionError("a model was built before the dataset check")

    monkeypatch.setattr(CascadeMaskRCNN, "__init__", _built)  # "at once": before any model
    with pytest.raises(FileNotFoundError) as e:
        _run(["--config-file", "configs/coco/bcd_cascade_mask_rcnn_r50.yaml", "OUTPUT_DIR", str(tmp_path / "out")])
    msg = str(e.value)
    assert os.path.join(str(tmp_path / "datasets"), "coco") in msg and "train2017" in msg
    assert not (tmp_path / "out").exists()


TINY = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.25", "MODEL.FPN.OUT_CHANNELS", "16",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "192", "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.BACKBONE.NORM", "BN",
        "MODEL.BACKBONE.WEIGHTS", "", "DATALOADER.NUM_WORKERS", "0"]


@pytest.mark.slow
def test_cascade_config_trains_on_a_custom_coco_json(tmp_path, monkeypatch):
    """configs/coco/cascade_mask_rcnn_r50.yaml shrunk on the command line, on a custom COCO json
    (the generated demo's val split): trains a few steps and reports bbox and segm AP."""
    from bcd.data.datasets.demo_coco import build_demo_coco

    monkeypatch.chdir(REPO)
    demo = build_demo_coco(str(tmp_path / "data"))
    entry = {"NAME": "t_cmr_custom", "TYPE": "coco", "JSON_FILE": os.path.join(demo, "annotations", "val.json"),
             "IMAGE_ROOT": os.path.join(demo, "val")}
    out = tmp_path / "out"
    res = _run(["--config-file", "configs/coco/cascade_mask_rcnn_r50.yaml", *TINY, "SOLVER.IMS_PER_BATCH", "2",
                "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "1", "DATASETS.CUSTOM", str([entry]),
                "DATASETS.TRAIN", "('t_cmr_custom',)", "DATASETS.TEST", "('t_cmr_custom',)", "OUTPUT_DIR", str(out)])
    for task in ("bbox", "segm"):
        assert set(_task(res, task)) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}, res
    results = json.load(open(out / "inference" / "t_cmr_custom" / "coco_instances_results.json"))
    assert results and "segmentation" in results[0]


@pytest.mark.slow
def test_demo_cascade_mask_rcnn_trains_to_nontrivial_ap(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(REPO)
    config = "configs/demo/det_cascade_mask_rcnn.yaml"
    out = str(tmp_path / "run")
    t0 = time.time()
    res = _run(["--config-file", config, "OUTPUT_DIR", out])
    train_s = time.time() - t0
    res_eval = _run(["--config-file", config, "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                     "OUTPUT_DIR", out + "_eval"])
    box, mask = _task(res, "bbox"), _task(res, "segm")
    print(f"{config}: box AP {box['AP']:.1f} (AP50 {box['AP50']:.1f}), mask AP {mask['AP']:.1f} "
          f"(AP50 {mask['AP50']:.1f}), train+eval {train_s:.0f}s")
    assert box["AP"] > 15.0 and mask["AP"] > 15.0, (box, mask)
    assert _task(res_eval, "bbox")["AP"] == pytest.approx(box["AP"], abs=1e-9)
    assert _task(res_eval, "segm")["AP"] == pytest.approx(mask["AP"], abs=1e-9)
