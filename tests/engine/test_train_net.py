"""End to end through tools/train_net.py's main(): outputs, loss decrease, eval-only, resume,
non-finite loss, AMP, best checkpoint."""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch

import engine_toy as T


def _run(tmp_path, name, argv_extra=(), **opts):
    out = str(tmp_path / name)
    args = T.parse_args(["--num-gpus", "0", *argv_extra] + T.base_opts(out, **opts))
    return out, T.train_main(args)


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def _final_weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]


def test_train_writes_outputs_and_loss_decreases(tmp_path):
    out, results = _run(tmp_path, "run")
    for name in ["metrics.json", "log.txt", "config.yaml", "last_checkpoint",
                 "model_0000019.pth", "model_0000039.pth", "model_final.pth"]:
        assert os.path.isfile(os.path.join(out, name)), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(out)
    events.Reload()
    assert {"total_loss", "loss_mse", "loss_l1", "lr", "toy/mse"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("toy/mse")] == [19, 40]
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000039.pth"
    assert not glob.glob(os.path.join(out, "*.tmp")) and not glob.glob(os.path.join(out, ".*.tmp"))

    rows = _metrics(out)
    train_rows = [r for r in rows if "total_loss" in r]
    assert [r["iteration"] for r in train_rows] == [4, 9, 14, 19, 24, 29, 34, 39]
    for r in train_rows:  # every entry logged, total = sum of the loss entries
        assert {"loss_mse", "loss_l1", "lr", "time", "data_time", "toy/pred_mean"} <= set(r)
    assert train_rows[-1]["total_loss"] < 0.25 * train_rows[0]["total_loss"]

    # Evaluation every 20 iterations and at the end, flattened as task/metric.
    evals = [(r["iteration"], r["toy/mse"]) for r in rows if "toy/mse" in r]
    assert [i for i, _ in evals] == [19, 40]
    assert results["toy/mse"] == pytest.approx(evals[-1][1])
    assert results["toy/count"] == T.VAL_SIZE
    assert evals[-1][1] < evals[0][1]
    assert events.Scalars("toy/mse")[-1].value == pytest.approx(evals[-1][1])

    # The final evaluation equals an independent computation with the saved weights.
    from bcd.config import get_cfg

    cfg = get_cfg()
    model = T.ToyRegressor(cfg)
    model.load_state_dict(_final_weights(out))
    model.eval()
    with torch.no_grad():
        errs = []
        for i in range(T.TRAIN_SIZE, T.TRAIN_SIZE + T.VAL_SIZE):
            x = torch.from_numpy(T.toy_image(i)).float()[None] / 255.0
            pred = model.head(torch.relu(model.body(x))).mean()
            errs.append((pred.item() - T.toy_target(i)) ** 2)
    assert results["toy/mse"] == pytest.approx(sum(errs) / len(errs), rel=1e-5)

    # config.yaml round-trips into the same config.
    cfg2 = get_cfg()
    cfg2.merge_from_file(os.path.join(out, "config.yaml"))
    assert cfg2.SOLVER.MAX_ITER == 40 and cfg2.MODEL.META_ARCHITECTURE == "ToyRegressor"
    assert "Rank of current process: 0" in open(os.path.join(out, "log.txt")).read()


def test_eval_only_loads_final_and_full_checkpoints(tmp_path):
    out, results = _run(tmp_path, "run", **{"SOLVER.MAX_ITER": 10, "TEST.EVAL_PERIOD": 0})
    for weights in ["model_final.pth", "model_0000009.pth"]:
        _, res = _run(tmp_path, "eval_" + weights, ["--eval-only"],
                      **{"MODEL.WEIGHTS": os.path.join(out, weights)})
        assert res["toy/mse"] == pytest.approx(results["toy/mse"], rel=1e-6)


def test_eval_only_rejects_weights_that_do_not_fit(tmp_path):
    bad = tmp_path / "bad.pth"
    state = T.ToyRegressor(None).state_dict()
    state["head.weight"] = torch.zeros(2, 8, 1, 1)  # wrong shape
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*") as e:
        _run(tmp_path, "eval", ["--eval-only"], **{"MODEL.WEIGHTS": str(bad)})
    assert "head.weight" in str(e.value) and "extra.weight" in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        _run(tmp_path, "eval2", ["--eval-only"], **{"MODEL.WEIGHTS": str(tmp_path / "missing.pth")})


