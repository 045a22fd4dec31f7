"""tools/benchmark.py --detection: the step-time ratio of a detector distillation loss."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # three fresh processes (clean memory peaks): ~1 min on 2 shared cores
def test_benchmark_reports_detector_ratio(tmp_path):
    spec = importlib.util.spec_from_file_location("bcd_benchmark", os.path.join(REPO, "tools", "benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = str(tmp_path / "bench")
    res = mod.main(["--detection", "--size", "64", "--batch", "2", "--iters", "1", "--device", "cpu",
                    "--losses", "PKD (P3-P6)", "--output", out])
    r = res["losses"]["PKD (P3-P6)"]
    base = res["pairs"]["retinanet"]
    assert r["time_s"] > 0 and base["student_step"]["time_s"] > 0 and base["teacher_forward"]["time_s"] > 0
    expected = r["time_s"] / (base["student_step"]["time_s"] + base["teacher_forward"]["time_s"])
    assert abs(r["ratio"] - expected) < 1e-12
    saved = json.load(open(os.path.join(out, "benchmark_det.json")))
    assert saved["losses"]["PKD (P3-P6)"]["ratio"] == r["ratio"]
    assert "PKD (P3-P6)" in open(os.path.join(out, "benchmark_det.md")).read()
