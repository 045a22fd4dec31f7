"""tools/evidence.py and tools/demo.py: which runs a replicate shares and which it re-trains, the
replicate-level interval against hand-computed values, the per-class table, reuse, and (slow) the
demo end to end at a few iterations."""
import json
import math
import os
import statistics

import pytest

import demo  # tools/demo.py (tests/tools/conftest.py puts tools/ on sys.path)
import evidence
from bcd.utils.stats import paired_summary, replicate_differences, t975, variance_components, verdict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spec(tmp_path, **kw):
    base = dict(
        plain=evidence.Arm("plain", demo.FT, [], "plain"),
        arms=[evidence.Arm("kd", demo.PIXEL_KD, ["KD.PIXEL_KD.WEIGHT", "2.0"], "kd", True)],
        output_dir=str(tmp_path / "ev"), teacher=demo.TEACHER, warm_start=demo.WARM,
        replicates=3, seeds=2, jobs=2)
    base.update(kw)
    return evidence.Spec(**base)


def test_t_quantiles_are_scipy_and_the_table():
    assert t975(7) == pytest.approx(2.365, abs=5e-4)
    assert t975(9) == pytest.approx(2.262, abs=5e-4)
    assert t975(1) == pytest.approx(12.706, abs=5e-4)
    with pytest.raises(ValueError):
        t975(0)


