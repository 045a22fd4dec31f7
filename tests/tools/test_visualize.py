"""tools/visualize.py, bcd/utils/visualizer.py, bcd/distill/signals.py and kd_report's pictures
on tiny models: files exist with the expected pixel size and number of panels."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import visualize as tool  # tools/ is on sys.path (conftest)
from PIL import Image

from bcd.utils.visualizer import Panel, colorize_sem_seg, plot_training_curves, save_panel_grid

from .conftest import save_run, tiny_seg_cfg

PANEL_PX = 240  # Panel grid: 2.4 inches per panel at 100 dpi


def _size(path):
    with Image.open(path) as im:
        return im.size  # (width, height)


def test_colorize_uses_dataset_colours():
    lab = np.array([[0, 1], [2, 255]])
    out = colorize_sem_seg(lab, [(10, 20, 30), (40, 50, 60), (70, 80, 90)], ignore_label=255)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 0].tolist() == [70, 80, 90]
    assert out[1, 1].tolist() == [0, 0, 0]  # ignored: black


def test_panel_grid_size_and_instances(tmp_path):
    img = np.full((40, 60, 3), 128, np.uint8)
    rows = [[Panel("image", "image", image=img),
             Panel("dets", "instances", image=img, boxes=np.array([[5, 5, 30, 20]]), classes=np.array([1]),
                   scores=np.array([0.9]), masks=np.ones((1, 40, 60), bool), class_names=["a", "b"]),
             Panel("heat", "heatmap", heat=np.random.rand(5, 6), mark=(2, 3))],
            [Panel("mask", "sem_seg", image=img, labels=np.zeros((40, 60), int), colors=[(1, 2, 3)])]]
    assert save_panel_grid(rows, str(tmp_path / "g.png")) == (2, 3)
    assert _size(tmp_path / "g.png") == (3 * PANEL_PX, 2 * PANEL_PX)
    with pytest.raises(ValueError, match="kind"):
        save_panel_grid([[Panel("x", "video")]], str(tmp_path / "bad.png"))


def test_training_curves(tmp_path):
    m = tmp_path / "metrics.json"
    with open(m, "w") as f:
        for it in range(4, 40, 5):
            f.write(json.dumps({"iteration": it, "loss_sem_seg": 2.0 / (it + 1), "loss_kd_context": 1.0 / (it + 1),
                                "kd/context/weight": 50 * (1 - it / 40), "kd/context/temperature/tau": 1 + it / 10,
                                "lr": 0.01}) + "\n")
        f.write(json.dumps({"iteration": 40, "sem_seg/mIoU": 55.0}) + "\n")
        f.write("{broken")  # a run still writing: skipped
    groups = plot_training_curves(str(m), str(tmp_path / "c.png"))
    assert groups == ["losses (task and KD, weighted)", "KD weights", "KD temperatures τ", "evaluation"]
    assert _size(tmp_path / "c.png") == (1600, 320)
    with pytest.raises(FileNotFoundError, match="nope"):
        plot_training_curves(str(tmp_path / "nope" / "metrics.json"), str(tmp_path / "x.png"))


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    """A tiny BCD distillation: teacher run, the Distiller's full checkpoint, its student's
    model_final.pth, a plain student run, and two image files with labels (a custom dataset)."""
    from bcd.distill import build_model

    d = tmp_path_factory.mktemp("kd")
    t_cfg, t_w = save_run(str(d / "teacher"), tiny_seg_cfg(width=0.5, channels=32), seed=1)
    s_cfg, s_w = save_run(str(d / "plain"), tiny_seg_cfg(), seed=2)
    os.makedirs(d / "data" / "img")
    os.makedirs(d / "data" / "lab")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "data" / "img" / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 4, (64, 64), dtype=np.uint8)).save(d / "data" / "lab" / f"{i}.png")
    c = tiny_seg_cfg()
    c.KD.LOSSES = ["BoundaryDistillation", "ContextDistillation"]
    c.KD.TEACHER.CONFIG_FILE, c.KD.TEACHER.WEIGHTS = t_cfg, t_w
    c.KD.SHAPE_PROBE_SIZE = [64, 64]
    c.KD.BCD_HFA.DIM = 8
    c.KD.BASELINE_OUTPUT_DIR = str(d / "plain")
    c.DATASETS.CUSTOM = [{"NAME": "t_vis_val", "TYPE": "sem_seg", "IMAGE_DIR": str(d / "data" / "img"),
                          "LABEL_DIR": str(d / "data" / "lab"), "CLASSES": ["a", "b", "c", "d"]}]
    c.DATASETS.TEST = ("t_vis_val",)
    c.DATASETS.TRAIN = ("t_vis_val",)
    c.OUTPUT_DIR = str(d / "kd_out")
    kd_cfg = str(d / "kd.yaml")
    with open(kd_cfg, "w") as f:
        f.write(c.dump())
    torch.manual_seed(3)
    distiller = build_model(c)
    full = str(d / "model_0000009.pth")
    torch.save({"model": distiller.state_dict(), "iteration": 9}, full)
    final = str(d / "model_final.pth")
    torch.save({"model": distiller.student.state_dict()}, final)
    return {"cfg": c, "kd_cfg": kd_cfg, "full": full, "final": final, "teacher": (t_cfg, t_w),
            "plain": (s_cfg, s_w), "images": [str(d / "data" / "img" / f"{i}.jpg") for i in range(2)],
            "distiller": distiller}


def test_bcd_signals_are_distributions(kd_run):
    from bcd.distill.signals import bcd_signals

    x = torch.from_numpy(np.asarray(Image.open(kd_run["images"][0])).transpose(2, 0, 1).copy())
    sig = bcd_signals(kd_run["distiller"], [{"image": x, "height": 64, "width": 64}], pixel=(0.5, 0.25))
    assert sig["boundary_student"].shape == sig["boundary_teacher"].shape == sig["boundary_grid"] == (8, 8)
    assert 0 <= sig["boundary_teacher"].min() and sig["boundary_teacher"].max() <= 1
    for side in ("student", "teacher"):
        assert sig[f"relation_{side}"].shape == sig["relation_grid"]
        assert sig[f"relation_{side}"].sum() == pytest.approx(1.0, abs=1e-5)
    assert sig["pixel"] == (4, 2)
    assert kd_run["distiller"].training  # mode restored


def test_visualize_cli_panels(kd_run, tmp_path):
    (t_cfg, t_w), (s_cfg, s_w) = kd_run["teacher"], kd_run["plain"]
    out = tool.main(["--output", str(tmp_path / "vis"), "--model", "teacher", t_cfg, t_w,
                     "--model", "student", s_cfg, s_w, "--model", "student + BCD", kd_run["kd_cfg"], kd_run["final"],
                     "--kd", kd_run["kd_cfg"], kd_run["full"], "--num-images", "2"])
    preds = [str(tmp_path / "vis" / f"pred_{i}.png") for i in range(2)]
    sig = str(tmp_path / "vis" / "kd_signals.png")
    assert out["files"] == preds + [sig]
    for p in preds:  # image, ground truth, 3 models
        assert out["panels"][p] == (1, 5, 5) and _size(p) == (5 * PANEL_PX, PANEL_PX)
    # image, teacher / student boundary, teacher / student relation row
    assert out["panels"][sig] == (1, 5, 5) and _size(sig) == (5 * PANEL_PX, PANEL_PX)

    # image files without labels: no ground-truth column
    out = tool.main(["--output", str(tmp_path / "vis2"), "--model", "teacher", t_cfg, t_w,
                     "--images", *kd_run["images"][:1]])
    assert out["panels"][str(tmp_path / "vis2" / "pred_0.png")] == (1, 2, 2)


def test_kd_report_embeds_pictures(kd_run):
    from bcd.distill.report import write_kd_report
    from bcd.data.datasets import register_from_config

    cfg = kd_run["cfg"]
    register_from_config(cfg, splits=("TEST",))
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), "w") as f:
        for it in (4, 9):
            f.write(json.dumps({"iteration": it, "loss_sem_seg": 1.0 / it, "loss_kd_boundary": 0.1,
                                "kd/boundary/weight": 10.0, "kd/boundary/temperature/tau": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 10, "sem_seg/mIoU": 12.5}) + "\n")
    rep = write_kd_report(cfg, kd_run["distiller"])
    assert rep["pictures"] == {"curves": "kd_curves.png", "predictions": "kd_predictions.png",
                               "signals": "kd_signals.png"}
    md = open(os.path.join(cfg.OUTPUT_DIR, "kd_report.md")).read()
    for f in rep["pictures"].values():
        assert f"]({f})" in md and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, f))
    # image, ground truth, teacher, plain student (KD.BASELINE_OUTPUT_DIR), distilled student
    assert _size(os.path.join(cfg.OUTPUT_DIR, "kd_predictions.png")) == (5 * PANEL_PX, PANEL_PX)
