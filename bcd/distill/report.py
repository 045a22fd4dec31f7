"""``kd_report.{md,json}``: teacher, plain student, distilled student, gain, params and FLOPs.

* Metrics come from ``metrics.json`` files (JSON lines written by the trainer; the last line
  holding evaluation keys wins): the teacher's run folder (``KD.TEACHER_OUTPUT_DIR``, else the
  folder of ``KD.TEACHER.WEIGHTS``), the baseline student's (``KD.BASELINE_OUTPUT_DIR``, optional)
  and the distilled student's (``OUTPUT_DIR``, or results handed in by the caller).
* Params: fvcore ``parameter_count``; FLOPs: fvcore ``FlopCountAnalysis`` of ``extract`` on one
  ``3×H×W`` input of the test size (``INPUT.CROP.SIZE``), counted as fvcore does (one fused
  multiply-add = 1 flop). The KD modules (connectors, HFA, heads) are counted separately: they
  are not part of the exported student.
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
    md.append(f"\nFLOPs (fvcore, multiply-adds) of one {size[0]}×{size[1]} input.")
    with open(os.path.join(out_dir, "kd_report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return rep
