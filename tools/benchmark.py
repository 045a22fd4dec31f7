#!/usr/bin/env python
"""Cost of each distillation loss: step-time ratio, extra peak memory and the loss's own FLOPs.

    python tools/benchmark.py [--pairs NAME ...] [--losses NAME ...] [--batch 2]
                              [--warmup 1] [--iters 3] [--device cpu|cuda] [--output DIR]
    python tools/benchmark.py --detection [...]          # the detector pairs (default: segmentation)
    python tools/benchmark.py --relation [...]           # the relation-loss kernels only
    python tools/benchmark.py --list                     # pairs and loss sets
    python tools/benchmark.py --merge A/benchmark_det.json B/benchmark_det.json --output DIR
                                                         # one report from runs split over processes

Pairs (``PAIRS``; random weights, the cost does not depend on training): the paper's sizes,
PSPNet-R101 → PSPNet-R18 and DeepLabV3+-R101 → DeepLabV3+-MobileNetV2 at 512×512,
RetinaNet-R101 → R50, GFL-R101 → R50 (and Cascade Mask R-CNN when ``configs/coco`` has it) at
800×1333, all batch 2; and the demo pairs (``configs/demo``) for quick runs and tests.

**One timing method.** Each (pair, loss set) runs in a fresh process (on CPU: a clean memory
peak) that builds the ``Distiller`` once and times, interleaved in the same loop, ``--iters``
times each: the distillation step (``Distiller`` forward, the sum of the loss entries the
trainer sums, i.e. keys starting with ``loss``, backward, SGD step at lr 0), a plain step of its student
(same inputs, same summation, backward, step) and a forward of its teacher (``extract`` under
``no_grad``), after ``--warmup`` untimed rounds. Reported: the median of each and the spread
(min–max) over the steps.

**One ratio.** ``ratio = median(KD step) / (median(student step) + median(teacher forward))``:
1.0 means the loss (its forward, backward, modules and feature recording) costs nothing. The
spread of the ratio is that of the per-round ratios ``kd_i / (student_i + teacher_i)``.

**Memory.** The peak of each phase above the memory before it: on CUDA
``max_memory_allocated`` after a reset; on CPU the resident-set high-water mark ``VmHWM``
after resetting it (``/proc/self/clear_refs``). "Extra" is the KD step's peak minus the larger of
the plain student step's and the teacher forward's.

**FLOPs.** ``torch.utils.flop_counter.FlopCounterMode`` over the first warm-up round (matrix
products and convolutions; element-wise work is not counted): the loss's own FLOPs are the KD
step's minus the student step's and the teacher forward's.

Results: ``OUTPUT/benchmark_<task>.json`` and ``.md``, written after every measurement (a long
run leaves usable partial results), with the machine, the thread count and the load average.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402


def _c(path: str) -> str:
    return os.path.join(ROOT, path)


#: Learning rate of the timed SGD steps (see ``measure_pair``). Results without ``sgd_lr`` were
#: measured by the earlier tool at 1e-4.
SGD_LR = 0.0
_OLD_SGD_LR = 1e-4

# A loss set: (KD config file, KD.LOSSES or None = that file's, extra config opts).
LossSet = Tuple[str, Optional[List[str]], List[Any]]

_VOC_PSP = "configs/voc/bcd_pspnet_r18.yaml"
_VOC_DLV3P = "configs/voc/bcd_deeplabv3plus_mobilenetv2.yaml"
_BD, _CD = "BoundaryDistillation", "ContextDistillation"


def _seg_sets(bcd_cfg: str, extra: Dict[str, LossSet]) -> Dict[str, LossSet]:
    sets: Dict[str, LossSet] = {
        "BCD (both)": (bcd_cfg, [_BD, _CD], []),
        "BCD boundary": (bcd_cfg, [_BD], []),
        "BCD context": (bcd_cfg, [_CD], []),
        "BCD context, chunked": (bcd_cfg, [_CD], ["KD.CONTEXT.IMPL", "chunked"]),
        "pixel KD": (bcd_cfg, ["PixelKD"], []),
        "CWD (logits)": (bcd_cfg, ["ChannelWiseDistillation"], []),
        "Structured KD": (bcd_cfg, ["StructuredKD"], []),
        "FitNet": (bcd_cfg, ["FitNet"], []),
        "CIRKD": (bcd_cfg, ["CIRKD"], []),
        "CIRKD, chunked": (bcd_cfg, ["CIRKD"], ["KD.CIRKD.IMPL", "chunked"]),
        "CIRKD, 2×2 pooled": (bcd_cfg, ["CIRKD"], ["KD.CIRKD.POOL", True]),
        "APD": (bcd_cfg, ["APD"], []),
        "APD + BCD": (bcd_cfg, ["APD", _BD, _CD], []),
    }
    sets.update(extra)
    return sets


def _det_sets(prefix: str, arch: str) -> Dict[str, LossSet]:
    """Loss sets of a COCO detector pair from the ``configs/coco/<x>_<arch>_r50.yaml`` files."""
    bcd = f"{prefix}/bcd_{arch}_r50.yaml"
    sets: Dict[str, LossSet] = {
        "BCD (both)": (bcd, [_BD, _CD], []),
        "BCD boundary": (bcd, [_BD], []),
        "BCD context": (bcd, [_CD], []),
        "BCD context, chunked": (bcd, [_CD], ["KD.CONTEXT.IMPL", "chunked"]),
        "BCD context, no token cap": (bcd, [_CD], ["KD.CONTEXT.TOKEN_CAP", 0]),
        "BCD on FPN (both)": (f"{prefix}/bcd_fpn_{arch}_r50.yaml", None, []),
        "PKD": (f"{prefix}/pkd_{arch}_r50.yaml", None, []),
        "FGD": (f"{prefix}/fgd_{arch}_r50.yaml", None, []),
        "CWD": (f"{prefix}/cwd_{arch}_r50.yaml", None, []),
        "BCD + PKD": (f"{prefix}/bcd_pkd_{arch}_r50.yaml", None, []),
        "BCD + FGD": (f"{prefix}/bcd_fgd_{arch}_r50.yaml", None, []),
        "BCD + CWD": (f"{prefix}/bcd_cwd_{arch}_r50.yaml", None, []),
        "APD": (f"{prefix}/apd_{arch}_r50.yaml", None, []),
    }
    if arch == "gfl":
        sets["LD"] = (f"{prefix}/ld_gfl_r50.yaml", None, [])
        sets["LD + BCD"] = (f"{prefix}/ld_bcd_gfl_r50.yaml", None, [])
    return {k: v for k, v in sets.items() if os.path.exists(_c(v[0]))}


# name -> task, teacher config, input (H, W), loss sets, a one-line description
PAIRS: Dict[str, Dict[str, Any]] = {
    "pspnet_r101_r18": {
        "task": "seg", "teacher": "configs/voc/pspnet_r101.yaml", "size": (512, 512),
        "sets": _seg_sets(_VOC_PSP, {
            "BCD + CWD": ("configs/voc/bcd_cwd_pspnet_r18.yaml", None, []),
            "BCD + CIRKD + pixel KD": ("configs/voc/bcd_cirkd_pspnet_r18.yaml", None, []),
        }),
        "what": "PSPNet-R101 (OS 8) → PSPNet-R18 (OS 8), VOC heads (21 classes)",
    },
    "deeplabv3plus_r101_mobilenetv2": {
        "task": "seg", "teacher": "configs/voc/deeplabv3plus_r101.yaml", "size": (512, 512),
        "sets": _seg_sets(_VOC_DLV3P, {}),
        "what": "DeepLabV3+-R101 → DeepLabV3+-MobileNetV2 (OS 8), VOC heads",
    },
    "retinanet_r101_r50": {
        "task": "det", "teacher": "configs/coco/retinanet_r101.yaml", "size": (800, 1333),
        "sets": _det_sets("configs/coco", "retinanet"),
        "what": "RetinaNet R101-FPN → R50-FPN, COCO heads (80 classes)",
    },
    "gfl_r101_r50": {
        "task": "det", "teacher": "configs/coco/gfl_r101.yaml", "size": (800, 1333),
        "sets": _det_sets("configs/coco", "gfl"),
        "what": "GFL R101-FPN → R50-FPN, COCO heads",
    },
    "demo_pspnet": {
        "task": "seg", "teacher": "configs/demo/teacher_pspnet_r18.yaml", "size": (512, 512), "demo": True,
        "sets": _seg_sets("configs/demo/bcd_student_pspnet_r18_w025.yaml", {}),
        "what": "demo PSPNet R18×0.5 → R18×0.25",
    },
    "demo_retinanet": {
        "task": "det", "teacher": "configs/demo/det_retinanet_teacher.yaml", "size": (320, 320), "demo": True,
        "sets": {
            "BCD (both)": ("configs/demo/det_bcd_retinanet_student.yaml", [_BD, _CD], []),
            "BCD context": ("configs/demo/det_bcd_retinanet_student.yaml", [_CD], []),
            "PKD": ("configs/demo/det_bcd_retinanet_student.yaml", ["PKD"], []),
            "FGD": ("configs/demo/det_bcd_retinanet_student.yaml", ["FGD"], []),
            "CWD": ("configs/demo/det_bcd_retinanet_student.yaml", ["ChannelWiseDistillation"], []),
        },
        "what": "demo RetinaNet R18×0.5 → R18×0.25",
    },
    "demo_gfl": {
        "task": "det", "teacher": "configs/demo/det_gfl_teacher.yaml", "size": (320, 320), "demo": True,
        "sets": {"LD": ("configs/demo/det_ld_gfl_student.yaml", ["LD"], [])},
        "what": "demo GFL R18×0.5 → R18×0.25",
    },
}
PAIRS["cascade_mask_rcnn_r101_r50"] = {
    "task": "det", "teacher": "configs/coco/cascade_mask_rcnn_r101.yaml", "size": (800, 1333),
    "sets": _det_sets("configs/coco", "cascade_mask_rcnn"),
    "what": "Cascade Mask R-CNN R101-FPN → R50-FPN (box and mask heads), COCO heads",
}

DEFAULT_PAIRS = {"seg": ["pspnet_r101_r18", "deeplabv3plus_r101_mobilenetv2"],
                 "det": ["retinanet_r101_r50", "gfl_r101_r50", "cascade_mask_rcnn_r101_r50"]}


# ----------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block above the memory when it starts (bytes, ``.peak``).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the
    resident-set high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` (Linux ≥ 4.0);
    where that is not writable, ``ru_maxrss`` (then only the first block of a process is exact).
    """

    def __init__(self, device: str) -> None:
        self.cuda = str(device).startswith("cuda")

    @staticmethod
    def _status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.base = self._status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = max(0, self._status_kib("VmHWM") * 1024 - self.base)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- inputs
