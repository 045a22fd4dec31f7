"""``kd_report.{md,json}``: teacher, plain student, distilled student, gain, params and FLOPs.

* Metrics come from ``metrics.json`` files (JSON lines written by the trainer; the last line
  holding evaluation keys wins): the teacher's run folder (``KD.TEACHER_OUTPUT_DIR``, else the
  folder of ``KD.TEACHER.WEIGHTS``), the baseline student's (``KD.BASELINE_OUTPUT_DIR``, optional)
  and the distilled student's (``OUTPUT_DIR``, or results handed in by the caller).
* Params: fvcore ``parameter_count``; FLOPs: ``bcd.utils.analysis.count_flops``, the
  test-time forward of one ``3×H×W`` input of the test size (``INPUT.CROP.SIZE``), in the unit
  of every FLOP count of ``bcd`` (a multiply-add = 2 FLOPs; fvcore counts it as 1). The KD
  modules (connectors, HFA, heads) are counted separately: they are not part of the exported
  student.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import nn

# Params and FLOPs have one owner, bcd/utils/analysis.py (also tools/analyze_model.py); they are
# re-exported here for the report's callers.
from ..utils.analysis import count_flops, count_params

__all__ = [
    "count_flops",
    "count_params",
    "format_report",
    "read_metrics",
    "write_kd_pictures",
    "write_kd_report",
]

logger = logging.getLogger(__name__)

# Columns shown first in the table; any other evaluation metric follows.
_MAIN_METRICS = ("sem_seg/mIoU", "sem_seg/mBIoU", "bbox/AP", "segm/AP")


def read_metrics(output_dir: str) -> Dict[str, float]:
    """Evaluation metrics (``task/metric`` keys) of the last line of ``output_dir/metrics.json``
    that has any; ``{}`` when the file or the metrics are missing."""
    path = os.path.join(output_dir, "metrics.json")
    if not output_dir or not os.path.isfile(path):
        return {}
    found: Dict[str, float] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            ev = {k: float(v) for k, v in rec.items()
                  if "/" in k and k.split("/")[0] in ("sem_seg", "bbox", "segm", "sod")}
            if ev:
                found = ev
    return found


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_report(rows: List[Dict[str, Any]], metrics: List[str], kd_params: Optional[int] = None) -> str:
    """Markdown table: one row per model, the metric columns, params (M) and GFLOPs."""
    head = ["model", *metrics, "params (M)", "GFLOPs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"]] + [_fmt(r["metrics"].get(m)) for m in metrics]
        cells.append(_fmt(r["params"] / 1e6, 3) if r.get("params") is not None else "–")
        cells.append(_fmt(r["flops"] / 1e9, 3) if r.get("flops") is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if kd_params is not None:
        lines.append("")
        lines.append(f"Training-only KD modules (connectors, HFA, heads; not exported): "
                     f"{kd_params / 1e6:.3f} M parameters.")
    return "\n".join(lines) + "\n"


def build_report(
    teacher: Tuple[Optional[nn.Module], Dict[str, float]],
    baseline: Tuple[Optional[nn.Module], Dict[str, float]],
    student: Tuple[Optional[nn.Module], Dict[str, float]],
    size: Tuple[int, int],
    kd_params: Optional[int] = None,
) -> Dict[str, Any]:
    """Report dict: ``rows`` (teacher, baseline, distilled), ``gain`` (distilled − baseline),
    ``metrics`` (the columns), ``kd_params``, ``input_size``."""
    rows = []
    for name, (model, met) in (("teacher", teacher), ("student (no KD)", baseline), ("student (KD)", student)):
        if model is None and not met:
            continue
        rows.append({
            "name": name,
            "metrics": dict(met),
            "params": count_params(model) if model is not None else None,
            "flops": count_flops(model, size) if model is not None else None,
        })
    keys = sorted({k for r in rows for k in r["metrics"]})
    # Table columns: the main metrics, then the other aggregates; per-class entries ("IoU-<c>")
    # stay in the rows' metrics (kd_report.json).
    metrics = [m for m in _MAIN_METRICS if m in keys] + [
        k for k in keys if k not in _MAIN_METRICS and "-" not in k.split("/")[-1]
    ]
    gain = {
        k: student[1][k] - baseline[1][k] for k in metrics if k in student[1] and k in baseline[1]
    }
    return {"rows": rows, "gain": gain, "metrics": metrics, "kd_params": kd_params,
            "input_size": list(size)}


def write_kd_report(
    cfg,
    distiller: Optional[nn.Module] = None,
    student_results: Optional[Mapping[str, Any]] = None,
    output_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """Write ``kd_report.{json,md}`` into ``output_dir`` (default ``cfg.OUTPUT_DIR``).

    Args:
        cfg: the distillation config (its ``KD`` node names the teacher / baseline runs).
        distiller: the trained ``Distiller`` (params / FLOPs of teacher, student, KD modules);
            None reports metrics only.
        student_results: evaluation results of the distilled student (nested or flat); None
            reads ``OUTPUT_DIR/metrics.json``.
    """
    from bcd.evaluation import flatten_results_dict

    out_dir = output_dir or cfg.OUTPUT_DIR
    teacher_dir = cfg.KD.TEACHER_OUTPUT_DIR or os.path.dirname(os.path.abspath(cfg.KD.TEACHER.WEIGHTS))
    s_met = read_metrics(out_dir)
    if student_results:
        s_met.update({k: float(v) for k, v in flatten_results_dict(dict(student_results)).items()})
    t_met = read_metrics(teacher_dir)
    b_met = read_metrics(cfg.KD.BASELINE_OUTPUT_DIR) if cfg.KD.BASELINE_OUTPUT_DIR else {}
    size = tuple(int(v) for v in cfg.INPUT.CROP.SIZE)
    teacher = getattr(distiller, "teacher", None)
    student = getattr(distiller, "student", None)
    kd_params = distiller.kd_parameter_count() if distiller is not None else None
    # The baseline has the student's architecture: same params / FLOPs.
    rep = build_report((teacher, t_met), (student if b_met else None, b_met), (student, s_met), size, kd_params)
    rep["teacher_dir"], rep["baseline_dir"], rep["output_dir"] = teacher_dir, cfg.KD.BASELINE_OUTPUT_DIR, out_dir
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kd_report.json"), "w") as f:
        json.dump(rep, f, indent=2)
    md = ["# Distillation report", "", f"Losses: {', '.join(cfg.KD.LOSSES)}", "",
          format_report(rep["rows"], rep["metrics"], kd_params)]
    if rep["gain"]:
        md.append("Gain of distillation (KD − no KD): " + ", ".join(
            f"{k} {v:+.2f}" for k, v in rep["gain"].items()))
    md.append(f"\nFLOPs of one {size[0]}×{size[1]} input, test-time forward; a multiply-add counts 2.")
    pictures = write_kd_pictures(cfg, distiller, out_dir)
    rep["pictures"] = pictures
    if "curves" in pictures:
        md += ["", "## Training curves", "", f"![training curves]({pictures['curves']})"]
    if "predictions" in pictures:
        md += ["", "## Predictions on one test image", "", f"![predictions]({pictures['predictions']})"]
    if "signals" in pictures:
        md += ["", "## Distillation signals of that image", "",
               "Teacher's and student's BCD boundary maps, and one pixel's context-relation row "
               "(circled) of each.", "", f"![BCD signals]({pictures['signals']})"]
    with open(os.path.join(out_dir, "kd_report.json"), "w") as f:
        json.dump(rep, f, indent=2)
    with open(os.path.join(out_dir, "kd_report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return rep


# ------------------------------------------------------------------ pictures
def _first_test_input(cfg) -> Optional[Tuple[Dict[str, Any], Any, Any]]:
    """``(model input, dataset dict, metadata)`` of the first image of ``DATASETS.TEST[0]``, or
    None when there is no test set."""
    from bcd.data import DatasetCatalog, MetadataCatalog
    from bcd.data.build import build_mapper

    if not cfg.DATASETS.TEST:
        return None
    name = cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(name)
    if not dicts:
        return None
    d = dict(dicts[0])
    gt_file = d.pop("sem_seg_file_name", None)
    d.pop("annotations", None)
    inp = build_mapper(cfg, is_train=False)(d)
    return inp, {**dicts[0], "sem_seg_file_name": gt_file}, MetadataCatalog.get(name)


def _baseline_student(cfg, like: nn.Module) -> Optional[nn.Module]:
    """The plain student of ``KD.BASELINE_OUTPUT_DIR/model_final.pth`` (same architecture as
    ``like``), or None when there is none that fits."""
    import copy

    import torch

    path = os.path.join(cfg.KD.BASELINE_OUTPUT_DIR, "model_final.pth") if cfg.KD.BASELINE_OUTPUT_DIR else ""
    if not path or not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("model", state) if isinstance(state, dict) else state
    model = copy.deepcopy(like)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as e:
        logger.warning("kd_report: baseline weights %s do not fit the student: %s", path, e)
        return None
    return model.eval()


def write_kd_pictures(cfg, distiller: Optional[nn.Module], out_dir: str) -> Dict[str, str]:
    """The report's pictures in ``out_dir``, as file names relative to it:

    * ``curves``: ``kd_curves.png``, training curves of ``OUTPUT_DIR/metrics.json`` (task and KD
      losses, KD weights, τ, evaluation metrics; ``bcd.utils.visualizer.plot_training_curves``);
    * ``predictions``: ``kd_predictions.png``, the first test image, its ground truth, the
      teacher's, the plain student's (``KD.BASELINE_OUTPUT_DIR/model_final.pth``, when present)
      and the distilled student's predictions, each titled with its mIoU on that image, with
      a class legend (``bcd.utils.visualizer.class_palette``, ``auto``);
    * ``signals``: ``kd_signals.png``, the BCD signals of that image (``bcd/distill/signals.py``),
      when ``KD.LOSSES`` has a BCD loss.

    A picture that cannot be made is left out with a warning: the report's numbers never depend
    on the pictures.
    """
    import torch

    from bcd.utils.visualizer import Panel, class_palette, plot_training_curves, save_panel_grid

    out: Dict[str, str] = {}
    metrics = os.path.join(out_dir, "metrics.json")
    if os.path.isfile(metrics):
        try:
            plot_training_curves(metrics, os.path.join(out_dir, "kd_curves.png"), title=", ".join(cfg.KD.LOSSES))
            out["curves"] = "kd_curves.png"
        except Exception as e:  # noqa: BLE001 - a picture is never worth a failed report
            logger.warning("kd_report: no training curves (%s)", e)
    if distiller is None:
        return out
    try:
        first = _first_test_input(cfg)
    except Exception as e:  # noqa: BLE001
        logger.warning("kd_report: no test image for the pictures (%s)", e)
        first = None
    if first is None:
        return out
    inp, d, meta = first
    try:
        import numpy as np
        from PIL import Image

        with Image.open(d["file_name"]) as im:
            image = np.asarray(im.convert("RGB"))
        from bcd.evaluation.sem_seg_evaluation import image_metrics

        names = list(meta.get("stuff_classes", None) or [])
        colors = class_palette(len(names), names, meta.get("stuff_colors", None) or [], "auto")
        ignore = int(meta.get("ignore_label", 255))
        fields = dict(class_names=names, colors=colors, ignore_label=ignore)
        row = [Panel("image", "image", image=image)]
        gt = None
        if d.get("sem_seg_file_name"):
            with Image.open(d["sem_seg_file_name"]) as lab:
                gt = np.asarray(lab)
            row.append(Panel("ground truth", "sem_seg", image=image, labels=gt, **fields))
        models = [("teacher", distiller.teacher), ("student (no KD)", _baseline_student(cfg, distiller.student)),
                  ("student (KD)", distiller.student)]
        was = distiller.training
        distiller.eval()
        try:
            for label, m in models:
                if m is None:
                    continue
                with torch.no_grad():
                    o = m([inp])[0]
                if "sem_seg" not in o:
                    row = []  # detection pictures: tools/visualize.py
                    break
                pred = o["sem_seg"].argmax(0).cpu().numpy()
                if gt is not None and names and gt.shape == pred.shape:  # this image's score
                    label = f"{label}\nmIoU {image_metrics(gt, pred, names, ignore)['mIoU']:.1f}"
                row.append(Panel(label, "sem_seg", image=image, labels=pred, **fields))
        finally:
            distiller.train(was)
        if row:
            save_panel_grid([row], os.path.join(out_dir, "kd_predictions.png"))
            out["predictions"] = "kd_predictions.png"
    except Exception as e:  # noqa: BLE001
        logger.warning("kd_report: no prediction picture (%s)", e)
    try:
        from .signals import bcd_signals, signal_panels

        sig = bcd_signals(distiller, [inp])
        save_panel_grid([signal_panels(sig, inp["image"])], os.path.join(out_dir, "kd_signals.png"))
        out["signals"] = "kd_signals.png"
    except ValueError:
        pass  # no BCD loss in this run
    except Exception as e:  # noqa: BLE001
        logger.warning("kd_report: no BCD signal picture (%s)", e)
    return out
