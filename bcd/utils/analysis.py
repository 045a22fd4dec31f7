"""Model analysis: parameters, FLOPs and activations per module (fvcore), latency and throughput.

Every function takes a meta-architecture with Detectron2's interface (``preprocess`` +
``extract``, ``docs/internals.md``) and runs it on ``3×H×W`` images of a given size: what the
network costs for that input, without losses or post-processing (``extract``); latency is also
measured end to end (``model(inputs)`` in eval mode, post-processing included).

Conventions (fvcore's, as in Detectron2's ``tools/analyze_model.py``): one fused multiply-add
counts as one FLOP; activations are the elements of the outputs of convolutions and linear
layers. ``tools/analyze_model.py`` prints these numbers for a config; ``kd_report``
(``bcd/distill/report.py``) uses :func:`count_params` and :func:`count_flops` from here.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "ExtractWrapper",
    "ModelAnalysis",
    "PeakMemory",
    "analyze_model",
    "count_flops",
    "count_params",
    "flatten_tensors",
    "format_analysis",
    "measure_latency",
    "synchronize",
]

logger = logging.getLogger(__name__)


def flatten_tensors(obj: Any) -> Tuple[Tensor, ...]:
    """Every tensor in a nested dict / list / tuple, in order (dict keys in insertion order).

    Tracers (fvcore, ``torch.jit.trace``, ONNX export) need tensor tuples as outputs; the
    meta-architectures' ``extract`` returns nested dicts (``features``) and per-level lists."""
    if isinstance(obj, Tensor):
        return (obj,)
    if isinstance(obj, dict):
        return tuple(t for v in obj.values() for t in flatten_tensors(v))
    if isinstance(obj, (list, tuple)):
        return tuple(t for v in obj for t in flatten_tensors(v))
    return ()


class ExtractWrapper(nn.Module):
    """Tensor-in / tensor-out view of a meta-architecture: ``preprocess`` + ``extract``.

    ``forward(images)``: ``images`` is ``B×3×H×W`` (RGB, 0..255, any float or uint8 dtype, as
    the mappers give); the model normalises and pads it. Returns the tensors of ``extract``'s
    output flattened by :func:`flatten_tensors`, or only the entries named by ``keys``.

    Args:
        model: a meta-architecture (``preprocess`` / ``extract``).
        keys: top-level keys of ``extract``'s dict to keep (e.g. ``("logits",)``); None keeps all.
    """

    def __init__(self, model: nn.Module, keys: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.model = model
        self.keys = tuple(keys) if keys is not None else None

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        h, w = int(images.shape[-2]), int(images.shape[-1])
        batch = self.model.preprocess([{"image": im, "height": h, "width": w} for im in images])
        out = self.model.extract(batch)
        if self.keys is not None and isinstance(out, dict):
            out = {k: out[k] for k in self.keys}
        return flatten_tensors(out)


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _probe(model: nn.Module, size: Tuple[int, int], batch_size: int = 1) -> Tensor:
    # a mid-grey image: FLOPs do not depend on the values; data-dependent code (NMS) sees no boxes
    return torch.full((batch_size, 3, int(size[0]), int(size[1])), 128, dtype=torch.uint8,
                      device=_device(model))


def count_params(model: nn.Module) -> int:
    """Number of parameters (fvcore ``parameter_count``; shared tensors once)."""
    from fvcore.nn import parameter_count

    return int(parameter_count(model)[""])


@torch.no_grad()
def count_flops(model: nn.Module, size: Tuple[int, int]) -> Optional[float]:
    """FLOPs (fvcore; multiply-adds) of ``extract`` on one ``3×H×W`` image; None (and a warning)
    when the model cannot be traced."""
    try:
        return float(analyze_model(model, size, activations=False).flops)
    except Exception as e:  # tracing can fail on data-dependent code: report, don't crash
        logger.warning("FLOP count failed for %s: %s", type(model).__name__, e)
        return None


class ModelAnalysis:
    """Result of :func:`analyze_model`.

    Attributes:
        params: total parameters.
        flops: total FLOPs (multiply-adds) of one image.
        activations: total activations of one image (None when not counted).
        by_module: ``{module name: {"params", "flops", "activations"}}`` for every module of the
            model ("" is the whole model), names as in ``model.named_modules()``.
        by_operator: ``{operator: flops}`` (fvcore's op names: ``conv``, ``linear``, ...).
        unsupported: ``{operator: count}`` of traced ops fvcore has no formula for (not counted).
        size: ``(H, W)`` of the input.
    """

    def __init__(self, params: int, flops: float, activations: Optional[float],
                 by_module: Dict[str, Dict[str, float]], by_operator: Dict[str, float],
                 unsupported: Dict[str, int], size: Tuple[int, int]) -> None:
        self.params, self.flops, self.activations = params, flops, activations
        self.by_module, self.by_operator, self.unsupported = by_module, by_operator, unsupported
        self.size = size

    def to_dict(self) -> Dict[str, Any]:
        return {"params": self.params, "flops": self.flops, "activations": self.activations,
                "input_size": list(self.size), "by_operator": self.by_operator,
                "unsupported_ops": self.unsupported, "by_module": self.by_module}


@torch.no_grad()
def analyze_model(model: nn.Module, size: Tuple[int, int], activations: bool = True) -> ModelAnalysis:
    """Parameters, FLOPs and activations of ``model.extract`` on one ``3×H×W`` image, in total
    and per module (fvcore ``FlopCountAnalysis`` / ``ActivationCountAnalysis`` /
    ``parameter_count``), in eval mode (the model's mode is restored).

    Raises:
        whatever tracing raises for a model that cannot be traced.
    """
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis, parameter_count

    was = model.training
    model.eval()
    try:
        wrapper = ExtractWrapper(model)
        inputs = (_probe(model, size),)
        fca = FlopCountAnalysis(wrapper, inputs)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops_by = fca.by_module()
        aca = None
        if activations:
            aca = ActivationCountAnalysis(wrapper, inputs)
            aca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        acts_by = aca.by_module() if aca is not None else {}
        params_by = parameter_count(model)
        by_module: Dict[str, Dict[str, float]] = {}
        for name, _ in model.named_modules():
            key = f"model.{name}" if name else "model"  # names inside the wrapper
            by_module[name] = {
                "params": int(params_by.get(name, 0)),
                "flops": float(flops_by.get(key, 0)),
                "activations": float(acts_by.get(key, 0)) if aca is not None else None,
            }
        return ModelAnalysis(
            params=int(params_by[""]),
            flops=float(fca.total()),
            activations=float(aca.total()) if aca is not None else None,
            by_module=by_module,
            by_operator={k: float(v) for k, v in fca.by_operator().items()},
            unsupported={k: int(v) for k, v in fca.unsupported_ops().items()},
            size=(int(size[0]), int(size[1])),
        )
    finally:
        model.train(was)


def _fmt_count(v: Optional[float]) -> str:
    if v is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.3f}{unit}"
    return f"{v:.0f}"


