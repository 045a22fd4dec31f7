"""Model analysis: parameters, FLOPs and activations per module, latency and throughput, and
the measuring helpers the tools share (device synchronisation, peak memory).

**FLOPs: one counting function, one unit.** :func:`flop_count` counts every FLOP a callable
runs (forward and backward) with ``torch.utils.flop_counter.FlopCounterMode``: matrix products,
convolutions and attention (torch's formulas; the fused attention kernels it has none for,
the CPU one among them, get torch's attention formula here); element-wise work, normalisation,
pooling, interpolation and NMS are not counted. The unit is the FLOP: **one multiply-add counts
2** (so ``Linear(10, 10)`` on one input is 200). fvcore and Detectron2's ``analyze_model`` count a fused multiply-add as one
"flop", i.e. half these numbers. ``tools/analyze_model.py``, ``kd_report``
(``bcd/distill/report.py``) and ``tools/benchmark.py`` all count through :func:`flop_count`.

**What is counted for a model** (:func:`analyze_model`, :func:`count_flops`): its test-time
forward, ``model(inputs)`` in eval mode on one ``3×H×W`` image (a synthetic scene of coloured
shapes): preprocessing, the network and post-processing, so a detector's RoI heads count as they
run on the proposals of that image. Modules with parameters that did not run on it (a
training-only head, a mask head that got no detection from random weights) are listed as not
counted; a module ran when its forward did or when an operator read its parameters (a parent
such as ``nn.MultiheadAttention`` uses its ``out_proj`` weights directly). Activations are the
elements of the outputs of convolution and linear layers whose forward ran (fvcore's
definition). Parameters: fvcore ``parameter_count``.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "FLOP_UNIT",
    "ExtractWrapper",
    "FlopCount",
    "ModelAnalysis",
    "PeakMemory",
    "analyze_model",
    "count_flops",
    "count_params",
    "flatten_tensors",
    "flop_count",
    "format_analysis",
    "measure_latency",
    "synchronize",
]

logger = logging.getLogger(__name__)

#: The unit of every FLOP count in ``bcd`` (stated in the tools' and the report's output).
FLOP_UNIT = "FLOPs (torch FlopCounterMode: a multiply-add counts 2; fvcore/Detectron2 count it as 1)"


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
    """``batch_size×3×H×W`` uint8 synthetic scenes: a smooth background and a few filled
    rectangles of distinct colours (objects for a detector's proposals; FLOPs of dense models do
    not depend on the values)."""
    h, w = int(size[0]), int(size[1])
    ys = torch.linspace(0, 1, h)[:, None]
    xs = torch.linspace(0, 1, w)[None, :]
    img = torch.stack([60 + 80 * ys + 0 * xs, 90 + 60 * xs + 0 * ys, 120 + 40 * (ys * xs)])
    for k, (y0, x0, y1, x1, colour) in enumerate([
        (0.10, 0.10, 0.45, 0.40, (220, 40, 40)), (0.50, 0.55, 0.90, 0.85, (40, 200, 60)),
        (0.20, 0.60, 0.40, 0.95, (30, 60, 220)), (0.60, 0.05, 0.95, 0.35, (230, 210, 40)),
    ]):
        img[:, int(y0 * h):max(int(y1 * h), int(y0 * h) + 1), int(x0 * w):max(int(x1 * w), int(x0 * w) + 1)] = (
            torch.tensor(colour, dtype=img.dtype)[:, None, None])
    img = img.round().clamp(0, 255).to(torch.uint8)
    return img[None].repeat(batch_size, 1, 1, 1).to(_device(model))


def count_params(model: nn.Module) -> int:
    """Number of parameters (fvcore ``parameter_count``; shared tensors once)."""
    from fvcore.nn import parameter_count

    return int(parameter_count(model)[""])


@dataclass(frozen=True)
class FlopCount:
    """What :func:`flop_count` counted (unit :data:`FLOP_UNIT`).

    Attributes:
        total: every FLOP of the call.
        by_module: FLOPs per module of ``root`` (names as in ``root.named_modules()``, ``""`` the
            root itself; a module's count includes its submodules'); empty without ``root``.
        by_operator: FLOPs per aten operator (``"aten.convolution"``, ``"aten.mm"`` ...).
    """

    total: int
    by_module: Dict[str, int]
    by_operator: Dict[str, int]


def _attention_flop_formulas() -> Dict[Any, Callable[..., int]]:
    """FlopCounterMode formulas for the fused attention kernels torch registers none for.

    ``F.scaled_dot_product_attention`` dispatches to a fused kernel; torch's FlopCounterMode
    counts its CUDA kernels (flash, memory-efficient, cuDNN) but not the CPU flash kernel
    (``aten._scaled_dot_product_flash_attention_for_cpu``, which transformers' SegFormer
    attention runs on CPU: counted 0 otherwise) nor the backend-overridable one. They get
    torch's own formulas (``torch.utils.flop_counter.sdpa_flop_count`` /
    ``sdpa_backward_flop_count``: the matrix products ``Q·Kᵀ`` and ``softmax(·)·V``, and their
    gradients; a multiply-add = 2), given ``Q: B×H×L×E``, ``K: B×H×S×E``, ``V: B×H×S×E_v``."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
        aten._scaled_dot_product_fused_attention_overrideable: forward,
        aten._scaled_dot_product_fused_attention_overrideable_backward: backward,
    }


