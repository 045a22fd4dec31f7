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


def test_cascade_mask_rcnn_counts_its_roi_heads_or_names_them(tmp_path, capsys):
    """Issue 22 item 9: the detector's test-time forward is counted, RoI heads included (equal to
    the convolution / linear formula over every layer that ran, box and mask heads too); with no
    detection left, the mask head is named in the output as not counted."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "utils"))
    from test_analysis import _conv_linear_flops

    from bcd.modeling import build_model
    from bcd.utils.analysis import _probe

    cfg_file = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                            "configs/demo/det_cascade_mask_rcnn.yaml")
    opts = ["MODEL.BACKBONE.WEIGHTS", "", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    torch.manual_seed(0)
    out = tool.main(["--config-file", cfg_file, "--tasks", "parameter", "flop", "--size", "96", "128", *opts])
    text = capsys.readouterr().out
    roi = out["by_module"]["roi_heads"]
    assert roi["flops"] > 0.5 * out["flops"] and out["by_module"]["roi_heads.mask_head"]["flops"] > 0
    assert out["not_run"] == [] and "Not counted" not in text
    torch.manual_seed(0)
    model = build_model(tool.load_config(cfg_file, opts)).eval()
    image = _probe(model, (96, 128))[0]
    with torch.no_grad():
        ref = _conv_linear_flops(model, lambda: model([{"image": image, "height": 96, "width": 128}]))
    assert out["flops"] == sum(ref.values())
    for mod in ("roi_heads.box_head", "roi_heads.mask_head", "backbone"):
        assert out["by_module"][mod]["flops"] == sum(v for k, v in ref.items() if k.startswith(mod + "."))
    # no detection survives the score threshold: the mask head does not run and is named
    out = tool.main(["--config-file", cfg_file, "--tasks", "parameter", "flop", "--size", "96", "128",
                     "MODEL.BACKBONE.WEIGHTS", "", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.0"])
    text = capsys.readouterr().out
    names = [d["module"] for d in out["not_run"]]
    assert "roi_heads.mask_head" in names and "roi_heads.mask_predictor" in names
    assert "Not counted (did not run" in text and "roi_heads.mask_head" in text
    assert out["by_module"]["roi_heads.box_head"]["flops"] > 0  # the box stages ran on the proposals


def test_teacher_counts_need_no_weights(tmp_path):
    """--teacher counts from KD.TEACHER.CONFIG_FILE alone: with neither the teacher's nor the
    student's weights on disk the numbers are those of the teacher built from its config."""
    t_dir = tmp_path / "teacher"
    t_cfg, _ = save_run(str(t_dir), tiny_seg_cfg(width=0.5, channels=32))
    s = tiny_seg_cfg()
    s.KD.LOSSES = ["PixelKD"]
    s.KD.TEACHER.CONFIG_FILE = t_cfg
    s.KD.TEACHER.WEIGHTS = str(tmp_path / "never_trained" / "model_final.pth")
    s.MODEL.WEIGHTS = str(tmp_path / "no_warm_start" / "model_final.pth")
    kd_path = str(tmp_path / "kd.yaml")
    with open(kd_path, "w") as f:
        f.write(s.dump())
    teacher = tool.main(["--config-file", kd_path, "--tasks", "parameter", "flop", "--teacher"])
    student = tool.main(["--config-file", kd_path, "--tasks", "parameter", "flop"])
    from bcd.modeling import build_model

    ref_t = analyze_model(build_model(tool.load_config(t_cfg)), (64, 64), activations=False)
    s.KD.LOSSES = []
    ref_s = analyze_model(build_model(s), (64, 64), activations=False)
    assert (teacher["params"], teacher["flops"]) == (ref_t.params, ref_t.flops)
    assert (student["params"], student["flops"]) == (ref_s.params, ref_s.flops)

