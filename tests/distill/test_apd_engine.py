"""APD through tools/train_net.py on the generated demo data (three short processes):

* a run stopped half-way and resumed ends with the same weights as an uninterrupted one,
  teacher adapter and its Adam state included;
* the teacher adapter moved by its own optimiser only (the main optimizer does not hold it);
* ``--resume KD.APD.TEACHER_ADAPTER_LR 0.001``: the adapter's Adam keeps its moments and takes
  the new lr, and the change is logged (one mechanism for every optimizer of the run);
* model_final.pth holds the student only (no adapter).
"""
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
]
TR_T = "kd_modules.apd.teacher_adapter."


def _run(args, env):
    proc = subprocess.run([sys.executable, TRAIN, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apd_engine")
    env = dict(os.environ, BCD_DATASETS=os.environ.get("BCD_DATASETS", str(tmp / "datasets")))
    teacher = tmp / "teacher"
    _run(["--config-file", "configs/demo/teacher_pspnet_r18.yaml", *TINY, "SOLVER.MAX_ITER", "2",
          "OUTPUT_DIR", str(teacher)], env)
    kd = ["--config-file", "configs/demo/apd_student_pspnet_r18_w025.yaml", *TINY,
          "KD.TEACHER.WEIGHTS", str(teacher / "model_final.pth"), "KD.TEACHER.OPTS",
          "['MODEL.RESNETS.WIDTH_MULTIPLIER', '0.125']", "KD.APD.ADAPT_DIM", "16",
          # a larger teacher-adapter lr so that its moves are far above rounding
          "KD.APD.TEACHER_ADAPTER_LR", "0.01",
          "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"]
    full = tmp / "full"
    _run([*kd, "OUTPUT_DIR", str(full)], env)
    half = tmp / "half"
    half.mkdir()
    shutil.copy(full / "model_0000001.pth", half / "model_0000001.pth")
    (half / "last_checkpoint").write_text("model_0000001.pth")
    _run(["--resume", *kd, "OUTPUT_DIR", str(half)], env)
    new_lr = tmp / "new_lr"
    new_lr.mkdir()
    shutil.copy(full / "model_0000001.pth", new_lr / "model_0000001.pth")
    (new_lr / "last_checkpoint").write_text("model_0000001.pth")
    _run(["--resume", *kd, "OUTPUT_DIR", str(new_lr), "KD.APD.TEACHER_ADAPTER_LR", "0.001"], env)
    return {"full": full, "half": half, "new_lr": new_lr}


def _optim_state(ckpt):
    return ckpt["optimizer.apd.teacher_adapter"]


def test_resume_is_exact_with_the_teacher_adapter_and_its_optimiser(runs):
    ca = torch.load(runs["full"] / "model_0000003.pth", weights_only=False)
    cb = torch.load(runs["half"] / "model_0000003.pth", weights_only=False)
    a, b = ca["model"], cb["model"]
    assert set(a) == set(b)
    assert any(k.startswith(TR_T) for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = _optim_state(ca), _optim_state(cb)
    assert sa["param_groups"] == sb["param_groups"]
    assert int(sa["state"][0]["step"]) == 4  # one Adam step per iteration
    for i in sa["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][i][key], sb["state"][i][key]), (i, key)


def test_teacher_adapter_is_trained_by_its_own_optimiser_only(runs):
    ckpt1 = torch.load(runs["full"] / "model_0000001.pth", weights_only=False)
    ckpt3 = torch.load(runs["full"] / "model_0000003.pth", weights_only=False)
    # Tr_T moved between the checkpoints
    w1, w3 = ckpt1["model"][TR_T + "0.weight"], ckpt3["model"][TR_T + "0.weight"]
    assert (w1 - w3).abs().max() > 1e-4
    # the main optimizer does not hold it: its groups count the other parameters only
    n_main = sum(len(g["params"]) for g in ckpt3["optimizer"]["param_groups"])
    n_trainable = sum(1 for k in ckpt3["model"] if not k.endswith(("running_mean", "running_var",
                      "num_batches_tracked", "kd_iteration")))
    n_tr_t = sum(1 for k in ckpt3["model"] if k.startswith(TR_T))
    assert n_tr_t == 4 and n_main == n_trainable - n_tr_t
    assert sum(len(g["params"]) for g in _optim_state(ckpt3)["param_groups"]) == n_tr_t
    assert _optim_state(ckpt3)["param_groups"][0]["lr"] == pytest.approx(0.01)  # constant


def test_resume_with_a_new_teacher_adapter_lr_keeps_moments_and_takes_the_lr(runs):
    state = _optim_state(torch.load(runs["new_lr"] / "model_0000003.pth", weights_only=False))
    assert state["param_groups"][0]["lr"] == pytest.approx(0.001)
    assert tuple(state["param_groups"][0]["betas"]) == (0.9, 0.99)
    assert int(state["state"][0]["step"]) == 4  # the moments went on from the checkpoint's 2 steps
    full = _optim_state(torch.load(runs["full"] / "model_0000003.pth", weights_only=False))
    assert not torch.equal(state["state"][0]["exp_avg_sq"], full["state"][0]["exp_avg_sq"])  # other weights since
    log = (runs["new_lr"] / "log.txt").read_text()
    assert "KD.APD.TEACHER_ADAPTER_LR: 0.01 (checkpoint) -> 0.001 (config)" in log


def test_model_final_is_the_student_only(runs):
    final = torch.load(runs["full"] / "model_final.pth", weights_only=False)["model"]
    assert not any(k.startswith(("kd_modules", "student.", "teacher")) or "adapter" in k for k in final)
    import json

    lines = [json.loads(l) for l in open(runs["full"] / "metrics.json") if l.strip()]
    it0 = next(l for l in lines if l.get("iteration") == 0)
    assert {"loss_kd_apd", "loss_kd_apd_pa", "apd_soft", "loss_kd_pixel"} <= set(it0)
    assert it0["apd_soft"] > 0
