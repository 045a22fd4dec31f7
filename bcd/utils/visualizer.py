"""Pictures of predictions and of distillation signals (matplotlib, Agg backend; no model code).

* :func:`colorize_sem_seg`, :func:`overlay`: a label map in the dataset's colours
  (``MetadataCatalog.stuff_colors``) or a readable palette (:func:`class_palette`) blended over
  the image at a chosen opacity, or drawn alone (mask-only).
* :class:`Panel` + :func:`save_panel_grid`: a grid of panels (rows × columns), each an image, a
  semantic mask, detections (boxes with class and score, instance masks when present) or a heat
  map with a colour bar, with a class legend (names and colours) under the grid, written as one
  PNG at a chosen resolution.
* :func:`read_metrics_series` + :func:`plot_training_curves`: task and KD losses, KD weights,
  temperatures and evaluation metrics over iterations from a run's ``metrics.json``; the
  evaluation plot spans the training's iterations and prints its values, so one evaluation
  point reads as well as many.

Used by ``tools/visualize.py`` and ``kd_report`` (``bcd/distill/report.py``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "PALETTES",
    "Panel",
    "class_palette",
    "colorize_sem_seg",
    "default_colors",
    "iteration_range",
    "legend_entries",
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


# Palettes of ``class_palette``: "dataset" keeps the dataset's colours; "bright" uses matplotlib's
# qualitative tab10 / tab20 (designed to be told apart, and light enough to read over a photo).
PALETTES = ("auto", "dataset", "bright")
# class names drawn transparent by the bright palette (the image shows through; mask-only: white)
_BACKGROUND_NAMES = ("background", "bg", "__background__")


def class_palette(num_classes: int, class_names: Sequence[str] = (), dataset_colors: Sequence[Sequence[int]] = (),
                  mode: str = "auto") -> List[Optional[Tuple[int, int, int]]]:
    """One RGB colour per class, or None for a class drawn transparent.

    Args:
        num_classes: number of classes K.
        class_names: their names (a class named ``background`` is transparent in ``bright``).
        dataset_colors: the dataset's colours (``stuff_colors`` / ``thing_colors``).
        mode: ``"dataset"`` (the dataset's colours, random ones when it has none), ``"bright"``
            (tab10 for K <= 10, tab20 for K <= 20, else the dataset's), ``"auto"`` (``bright`` for
            K <= 10: the dark VOC-style colour maps of small datasets vanish over an image;
            ``dataset`` otherwise, e.g. Cityscapes' familiar colours).

    Returns:
        ``K`` entries, each an ``(r, g, b)`` tuple of 0..255 ints or None.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in PALETTES:
        raise ValueError(f"palette must be one of {PALETTES}; got '{mode}'")
    if mode == "auto":
        mode = "bright" if num_classes <= 10 else "dataset"
    if mode == "bright" and num_classes <= 20:
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
        base = [tuple(int(round(255 * v)) for v in cmap(i)[:3]) for i in range(num_classes)]
        names = list(class_names) + [""] * num_classes
        out: List[Optional[Tuple[int, int, int]]] = []
        j = 0
        for i in range(num_classes):
            if names[i].lower() in _BACKGROUND_NAMES:
                out.append(None)
            else:
                out.append(base[j])
                j += 1
        return out
    colors = [tuple(int(v) for v in c) for c in dataset_colors][:num_classes]
    return colors + default_colors(num_classes - len(colors), seed=3 + len(colors))


def colorize_sem_seg(labels: np.ndarray, colors: Sequence[Optional[Sequence[int]]], ignore_label: int = 255,
                     transparent: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``H×W`` class ids -> ``H×W×3`` uint8 RGB; ``ignore_label`` (and ids without a colour) get
    black; classes whose colour is None get ``transparent`` (see :func:`alpha_of`).

    Raises:
        ValueError: when ``labels`` is not two-dimensional.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"colorize_sem_seg needs an H×W label map, got shape {labels.shape}")
    palette = np.zeros((max(len(colors), 1) + 1, 3), dtype=np.uint8)
    for i, c in enumerate(colors):
        palette[i] = transparent if c is None else c
    idx = labels.astype(np.int64)
    idx = np.where((idx < 0) | (idx >= len(colors)) | (idx == ignore_label), len(palette) - 1, idx)
    return palette[idx]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.6,
            mask: Optional[np.ndarray] = None) -> np.ndarray:
    """``(1 − alpha)·image + alpha·color`` (both ``H×W×3`` uint8), uint8; where ``mask`` (``H×W``
    bool) is False the image is kept as it is."""
    a = np.float32(alpha) if mask is None else np.where(np.asarray(mask)[..., None], np.float32(alpha), 0)
    out = (1.0 - a) * image.astype(np.float32) + a * color.astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass
class Panel:
    """One cell of a picture.

    Attributes:
        title: text above the panel (a second line, e.g. the per-image metric, after ``\\n``).
        kind: "image" (``image``), "sem_seg" (``labels`` over ``image``), "instances"
            (``boxes`` N×4 XYXY pixels, ``classes``, ``scores``, optional ``masks`` N×H×W over
            ``image``) or "heatmap" (``heat`` h×w floats; optional ``image`` underneath).
        mark: a ``(y, x)`` pixel (of the image, or of the heat map without image) to circle.
        class_names, colors: of the dataset (sem_seg / instances); ``colors`` entries may be None
            (transparent class, see :func:`class_palette`).
        ignore_label: not coloured in sem_seg panels.
        score_thresh: instances below it are not drawn.
        alpha: opacity of masks over the image (0..1).
        mask_only: draw masks without the image (sem_seg: the colour map, transparent classes
            white; instances: masks and boxes on white).
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
    colors: Sequence[Optional[Sequence[int]]] = field(default_factory=list)
    ignore_label: int = 255
    score_thresh: float = 0.3
    alpha: float = 0.6
    mask_only: bool = False
    cmap: str = "magma"
    vmin: Optional[float] = None
    vmax: Optional[float] = None

    def legend_classes(self) -> List[int]:
        """Class ids this panel colours (sem_seg labels present, instances drawn)."""
        if self.kind == "sem_seg" and self.labels is not None:
            ids = np.unique(np.asarray(self.labels))
            return [int(i) for i in ids if i != self.ignore_label and 0 <= i]
        if self.kind == "instances" and self.classes is not None and len(self.classes):
            keep = np.ones(len(self.classes), bool) if self.scores is None else \
                np.asarray(self.scores) >= self.score_thresh
            return sorted({int(c) for c in np.asarray(self.classes)[keep]})
        return []

    def _colors(self, n: int) -> List[Optional[Tuple[int, int, int]]]:
        return list(self.colors) if self.colors else class_palette(n, self.class_names, mode="dataset")


_WHITE = (255, 255, 255)
TITLE_LINE_IN = 0.18  # figure height given to each line of a row's panel titles (9 pt text)


def _draw(ax, p: Panel, fig) -> None:
    ax.set_title(p.title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if p.kind == "image":
        ax.imshow(p.image)
    elif p.kind == "sem_seg":
        colors = p._colors(max(len(p.class_names), int(np.max(p.labels)) + 1 if np.size(p.labels) else 1))
        col = colorize_sem_seg(p.labels, colors, p.ignore_label, transparent=_WHITE)
        if p.mask_only or p.image is None or p.image.shape[:2] != col.shape[:2]:
            ax.imshow(col)
        else:
            labels = np.asarray(p.labels)
            drawn = np.zeros(labels.shape, bool)
            for i, c in enumerate(colors):
                if c is not None:
                    drawn |= labels == i
            ax.imshow(overlay(p.image, col, p.alpha, drawn))
    elif p.kind == "instances":
        if p.mask_only or p.image is None:
            h, w = (p.image.shape[:2] if p.image is not None else
                    (np.asarray(p.masks).shape[1:3] if p.masks is not None and len(p.masks) else (64, 64)))
            ax.imshow(np.full((h, w, 3), 255, np.uint8))
        else:
            ax.imshow(p.image)
        n_cls = max(len(p.class_names), int(np.max(p.classes)) + 1 if p.classes is not None and len(p.classes) else 1)
        colors = [c if c is not None else (128, 128, 128) for c in p._colors(n_cls)]
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
                layer[m] = (*rgb, 1.0 if p.mask_only else p.alpha)
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


def legend_entries(rows: Sequence[Sequence[Panel]]) -> List[Tuple[str, Tuple[int, int, int]]]:
    """``(class name, colour)`` of every class a sem_seg / instances panel of ``rows`` colours,
    in class order; transparent classes (None) are listed white-on-grey-edge."""
    seen: Dict[int, Tuple[str, Tuple[int, int, int]]] = {}
    for r in rows:
        for p in r:
            ids = p.legend_classes()
            if not ids:
                continue
            colors = p._colors(max(len(p.class_names), max(ids) + 1))
            for i in ids:
                if i in seen:
                    continue
                name = p.class_names[i] if i < len(p.class_names) else str(i)
                c = colors[i] if i < len(colors) else None
                seen[i] = (name, _WHITE if c is None else tuple(int(v) for v in c))
    return [seen[i] for i in sorted(seen)]


def _rect(x0, y0, x1, y1, rgb):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=rgb, linewidth=1.2)


def save_panel_grid(rows: Sequence[Sequence[Panel]], path: str, panel_size: float = 2.6, dpi: int = 150,
                    legend: bool = True) -> Tuple[int, int]:
    """Draw ``rows`` of panels into one PNG at ``path``: each panel ``panel_size`` inches wide at
    ``dpi`` (2.6 in × 150 dpi = 390 px; shorter rows leave empty cells), each row as high plus
    ``TITLE_LINE_IN`` inches per line of its longest title, and, with ``legend``, a strip under
    the grid naming every class a mask panel colours (:func:`legend_entries`).
    Returns ``(rows, columns)``.

    Raises:
        ValueError: when there are no panels.
    """
    rows = [list(r) for r in rows if r]
    if not rows:
        raise ValueError("save_panel_grid: no panels")
    ncol = max(len(r) for r in rows)
    entries = legend_entries(rows) if legend else []
    legend_rows = -(-len(entries) // max(1, 2 * ncol)) if entries else 0
    legend_h = 0.3 * legend_rows + (0.15 if entries else 0.0)
    # square image panels fill the width, so each row's title lines get their own height
    title_h = sum(TITLE_LINE_IN * max(p.title.count("\n") + 1 for p in r) for r in rows)
    plt = _plt()
    # constrained layout: places titles, colour bars and the legend below the grid
    fig, axes = plt.subplots(len(rows), ncol, squeeze=False, layout="constrained",
                             figsize=(panel_size * ncol, panel_size * len(rows) + title_h + legend_h))
    for i, r in enumerate(rows):
        for j in range(ncol):
            if j < len(r):
                _draw(axes[i][j], r[j], fig)
            else:
                axes[i][j].axis("off")
    if entries:
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="0.4", label=n) for n, c in entries]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(entries), 2 * ncol), fontsize=8,
                   frameon=False, handlelength=1.2, columnspacing=1.0)
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


def iteration_range(series: Dict[str, List[Tuple[int, float]]], keys: Sequence[str]) -> Tuple[float, float]:
    """The x range every plot of :func:`plot_training_curves` shares: the iterations of all
    ``keys``, padded by 3 % (at least one iteration) on each side."""
    its = [it for k in keys for it, _ in series[k]]
    lo, hi = min(its), max(its)
    pad = max(1.0, 0.03 * (hi - lo))
    return lo - pad, hi + pad


def plot_training_curves(metrics_json: str, path: str, title: str = "", dpi: int = 150) -> List[str]:
    """Training curves of a run as one PNG with up to four plots: task losses (``loss_*`` but
    ``loss_kd_*``) and KD losses (``loss_kd_*``, weighted, as optimised) on a log scale; KD
    weights (``kd/<loss>/weight``); temperatures (``kd/<loss>/...tau``); evaluation metrics
    (``sem_seg/mIoU`` ...). Every plot spans the run's iterations (so an evaluation at the last
    iteration sits at the right end instead of alone on a 16-iteration axis); evaluation points
    are marked and, up to 12 of them, labelled with their values. Returns the titles of the plots
    drawn.

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
    x_lo, x_hi = iteration_range(s, [k for ks in groups.values() for k in ks])
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.0 * len(groups), 3.2), squeeze=False)
    for ax, (t, keys) in zip(axes[0], groups.items()):
        evaluation = t == "evaluation"
        for k in keys:
            its, vals = zip(*s[k])
            style = "--" if k.startswith("loss_kd_") else "-"
            ax.plot(its, vals, style, marker="o" if evaluation or len(its) < 4 else None, label=k, linewidth=1.2)
            if evaluation and len(its) <= 12:
                for x, y in zip(its, vals):
                    ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center",
                                fontsize=7)
        if evaluation:
            lo = min(v for k in keys for _, v in s[k])
            hi = max(v for k in keys for _, v in s[k])
            margin = max(2.0, 0.15 * (hi - lo))
            ax.set_ylim(lo - margin, hi + margin)
        if t.startswith("losses") and all(v > 0 for k in keys for _, v in s[k]):
            ax.set_yscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return list(groups)
