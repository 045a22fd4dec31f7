"""tools/demo.py: the paired-seed statistics against hand-computed values, the arm table, and
(slow) the whole demo at a few iterations."""
import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("bcd_demo_tool", os.path.join(ROOT, "tools", "demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def test_t_quantiles_match_the_table():
    # EVIDENCE.md's values, and scipy.stats.t.ppf(0.975, df) for the others
    assert demo.t975(7) == pytest.approx(2.365)
    assert demo.t975(9) == pytest.approx(2.262)
    assert demo.t975(1) == pytest.approx(12.706)
    assert demo.t975(40) == pytest.approx(2.021, abs=2e-3)
    assert demo.t975(120) == pytest.approx(1.980, abs=2e-3)
    with pytest.raises(ValueError):
        demo.t975(0)


def test_paired_summary_by_hand():
    s = demo.paired_summary([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # 1.2910
    half = 3.182 * sd / 2
    assert s["n"] == 4 and s["mean"] == pytest.approx(2.5) and s["sd"] == pytest.approx(sd)
    assert (s["lo"], s["hi"]) == pytest.approx((2.5 - half, 2.5 + half))
    assert demo.verdict(s) == "helps"
    assert demo.verdict(demo.paired_summary([-1.0, 1.0, 0.5])) == "no measurable difference"
    assert demo.verdict(demo.paired_summary([-3.0, -2.0, -2.5])) == "hurts"
    one = demo.paired_summary([0.3])
    assert one["mean"] == pytest.approx(0.3) and math.isnan(one["lo"])


def test_arms_name_existing_configs():
    assert {"plain", "pixel_kd", "bcd", "bd", "cd", "both"} <= set(demo.ARMS)
    for config, extra, _ in demo.ARMS.values():
        assert os.path.isfile(os.path.join(ROOT, config)), config
        assert len(extra) % 2 == 0


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", os.environ.get("BCD_DATASETS", str(tmp_path / "datasets")))
    out = tmp_path / "demo"
    rep = demo.main(["--seeds", "2", "--arms", "plain,pixel_kd,bcd", "--jobs", "2", "--output-dir", str(out),
                     "--teacher-iters", "4", "--warm-iters", "4", "--student-iters", "3"])
    assert rep["seeds"] == [0, 1] and rep["arms"] == ["plain", "pixel_kd", "bcd"]
    diff = rep["table"]["arms"]["bcd"]["paired_difference"]["sem_seg/mIoU"]
    runs = rep["table"]["arms"]
    assert diff["diffs"] == pytest.approx([runs["bcd"]["runs"][s]["sem_seg/mIoU"] - runs["plain"]["runs"][s]["sem_seg/mIoU"]
                                           for s in range(2)])
    assert json.load(open(out / "demo_report.json"))["arms"] == ["plain", "pixel_kd", "bcd"]
    assert "connectivity" in (out / "demo_report.md").read_text()