def format_analysis(a: ModelAnalysis, max_depth: int = 2) -> str:
    """A table (markdown pipes) of params / FLOPs / activations per module down to ``max_depth``
    dots (``backbone.res2`` is depth 2), the model first, modules with none of them left out."""
    rows = [("model", a.params, a.flops, a.activations)]
    for name, v in a.by_module.items():
        if not name or name.count(".") + 1 > max_depth:
            continue
        if not (v["params"] or v["flops"] or v["activations"]):
            continue
        rows.append(("  " * name.count(".") + name, v["params"], v["flops"], v["activations"]))
    lines = ["| module | params | FLOPs | activations |", "|---|---|---|---|"]
    lines += [f"| {n} | {_fmt_count(p)} | {_fmt_count(f)} | {_fmt_count(act)} |" for n, p, f, act in rows]
    if a.unsupported:
        lines.append("")
        lines.append("Not counted (no fvcore formula): " + ", ".join(
            f"{k} ×{v}" for k, v in sorted(a.unsupported.items())))
    return "\n".join(lines) + "\n"


def synchronize(device: Any) -> None:
    """Wait for the kernels queued on ``device`` (a ``torch.device`` or its name): CUDA runs
    them asynchronously, so a clock read without this measures the launch, not the work. A
    no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a ``with`` block above the memory when it starts (bytes, ``.peak``).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the
    resident-set high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` (Linux ≥ 4.0);
    where that is not writable, the mark is never reset (then only the first block of a process
    is exact).
    """

    def __init__(self, device: Any) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.peak = 0

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

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = max(0, self._status_kib("VmHWM") * 1024 - self.base)


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    size: Tuple[int, int],
    batch_size: int = 1,
    warmup: int = 3,
    iters: int = 10,
    mode: str = "inference",
) -> Dict[str, Any]:
    """Wall-clock time of the model on ``batch_size`` images of ``3×H×W`` on its own device.

    ``warmup`` untimed runs (allocator, cuDNN autotuning, lazy init), then ``iters`` timed ones,
    each bracketed by ``torch.cuda.synchronize`` on CUDA (kernels run asynchronously).

    Args:
        mode: "inference" = ``model(inputs)`` in eval mode, post-processing included (resizing
            to the input size, detectors' decoding and NMS); "network" = ``extract`` only.

    Returns:
        ``{"median_ms", "mean_ms", "min_ms", "max_ms"`` (per batch), ``"images_per_s"``
        (``batch_size / median``), ``"batch_size", "size", "device", "mode", "warmup", "iters"}``.
    """
    if mode not in ("inference", "network"):
        raise ValueError(f"mode must be 'inference' or 'network'; got '{mode}'")
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0; got {iters}, {warmup}")
    was = model.training
    model.eval()
    device = _device(model)
    images = _probe(model, size, batch_size)
    wrapper = ExtractWrapper(model)
    inputs: List[Dict[str, Any]] = [
        {"image": im, "height": int(size[0]), "width": int(size[1])} for im in images
    ]
    run = (lambda: model(inputs)) if mode == "inference" else (lambda: wrapper(images))
    try:
        for _ in range(warmup):
            run()
        synchronize(device)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run()
            synchronize(device)
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was)
    med = statistics.median(times)
    return {
        "median_ms": med, "mean_ms": statistics.fmean(times), "min_ms": min(times),
        "max_ms": max(times), "images_per_s": batch_size / (med / 1000.0),
        "batch_size": batch_size, "size": [int(size[0]), int(size[1])], "device": str(device),
        "mode": mode, "warmup": warmup, "iters": iters,
    }
