"""tools/visualize.py, bcd/utils/visualizer.py, bcd/distill/signals.py and kd_report's pictures
on tiny models: files exist with the expected pixel size and number of panels; colours, opacity,
mask-only drawing, the legend, the per-image score and the curves' axes are what was asked for."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import visualize as tool  # tools/ is on sys.path (conftest)
from PIL import Image

from bcd.utils.visualizer import (
    Panel,
    class_palette,
    colorize_sem_seg,
    iteration_range,
    legend_entries,
    overlay,
    plot_training_curves,
    read_metrics_series,
    save_panel_grid,
)

from .conftest import save_run, tiny_seg_cfg

PANEL_IN, DPI = 2.6, 150
PANEL_PX = int(PANEL_IN * DPI)  # 390 px per panel by default


def _size(path):
    with Image.open(path) as im:
        return im.size  # (width, height)


def _height(rows, n_entries, ncol, dpi=DPI, title_lines=1):
    """Pixel height of save_panel_grid's picture: the panels, their titles (0.18 in per line of
    a row's longest title) and the legend strip (0.3 in per line of 2·ncol entries, plus 0.15)."""
    legend = (0.3 * -(-n_entries // (2 * ncol)) + 0.15) if n_entries else 0.0
    return int((PANEL_IN * rows + 0.18 * title_lines * rows + legend) * dpi)


def test_colorize_uses_dataset_colours():
    lab = np.array([[0, 1], [2, 255]])
    out = colorize_sem_seg(lab, [(10, 20, 30), (40, 50, 60), (70, 80, 90)], ignore_label=255)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 0].tolist() == [70, 80, 90]
    assert out[1, 1].tolist() == [0, 0, 0]  # ignored: black
    # a transparent class (None) gets the given fill
    out = colorize_sem_seg(lab, [None, (40, 50, 60), (70, 80, 90)], transparent=(255, 255, 255))
    assert out[0, 0].tolist() == [255, 255, 255]


def test_palette_bright_for_few_classes_dataset_otherwise():
    import matplotlib

    names = ["background", "disc", "box", "ring", "bar", "triangle"]
    voc = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128)]
    auto = class_palette(6, names, voc, "auto")
    tab10 = [tuple(int(round(255 * v)) for v in matplotlib.colormaps["tab10"](i)[:3]) for i in range(5)]
    assert auto[0] is None and auto[1:] == tab10  # background transparent, the rest tab10
    assert class_palette(6, names, voc, "dataset") == voc
    cs19 = [(i, 2 * i, 3 * i) for i in range(19)]
    assert class_palette(19, [f"c{i}" for i in range(19)], cs19, "auto") == cs19  # e.g. Cityscapes' own
    assert len(set(class_palette(19, [f"c{i}" for i in range(19)], cs19, "bright"))) == 19  # tab20
    with pytest.raises(ValueError, match="palette"):
        class_palette(3, mode="rainbow")


def test_overlay_opacity_and_mask():
    img = np.full((2, 2, 3), 100, np.uint8)
    col = np.full((2, 2, 3), 200, np.uint8)
    assert overlay(img, col, 0.25)[0, 0].tolist() == [125, 125, 125]
    mask = np.array([[True, False], [False, False]])
    out = overlay(img, col, 0.5, mask)
    assert out[0, 0].tolist() == [150] * 3 and out[1, 1].tolist() == [100] * 3  # outside: the image


def _pixel(path, xy):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))[xy[1], xy[0]].astype(int)


