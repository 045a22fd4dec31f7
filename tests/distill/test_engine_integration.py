"""Distillation through tools/train_net.py on the generated demo data (four short processes).

* a distillation run stopped half-way and resumed ends with the same weights (and temperature
  state) as an uninterrupted run;
* model_final.pth holds the student only and loads with the student's config for --eval-only;
* effective weights and temperatures are in metrics.json; kd_report is written.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "tools", "train_net.py")
TINY = [
    "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.125", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
    "INPUT.CROP.SIZE", "[64, 64]", "INPUT.BASE_SIZE", "[64, 64]", "SOLVER.LOG_PERIOD", "1",
    "DATASETS.TEST", "()", "MODEL.WEIGHTS", "",
    # Random augmentation (scale, crop, flip, colour jitter) and dropout stay on: the resumed run
    # must reproduce them too.
]


def _run(args, env):
    proc = subprocess.run([sys.executable, TRAIN, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_engine")
    env = dict(os.environ, BCD_DATASETS=os.environ.get("BCD_DATASETS", str(tmp / "datasets")))
    teacher = tmp / "teacher"
    _run(["--config-file", "configs/demo/teacher_pspnet_r18.yaml", *TINY, "SOLVER.MAX_ITER", "2",
          "OUTPUT_DIR", str(teacher)], env)
    kd = ["--config-file", "configs/demo/bcd_student_pspnet_r18_w025.yaml", *TINY,
          "KD.TEACHER.WEIGHTS", str(teacher / "model_final.pth"), "KD.TEACHER.OPTS",
          "['MODEL.RESNETS.WIDTH_MULTIPLIER', '0.125']", "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.125",
          # fire the temperature rule every step so that its state is visible
          "KD.CONTEXT.TEMPERATURE.TRIGGER", "maxprob", "KD.CONTEXT.TEMPERATURE.THRESHOLD", "0.0",
          "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
          # KD warm-up x time decay, and the teacher boundary head's fitting phase, both
          # crossing the resume point
          "KD.SCHEDULE.WARMUP_ITERS", "3", "KD.BOUNDARY.TEACHER_HEAD_FIT_ITERS", "2"]
    full = tmp / "full"
    _run([*kd, "OUTPUT_DIR", str(full)], env)
    # "Interrupted" run: the same run's checkpoint after iteration 1 (iterations 0-1 done)
    half = tmp / "half"
    half.mkdir()
    shutil.copy(full / "model_0000001.pth", half / "model_0000001.pth")
    (half / "last_checkpoint").write_text("model_0000001.pth")
    _run(["--resume", *kd, "OUTPUT_DIR", str(half)], env)
    return {"env": env, "teacher": teacher, "full": full, "half": half, "kd": kd}


def test_resumed_run_ends_with_the_same_weights(runs):
    a = torch.load(runs["full"] / "model_0000003.pth", weights_only=False)["model"]
    b = torch.load(runs["half"] / "model_0000003.pth", weights_only=False)["model"]
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # temperature state: fired at each of the 4 steps, restored across the resume
    assert float(b["kd_modules.context.temperature.tau"]) == pytest.approx(1.05 ** 4)
    mid = torch.load(runs["full"] / "model_0000001.pth", weights_only=False)["model"]
    assert float(mid["kd_modules.context.temperature.tau"]) == pytest.approx(1.05 ** 2)
    assert int(b["kd_iteration"]) == 3
    # the teacher boundary head was fitted for 2 iterations, then frozen, in both runs
    assert bool(b["kd_modules.boundary.teacher_head_frozen"]) and bool(a["kd_modules.boundary.teacher_head_frozen"])
    assert not bool(mid["kd_modules.boundary.teacher_head_frozen"])


def test_warmup_and_decay_compose_and_survive_resume(runs):
    def weights(run):
        lines = [json.loads(l) for l in open(runs[run] / "metrics.json") if l.strip()]
        return {l["iteration"]: (l["kd/boundary/weight"], l["kd/context/weight"]) for l in lines
                if "kd/boundary/weight" in l}

    full, half = weights("full"), weights("half")
    # w(it) = λ · (1 − it/4) · min(1, (it+1)/3)
    for it in range(4):
        r = (1 - it / 4) * min(1.0, (it + 1) / 3)
        assert full[it] == pytest.approx((10.0 * r, 50.0 * r)), it
    for it in (2, 3):  # after the resume: the same weights
        assert half[it] == pytest.approx(full[it]), it


def test_metrics_log_weights_and_temperatures(runs):
    lines = [json.loads(l) for l in open(runs["full"] / "metrics.json") if l.strip()]
    first = next(l for l in lines if l.get("iteration") == 0)
    last = next(l for l in lines if l.get("iteration") == 3)
    assert first["kd/boundary/weight"] == pytest.approx(10.0 / 3)  # warm-up 1/3
    assert last["kd/context/weight"] == pytest.approx(50.0 / 4)
    assert last["kd/context/temperature/tau"] == pytest.approx(1.05 ** 4)
    rep = json.load(open(runs["full"] / "kd_report.json"))
    names = [r["name"] for r in rep["rows"]]
    assert names[0] == "teacher" and names[-1] == "student (KD)"
    assert rep["kd_params"] > 0 and all(r["params"] > 0 for r in rep["rows"])


def test_model_final_is_the_student_and_evaluates_with_its_config(runs):
    final = torch.load(runs["full"] / "model_final.pth", weights_only=False)["model"]
    assert not any(k.startswith(("kd_modules", "student.", "teacher")) for k in final)
    from bcd.config import get_cfg
    from bcd.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs/demo/student_pspnet_r18_w025.yaml"))
    cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = 0.125
    build_model(cfg).load_state_dict(final, strict=True)
    out = runs["full"].parent / "eval"
    _run(["--config-file", "configs/demo/student_pspnet_r18_w025.yaml", "--eval-only",
          "MODEL.WEIGHTS", str(runs["full"] / "model_final.pth"), "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.125",
          "OUTPUT_DIR", str(out)], runs["env"])