def seg_inputs(size: Tuple[int, int], batch: int, classes: int) -> List[Dict[str, Any]]:
    """Random uint8 images and labels in ``[0, classes)``, mapper-style dicts."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
             "sem_seg": torch.randint(0, classes, (h, w), generator=g), "height": h, "width": w}
            for _ in range(batch)]


def det_inputs(size: Tuple[int, int], batch: int, classes: int, boxes: int = 8,
               masks: bool = False) -> List[Dict[str, Any]]:
    """Random images with ``boxes`` random boxes each (``Instances`` as the detection mapper).

    ``masks``: also ``gt_masks`` (``boxes×H×W`` uint8, each box filled), as the mapper gives
    ``MODEL.MASK_ON`` models.
    """
    from bcd.structures import Instances

    g = torch.Generator().manual_seed(0)
    h, w = size
    out = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([w, h]) * 0.6
        wh = 16 + torch.rand(boxes, 2, generator=g) * torch.tensor([w, h]) * 0.35
        inst = Instances((h, w))
        inst.gt_boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1)
        inst.gt_classes = torch.randint(0, classes, (boxes,), generator=g)
        if masks:
            m = torch.zeros(boxes, h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.round().long().tolist()):
                m[i, y0:y1, x0:x1] = 1
            inst.gt_masks = m
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                    "instances": inst, "height": h, "width": w})
    return out


def _num_classes(cfg, task: str) -> int:
    """Label range of the random inputs: the segmentor's classes; 3 box classes for detectors."""
    return int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) if task == "seg" else 3


