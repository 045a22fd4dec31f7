"""tools/benchmark.py (one module for segmentation and detection): ratio, memory and FLOPs."""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    """tools/benchmark.py imported by its name from tools/ (the spawned measuring processes
    import it again by that name, from the parent's sys.path)."""
    tools = os.path.join(REPO, "tools")
    if tools not in sys.path:
        sys.path.insert(0, tools)
    return importlib.import_module("benchmark")


def test_total_loss_sums_exactly_the_trainer_keys():
    mod = _tool()
    d = {"loss_a": torch.tensor(1.0), "loss_kd_b": torch.tensor(2.0), "kd/b/raw": torch.tensor(100.0),
         "accuracy": torch.tensor(7.0)}
    assert float(mod.total_loss(d)) == 3.0


def test_peak_memory_sees_a_block_allocation():
    mod = _tool()
    with mod.PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert 48 * 2**20 < mem.peak < 256 * 2**20


def test_pairs_name_existing_configs_and_errors_name_the_choices():
    mod = _tool()
    for name, spec in mod.PAIRS.items():
        assert os.path.exists(os.path.join(REPO, spec["teacher"])), name
        for ls, (cfg, _, _) in spec["sets"].items():
            assert os.path.exists(os.path.join(REPO, cfg)), (name, ls)
    with pytest.raises(SystemExit, match="demo_retinanet"):
        mod.main(["--detection", "--pairs", "nope"])


@pytest.mark.slow  # one fresh process (clean memory peak): ~1 min on 2 shared cores
def test_benchmark_reports_detector_ratio(tmp_path):
    mod = _tool()
    out = str(tmp_path / "bench")
    res = mod.main(["--detection", "--pairs", "demo_retinanet", "--losses", "PKD", "--size", "64", "64",
                    "--batch", "2", "--warmup", "1", "--iters", "2", "--device", "cpu", "--output", out])
    r = res["pairs"]["demo_retinanet"]["losses"]["PKD"]
    assert "error" not in r, r.get("error")
    t = r["times_s"]
    assert all(len(v) == 2 and min(v) > 0 for v in t.values())
    expected = statistics.median(t["kd"]) / (statistics.median(t["student"]) + statistics.median(t["teacher"]))
    assert abs(r["ratio"] - expected) < 1e-12
    per_round = [k / (s + q) for k, s, q in zip(t["kd"], t["student"], t["teacher"])]
    assert r["ratio_spread"] == [min(per_round), max(per_round)]
    assert r["loss_flops"] == r["flops"]["kd"] - r["flops"]["student"] - r["flops"]["teacher"]
    assert r["loss_flops"] >= 0  # PKD: element-wise only (FlopCounterMode counts products)
    assert mod.flop_ratio(r) == r["flops"]["kd"] / (r["flops"]["student"] + r["flops"]["teacher"]) >= 1
    saved = json.load(open(os.path.join(out, "benchmark_det.json")))
    assert saved["pairs"]["demo_retinanet"]["losses"]["PKD"]["ratio"] == r["ratio"]
    md = open(os.path.join(out, "benchmark_det.md")).read()
    assert "| PKD |" in md and "Ratio = median(KD step)" in md and "Machine:" in md


def test_detection_inputs_carry_box_masks_for_mask_models():
    mod = _tool()
    (a,) = mod.det_inputs((40, 60), 1, 3, boxes=4, masks=True)
    inst = a["instances"]
    assert inst.gt_masks.shape == (4, 40, 60) and inst.gt_masks.dtype == torch.uint8
    for m, (x0, y0, x1, y1) in zip(inst.gt_masks, inst.gt_boxes.round().long().tolist()):
        assert int(m.sum()) == (x1 - x0) * (y1 - y0) and int(m[y0:y1, x0:x1].min()) == 1
    (b,) = mod.det_inputs((40, 60), 1, 3, boxes=4)
    assert not b["instances"].has("gt_masks")


