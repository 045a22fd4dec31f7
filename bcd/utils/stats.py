"""Statistics of paired comparisons, for the evidence tools (``tools/evidence.py``, ``tools/demo.py``).

The design (``docs/evidence.md``): arms are *paired* inside a replicate (same initialisation, data
order and augmentation draws; only the loss differs) and a replicate re-trains what its pairs share
(the teacher, the warm start). The unit of evidence is the replicate: the difference of two arms in
replicate ``r`` is the mean over its paired seeds, ``d_r = mean_s [m(A, r, s) - m(B, r, s)]``, and the
interval is the Student-t interval over the replicates' ``d_r``:
``mean(d) +- t(0.975, R - 1) * sd(d) / sqrt(R)``.
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "t975",
    "paired_summary",
    "verdict",
    "replicate_differences",
    "mean_sd",
    "variance_components",
]


def t975(df: int) -> float:
    """``t(0.975, df)``: the 95% two-sided Student-t quantile (``scipy.stats.t.ppf(0.975, df)``).

    Raises:
        ValueError: ``df < 1``.
    """
    if df < 1:
        raise ValueError(f"t975(): df must be >= 1, got {df}")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_summary(diffs: Sequence[float]) -> Dict[str, float]:
    """Mean, sd and 95% t-interval of ``diffs`` (one value per independent unit).

    Returns ``{"n", "mean", "sd", "lo", "hi"}``; ``sd`` / ``lo`` / ``hi`` are NaN with fewer than two
    values, ``mean`` is NaN with none.
    """
    n = len(diffs)
    mean = statistics.fmean(diffs) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "lo": float("nan"), "hi": float("nan")}
    sd = statistics.stdev(diffs)
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def verdict(s: Mapping[str, float], lower_is_better: bool = False) -> str:
    """``docs/evidence.md``'s wording: "helps" / "hurts" only when the interval excludes 0."""
    if s["n"] < 2 or math.isnan(s["lo"]):
        return "one unit: no interval"
    lo, hi = (-s["hi"], -s["lo"]) if lower_is_better else (s["lo"], s["hi"])
    if lo > 0:
        return "helps"
    if hi < 0:
        return "hurts"
    return "no measurable difference"


def replicate_differences(
    a: Mapping[Tuple[int, int], float], b: Mapping[Tuple[int, int], float]
) -> Tuple[Dict[int, float], Dict[int, List[float]]]:
    """Replicate-level paired differences of two arms.

    Args:
        a, b: metric per ``(replicate, seed)`` of arms A and B (missing runs are left out).

    Returns:
        ``(d, pairs)``: ``d[r]`` the mean over the seeds of replicate ``r`` that both arms finished of
        ``a - b``, and ``pairs[r]`` those per-seed differences. Replicates without a common seed are
        absent.
    """
    pairs: Dict[int, List[float]] = {}
    for key in sorted(set(a) & set(b)):
        pairs.setdefault(key[0], []).append(a[key] - b[key])
    return {r: statistics.fmean(v) for r, v in pairs.items()}, pairs


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """``(mean, sd)`` of ``values`` (sd NaN below two values; both NaN for none)."""
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    return statistics.fmean(values), statistics.stdev(values)


def variance_components(values: Mapping[Tuple[int, int], float]) -> Dict[str, Optional[float]]:
    """Spread of one arm's metric over ``(replicate, seed)`` runs.

    Returns ``{"sd_all"}`` (sd over every run), ``"sd_between"`` (sd of the replicate means) and
    ``"sd_within"`` (pooled sd of the seeds inside a replicate; ``None`` when no replicate has two
    seeds). ``None`` where undefined.
    """
    by_rep: Dict[int, List[float]] = {}
    for (r, _), v in values.items():
        by_rep.setdefault(r, []).append(v)
    allv = list(values.values())
    out: Dict[str, Optional[float]] = {"sd_all": None, "sd_between": None, "sd_within": None}
    if len(allv) >= 2:
        out["sd_all"] = statistics.stdev(allv)
    means = [statistics.fmean(v) for v in by_rep.values()]
    if len(means) >= 2:
        out["sd_between"] = statistics.stdev(means)
    ss = sum(sum((x - statistics.fmean(v)) ** 2 for x in v) for v in by_rep.values())
    dof = sum(len(v) - 1 for v in by_rep.values())
    if dof > 0:
        out["sd_within"] = math.sqrt(ss / dof)
    return out
