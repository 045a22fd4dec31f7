"""Pictures of predictions and of distillation signals (matplotlib, Agg backend; no model code).

* :func:`colorize_sem_seg`, :func:`overlay`: a label map in the dataset's colours
  (``MetadataCatalog.stuff_colors``) blended over the image.
* :class:`Panel` + :func:`save_panel_grid`: a grid of panels (rows × columns), each an image, a
  semantic mask, detections (boxes with class and score, instance masks when present) or a heat
  map with a colour bar, written as one PNG.
* :func:`read_metrics_series` + :func:`plot_training_curves`: task and KD losses, KD weights,
  temperatures and evaluation metrics over iterations from a run's ``metrics.json``.

Used by ``tools/visualize.py`` and ``kd_report`` (``bcd/distill/report.py``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "Panel",
    "colorize_sem_seg",
    "default_colors",
    "overlay",
    "plot_training_curves",
    "read_metrics_series",
    "save_panel_grid",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def default_colors(n: int, seed: int = 3) -> List[Tuple[int, int, int]]:
    """``n`` distinct RGB colours (a fixed random palette) for datasets without ``stuff_colors``."""
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(n)]


def colorize_sem_seg(labels: np.ndarray, colors: Sequence[Sequence[int]], ignore_label: int = 255) -> np.ndarray:
    """``H×W`` class ids -> ``H×W×3`` uint8 RGB; ``ignore_label`` (and ids without a colour) black.

    Raises:
        ValueError: when ``labels`` is not two-dimensional.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"colorize_sem_seg needs an H×W label map, got shape {labels.shape}")
    palette = np.zeros((max(len(colors), 1) + 1, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    idx = labels.astype(np.int64)
    idx = np.where((idx < 0) | (idx >= len(colors)) | (idx == ignore_label), len(palette) - 1, idx)
    return palette[idx]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``(1 − alpha)·image + alpha·color`` (both ``H×W×3`` uint8), uint8."""
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass
class Panel:
    """One cell of a picture.

    Attributes:
        title: text above the panel.
        kind: "image" (``image``), "sem_seg" (``labels`` over ``image``), "instances"
            (``boxes`` N×4 XYXY pixels, ``classes``, ``scores``, optional ``masks`` N×H×W over
            ``image``) or "heatmap" (``heat`` h×w floats; optional ``image`` underneath).
        mark: a ``(y, x)`` pixel (of the image, or of the heat map without image) to circle.
        class_names, colors: of the dataset (sem_seg / instances).
        ignore_label: not coloured in sem_seg panels.
        score_thresh: instances below it are not drawn.
        cmap, vmin, vmax: heat map colouring.
    """

    title: str
    kind: str = "image"
    image: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    classes: Optional[np.ndarray] = None
    scores: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None
    heat: Optional[np.ndarray] = None
    mark: Optional[Tuple[int, int]] = None
    class_names: Sequence[str] = field(default_factory=list)
    colors: Sequence[Sequence[int]] = field(default_factory=list)
    ignore_label: int = 255
    score_thresh: float = 0.3
    cmap: str = "magma"
    vmin: Optional[float] = None
    vmax: Optional[float] = None


def _draw(ax, p: Panel, fig) -> None:
    ax.set_title(p.title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if p.kind == "image":
        ax.imshow(p.image)
    elif p.kind == "sem_seg":
        colors = p.colors or default_colors(int(np.max(p.labels)) + 1)
        col = colorize_sem_seg(p.labels, colors, p.ignore_label)
        ax.imshow(overlay(p.image, col) if p.image is not None and p.image.shape[:2] == col.shape[:2] else col)
    elif p.kind == "instances":
        ax.imshow(p.image)
        n_cls = max(len(p.class_names), int(np.max(p.classes)) + 1 if p.classes is not None and len(p.classes) else 1)
        colors = p.colors or default_colors(n_cls)
        boxes = np.zeros((0, 4)) if p.boxes is None else np.asarray(p.boxes)
        classes = np.zeros(len(boxes), int) if p.classes is None else np.asarray(p.classes)
        scores = None if p.scores is None else np.asarray(p.scores)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            if scores is not None and scores[i] < p.score_thresh:
                continue
            c = int(classes[i])
            rgb = np.asarray(colors[c % len(colors)]) / 255.0
            if p.masks is not None and i < len(p.masks):
                m = np.asarray(p.masks[i], dtype=bool)
                layer = np.zeros((*m.shape, 4))
                layer[m] = (*rgb, 0.45)
                ax.imshow(layer)
            ax.add_patch(_rect(x0, y0, x1, y1, rgb))
            name = p.class_names[c] if c < len(p.class_names) else str(c)
            label = name if scores is None else f"{name} {scores[i]:.2f}"
            ax.text(x0, y0, label, fontsize=6, color="white", va="bottom",
                    bbox=dict(facecolor=rgb, alpha=0.8, pad=0.5, edgecolor="none"))
    elif p.kind == "heatmap":
        heat = np.asarray(p.heat, dtype=np.float32)
        extent = None
        if p.image is not None:
            ax.imshow(p.image)
            h, w = p.image.shape[:2]
            extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # the map stretched over the image
        im = ax.imshow(heat, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, alpha=0.75 if p.image is not None else 1.0,
                       extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    else:
        raise ValueError(f"Panel kind must be image, sem_seg, instances or heatmap; got '{p.kind}'")
    if p.mark is not None:
        y, x = p.mark
        ax.plot([x], [y], marker="o", markersize=7, markerfacecolor="none", markeredgecolor="cyan", mew=1.5)


def _rect(x0, y0, x1, y1, rgb):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=rgb, linewidth=1.2)


def save_panel_grid(rows: Sequence[Sequence[Panel]], path: str, panel_size: float = 2.4, dpi: int = 100) -> Tuple[int, int]:
    """Draw ``rows`` of panels into one PNG at ``path`` (each panel ``panel_size`` inches square;
    shorter rows leave empty cells). Returns ``(rows, columns)``.

    Raises:
        ValueError: when there are no panels.
    """
    rows = [list(r) for r in rows if r]
    if not rows:
        raise ValueError("save_panel_grid: no panels")
    ncol = max(len(r) for r in rows)
    plt = _plt()
    fig, axes = plt.subplots(len(rows), ncol, figsize=(panel_size * ncol, panel_size * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(ncol):
            if j < len(r):
                _draw(axes[i][j], r[j], fig)
            else:
                axes[i][j].axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return len(rows), ncol


def read_metrics_series(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """``{key: [(iteration, value), ...]}`` of every numeric entry of a ``metrics.json`` (JSON
    lines); lines that do not parse are skipped (a run still writing its last line)."""
    series: Dict[str, List[Tuple[int, float]]] = {}
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            it = rec.get("iteration")
            if it is None:
                continue
            for k, v in rec.items():
                if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    series.setdefault(k, []).append((int(it), float(v)))
    return series


# Evaluation metrics drawn when present (the first found per task)
_EVAL_KEYS = ("sem_seg/mIoU", "sem_seg/mBIoU", "bbox/AP", "segm/AP", "sod/Sm")


def plot_training_curves(metrics_json: str, path: str, title: str = "") -> List[str]:
    """Training curves of a run as one PNG with up to four plots: task losses (``loss_*`` but
    ``loss_kd_*``) and KD losses (``loss_kd_*``, weighted, as optimised) on a log scale; KD
    weights (``kd/<loss>/weight``); temperatures (``kd/<loss>/...tau``); evaluation metrics
    (``sem_seg/mIoU`` ...). Returns the titles of the plots drawn.

    Raises:
        FileNotFoundError: naming a missing ``metrics.json``.
        ValueError: when the file holds no training entry.
    """
    if not os.path.isfile(metrics_json):
        raise FileNotFoundError(f"metrics.json not found: {metrics_json}")
    s = read_metrics_series(metrics_json)
    groups = {
        "losses (task and KD, weighted)": [k for k in sorted(s) if k.startswith("loss_")],
        "KD weights": [k for k in sorted(s) if k.startswith("kd/") and k.endswith("/weight")],
        "KD temperatures τ": [k for k in sorted(s) if k.startswith("kd/") and "tau" in k.split("/")[-1]],
        "evaluation": [k for k in _EVAL_KEYS if k in s],
    }
    groups = {t: ks for t, ks in groups.items() if ks}
    if not groups:
        raise ValueError(f"{metrics_json} holds no loss, KD or evaluation entry to plot")
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.0 * len(groups), 3.2), squeeze=False)
    for ax, (t, keys) in zip(axes[0], groups.items()):
        for k in keys:
            its, vals = zip(*s[k])
            style = "--" if k.startswith("loss_kd_") else "-"
            ax.plot(its, vals, style, marker="o" if len(its) < 4 else None, label=k, linewidth=1.2)
        if t.startswith("losses") and all(v > 0 for k in keys for _, v in s[k]):
            ax.set_yscale("log")
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return list(groups)
