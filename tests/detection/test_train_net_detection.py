"""tools/train_net.py with the detection configs: missing COCO folder, malformed custom json,
and (slow) end-to-end demo training of RetinaNet / GFL with --eval-only reproduction, and BCD
distillation of a detector on a custom COCO json given on the command line."""
from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_net():
    spec = importlib.util.spec_from_file_location("bcd_train_net", os.path.join(REPO, "tools", "train_net.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(argv):
    from bcd.engine import default_argument_parser

    mod = _train_net()
    return mod.main(default_argument_parser().parse_args(argv))


def _bbox(res):
    """``{metric: value}`` of the bbox task from train() (flat ``bbox/AP``) or test() (nested)."""
    if "bbox" in res:
        return dict(res["bbox"])
    return {k.split("/", 1)[1]: v for k, v in res.items() if k.startswith("bbox/")}


def _custom(name, json_file, image_root):
    entry = {"NAME": name, "TYPE": "coco", "JSON_FILE": json_file, "IMAGE_ROOT": image_root}
    return ["DATASETS.CUSTOM", str([entry]), "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)"]


def test_bcd_retinanet_config_missing_coco_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(REPO)
    t0 = time.time()
    with pytest.raises(FileNotFoundError) as e:
        _run(["--config-file", "configs/coco/bcd_retinanet_r50.yaml", "OUTPUT_DIR", str(tmp_path / "out")])
    msg = str(e.value)
    assert os.path.join(str(tmp_path / "datasets"), "coco") in msg
    assert "does not exist" in msg and "datasets/README.md" in msg and "train2017" in msg
    assert time.time() - t0 < 30  # at once: before the R50 / R101 models are built
    assert not (tmp_path / "out").exists()  # checked before default_setup writes anything


def test_malformed_custom_json_fails_before_training(tmp_path, monkeypatch, small_coco):
    data = json.load(open(small_coco["json"]))
    data["annotations"][1]["category_id"] = 42
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(["--config-file", "configs/demo/det_retinanet_student.yaml", "OUTPUT_DIR", str(out)]
             + _custom("t_bad_custom", str(bad), small_coco["image_root"]))
    assert str(bad) in str(e.value) and "annotation id 2" in str(e.value)
    assert not out.exists()  # nothing written: not even config.yaml / log.txt


def _train_and_eval(tmp_path, config, iters, extra=()):
    out = str(tmp_path / os.path.basename(config).replace(".yaml", ""))
    t0 = time.time()
    res = _run(["--config-file", config, "SOLVER.MAX_ITER", str(iters), "OUTPUT_DIR", out, *extra])
    train_s = time.time() - t0
    t0 = time.time()
    res_eval = _run(["--config-file", config, "--eval-only", "MODEL.WEIGHTS",
                     os.path.join(out, "model_final.pth"), "OUTPUT_DIR", out + "_eval", *extra])
    return res, res_eval, train_s, time.time() - t0, out


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/demo/det_retinanet_student.yaml", "configs/demo/det_gfl_student.yaml"])
def test_demo_detector_trains_to_nontrivial_ap(tmp_path, monkeypatch, config):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(REPO)
    res, res_eval, train_s, eval_s, out = _train_and_eval(tmp_path, config, 400)
    res, res_eval = _bbox(res), _bbox(res_eval)
    ap = res["AP"]
    print(f"{config}: AP {ap:.1f} AP50 {res['AP50']:.1f} train+eval {train_s:.0f}s, "
          f"eval-only AP {res_eval['AP']:.1f} in {eval_s:.0f}s")
    assert ap > 15.0, res
    assert res_eval["AP"] == pytest.approx(ap, abs=1e-9)
    assert os.path.isfile(os.path.join(out, "inference", "demo_det_val", "coco_instances_results.json"))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["custom", "builtin"])
def test_bcd_detector_distillation_on_custom_json(tmp_path, monkeypatch, source):
    """configs/coco/bcd_retinanet_r50.yaml, shrunk on the command line, on a custom COCO json
    given on the command line, or on the builtin coco_2017_* names with the COCO folder layout
    present under $BCD_DATASETS (generated images standing in for COCO's)."""
    import shutil

    from bcd.config import get_cfg
    from bcd.data.datasets.demo_coco import build_demo_coco
    from bcd.modeling.meta_arch import build_model

    monkeypatch.chdir(REPO)
    demo = build_demo_coco(str(tmp_path / "data"))
    tiny = ["MODEL.RESNETS.WIDTH_MULTIPLIER", "0.25", "MODEL.FPN.OUT_CHANNELS", "32",
            "MODEL.RETINANET.NUM_CONVS", "1", "MODEL.RETINANET.NUM_CLASSES", "3",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
            "INPUT.MAX_SIZE_TRAIN", "192", "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.BACKBONE.NORM", "BN",
            "MODEL.BACKBONE.WEIGHTS", ""]
    tcfg = get_cfg()
    tcfg.merge_from_file("configs/coco/retinanet_r101.yaml")
    tcfg.merge_from_list(tiny + ["MODEL.RESNETS.DEPTH", "18"])
    teacher_w = str(tmp_path / "teacher.pth")
    torch.save({"model": build_model(tcfg).state_dict()}, teacher_w)
    opts = tiny + ["MODEL.RESNETS.DEPTH", "18", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
                   "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
                   "KD.TEACHER.WEIGHTS", teacher_w, "KD.TEACHER.OPTS", str(tiny + ["MODEL.RESNETS.DEPTH", "18"]),
                   "KD.BCD_HFA.DIM", "16", "OUTPUT_DIR", str(tmp_path / "out")]
    if source == "custom":
        opts += _custom("t_bcd_custom", os.path.join(demo, "annotations", "val.json"), os.path.join(demo, "val"))
    else:
        coco = tmp_path / "datasets" / "coco"
        os.makedirs(coco / "annotations")
        for split in ("train", "val"):
            shutil.copytree(os.path.join(demo, "val"), coco / f"{split}2017")
            shutil.copy(os.path.join(demo, "annotations", "val.json"),
                        coco / "annotations" / f"instances_{split}2017.json")
        monkeypatch.setenv("BCD_DATASETS", str(tmp_path / "datasets"))
    res = _run(["--config-file", "configs/coco/bcd_retinanet_r50.yaml", *opts])
    assert set(_bbox(res)) >= {"AP", "AP50", "AP75", "APs", "APm"}
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.json")]
    keys = set().union(*metrics)
    assert {"loss_kd_boundary", "loss_kd_context", "loss_cls", "loss_box_reg"} <= keys