def test_paired_summary_and_verdict_by_hand():
    s = paired_summary([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # 1.2910
    half = 3.182 * sd / 2
    assert s["n"] == 4 and s["mean"] == pytest.approx(2.5) and s["sd"] == pytest.approx(sd)
    assert (s["lo"], s["hi"]) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-3)
    assert verdict(s) == "helps"
    assert verdict(paired_summary([-1.0, 1.0, 0.5])) == "no measurable difference"
    assert verdict(paired_summary([-3.0, -2.0, -2.5])) == "hurts"
    assert verdict(paired_summary([-3.0, -2.0, -2.5]), lower_is_better=True) == "helps"
    assert math.isnan(paired_summary([0.3])["lo"])


def test_plan_retrains_teacher_and_warm_start_per_replicate(tmp_path):
    jobs = {j.name: j for j in evidence.plan(_spec(tmp_path))}
    out = str(tmp_path / "ev")
    for r in range(3):
        t, w = jobs[f"rep{r}/teacher"], jobs[f"rep{r}/warm_start"]
        assert t.opts[:2] == ["SEED", str(r)] and w.opts[:2] == ["SEED", str(r)]
        assert t.out_dir == os.path.join(out, f"rep{r}", "teacher")
        seeds = [1000 * r, 1000 * r + 1]
        assert evidence.seeds_of(_spec(tmp_path), r) == seeds
        for s in seeds:
            plain, kd = jobs[f"rep{r}/plain_seed{s}"], jobs[f"rep{r}/kd_seed{s}"]
            warm = os.path.join(out, f"rep{r}", "warm_start", "model_final.pth")
            # paired: same seed and the same warm start; only the KD arm has the teacher
            for j in (plain, kd):
                o = dict(zip(j.opts[0::2], j.opts[1::2]))
                assert o["SEED"] == str(s) and o["MODEL.WEIGHTS"] == warm
            assert plain.deps == [f"rep{r}/warm_start"]
            assert kd.deps == [f"rep{r}/warm_start", f"rep{r}/teacher"]
            o = dict(zip(kd.opts[0::2], kd.opts[1::2]))
            assert o["KD.TEACHER.WEIGHTS"] == os.path.join(out, f"rep{r}", "teacher", "model_final.pth")
            assert o["KD.TEACHER.CONFIG_FILE"] == demo.TEACHER and "KD.TEACHER.OPTS" not in o
            assert o["KD.BASELINE_OUTPUT_DIR"] == plain.out_dir and o["KD.PIXEL_KD.WEIGHT"] == "2.0"
            assert "KD.TEACHER.WEIGHTS" not in plain.opts


def test_teacher_model_overrides_reach_the_kd_arms(tmp_path):
    spec = _spec(tmp_path, replicates=1, seeds=1,
                 teacher_opts=["SOLVER.MAX_ITER", "10", "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.25"])
    kd = next(j for j in evidence.plan(spec) if j.arm == "kd")
    o = dict(zip(kd.opts[0::2], kd.opts[1::2]))
    assert o["KD.TEACHER.OPTS"] == "['MODEL.RESNETS.WIDTH_MULTIPLIER', '0.25']"


def test_plan_with_fewer_teachers_shares_them(tmp_path):
    jobs = {j.name: j for j in evidence.plan(_spec(tmp_path, replicates=4, teachers=2))}
    assert sorted(n for n in jobs if n.endswith("teacher")) == ["rep0/teacher", "rep1/teacher"]
    assert jobs["rep2/kd_seed2000"].deps[-1] == "rep0/teacher"
    assert jobs["rep3/kd_seed3000"].deps[-1] == "rep1/teacher"
    assert len([n for n in jobs if n.endswith("warm_start")]) == 4  # warm starts are always re-trained
    with pytest.raises(ValueError, match="--teachers"):
        evidence.plan(_spec(tmp_path, replicates=2, teachers=3))


def test_plan_refuses_bad_designs(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        evidence.plan(_spec(tmp_path, arms=[evidence.Arm("plain", demo.PIXEL_KD, [], "", True)]))
    with pytest.raises(ValueError, match="no arm named 'bcd'"):
        evidence.plan(_spec(tmp_path, compare=[("bcd", "plain")]))
    with pytest.raises(ValueError, match="replicates"):
        evidence.plan(_spec(tmp_path, replicates=0))


def test_parse_arm_and_compare():
    a = evidence.parse_arm(f"bd={demo.BCD} KD.LOSSES \"['BoundaryDistillation']\"")
    assert (a.name, a.config, a.opts, a.kd) == ("bd", demo.BCD, ["KD.LOSSES", "['BoundaryDistillation']"], True)
    assert not evidence.parse_arm(f"lr={demo.FT} SOLVER.BASE_LR 0.001").kd
    with pytest.raises(ValueError, match="KEY VALUE"):
        evidence.parse_arm(f"x={demo.FT} SOLVER.BASE_LR")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        evidence.parse_arm("x=configs/demo/nope.yaml")
    assert evidence.parse_compare(["bcd-kd-pixel_kd"], ["plain", "bcd-kd", "pixel_kd"]) == [("bcd-kd", "pixel_kd")]
    with pytest.raises(ValueError, match="--compare"):
        evidence.parse_compare(["a-b"], ["plain"])


def _fake_results(jobs, table):
    """Results as run_jobs returns them, from ``table[(arm, replicate, seed index)] = (mIoU, tri)``."""
    res = {}
    for j in jobs:
        if j.kind == "arm":
            miou, tri = table[(j.arm, j.replicate, j.seed % 1000)]
        else:
            miou, tri = (80.0, 70.0) if j.kind == "teacher" else (50.0, 10.0)
        res[j.name] = {"metrics": {"sem_seg/mIoU": miou, "sem_seg/IoU-background": 90.0,
                                   "sem_seg/IoU-triangle": tri}, "wall_s": 10.0, "reused": False}
    return res


def test_replicate_level_interval_by_hand(tmp_path):
    spec = _spec(tmp_path, compare=[("plain", "kd")])
    jobs = evidence.plan(spec)
    plain = {(0, 0): 70.0, (0, 1): 72.0, (1, 0): 75.0, (1, 1): 75.0, (2, 0): 71.0, (2, 1): 69.0}
    kd = {(0, 0): 71.0, (0, 1): 74.0, (1, 0): 75.5, (1, 1): 75.5, (2, 0): 74.0, (2, 1): 72.0}
    table = {**{("plain", r, s): (v, 20.0 + s) for (r, s), v in plain.items()},
             **{("kd", r, s): (v, 60.0) for (r, s), v in kd.items()}}
    summary = evidence.summarize(spec, jobs, _fake_results(jobs, table))
    # by hand: replicate means of kd - plain = 1.5, 0.5, 3.0
    d = [1.5, 0.5, 3.0]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    half = 4.303 * sd / math.sqrt(3)
    s = summary["comparisons"][0]["metrics"]["sem_seg/mIoU"]
    assert summary["comparisons"][0]["a"] == "kd"
    assert s["n"] == 3 and s["unit"] == "replicate"
    assert s["replicate_diffs"] == pytest.approx({0: 1.5, 1: 0.5, 2: 3.0})
    assert (s["mean"], s["sd"]) == pytest.approx((mean, sd))
    assert (s["lo"], s["hi"]) == pytest.approx((mean - half, mean + half), abs=1e-3)
    assert s["wins"] == 6 and s["pairs"] == 6
    back = summary["comparisons"][1]["metrics"]["sem_seg/mIoU"]  # --compare plain-kd
    assert back["mean"] == pytest.approx(-mean)
    # the plain arm's spread: over all runs, between replicate means, pooled within replicates
    sp = summary["plain_spread"]["sem_seg/mIoU"]
    assert sp["sd_all"] == pytest.approx(statistics.stdev(plain.values()))
    assert sp["sd_between"] == pytest.approx(statistics.stdev([71.0, 75.0, 70.0]))
    assert sp["sd_within"] == pytest.approx(math.sqrt((2 + 0 + 2) / 3))
    # per-class table: means over the runs of each model
    assert summary["classes"] == ["background", "triangle"]
    assert summary["per_class"]["plain"]["triangle"] == pytest.approx(20.5)
    assert summary["per_class"]["kd"]["triangle"] == pytest.approx(60.0)
    assert summary["per_class"]["teacher"]["triangle"] == pytest.approx(70.0)
    text = evidence.format_report(spec, summary, evidence.machine_info("avx2"), 60.0)
    assert "| kd − plain | 3 |" in text and "ONEDNN_MAX_CPU_ISA=AVX2" in text
    assert "| plain | 6 | 72.00 ± 2.53 |" in text
    assert "| 2 | seed 2, re-trained | seed 2, re-trained | 2000, 2001 |" in text
    assert "| kd | 90.00 | 60.00 |" in text


def test_one_replicate_interval_is_over_seeds_and_says_so(tmp_path):
    spec = _spec(tmp_path, replicates=1, seeds=3)
    jobs = evidence.plan(spec)
    table = {("plain", 0, s): (70.0 + s, 0.0) for s in range(3)}
    table.update({("kd", 0, s): (71.0 + 2 * s, 0.0) for s in range(3)})
    summary = evidence.summarize(spec, jobs, _fake_results(jobs, table))
    s = summary["comparisons"][0]["metrics"]["sem_seg/mIoU"]
    assert s["unit"].startswith("seed") and s["n"] == 3 and s["mean"] == pytest.approx(2.0)
    assert "holds for its teacher and warm start only" in evidence.format_report(
        spec, summary, evidence.machine_info("default"), 1.0)


def test_replicate_differences_pair_seed_by_seed():
    d, pairs = replicate_differences({(0, 1): 3.0, (0, 2): 5.0, (1, 7): 1.0}, {(0, 1): 1.0, (0, 2): 1.0, (1, 8): 0.0})
    assert d == {0: 3.0} and pairs == {0: [2.0, 4.0]}  # replicate 1 has no common seed
    assert variance_components({(0, 0): 1.0})["sd_all"] is None


def test_reuse_needs_the_same_fingerprint(tmp_path):
    spec = _spec(tmp_path, replicates=1, seeds=1)
    job = next(j for j in evidence.plan(spec) if j.kind == "arm")
    os.makedirs(job.out_dir)
    assert evidence.finished(job, "default") is None
    open(os.path.join(job.out_dir, "model_final.pth"), "w").close()
    with open(os.path.join(job.out_dir, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 2, "sem_seg/mIoU": 50.0}) + "\n")
    with open(os.path.join(job.out_dir, "evidence_job.json"), "w") as f:
        json.dump({"fingerprint": evidence.fingerprint(job, "default"), "wall_s": 12.0}, f)
    rec = evidence.finished(job, "default")
    assert rec["metrics"]["sem_seg/mIoU"] == 50.0 and rec["wall_s"] == 12.0
    assert evidence.finished(job, "avx2") is None  # other kernels: not the same run
    job.opts = job.opts + ["SOLVER.BASE_LR", "0.1"]
    assert evidence.finished(job, "default") is None  # other overrides: not the same run


def test_cpu_isa_env():
    assert evidence._isa_env("avx2") == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert evidence._isa_env("default") == {}
    with pytest.raises(ValueError, match="--cpu-isa"):
        evidence._isa_env("sse")


def test_demo_arms_name_existing_configs():
    assert {"plain", "pixel_kd", "bcd", "bd", "cd", "both", "bcd_paper"} <= set(demo.ARMS)
    for config, extra, _ in demo.ARMS.values():
        assert os.path.isfile(os.path.join(REPO, config)), config
        assert len(extra) % 2 == 0


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", os.environ.get("BCD_DATASETS", str(tmp_path / "datasets")))
    out = tmp_path / "demo"
    args = ["--replicates", "2", "--seeds", "1", "--jobs", "2", "--output-dir", str(out),
            "--teacher-iters", "3", "--warm-iters", "3", "--student-iters", "2"]
    rep = demo.main(args)
    runs = rep["runs"]
    assert set(runs) >= {"rep0/teacher", "rep1/teacher", "rep0/warm_start", "rep1/warm_start",
                         "rep0/plain_seed0", "rep1/bcd_seed1000"}
    comp = rep["summary"]["comparisons"][1]
    assert (comp["a"], comp["b"]) == ("bcd", "plain")
    d = comp["metrics"]["sem_seg/mIoU"]["replicate_diffs"]
    assert d["1"] == pytest.approx(runs["rep1/bcd_seed1000"]["metrics"]["sem_seg/mIoU"]
                                   - runs["rep1/plain_seed1000"]["metrics"]["sem_seg/mIoU"])
    assert (out / "demo_report.md").read_text().count("re-trained") >= 4
    again = demo.main([*args, "--reuse"])  # nothing re-trained; wall times kept
    assert all(r["reused"] for r in again["runs"].values())
    assert all(r["wall_s"] for r in again["runs"].values())