def flop_count(fn: Callable[[], Any], root: Optional[nn.Module] = None) -> FlopCount:
    """The FLOPs of everything ``fn()`` runs, forward and backward (the module docstring: the
    one counting function of ``bcd``, ``torch.utils.flop_counter.FlopCounterMode``, a
    multiply-add = 2 FLOPs).

    Args:
        fn: the work to count, called once.
        root: the module ``fn`` calls, for the per-module counts (module names relative to it).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_attention_flop_formulas()) as fc:
        fn()
    counts = fc.get_flop_counts()
    by_operator: Dict[str, int] = {}
    for op, n in counts.get("Global", {}).items():
        by_operator[str(op)] = by_operator.get(str(op), 0) + int(n)
    by_module: Dict[str, int] = {}
    if root is not None:
        prefix = type(root).__name__
        for name, ops in counts.items():
            if name == prefix or name.startswith(prefix + "."):
                by_module[name[len(prefix) + 1:]] = sum(int(n) for n in ops.values())
    return FlopCount(int(fc.get_total_flops()), by_module, by_operator)


@torch.no_grad()
def count_flops(model: nn.Module, size: Tuple[int, int]) -> Optional[int]:
    """FLOPs of the model's test-time forward on one ``3×H×W`` image (:func:`analyze_model`);
    None (and a warning) when the model cannot run on it."""
    try:
        return int(analyze_model(model, size, activations=False).flops)
    except Exception as e:  # a model that cannot run at this size: report, don't crash
        logger.warning("FLOP count failed for %s: %s", type(model).__name__, e)
        return None


class ModelAnalysis:
    """Result of :func:`analyze_model`.

    Attributes:
        params: total parameters.
        flops: total FLOPs of one image (unit :data:`FLOP_UNIT`).
        activations: total activations of one image (None when not counted).
        by_module: ``{module name: {"params", "flops", "activations"}}`` for every module of the
            model ("" is the whole model), names as in ``model.named_modules()``.
        by_operator: ``{operator: flops}`` (aten op names: ``aten.convolution``, ``aten.addmm``, ...).
        not_run: ``[(module name, parameters)]``: the outermost modules with parameters that did
            not run on the image, or ran on nothing (empty outputs), so are not counted
            (training-only heads; data-dependent heads that got no input).
        size: ``(H, W)`` of the input.
    """

    def __init__(self, params: int, flops: float, activations: Optional[float],
                 by_module: Dict[str, Dict[str, float]], by_operator: Dict[str, float],
                 not_run: List[Tuple[str, int]], size: Tuple[int, int]) -> None:
        self.params, self.flops, self.activations = params, flops, activations
        self.by_module, self.by_operator, self.not_run = by_module, by_operator, not_run
        self.size = size

    def to_dict(self) -> Dict[str, Any]:
        return {"params": self.params, "flops": self.flops, "flop_unit": FLOP_UNIT,
                "activations": self.activations, "input_size": list(self.size),
                "by_operator": self.by_operator,
                "not_run": [{"module": n, "params": p} for n, p in self.not_run],
                "by_module": self.by_module}


_ACTIVATION_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class _ParameterUse(TorchDispatchMode):
    """Records the modules whose parameters an operator read while producing a non-empty
    output (a convolution on an empty batch, a mask head given no detection, is not a use).

    Args:
        owners: ``{id(parameter): name of the module that holds it}``.
    """

    def __init__(self, owners: Dict[int, str]) -> None:
        super().__init__()
        self.owners = owners
        self.used: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        if not results or any(t.numel() for t in results):
            for t in tree_flatten((args, kwargs))[0]:
                name = self.owners.get(id(t)) if isinstance(t, Tensor) else None
                if name is not None:
                    self.used.add(name)
        return out


@torch.no_grad()
def analyze_model(model: nn.Module, size: Tuple[int, int], activations: bool = True) -> ModelAnalysis:
    """Parameters, FLOPs and activations of the model's test-time forward (``model(inputs)`` in
    eval mode) on one ``3×H×W`` image, in total and per module, and the modules that did not
    run (the module docstring). The model's mode is restored.

    Raises:
        whatever the model's forward raises on that input.
    """
    from fvcore.nn import parameter_count

    was = model.training
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    ran: set = set()
    acts: Dict[str, int] = {}

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        name = names.get(module)
        tensors = flatten_tensors(out)
        if name is None or (tensors and not any(t.numel() for t in tensors)):
            return  # a call on nothing (a mask head given no detection) is not a run
        ran.add(name)
        if activations and isinstance(module, _ACTIVATION_TYPES):
            acts[name] = acts.get(name, 0) + sum(t.numel() for t in flatten_tensors(out))

    handles = [m.register_forward_hook(hook) for m in names]
    # a module whose parameters a parent reads directly (nn.MultiheadAttention's out_proj,
    # an nn.Embedding's weight) runs without its forward: it ran when an op read them
    owners = {id(p): n for n, m in model.named_modules() for p in m.parameters(recurse=False)}
    uses = _ParameterUse(owners)
    try:
        image = _probe(model, size)[0]
        inputs = [{"image": image, "height": int(size[0]), "width": int(size[1])}]

        def run() -> None:
            with uses:
                model(inputs)

        fc = flop_count(run, root=model)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    params_by = parameter_count(model)
    flops_by: Dict[str, int] = {}
    # deepest first: a container that is never called itself (ModuleList) sums its children
    for name, module in sorted(model.named_modules(), key=lambda t: -t[0].count(".") - bool(t[0])):
        flops_by[name] = fc.by_module[name] if name in fc.by_module else sum(
            flops_by.get(f"{name}.{c}" if name else c, 0) for c, _ in module.named_children())
    by_module: Dict[str, Dict[str, float]] = {}
    for name, _ in model.named_modules():
        inside = [k for k in acts if not name or k == name or k.startswith(name + ".")]
        by_module[name] = {
            "params": int(params_by.get(name, 0)),
            "flops": float(flops_by.get(name, 0)),
            "activations": float(sum(acts[k] for k in inside)) if activations else None,
        }
    ran.update(uses.used)
    # a module ran when its forward or one of its submodules' ran
    for name in list(ran):
        parts = name.split(".")
        ran.update(".".join(parts[:i]) for i in range(len(parts)))
    not_run = [(n, int(params_by.get(n, 0))) for n, _ in model.named_modules()
               if n and n not in ran and params_by.get(n, 0)
               and ".".join(n.split(".")[:-1]) in ran]
    return ModelAnalysis(
        params=int(params_by[""]),
        flops=float(fc.total),
        activations=float(sum(acts.values())) if activations else None,
        by_module=by_module,
        by_operator={k: float(v) for k, v in fc.by_operator.items()},
        not_run=not_run,
        size=(int(size[0]), int(size[1])),
    )


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
    lines += ["", f"Unit: {FLOP_UNIT}; counted: matrix products, convolutions, attention."]
    if a.not_run:
        lines.append("Not counted (did not run on this input: training-only, or data-dependent and "
                     "given nothing to do): " + ", ".join(
                         f"{n} ({_fmt_count(p)} params)" for n, p in a.not_run))
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
