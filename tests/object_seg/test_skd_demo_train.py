"""End to end (slow): an SKD demo run through tools/train_net.py writes a model_final.pth that
holds the inference network only, and ``--eval-only MODEL.WEIGHTS model_final.pth`` (with the
training config, auxiliary network and all) reproduces the final figures exactly.

Run with ``pytest tests/object_seg/test_skd_demo_train.py -m slow`` (a few minutes on 2 cores).
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_net():
    spec = importlib.util.spec_from_file_location("bcd_tools_train_net_skd", os.path.join(ROOT, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("config", ["skd_demo_cod_skd.yaml", "skd_demo_sod_byot.yaml"])
def test_skd_demo_train_then_eval_only(tmp_path, monkeypatch, config):
    monkeypatch.setenv("BCD_DATASETS", os.environ.get("BCD_DATASETS", str(tmp_path / "datasets")))
    tn = _train_net()
    parser = tn.default_argument_parser()
    cfg_file = os.path.join(ROOT, "configs", "demo", config)
    out = tmp_path / "out"
    trained = tn.main(parser.parse_args(
        ["--config-file", cfg_file, "SOLVER.MAX_ITER", "60", "SOLVER.WARMUP_ITERS", "6", "OUTPUT_DIR", str(out)]))
    res = trained["object_seg"]
    assert 0.0 <= res["MAE"] < 0.5 and res["Sm"] > 0.3

    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert state and not any(k.startswith("aux.") for k in state)

    again = tn.main(parser.parse_args(
        ["--config-file", cfg_file, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
         "OUTPUT_DIR", str(tmp_path / "eval")]))["object_seg"]
    for k, v in res.items():
        assert again[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
