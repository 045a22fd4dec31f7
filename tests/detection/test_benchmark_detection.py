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
    saved = json.load(open(os.path.join(out, "benchmark_det.json")))
    assert saved["pairs"]["demo_retinanet"]["losses"]["PKD"]["ratio"] == r["ratio"]
    md = open(os.path.join(out, "benchmark_det.md")).read()
    assert "| PKD |" in md and "Ratio = median(KD step)" in md and "Machine:" in md