def test_drawn_colours_opacity_and_mask_only(tmp_path):
    """The PNG's pixels: a class region shows ``(1 − a)·image + a·colour`` over the image, the
    colour itself with mask-only, the image itself for a transparent class."""
    img = np.full((100, 100, 3), 100, np.uint8)
    lab = np.zeros((100, 100), int)
    lab[:, 50:] = 1  # left: background (transparent), right: class 1
    colors = [None, (200, 40, 20)]
    names = ["background", "thing"]
    for alpha, mask_only in ((0.5, False), (1.0, False), (0.5, True)):
        path = str(tmp_path / f"p_{alpha}_{mask_only}.png")
        save_panel_grid([[Panel("x", "sem_seg", image=img, labels=lab, colors=colors, class_names=names,
                                alpha=alpha, mask_only=mask_only)]], path, legend=False)
        w, h = _size(path)
        right, left = _pixel(path, (int(w * 0.68), h // 2)), _pixel(path, (int(w * 0.32), h // 2))
        want = np.array([200, 40, 20]) if mask_only else np.round(0.5 * 100 + 0.5 * np.array([200, 40, 20])) \
            if alpha == 0.5 else np.array([200, 40, 20])
        assert np.abs(right - want).max() <= 2, (alpha, mask_only, right, want)
        assert np.abs(left - (255 if mask_only else 100)).max() <= 2, (alpha, mask_only, left)


def test_panel_grid_size_legend_and_dpi(tmp_path):
    img = np.full((40, 60, 3), 128, np.uint8)
    rows = [[Panel("image", "image", image=img),
             Panel("dets", "instances", image=img, boxes=np.array([[5, 5, 30, 20]]), classes=np.array([1]),
                   scores=np.array([0.9]), masks=np.ones((1, 40, 60), bool), class_names=["a", "b"]),
             Panel("heat", "heatmap", heat=np.random.rand(5, 6), mark=(2, 3))],
            [Panel("mask", "sem_seg", image=img, labels=np.zeros((40, 60), int), colors=[(1, 2, 3)],
                   class_names=["c0"])]]
    assert legend_entries(rows) == [("c0", (1, 2, 3)), ("b", legend_entries(rows[:1])[0][1])]
    assert save_panel_grid(rows, str(tmp_path / "g.png")) == (2, 3)
    assert _size(tmp_path / "g.png") == (3 * PANEL_PX, _height(2, 2, 3))
    save_panel_grid(rows, str(tmp_path / "g300.png"), dpi=300, legend=False)
    assert _size(tmp_path / "g300.png") == (3 * 2 * PANEL_PX, _height(2, 0, 3, dpi=300))
    with pytest.raises(ValueError, match="kind"):
        save_panel_grid([[Panel("x", "video")]], str(tmp_path / "bad.png"))


def test_training_curves(tmp_path):
    m = tmp_path / "metrics.json"
    with open(m, "w") as f:
        for it in range(4, 40, 5):
            f.write(json.dumps({"iteration": it, "loss_sem_seg": 2.0 / (it + 1), "loss_kd_context": 1.0 / (it + 1),
                                "kd/context/weight": 50 * (1 - it / 40), "kd/context/temperature/tau": 1 + it / 10,
                                "lr": 0.01}) + "\n")
        f.write(json.dumps({"iteration": 149, "sem_seg/mIoU": 55.0}) + "\n")  # one evaluation, at the end
        f.write("{broken")  # a run still writing: skipped
    groups = plot_training_curves(str(m), str(tmp_path / "c.png"))
    assert groups == ["losses (task and KD, weighted)", "KD weights", "KD temperatures τ", "evaluation"]
    assert _size(tmp_path / "c.png") == (int(16 * DPI), int(3.2 * DPI))
    # the one evaluation point shares the training's axis (4 .. 149), not a 16-iteration one
    s = read_metrics_series(str(m))
    lo, hi = iteration_range(s, ["loss_sem_seg", "sem_seg/mIoU"])
    assert lo < 4 and hi > 149 and hi - lo < 1.1 * 145
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


def _brute_miou(gt, pred, k):
    """mIoU over the classes of ``gt``, class by class with numpy sums."""
    ious = [((gt == c) & (pred == c)).sum() / ((gt == c) | (pred == c)).sum() for c in range(k) if (gt == c).any()]
    return 100.0 * float(np.mean(ious))


def test_visualize_cli_panels(kd_run, tmp_path):
    (t_cfg, t_w), (s_cfg, s_w) = kd_run["teacher"], kd_run["plain"]
    run_dir = os.path.dirname(kd_run["full"])  # the run's folder stands for its last checkpoint
    with open(os.path.join(run_dir, "last_checkpoint"), "w") as f:
        f.write(os.path.basename(kd_run["full"]))
    out = tool.main(["--output", str(tmp_path / "vis"), "--model", "teacher", t_cfg, t_w,
                     "--model", "student", s_cfg, s_w, "--model", "student + BCD", kd_run["kd_cfg"], kd_run["final"],
                     "--kd", kd_run["kd_cfg"], run_dir, "--num-images", "2", "--dataset", "t_vis_val"])
    preds = [str(tmp_path / "vis" / f"pred_{i}.png") for i in range(2)]
    sig = str(tmp_path / "vis" / "kd_signals.png")
    assert out["files"] == preds + [sig]
    for p in preds:  # image, ground truth, 3 models, and the legend strip of the 4 classes
        assert out["panels"][p] == (1, 5, 5) and _size(p) == (5 * PANEL_PX, _height(1, 4, 5, title_lines=2))
    # image, teacher / student boundary, teacher / student relation row (no class legend)
    assert out["panels"][sig] == (1, 5, 5) and _size(sig) == (5 * PANEL_PX, _height(1, 0, 5))

    # the score in each title is the image's mIoU, computed here independently
    from bcd.engine import Checkpointer
    from bcd.modeling import build_model

    from bcd.data import DatasetCatalog

    d = DatasetCatalog.get("t_vis_val")[0]
    gt = np.asarray(Image.open(d["sem_seg_file_name"])).astype(int)
    for col, (cfg_path, w) in zip(out["titles"][preds[0]][2:], [(t_cfg, t_w), (s_cfg, s_w)]):
        cfg = tool.load_config(cfg_path)
        model = build_model(cfg).eval()
        Checkpointer(model).load(w, checkpointables=[])
        with torch.no_grad():  # the input as the test mapper makes it, as at evaluation
            pred = model([tool.model_input(cfg, {"dict": d})])[0]["sem_seg"].argmax(0).numpy()
        assert col.split("\n")[1] == f"mIoU {_brute_miou(gt, pred, 4):.1f}", col
    assert out["titles"][preds[0]][:2] == ["image", "ground truth"]

    # image files without labels: no ground-truth column, no score; mask-only, 300 dpi
    out = tool.main(["--output", str(tmp_path / "vis2"), "--model", "teacher", t_cfg, t_w, "--mask-only",
                     "--dpi", "300", "--opacity", "0.3", "--images", *kd_run["images"][:1]])
    p = str(tmp_path / "vis2" / "pred_0.png")
    assert out["panels"][p] == (1, 2, 2) and out["titles"][p] == ["image", "teacher"]
    assert _size(p)[0] == 2 * 2 * PANEL_PX


def test_visualize_refuses_a_missing_teacher_before_writing(kd_run, tmp_path):
    """--kd needs the teacher: a missing KD.TEACHER.WEIGHTS is an error naming the file and the
    command that trains it, and the output folder is not even created; so is a missing --model
    weights file, and a model_final.pth given to --kd (it has no KD modules)."""
    out = tmp_path / "vis"
    missing = str(tmp_path / "gone" / "model_final.pth")
    with pytest.raises(FileNotFoundError) as e:
        tool.main(["--output", str(out), "--model", "t", *kd_run["teacher"], "--kd", kd_run["kd_cfg"],
                   kd_run["full"], "KD.TEACHER.WEIGHTS", missing])
    msg = str(e.value)
    assert missing in msg and "python tools/train_net.py --config-file " + kd_run["teacher"][0] in msg
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="'student'.*nope.pth"):
        tool.main(["--output", str(out), "--model", "student", kd_run["plain"][0], str(tmp_path / "nope.pth")])
    with pytest.raises(ValueError, match="no KD modules"):
        tool.main(["--output", str(out), "--kd", kd_run["kd_cfg"], kd_run["final"]])
    assert not out.exists()


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
    # image, ground truth, teacher, plain student (KD.BASELINE_OUTPUT_DIR), distilled student,
    # and the class legend
    w, h = _size(os.path.join(cfg.OUTPUT_DIR, "kd_predictions.png"))
    assert w == 5 * PANEL_PX and h == _height(1, 4, 5, title_lines=2)  # one legend line holds up to 10
