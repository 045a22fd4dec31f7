"""tools/analyze_model.py on tiny configs: the printed / JSON numbers are the library's, for a
plain model, a distillation config's student and its teacher."""
from __future__ import annotations

import json
import os

import analyze_model as tool  # tools/ is on sys.path (conftest)
import torch

from bcd.utils.analysis import analyze_model

from .conftest import save_run, tiny_seg_cfg


def test_cli_numbers_match_library(tiny_run, tmp_path, capsys):
    cfg_path, w_path = tiny_run
    out = tool.main(["--config-file", cfg_path, "--size", "64", "48", "--iters", "2", "--warmup", "1",
                     "--json", str(tmp_path / "a.json"), "MODEL.WEIGHTS", w_path])
    text = capsys.readouterr().out
    from bcd.modeling import build_model

    model = build_model(tool.load_config(cfg_path))
    ref = analyze_model(model, (64, 48))
    assert out["flops"] == ref.flops and out["params"] == ref.params
    assert out["activations"] == ref.activations
    saved = json.load(open(tmp_path / "a.json"))
    assert saved["flops"] == ref.flops and saved["input_size"] == [64, 48]
    assert set(saved["latency"]) == {"inference", "network"}
    assert saved["latency"]["network"]["iters"] == 2
    assert f"{ref.flops / 1e9:.3f} G" in text and "images/s" in text and "backbone.res5" in text


def test_kd_config_student_and_teacher(tmp_path):
    t_cfg, t_w = save_run(str(tmp_path / "teacher"), tiny_seg_cfg(width=0.5, channels=32))
    s = tiny_seg_cfg()
    s.KD.LOSSES = ["PixelKD"]
    s.KD.TEACHER.CONFIG_FILE, s.KD.TEACHER.WEIGHTS = t_cfg, t_w
    s.MODEL.BACKBONE.WEIGHTS = "torchvision://resnet18"  # never asked for: analysis needs no weights
    kd_path = str(tmp_path / "kd.yaml")
    with open(kd_path, "w") as f:
        f.write(s.dump())
    student = tool.main(["--config-file", kd_path, "--tasks", "parameter", "flop"])
    teacher = tool.main(["--config-file", kd_path, "--tasks", "parameter", "flop", "--teacher"])
    from bcd.modeling import build_model

    ref_t = analyze_model(build_model(tool.load_config(t_cfg)), (64, 64), activations=False)
    assert teacher["params"] == ref_t.params and teacher["flops"] == ref_t.flops
    assert student["model"] == "SemanticSegmentor" and student["params"] < teacher["params"]
    assert student["input_size"] == [64, 64] and "latency" not in student
