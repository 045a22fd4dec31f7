"""The benchmark's record of the machine and its report: ``OUTPUT/<name>.json`` and ``.md``."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
from typing import Any, Dict, List

import torch

from .measure import OLD_SGD_LR
from .pairs import PAIRS

__all__ = ["flop_ratio", "machine", "write_report"]


def machine(device: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
        info["load_average_start"] = list(os.getloadavg())
    except OSError:
        pass
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt_t(xs: List[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}–{max(xs):.3f})"


def flop_ratio(r: Dict[str, Any]) -> float:
    """The arithmetic floor of the ratio: FLOPs(KD step) / (FLOPs(student step) + FLOPs(teacher fwd)).

    What the time ratio would be if the loss's products ran as fast as the networks' (element-wise
    work is not counted, so it is a lower bound); time ratio ÷ FLOP ratio says how far a step sits
    above that floor.
    """
    f = r["flops"]
    return f["kd"] / max(1, f["student"] + f["teacher"])


def _lr_counts(block: Dict[str, Any]) -> Dict[float, str]:
    """``{lr: "all" | "k loss sets"}`` of one pair's measurements (lr 0 keeps the weights fixed)."""
    lrs = [r.get("sgd_lr", OLD_SGD_LR) for r in block["losses"].values() if "error" not in r]
    counts = {lr: lrs.count(lr) for lr in sorted(set(lrs))}
    return {lr: "all" if n == len(lrs) else f"{n} loss sets" for lr, n in counts.items()}


def write_report(res: Dict[str, Any], out: str, name: str, stamp_load: bool = True) -> None:
    """``OUTPUT/<name>.json`` and ``.md`` (tables per pair).

    ``stamp_load``: record the load average now as the last write's (False when merging runs:
    the merged runs' highest is kept).
    """
    os.makedirs(out, exist_ok=True)
    if stamp_load:
        res["machine"]["load_average_now"] = list(os.getloadavg())
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(res, f, indent=2)
    m = res["machine"]
    md = [f"# Distillation cost ({name})", "",
          f"Machine: {m.get('cpu', '')}, {m['cpu_count']} CPUs, torch {m['torch']} with {m['threads']} threads, "
          f"device `{m['device']}`{', ' + m['gpu'] if 'gpu' in m else ''}; load average at start "
          f"{m.get('load_average_start', ['?'])[0]:.1f}, at the last write {m['load_average_now'][0]:.1f}; "
          f"clock: {'process CPU time' if res.get('clock') == 'cpu' else 'wall time'}, "
          f"{res.get('threads')} thread(s) per measuring process."
          + (f" {res['note']}" if res.get("note") else "")
          + (f" Merged from {len(res['merged_from'])} runs (`--merge`)." if res.get("merged_from") else ""), "",
          "Method (tools/benchmark.py): per (pair, loss set) a fresh process times, interleaved, the KD "
          "step, the plain student step and the teacher forward (warm-up rounds first); times are the "
          "median (min–max) over the timed rounds. Ratio = median(KD step) / (median(student step) + "
          "median(teacher forward)), the loss sums exactly the trainer's `loss*` entries; its spread is "
          "that of the per-round ratios. Extra memory = KD step peak − max(student step peak, teacher "
          "forward peak). Loss GFLOPs = FlopCounterMode(KD step) − (student step) − (teacher forward): "
          "matrix products and convolutions only. FLOP ratio = FLOPs(KD step) / (FLOPs(student step) + "
          "FLOPs(teacher forward)): the ratio's arithmetic floor.", ""]
    for pair, block in res.get("pairs", {}).items():
        spec = PAIRS[pair]
        md += [f"## {pair}: {spec['what']}", "",
               f"Batch {res['batch']} of {block['size'][0]}×{block['size'][1]}; {res['warmup']} warm-up + "
               f"{res['iters']} timed rounds; SGD lr "
               + ", ".join(f"{lr:g} ({n})" for lr, n in _lr_counts(block).items()) + ".", "",
               "| loss set | KD step (s) | student step (s) | teacher fwd (s) | ratio (spread) | FLOP ratio "
               "| extra peak (MiB) | loss GFLOPs |",
               "|---|---|---|---|---|---|---|---|"]
        for ls, r in block["losses"].items():
            if "error" in r:
                md.append(f"| {ls} | failed: {r['error'].splitlines()[0][:120]} | | | | | | |")
                continue
            t = r["times_s"]
            md.append(f"| {ls} | {_fmt_t(t['kd'])} | {_fmt_t(t['student'])} | {_fmt_t(t['teacher'])} | "
                      f"{r['ratio']:.2f} ({r['ratio_spread'][0]:.2f}–{r['ratio_spread'][1]:.2f}) | "
                      f"{flop_ratio(r):.2f} | "
                      f"{r['extra_peak_bytes'] / 2**20:.0f} | {r['loss_flops'] / 1e9:.1f} |")
        md.append("")
    if res.get("relation"):
        md += ["## Relation KL (BCD context), forward + backward", "",
               "| impl | tokens N | C | batch | time (s) | peak (MiB) | GFLOPs | loss |", "|---|---|---|---|---|---|---|---|"]
        for r in res["relation"]:
            if "error" in r:
                md.append(f"| {r.get('impl')} | failed: {r['error'].splitlines()[0][:100]} | | | | | | |")
                continue
            gflops = "—" if r["flops"] is None else f"{r['flops'] / 1e9:.1f}"
            loss = "— (yardstick)" if math.isnan(r["loss"]) else f"{r['loss']:.6g}"
            md.append(f"| {r['impl']} | {r['tokens']} | {r['channels']} | {r['batch']} | {r['time_s']:.2f} | "
                      f"{r['peak_bytes'] / 2**20:.0f} | {gflops} | {loss} |")
        md.append("")
    if res.get("line_max"):
        md += ["## BCD boundary line-max (r = 5), forward + backward", "",
               "| impl | grid | batch | median (s) | min–max (s) |", "|---|---|---|---|---|"]
        for r in res["line_max"]:
            md.append(f"| {r['impl']} | {r['size'][0]}×{r['size'][1]} | {r['batch']} | {r['median_s']:.4f} | "
                      f"{r['min_s']:.4f}–{r['max_s']:.4f} |")
        md.append("")
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
