"""One report from benchmark runs split over processes or nights (``--merge``)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence, Tuple

__all__ = ["merge_results"]

#: Settings that must agree for measurements to share one table (the machine's identity too).
_MERGE_KEYS = ("batch", "warmup", "iters", "clock", "threads")
_MACHINE_KEYS = ("cpu", "cpu_count", "torch", "device", "gpu", "threads")


def merge_results(paths: Sequence[str]) -> Dict[str, Tuple[Dict[str, Any], List[str]]]:
    """Combine ``benchmark_<task>.json`` files of earlier runs into one result per file name.

    Runs split over processes or nights (e.g. two one-thread runs side by side on a 2-core CPU)
    become one table per pair; measurements are copied, not re-run. Returns
    ``{name: (result, [source paths])}``.

    Raises:
        SystemExit: a file that is not a benchmark result, runs of one name made with different
            settings (``batch``, ``warmup``, ``iters``, ``clock``, ``threads``) or on different
            machines (CPU model, torch, device, GPU), or the same (pair, loss set) in two files.
            The message names the files and the key.
    """
    merged: Dict[str, Tuple[Dict[str, Any], List[str]]] = {}
    seen: Dict[Tuple[str, str, str], str] = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--merge: cannot read {path}: {e}")
        if not name.startswith("benchmark_") or "machine" not in res:
            raise SystemExit(f"--merge: {path} is not a tools/benchmark.py result (benchmark_<task>.json)")
        if name not in merged:
            res["machine"].setdefault("load_average_now", [0.0])
            res.setdefault("pairs", {})
            merged[name] = (res, [path])
            for pair, block in res["pairs"].items():
                for ls in block["losses"]:
                    seen[(name, pair, ls)] = path
            continue
        base, sources = merged[name]
        for key in _MERGE_KEYS:
            if base.get(key) != res.get(key):
                raise SystemExit(f"--merge: {path} has {key} = {res.get(key)!r}, {sources[0]} has "
                                 f"{base.get(key)!r}; one table needs one setting")
        for key in _MACHINE_KEYS:
            if base["machine"].get(key) != res["machine"].get(key):
                raise SystemExit(f"--merge: {path} ran on machine {key} = {res['machine'].get(key)!r}, "
                                 f"{sources[0]} on {base['machine'].get(key)!r}; merge runs of one machine only")
        for pair, block in res.get("pairs", {}).items():
            dest = base["pairs"].setdefault(pair, {"size": block["size"], "losses": {}})
            if dest["size"] != block["size"]:
                raise SystemExit(f"--merge: pair {pair} is {block['size']} in {path} but {dest['size']} "
                                 f"in {sources[0]}")
            for ls, r in block["losses"].items():
                if (name, pair, ls) in seen:
                    raise SystemExit(f"--merge: {pair} / {ls} is in both {seen[(name, pair, ls)]} and {path}")
                seen[(name, pair, ls)] = path
                dest["losses"][ls] = r
        for key in ("load_average_start", "load_average_now"):
            a, b = base["machine"].get(key, [0.0]), res["machine"].get(key, [0.0])
            base["machine"][key] = a if a[0] >= b[0] else b
        sources.append(path)
    for res, sources in merged.values():
        res["merged_from"] = list(sources)
    return merged
