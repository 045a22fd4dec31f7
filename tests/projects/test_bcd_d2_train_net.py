"""projects/bcd/train_net.py end to end on the generated demo COCO data (demo_det_*), in this process.

* RetinaNet (tiny R18 student and teacher, the teacher trained here by train_net.py without KD):
  a 4-iteration BCD run; the same run resumed from its iteration-1 checkpoint ends with the same
  weights, temperatures and KD iteration; metrics.json holds the KD entries (raw, weighted,
  weight, temperature, gradient ratio) with loss_kd = raw x weight on the line; --eval-only of model_final.pth
  through Detectron2's COCOEvaluator gives the final evaluation of the run; model_final.pth loads
  strictly into plain Detectron2's RetinaNet of the student's config.
* Mask R-CNN student from a Detectron2 Mask R-CNN teacher (saved by plain Detectron2): 3 iterations,
  finite KD losses, an exact resume, --eval-only (box and mask AP), plain-Detectron2 loading.

Resumes are exact here because both runs share this process: Detectron2's TorchScript focal loss
(fvcore's sigmoid_focal_loss_jit) is optimised after its first calls, so a resumed run in a fresh
process differs from the uninterrupted one in the last bits (~1e-8) unless PYTORCH_JIT=0.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

pytest.importorskip("detectron2", reason="Detectron2 is not installed (projects/bcd/README.md)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_CONFIGS = os.path.join(REPO, "projects", "bcd", "configs", "test")
VAL = "bcd_d2_test_val"  # 6 images of demo_det_val: a short evaluation


@pytest.fixture(scope="module")
def small_val(demo_datasets):
    import bcd_d2  # noqa: F401 - registers demo_det_*
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if VAL not in DatasetCatalog.list():
        DatasetCatalog.register(VAL, lambda: DatasetCatalog.get("demo_det_val")[:6])
        MetadataCatalog.get(VAL).set(evaluator_type="coco",
                                     thing_classes=MetadataCatalog.get("demo_det_val").thing_classes)
    return VAL


def _metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.json")) if line.strip()]


def _same_state(a_path, b_path):
    a = torch.load(a_path, weights_only=True)["model"]
    b = torch.load(b_path, weights_only=True)["model"]
    assert set(a) == set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, first {differ[:5]}"
    return a


def _resume_from(full, half, ckpt):
    os.makedirs(half)
    shutil.copy(os.path.join(full, ckpt), half)
    with open(os.path.join(half, "last_checkpoint"), "w") as f:
        f.write(ckpt)


def _plain_detectron2_model(config):
    """The student as plain Detectron2 builds it: detectron2.config.get_cfg(), no bcd keys."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(TEST_CONFIGS, config))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def _assert_loads_in_plain_detectron2(config, final):
    from detectron2.checkpoint import DetectionCheckpointer

    state = torch.load(final, weights_only=True)["model"]
    assert not any(k.startswith(("student.", "kd_modules", "kd_iteration", "teacher")) for k in state)
    model = _plain_detectron2_model(config)
    assert set(state) == set(model.state_dict())  # no missing, no unexpected keys
    model.load_state_dict(state, strict=True)
    DetectionCheckpointer(model).load(final)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def _ap(results, task="bbox"):
    return {k: v for k, v in results[task].items() if not k.startswith("AP-")}


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory, small_val, train_net):
    tmp = tmp_path_factory.mktemp("retinanet")
    teacher = str(tmp / "teacher")
    train_net(["--config-file", os.path.join(TEST_CONFIGS, "retinanet_R_18_tiny_teacher.yaml"),
               "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", teacher])
    kd = ["--config-file", os.path.join(TEST_CONFIGS, "bcd_retinanet_R_18_tiny.yaml"),
          "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "2",
          "KD.TEACHER.WEIGHTS", os.path.join(teacher, "model_final.pth"),
          # the context temperature rule fires at every step, so its state is visible
          "KD.CONTEXT.TEMPERATURE.TRIGGER", "maxprob", "KD.CONTEXT.TEMPERATURE.THRESHOLD", "0.0",
          # the boundary teacher head: fitted for 2 iterations, then frozen (crosses the resume)
          "KD.BOUNDARY.TEACHER_HEAD_FIT_ITERS", "2",
          # ||grad KD|| / ||grad task|| on the student backbone at iterations 0 and 3
          "KD.LOG_GRAD_RATIO.ENABLED", "True", "KD.LOG_GRAD_RATIO.PERIOD", "3",
          "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "DATASETS.TEST", f"('{small_val}',)"]
    full = str(tmp / "full")
    results = train_net([*kd, "OUTPUT_DIR", full])
    half = str(tmp / "half")
    _resume_from(full, half, "model_0000001.pth")
    train_net(["--resume", *kd, "OUTPUT_DIR", half])
    evaluated = train_net(["--config-file", os.path.join(TEST_CONFIGS, "bcd_retinanet_R_18_tiny.yaml"), "--eval-only",
                           "MODEL.WEIGHTS", os.path.join(full, "model_final.pth"),
                           "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "DATASETS.TEST", f"('{small_val}',)",
                           "OUTPUT_DIR", str(tmp / "eval")])
    return {"full": full, "half": half, "results": results, "evaluated": evaluated, "eval": str(tmp / "eval")}


def test_retinanet_resume_is_exact(retinanet):
    state = _same_state(os.path.join(retinanet["full"], "model_0000003.pth"),
                        os.path.join(retinanet["half"], "model_0000003.pth"))
    assert int(state["kd_iteration"]) == 3
    assert float(state["kd_modules.context.temperature.tau"]) == pytest.approx(1.05 ** 4)
    assert bool(state["kd_modules.boundary.teacher_head_frozen"])
    mid = torch.load(os.path.join(retinanet["full"], "model_0000001.pth"), weights_only=True)["model"]
    assert float(mid["kd_modules.context.temperature.tau"]) == pytest.approx(1.05 ** 2)
    assert not bool(mid["kd_modules.boundary.teacher_head_frozen"])
    # last_checkpoint names the full state; model_final.pth is the student alone
    for run in ("full", "half"):
        assert open(os.path.join(retinanet[run], "last_checkpoint")).read() == "model_0000003.pth"


def test_retinanet_metrics_hold_the_kd_entries(retinanet):
    lines = _metrics(retinanet["full"])
    last = next(line for line in lines if line.get("iteration") == 3 and "loss_cls" in line)
    for tag, weight in (("boundary", 10.0), ("context", 50.0)):
        w = last[f"kd/{tag}/weight"]
        assert w == pytest.approx(weight * (1 - 3 / 4))  # linear decay at iteration 3 of 4
        # written unsmoothed: the weighted entry is raw x weight on its line
        assert last[f"loss_kd_{tag}"] == pytest.approx(last[f"kd/{tag}/raw"] * w, rel=1e-6, abs=1e-12)
    assert last["kd/context/temperature/tau"] == pytest.approx(1.05 ** 4)
    assert last["kd/grad_ratio"] == pytest.approx(last["kd/grad_norm/kd"] / last["kd/grad_norm/task"], rel=1e-6)
    assert last["kd/grad_ratio"] > 0 and -1 <= last["kd/grad_cosine"] <= 1
    assert "loss_kd_boundary_teacher_head" in last
    for k, v in last.items():
        if k.startswith(("loss", "kd/")):
            assert math.isfinite(v), (k, v)


def test_retinanet_eval_only_reproduces_the_final_evaluation(retinanet):
    final, evaluated = _ap(retinanet["results"]), _ap(retinanet["evaluated"])
    assert set(final) >= {"AP", "AP50", "AP75"} and not math.isnan(final["AP"])
    for k, v in final.items():
        assert evaluated[k] == pytest.approx(v, abs=1e-9, nan_ok=True), k
    assert os.path.isfile(os.path.join(retinanet["eval"], "inference", "coco_instances_results.json"))


def test_retinanet_final_checkpoint_loads_in_plain_detectron2(retinanet):
    _assert_loads_in_plain_detectron2("retinanet_R_18_tiny.yaml", os.path.join(retinanet["full"], "model_final.pth"))


@pytest.fixture(scope="module")
def mask_rcnn(tmp_path_factory, small_val, train_net):
    """A Mask R-CNN student distilled from a Mask R-CNN teacher written by plain Detectron2."""
    from detectron2.checkpoint import DetectionCheckpointer

    tmp = tmp_path_factory.mktemp("mask_rcnn")
    teacher = _plain_detectron2_model("mask_rcnn_R_18_tiny_teacher.yaml")
    DetectionCheckpointer(teacher, str(tmp)).save("teacher")
    kd = ["--config-file", os.path.join(TEST_CONFIGS, "bcd_mask_rcnn_R_18_tiny.yaml"),
          "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "2",
          "KD.TEACHER.WEIGHTS", str(tmp / "teacher.pth"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
          "DATASETS.TEST", f"('{small_val}',)"]
    full = str(tmp / "full")
    results = train_net([*kd, "OUTPUT_DIR", full])
    half = str(tmp / "half")
    _resume_from(full, half, "model_0000001.pth")
    train_net(["--resume", *kd, "DATASETS.TEST", "()", "OUTPUT_DIR", half])
    evaluated = train_net(["--config-file", os.path.join(TEST_CONFIGS, "bcd_mask_rcnn_R_18_tiny.yaml"),
                           "--eval-only", "MODEL.WEIGHTS", os.path.join(full, "model_final.pth"),
                           "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "DATASETS.TEST", f"('{small_val}',)",
                           "OUTPUT_DIR", str(tmp / "eval")])
    return {"full": full, "half": half, "results": results, "evaluated": evaluated}


def test_mask_rcnn_distillation(mask_rcnn):
    last = next(line for line in _metrics(mask_rcnn["full"]) if line.get("iteration") == 2 and "loss_mask" in line)
    for k in ("loss_kd_boundary", "loss_kd_context", "kd/context/raw", "kd/context/weight",
              "loss_cls", "loss_mask", "loss_rpn_cls"):
        assert math.isfinite(last[k]), (k, last[k])
    assert last["kd/context/raw"] > 0
    _same_state(os.path.join(mask_rcnn["full"], "model_0000002.pth"), os.path.join(mask_rcnn["half"], "model_0000002.pth"))
    for task in ("bbox", "segm"):
        final, evaluated = _ap(mask_rcnn["results"], task), _ap(mask_rcnn["evaluated"], task)
        assert set(final) >= {"AP", "AP50"}
        for k, v in final.items():
            assert evaluated[k] == pytest.approx(v, abs=1e-9, nan_ok=True), (task, k)
    _assert_loads_in_plain_detectron2("mask_rcnn_R_18_tiny.yaml", os.path.join(mask_rcnn["full"], "model_final.pth"))


@pytest.mark.slow
def test_two_cpu_processes(tmp_path, demo_datasets):
    """``--num-gpus 2`` without CUDA: Detectron2's launch starts two Gloo processes; BCD crosses
    the freeze of its teacher head (parameters stop getting gradients under DDP); the
    distributed COCOEvaluator returns the final AP. About a minute."""
    import subprocess
    import sys

    from detectron2.checkpoint import DetectionCheckpointer

    teacher = _plain_detectron2_model("retinanet_R_18_tiny_teacher.yaml")
    DetectionCheckpointer(teacher, str(tmp_path)).save("teacher")
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "projects", "bcd", "train_net.py"), "--num-gpus", "2",
           "--config-file", os.path.join(TEST_CONFIGS, "bcd_retinanet_R_18_tiny.yaml"),
           "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "KD.BOUNDARY.TEACHER_HEAD_FIT_ITERS", "1",
           "KD.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth"), "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
           "DATASETS.TEST", "('demo_det_val',)", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "log.txt.rank1").exists() and (out / "model_final.pth").exists()
    lines = _metrics(str(out))
    assert any("bbox/AP" in line for line in lines)
    last = next(line for line in lines if line.get("iteration") == 2 and "loss_cls" in line)
    assert math.isfinite(last["loss_kd_boundary"]) and last["loss_kd_boundary_teacher_head"] == 0.0
