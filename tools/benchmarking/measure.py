"""One (pair, loss set): the KD step, the plain student step and the teacher forward, timed
interleaved in one fresh process (see ``tools/benchmark.py``'s docstring for the method)."""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from _tool_common import load_config
from bcd.utils.analysis import PeakMemory, flop_count, synchronize

from .inputs import det_inputs, num_classes, seg_inputs
from .pairs import PAIRS, repo_path

__all__ = ["SGD_LR", "OLD_SGD_LR", "load_pair_config", "measure_pair", "run_isolated",
           "save_teacher_weights", "total_loss"]

#: Learning rate of the timed SGD steps (see ``measure_pair``). Results without ``sgd_lr`` were
#: measured by the earlier tool at ``OLD_SGD_LR``.
SGD_LR = 0.0
OLD_SGD_LR = 1e-4


def load_pair_config(path: str, device: str, opts: Sequence[Any] = ()):
    """The config of ``path`` (relative to the repository root) with ``opts``, on ``device``,
    without the ImageNet file (random init: the cost does not depend on the weights)."""
    cfg = load_config(repo_path(path), opts, device)
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    return cfg


def total_loss(loss_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The trainer's sum (``bcd.engine.train_loop.SimpleTrainer``): entries whose key starts with ``loss``."""
    from bcd.engine.train_loop import SimpleTrainer

    return SimpleTrainer._total_loss(loss_dict)


def measure_pair(pair: str, loss_set: str, batch: int, warmup: int, iters: int, device: str,
                 teacher_weights: str, size: Optional[Tuple[int, int]] = None, clock: str = "wall",
                 threads: int = 0) -> Dict[str, Any]:
    """Interleaved KD step / student step / teacher forward of one (pair, loss set) (module doc).

    ``clock``: ``"wall"`` (``perf_counter``, synchronised on CUDA) or ``"cpu"`` (the process's
    CPU time: on a CPU shared with other jobs it counts the work, not the waiting; use it with
    ``threads=1``). Both are recorded; ``clock`` decides the reported medians and ratio.
    """
    from bcd.distill import build_model
    from bcd.engine.train_loop import extra_objectives
    from bcd.solver import build_extra_optimizers

    if threads > 0:
        torch.set_num_threads(threads)

    spec = PAIRS[pair]
    kd_cfg, losses, opts = spec["sets"][loss_set]
    size = tuple(size or spec["size"])
    torch.manual_seed(0)
    o = list(opts) + ["KD.TEACHER.WEIGHTS", teacher_weights, "KD.TEACHER.CONFIG_FILE", repo_path(spec["teacher"])]
    if losses is not None:
        o += ["KD.LOSSES", list(losses)]
    cfg = load_pair_config(kd_cfg, device, o)
    model = build_model(cfg)
    model.train()
    classes = num_classes(cfg, spec["task"])
    if spec["task"] == "seg":
        inputs = seg_inputs(size, batch, classes)
    else:
        inputs = det_inputs(size, batch, classes, masks=bool(cfg.MODEL.MASK_ON))
    # The trainer's optimizers: the model's extra ones (APD's teacher adapter, on its own
    # objective) and SGD over the other trainable parameters.
    extra = build_extra_optimizers(cfg, model)
    own = {id(p) for e in extra.values() for g in e.optimizer.param_groups for p in g["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    # lr 0: the step's arithmetic is done (momentum buffers, parameter update) but the weights stay
    # the first round's, so every round repeats one computation. With lr > 0, random weights can
    # make a loss diverge within a step or two (FGD on Cascade Mask R-CNN went NaN at the second
    # step at lr 1e-4), which changes data-dependent work such as the number of RoIs.
    opt = torch.optim.SGD(params, lr=SGD_LR, momentum=0.9)
    for e in extra.values():
        for g in e.optimizer.param_groups:
            g["lr"] = SGD_LR
    student, teacher = model.student, model.teacher

    def kd_step() -> None:
        # the trainer's step (bcd/engine/train_loop.py): one backward of the main and extra objectives
        out = model(inputs)
        loss = sum(extra_objectives(out, extra).values(), total_loss(out))
        opt.zero_grad(set_to_none=True)
        for e in extra.values():
            e.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for e in extra.values():
            e.optimizer.step()

    def student_step() -> None:
        loss = total_loss(student(inputs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def teacher_forward() -> None:
        teacher.extract(teacher.preprocess(inputs))

    phases = (("kd", kd_step), ("student", student_step), ("teacher", teacher_forward))
    flops = {}
    for r in range(max(1, warmup)):
        for key, fn in phases:
            if r == 0:
                flops[key] = flop_count(fn).total
            else:
                fn()
    wall: Dict[str, List[float]] = {k: [] for k, _ in phases}
    cpu: Dict[str, List[float]] = {k: [] for k, _ in phases}
    peaks: Dict[str, int] = {k: 0 for k, _ in phases}
    for _ in range(iters):
        for key, fn in phases:
            synchronize(device)
            with PeakMemory(device) as mem:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                synchronize(device)
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
            peaks[key] = max(peaks[key], mem.peak)
    times = cpu if clock == "cpu" else wall
    med = {k: statistics.median(v) for k, v in times.items()}
    per_round = [k / (s + t) for k, s, t in zip(times["kd"], times["student"], times["teacher"])]
    return {
        "pair": pair, "loss_set": loss_set, "kd_config": kd_cfg, "losses": list(cfg.KD.LOSSES), "opts": list(opts),
        "size": list(size), "batch": batch, "warmup": warmup, "iters": iters, "sgd_lr": SGD_LR,
        "clock": clock, "threads": torch.get_num_threads(), "times_s": times, "wall_s": wall, "cpu_s": cpu,
        "median_s": med,
        "ratio": med["kd"] / (med["student"] + med["teacher"]),
        "ratio_spread": [min(per_round), max(per_round)],
        "peak_bytes": peaks, "extra_peak_bytes": peaks["kd"] - max(peaks["student"], peaks["teacher"]),
        "flops": flops, "loss_flops": flops["kd"] - flops["student"] - flops["teacher"],
    }


def _child(q, fn, kwargs) -> None:
    try:
        q.put(("ok", fn(**kwargs)))
    except Exception as e:  # reported in the results, the parent goes on
        import traceback

        q.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))


def run_isolated(fn: Callable[..., Dict[str, Any]], device: str, **kwargs) -> Dict[str, Any]:
    """``fn(device=device, **kwargs)`` in a fresh process on CPU (clean memory); in-process on CUDA.

    Returns the result, or ``{"error": message}`` when ``fn`` raised.
    """
    if str(device).startswith("cuda"):
        try:
            return fn(device=device, **kwargs)
        except Exception as e:  # noqa: BLE001  (one failing loss must not end the run)
            return {"error": f"{type(e).__name__}: {e}"}
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, dict(kwargs, device=device)))
    p.start()
    status, value = q.get()
    p.join()
    return value if status == "ok" else {"error": value}


def save_teacher_weights(pair: str, folder: str) -> str:
    """Random-init weights of the pair's teacher in ``folder`` (the Distiller loads them strictly)."""
    from bcd.modeling import build_model as build_plain_model

    path = os.path.join(folder, f"{pair}_teacher.pth")
    if not os.path.exists(path):
        torch.manual_seed(0)
        torch.save({"model": build_plain_model(load_pair_config(PAIRS[pair]["teacher"], "cpu")).state_dict()}, path)
    return path