def _fake_run(tmp_path, name, pair, sets, **over):
    """A result file as main() writes it (measurement records reduced to what the report reads)."""
    res = {"machine": {"cpu": "X", "cpu_count": 2, "torch": "t", "device": "cpu", "threads": 1,
                       "load_average_start": [0.5], "load_average_now": [1.5]},
           "note": "", "batch": 2, "warmup": 1, "iters": 2, "clock": "cpu", "threads": 1,
           "pairs": {pair: {"size": [512, 512], "losses": {}}}}
    for s, ratio in sets.items():
        res["pairs"][pair]["losses"][s] = {
            "times_s": {"kd": [ratio, ratio], "student": [0.5, 0.5], "teacher": [0.5, 0.5]},
            "ratio": ratio, "ratio_spread": [ratio, ratio], "extra_peak_bytes": 2**20, "loss_flops": 1e9,
            "flops": {"kd": 3e9, "student": 1e9, "teacher": 1e9}}
    res.update(over)
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "benchmark_seg.json"
    path.write_text(json.dumps(res))
    return str(path)


def test_merge_combines_runs_into_one_table_and_refuses_mixed_settings(tmp_path):
    mod = _tool()
    a = _fake_run(tmp_path, "a", "pspnet_r101_r18", {"BCD (both)": 1.3})
    b = _fake_run(tmp_path, "b", "pspnet_r101_r18", {"pixel KD": 1.01})
    c = _fake_run(tmp_path, "c", "deeplabv3plus_r101_mobilenetv2", {"BCD (both)": 1.1})
    out = str(tmp_path / "merged")
    res = mod.main(["--merge", a, b, c, "--output", out])["benchmark_seg"]
    assert list(res["pairs"]["pspnet_r101_r18"]["losses"]) == ["BCD (both)", "pixel KD"]
    assert res["pairs"]["deeplabv3plus_r101_mobilenetv2"]["losses"]["BCD (both)"]["ratio"] == 1.1
    assert res["merged_from"] == [a, b, c]
    md = open(os.path.join(out, "benchmark_seg.md")).read()
    assert "| pixel KD |" in md and "| BCD (both) |" in md and "Merged from 3 runs" in md
    assert "| 1.01 (1.01–1.01) | 1.50 |" in md  # time ratio, then the FLOP ratio 3 / (1 + 1)
    assert json.load(open(os.path.join(out, "benchmark_seg.json")))["pairs"].keys() == res["pairs"].keys()
    # the same measurement twice, other settings, another machine: refused, naming file and key
    with pytest.raises(SystemExit, match="pixel KD is in both"):
        mod.main(["--merge", b, b, "--output", out])
    d = _fake_run(tmp_path, "d", "pspnet_r101_r18", {"FitNet": 1.0}, iters=5)
    with pytest.raises(SystemExit, match=r"iters = 5.*one table needs one setting"):
        mod.main(["--merge", a, d, "--output", out])
    e = _fake_run(tmp_path, "e", "pspnet_r101_r18", {"FitNet": 1.0})
    j = json.load(open(e))
    j["machine"]["cpu"] = "Y"
    open(e, "w").write(json.dumps(j))
    with pytest.raises(SystemExit, match="machine cpu"):
        mod.main(["--merge", a, e, "--output", out])


def test_relation_yardstick_runs_attention_and_is_reported_as_such(tmp_path):
    mod = _tool()
    rows = [mod.measure_relation(impl, tokens=64, channels=8, batch=1, device="cpu")
            for impl in ("fused", "chunked", "attention")]
    fused, chunked, att = rows
    assert abs(fused["loss"] - chunked["loss"]) < 1e-5 * max(1.0, abs(chunked["loss"]))
    assert fused["flops"] == chunked["flops"] > 0
    assert att["loss"] != att["loss"] and att["time_s"] > 0  # NaN: not a loss
    # its FLOPs counted too: forward Q·Kᵀ and ·V (2 products of N²·C multiply-adds), backward
    # torch's 5 (the scores recomputed), a multiply-add = 2 FLOPs
    assert att["flops"] == 2 * (2 + 5) * 64 * 64 * 8
    res = {"machine": mod.machine("cpu"), "relation": rows, "clock": "wall", "threads": 1}
    mod.write_report(res, str(tmp_path), "benchmark_relation")
    md = open(os.path.join(str(tmp_path), "benchmark_relation.md")).read()
    assert "| attention | 64 | 8 | 1 |" in md and "— (yardstick)" in md