def test_resume_is_exact(tmp_path, monkeypatch):
    opts = {"SOLVER.MAX_ITER": 24, "SOLVER.CHECKPOINT_PERIOD": 12, "TEST.EVAL_PERIOD": 0,
            "SOLVER.WARMUP_ITERS": 3}
    straight, _ = _run(tmp_path, "straight", **opts)

    monkeypatch.setattr(T, "STOP_AT_ITER", 15)  # dies after the checkpoint of iteration 11
    with pytest.raises(T.ToyStop):
        _run(tmp_path, "resumed", **opts)
    out = str(tmp_path / "resumed")
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000011.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    monkeypatch.setattr(T, "STOP_AT_ITER", None)
    _run(tmp_path, "resumed", ["--resume"], **opts)

    a, b = _final_weights(straight), _final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full_a = torch.load(os.path.join(straight, "model_0000023.pth"), weights_only=False)
    full_b = torch.load(os.path.join(out, "model_0000023.pth"), weights_only=False)
    assert full_a["iteration"] == full_b["iteration"] == 23
    assert full_b["hooks"]["StepCounter"]["count"] == 24  # the training hook's state resumed
    assert full_a["scheduler"] == full_b["scheduler"]
    for sa, sb in zip(full_a["optimizer"]["state"].values(), full_b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # metrics.json is appended to: the interrupted run logged 4, 9, 14; the resumed one
    # starts at iteration 12 and logs 14, 19 and the last iteration (as Detectron2 does).
    resumed_iters = [r["iteration"] for r in _metrics(out) if "total_loss" in r]
    assert resumed_iters == [4, 9, 14, 14, 19, 23]
    straight_rows = {r["iteration"]: r for r in _metrics(straight) if "total_loss" in r}
    resumed_rows = [r for r in _metrics(out) if "total_loss" in r]
    assert resumed_rows[-1]["lr"] == pytest.approx(straight_rows[23]["lr"])


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "NAN_AT_ITER", 13)
    out = str(tmp_path / "nan")
    with pytest.raises(FloatingPointError, match=r"iteration=13.*loss_mse=nan"):
        _run(tmp_path, "nan", **{"SOLVER.CHECKPOINT_PERIOD": 5})
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000009.pth"
    ckpt = torch.load(os.path.join(out, "model_0000009.pth"), weights_only=False)
    assert ckpt["iteration"] == 9
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    files = sorted(f for f in os.listdir(out) if not f.startswith("events.out.tfevents."))
    assert files == ["config.yaml", "last_checkpoint", "log.txt", "metrics.json",
                     "model_0000004.pth", "model_0000009.pth"]  # no partial or temporary file
    assert "loss_mse" in open(os.path.join(out, "log.txt")).read().split("FloatingPointError")[-1]
    # The checkpoint is complete: training resumes from it.
    monkeypatch.setattr(T, "NAN_AT_ITER", None)
    _run(tmp_path, "nan", ["--resume"], **{"SOLVER.CHECKPOINT_PERIOD": 5})
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000039.pth"


def test_amp_trainer_on_cpu(tmp_path):
    out, _ = _run(tmp_path, "amp", **{"SOLVER.AMP.ENABLED": True, "TEST.EVAL_PERIOD": 0})
    rows = [r for r in _metrics(out) if "total_loss" in r]
    assert rows[-1]["total_loss"] < 0.5 * rows[0]["total_loss"]
    ckpt = torch.load(os.path.join(out, "model_0000039.pth"), weights_only=False)
    assert "grad_scaler" in ckpt


def test_best_checkpoint_keeps_the_best_metric(tmp_path):
    out, _ = _run(tmp_path, "best", **{"TEST.EVAL_PERIOD": 10,
                                       "TEST.BEST_CHECKPOINT_METRIC": "toy/mse",
                                       "TEST.BEST_CHECKPOINT_MODE": "min"})
    evals = [(r["iteration"], r["toy/mse"]) for r in _metrics(out) if "toy/mse" in r]
    assert [i for i, _ in evals] == [9, 19, 29, 40]
    best_iter, best = min(evals, key=lambda t: t[1])
    saved = torch.load(os.path.join(out, "model_best.pth"), weights_only=False)
    assert saved["value"] == pytest.approx(best)
    assert saved["iteration"] == best_iter
    assert set(saved["model"]) == set(T.ToyRegressor(None).state_dict())