def _load_cfg(path: str, device: str, opts: Sequence[Any] = ()):
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(_c(path))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.BACKBONE.WEIGHTS = ""  # random init: the cost does not depend on the weights
    cfg.MODEL.DEVICE = device
    return cfg


def total_loss(loss_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The trainer's sum (``bcd.engine.train_loop.SimpleTrainer``): entries whose key starts with ``loss``."""
    from bcd.engine.train_loop import SimpleTrainer

    return SimpleTrainer._total_loss(loss_dict)


# ----------------------------------------------------------------------------------- measurement
def _flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def measure_pair(pair: str, loss_set: str, batch: int, warmup: int, iters: int, device: str,
                 teacher_weights: str, size: Optional[Tuple[int, int]] = None, clock: str = "wall",
                 threads: int = 0) -> Dict[str, Any]:
    """Interleaved KD step / student step / teacher forward of one (pair, loss set) (module doc).

    ``clock``: ``"wall"`` (``perf_counter``, synchronised on CUDA) or ``"cpu"`` (the process's
    CPU time: on a CPU shared with other jobs it counts the work, not the waiting; use it with
    ``threads=1``). Both are recorded; ``clock`` decides the reported medians and ratio.
    """
    from bcd.distill import build_model

    if threads > 0:
        torch.set_num_threads(threads)

    spec = PAIRS[pair]
    kd_cfg, losses, opts = spec["sets"][loss_set]
    size = tuple(size or spec["size"])
    torch.manual_seed(0)
    o = list(opts) + ["KD.TEACHER.WEIGHTS", teacher_weights, "KD.TEACHER.CONFIG_FILE", _c(spec["teacher"])]
    if losses is not None:
        o += ["KD.LOSSES", list(losses)]
    cfg = _load_cfg(kd_cfg, device, o)
    model = build_model(cfg)
    model.train()
    classes = _num_classes(cfg, spec["task"])
    if spec["task"] == "seg":
        inputs = seg_inputs(size, batch, classes)
    else:
        inputs = det_inputs(size, batch, classes, masks=bool(cfg.MODEL.MASK_ON))
    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: the step's arithmetic is done (momentum buffers, parameter update) but the weights stay
    # the first round's, so every round repeats one computation. With lr > 0, random weights can
    # make a loss diverge within a step or two (FGD on Cascade Mask R-CNN went NaN at the second
    # step at lr 1e-4), which changes data-dependent work such as the number of RoIs.
    opt = torch.optim.SGD(params, lr=SGD_LR, momentum=0.9)
    student, teacher = model.student, model.teacher

    def kd_step() -> None:
        loss = total_loss(model(inputs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

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
                flops[key] = _flops(fn)
            else:
                fn()
    wall: Dict[str, List[float]] = {k: [] for k, _ in phases}
    cpu: Dict[str, List[float]] = {k: [] for k, _ in phases}
    peaks: Dict[str, int] = {k: 0 for k, _ in phases}
    for _ in range(iters):
        for key, fn in phases:
            _sync(device)
            with PeakMemory(device) as mem:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                _sync(device)
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
        torch.save({"model": build_plain_model(_load_cfg(PAIRS[pair]["teacher"], "cpu")).state_dict()}, path)
    return path


# ----------------------------------------------------------------------------------- relation kernels
def measure_relation(impl: str, tokens: int, channels: int, batch: int, device: str, clock: str = "wall",
                     threads: int = 0) -> Dict[str, Any]:
    """BCD context relation KL (mean over rows, forward + backward) at ``tokens`` tokens.

    ``impl``: ``"fused"`` (``bcd.distill.functional.relation``), ``"chunked"`` (the reference,
    1024 rows per chunk with activation checkpointing) or ``"attention"``: not the loss but the
    yardstick, PyTorch's ``scaled_dot_product_attention(x_s, x_s, x_t)`` forward + backward on the
    same shapes (one head, the same ``N×N×C`` products); its ``loss`` is NaN.
    """
    from bcd.distill.functional.relation import self_relation_kl_rows
    from bcd.distill.losses.bcd_context import relation_kl

    if threads > 0:
        torch.set_num_threads(threads)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(batch, tokens, channels, generator=g).to(device).requires_grad_(True)
    xt = torch.randn(batch, tokens, channels, generator=g).to(device)
    valid = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    valid[:, -tokens // 10:] = False  # a padded border
    scale = 1.0 / math.sqrt(channels)

    def run() -> float:
        if impl == "fused":
            loss = (self_relation_kl_rows(xs, xt, scale, valid) * valid).sum() / valid.sum()
        elif impl == "attention":
            out = torch.nn.functional.scaled_dot_product_attention(xs[:, None], xs[:, None], xt[:, None], scale=scale)
            out.float().mean().backward()
            return float("nan")
        else:
            loss = relation_kl(xs, xt, valid, 1.0, chunk=1024, use_checkpoint=True)
        loss.backward()
        return float(loss.detach())

    value = run()  # warm-up
    # FlopCounterMode has no formula for the CPU flash-attention kernel: the yardstick is not counted
    flops = _flops(run) if impl != "attention" else None
    _sync(device)
    with PeakMemory(device) as mem:
        t0 = timer()
        run()
        _sync(device)
        t = timer() - t0
    return {"clock": clock, "impl": impl, "tokens": tokens, "channels": channels, "batch": batch, "time_s": t,
            "peak_bytes": mem.peak, "flops": flops, "loss": value}


def line_max_impls() -> Dict[str, Callable]:
    """The line-max formulations: ``bcd.distill.functional.line_max`` and the shifted-copy one of
    ``bcd_boundary``."""
    from bcd.distill.functional.line_max import LINE_MAX_IMPLS
    from bcd.distill.losses import bcd_boundary

    return dict(LINE_MAX_IMPLS, **{"shifted copies (bcd_boundary.line_max)": bcd_boundary.line_max})


def measure_line_max(impl: str, size: Tuple[int, int], batch: int, radius: int, reps: int,
                     device: str, clock: str = "wall", threads: int = 0) -> Dict[str, Any]:
    """BCD boundary line-max forward + backward on a ``batch×1×h×w`` logit map (median of ``reps``)."""
    if threads > 0:
        torch.set_num_threads(threads)
    timer = time.process_time if clock == "cpu" else time.perf_counter
    fn = line_max_impls()[impl]
    g = torch.Generator().manual_seed(0)
    e = torch.randn(batch, 1, *size, generator=g).to(device).requires_grad_(True)
    ts = []
    for r in range(reps + 1):
        _sync(device)
        t0 = timer()
        fn(e, radius, -1e4).square().sum().backward()
        _sync(device)
        if r:
            ts.append(timer() - t0)
    return {"clock": clock, "impl": impl, "size": list(size), "batch": batch, "radius": radius, "median_s": statistics.median(ts),
            "min_s": min(ts), "max_s": max(ts)}


# ----------------------------------------------------------------------------------- report
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
    lrs = [r.get("sgd_lr", _OLD_SGD_LR) for r in block["losses"].values() if "error" not in r]
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


# ----------------------------------------------------------------------------------- merging runs
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


# ----------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detection", action="store_true", help="detector pairs (default: segmentation)")
    ap.add_argument("--relation", action="store_true", help="only the relation-KL and line-max kernels")
    ap.add_argument("--list", action="store_true", help="print the pairs and loss sets and exit")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="combine benchmark_<task>.json files of earlier runs into one report in --output "
                         "(nothing is measured)")
    ap.add_argument("--pairs", nargs="*", default=None, help="pair names (see --list)")
    ap.add_argument("--losses", nargs="*", default=None, help="loss-set names (default: all of each pair)")
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="override the pair's input size")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--relation-tokens", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--relation-channels", type=int, default=512)
    ap.add_argument("--relation-batch", type=int, default=2)
    ap.add_argument("--relation-impls", nargs="*", default=["fused", "chunked", "attention"],
                    help="fused, chunked (the reference) and attention (SDPA on the same shapes: the speed yardstick)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time, or the process's CPU time (a CPU shared with other jobs; use --threads 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the measuring processes (0: torch's default)")
    ap.add_argument("--note", default="", help="free text stored with the machine (e.g. 'shared CPU')")
    ap.add_argument("--output", default="output/benchmark")
    args = ap.parse_args(argv)

    if args.list:
        for name, spec in PAIRS.items():
            print(f"{name} [{spec['task']}] {spec['what']}: " + ", ".join(spec["sets"]))
        return {}
    if args.merge:
        out = {}
        for name, (res, sources) in merge_results(args.merge).items():
            write_report(res, args.output, name, stamp_load=False)
            print(f"{name}: {len(sources)} runs -> {os.path.join(args.output, name)}.{{json,md}}")
            out[name] = res
        return out
    # glibc raises its mmap threshold after large frees and then keeps freed blocks resident, so a
    # warm-up would hide the next step's peak from VmHWM; a fixed threshold returns blocks of 4 MiB
    # and more (the measuring processes are spawned after this and inherit it). Not lower: every
    # mmap is page-faulted anew, which slows steps made of many small tensors.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * 2**20))
    if args.clock == "cpu" and str(args.device).startswith("cuda"):
        raise SystemExit("--clock cpu measures CPU work; use the wall clock on CUDA")
    timing = {"clock": args.clock, "threads": args.threads}
    res: Dict[str, Any] = {"machine": machine(args.device), "note": args.note, "batch": args.batch,
                           "warmup": args.warmup, "iters": args.iters, "clock": args.clock,
                           "threads": args.threads or torch.get_num_threads()}
    if args.relation:
        name = "benchmark_relation"
        res["relation"], res["line_max"] = [], []
        for n in args.relation_tokens:
            for impl in args.relation_impls:
                r = run_isolated(measure_relation, args.device, impl=impl, tokens=n,
                                 channels=args.relation_channels, batch=args.relation_batch, **timing)
                r.setdefault("impl", impl)
                res["relation"].append(r)
                write_report(res, args.output, name)
                print(json.dumps(r), flush=True)
        for size in ((64, 64), (100, 167)):
            for impl in line_max_impls():
                res["line_max"].append(run_isolated(measure_line_max, args.device, impl=impl, size=size,
                                                    batch=args.relation_batch, radius=5, reps=5, **timing))
                write_report(res, args.output, name)
        print(open(os.path.join(args.output, name + ".md")).read())
        return res

    task = "det" if args.detection else "seg"
    name = f"benchmark_{task}"
    pairs = args.pairs or DEFAULT_PAIRS[task]
    for p in pairs:
        if p not in PAIRS or PAIRS[p]["task"] != task:
            known = [k for k, v in PAIRS.items() if v["task"] == task]
            raise SystemExit(f"Unknown {task} pair '{p}'; choose from {known} (--detection for detectors)")
    tmp = tempfile.mkdtemp(prefix="bcd_bench_")
    res["pairs"] = {}
    for p in pairs:
        spec = PAIRS[p]
        sets = args.losses or list(spec["sets"])
        unknown = [s for s in sets if s not in spec["sets"]]
        if unknown:
            raise SystemExit(f"Unknown loss sets {unknown} for pair {p}; choose from {list(spec['sets'])}")
        size = tuple(args.size) if args.size else tuple(spec["size"])
        block = {"size": list(size), "losses": {}}
        res["pairs"][p] = block
        weights = save_teacher_weights(p, tmp)
        for s in sets:
            r = run_isolated(measure_pair, args.device, pair=p, loss_set=s, batch=args.batch, warmup=args.warmup,
                             iters=args.iters, teacher_weights=weights, size=size, **timing)
            block["losses"][s] = r
            write_report(res, args.output, name)
            if "error" in r:
                print(f"{p} / {s}: failed: {r['error']}", flush=True)
            else:
                print(f"{p} / {s}: KD {r['median_s']['kd']:.3f}s, student {r['median_s']['student']:.3f}s, "
                      f"teacher {r['median_s']['teacher']:.3f}s, ratio {r['ratio']:.2f} "
                      f"({r['ratio_spread'][0]:.2f}–{r['ratio_spread'][1]:.2f}), extra "
                      f"{r['extra_peak_bytes'] / 2**20:.0f} MiB, loss {r['loss_flops'] / 1e9:.1f} GFLOPs", flush=True)
    print(open(os.path.join(args.output, name + ".md")).read())
    return res


if __name__ == "__main__":
    main()
