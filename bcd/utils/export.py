"""Export the deployable network of a meta-architecture to ONNX and TorchScript, and check the
exported files against PyTorch on given images.

What is exported (:class:`DeployNetwork`): ``preprocess`` + ``extract`` of the model (see
``docs/internals.md``) on a batch of RGB images, without post-processing:

* input ``images``: ``B×3×H×W`` float32, RGB, 0..255 (normalisation by ``MODEL.PIXEL_MEAN/STD``
  and padding to the size divisibility happen inside the exported graph);
* outputs: every top-level entry of ``extract`` except the intermediate ``features`` and the
  input-independent ``anchors`` / ``strides``: semantic / object segmentation ``logits``
  (``B×K×h×w`` at the head's stride); RetinaNet ``cls_logits_<l>`` / ``bbox_reg_<l>``, GFL
  ``cls_logits_<l>`` / ``bbox_dist_<l>`` per FPN level ``l``; (Cascade) Mask R-CNN the RPN's
  ``objectness_<l>`` / ``anchor_deltas_<l>`` (its RoI heads work on data-dependent proposals and
  are not part of the graph). Decoding, NMS and resizing to the image size stay in Python
  (``model.inference`` / the detectors' ``postprocess``).

Input sizes. The network computes its padding and its adaptive pooling (PSPNet) from the input's
shape with tensor operations, so a trace records them as shape computations, not as the sizes
of the example:

* ONNX: ``export_onnx(net, path, dynamic=False)`` fixes the input at ``1×3×H×W`` (onnxruntime
  refuses any other shape with an error naming the dimension); ``dynamic=True`` declares batch,
  height and width as dynamic axes (``["batch", 3, "height", "width"]``).
* TorchScript: ``export_torchscript(net, path, check_sizes)`` traces at ``1×3×H×W`` and runs the
  trace at every ``check_sizes`` entry (another batch and size) against PyTorch: when the trace
  agrees it is saved as it is (shape-generic); when it does not (code that tracing bakes in),
  the file saved is a scripted guard around it that raises an error naming the traced size for
  any other input shape (``torch.jit.Error``: ``builtins.RuntimeError: model.ts was traced at
  1x3xHxW and is only valid at that shape; got ...``), instead of returning wrong numbers.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DeployNetwork",
    "MatmulAdaptiveAvgPool2d",
    "compare_outputs",
    "export_onnx",
    "export_torchscript",
    "load_images",
    "onnx_input_shape",
    "run_onnx",
    "torch_outputs",
]

logger = logging.getLogger(__name__)

# extract() entries that are not network outputs: intermediate features (large, and the
# distillation's business) and anchors / strides (functions of the input size only).
_SKIPPED = ("features", "anchors", "strides")


class DeployNetwork(nn.Module):
    """``images (B×3×H×W float, RGB 0..255) -> tuple of output tensors`` of a meta-architecture:
    ``preprocess`` + ``extract``, the entries of :attr:`output_names` in that order.

    Args:
        model: a meta-architecture in eval mode (``deploy_model()`` of a Distiller).
        size: ``(H, W)`` of the images the network is traced with.
    """

    def __init__(self, model: nn.Module, size: Tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.size = (int(size[0]), int(size[1]))
        self.output_names: List[str] = []
        self.divisibility = max(1, int(getattr(model, "size_divisibility", 1)))
        with torch.no_grad():
            probe = torch.rand(1, 3, *self.size, device=_device(model)) * 255
            ref = model.preprocess([{"image": probe[0], "height": self.size[0], "width": self.size[1]}])
            self._template = ref
            self.padded = (int(ref.tensor.shape[-2]), int(ref.tensor.shape[-1]))
            self._own = all(hasattr(model, a) for a in ("pixel_mean", "pixel_std"))
            if self._own and not torch.allclose(self._preprocess(probe).tensor, ref.tensor, atol=1e-5):
                self._own = False  # the model's preprocess does more: trace it as it is
            out = self._extract(probe)
        for k, v in out.items():
            if k in _SKIPPED:
                continue
            if isinstance(v, Tensor):
                self.output_names.append(k)
            elif isinstance(v, (list, tuple)) and v and all(isinstance(t, Tensor) for t in v):
                self.output_names += [f"{k}_{i}" for i in range(len(v))]
        if not self.output_names:
            raise ValueError(
                f"{type(model).__name__}.extract returns no output tensor besides "
                f"{_SKIPPED}: nothing to export (keys: {list(out)})"
            )

    def _preprocess(self, images: Tensor):
        """``model.preprocess`` on a batch tensor, written with shape arithmetic only (no Python
        ints taken from the input), so a trace follows the input's batch and size: normalise,
        then zero-pad bottom / right to a multiple of the size divisibility. Checked against
        ``model.preprocess`` when the network is built."""
        x = (images.float() - self.model.pixel_mean) / self.model.pixel_std
        d = self.divisibility
        x = F.pad(x, (0, (-images.shape[-1]) % d, 0, (-images.shape[-2]) % d))
        return dataclasses.replace(
            self._template, tensor=x, image_sizes=[tuple(images.shape[-2:])],
            inputs=[{"height": images.shape[-2], "width": images.shape[-1]}],
        )

    def _extract(self, images: Tensor) -> Dict[str, Any]:
        if getattr(self, "_own", False):
            batch = self._preprocess(images)
        else:
            h, w = int(images.shape[-2]), int(images.shape[-1])
            batch = self.model.preprocess([{"image": im, "height": h, "width": w} for im in images])
        out = self.model.extract(batch)
        if not isinstance(out, dict):
            raise TypeError(f"{type(self.model).__name__}.extract must return a dict; got {type(out).__name__}")
        return out

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        out = self._extract(images)
        flat: List[Tensor] = []
        for k, v in out.items():
            if k in _SKIPPED:
                continue
            if isinstance(v, Tensor):
                flat.append(v)
            elif isinstance(v, (list, tuple)) and v and all(isinstance(t, Tensor) for t in v):
                flat.extend(v)
        return tuple(flat)


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


class MatmulAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, ``y = A_h · x · A_wᵀ``, with
    ``A[i, floor(i·L/n) : ceil((i+1)·L/n)] = 1 / bin length`` (PyTorch's definition of the
    adaptive bins), the matrices built from the input's shape with tensor operations. Exact up
    to float rounding; the ONNX exporter cannot export adaptive pooling whose output size does not
    divide the input size (PSPNet's bins 3 and 6), nor any adaptive pooling of a dynamic size,
    matrix products of a traced shape it can."""

    def __init__(self, output_size) -> None:
        super().__init__()
        o = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        self.output_size = tuple(o)

    @staticmethod
    def _matrix(n: int, length, like: Tensor) -> Tensor:
        """``n × length`` averaging matrix; ``length`` may be a traced size."""
        j = torch.arange(length, device=like.device)
        i = torch.arange(n, device=like.device)
        start = torch.div(i * length, n, rounding_mode="floor")
        end = -torch.div(-(i + 1) * length, n, rounding_mode="floor")
        inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        oh = self.output_size[0] if self.output_size[0] is not None else h
        ow = self.output_size[1] if self.output_size[1] is not None else w
        return torch.matmul(torch.matmul(self._matrix(oh, h, x), x), self._matrix(ow, w, x).t())


def _matmul_pools(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` with every ``nn.AdaptiveAvgPool2d`` replaced by
    :class:`MatmulAdaptiveAvgPool2d` (for the ONNX exporter; the original is left as it is)."""
    import copy

    net = copy.deepcopy(net)
    for name, m in list(net.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(m, child_name, MatmulAdaptiveAvgPool2d(child.output_size))
    return net


def export_onnx(net: DeployNetwork, path: str, opset: int = 17, dynamic: bool = False) -> str:
    """Write ``net`` to ``path`` as ONNX (input ``images``, outputs ``net.output_names``) with
    torch's TorchScript-based exporter (``dynamo=False``: it needs no onnxscript and traces
    exactly what :class:`DeployNetwork` runs), adaptive average pooling written as matrix products
    (:class:`MatmulAdaptiveAvgPool2d`). The input is ``1×3×H×W`` at ``net.size``, or with
    ``dynamic`` ``batch×3×height×width`` (outputs: dynamic batch and spatial axes). Checked with
    ``onnx.checker``. Returns ``path``."""
    import onnx

    example = torch.zeros(1, 3, *net.size, device=_device(net.model))
    axes = None
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        for n in net.output_names:
            axes[n] = {0: "batch", 2: f"{n}_height", 3: f"{n}_width"}
    with torch.no_grad():
        torch.onnx.export(
            _matmul_pools(net), (example,), path, dynamo=False, opset_version=opset, input_names=["images"],
            output_names=list(net.output_names), do_constant_folding=True, dynamic_axes=axes,
        )
    onnx.checker.check_model(onnx.load(path))
    return path


def onnx_input_shape(path: str) -> List[Any]:
    """The declared shape of the file's ``images`` input: ints, or names for dynamic axes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return list(sess.get_inputs()[0].shape)


def run_onnx(path: str, images: Tensor) -> List[Tensor]:
    """Run an exported file with onnxruntime (CPU) on ``images`` (``B×3×H×W`` float32): the whole
    batch at once when the file's batch axis is dynamic, else one image at a time (outputs
    concatenated along the batch axis). onnxruntime's own error for a shape the file does not
    take is raised as it is."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = images.detach().cpu().float().numpy()
    if not isinstance(sess.get_inputs()[0].shape[0], int):
        return [torch.from_numpy(o) for o in sess.run(None, {"images": x})]
    per_image = [sess.run(None, {"images": im[None]}) for im in x]
    return [torch.cat([torch.from_numpy(o[i]) for o in per_image]) for i in range(len(per_image[0]))]


class _FixedSizeGuard(nn.Module):
    """A TorchScript trace that is only right at its traced size, with that size checked: any
    other input shape raises an error (``RuntimeError`` inside TorchScript, ``torch.jit.Error``
    outside) naming both shapes and how to export another size (scripted, so the check is in the
    saved file)."""

    def __init__(self, traced: nn.Module, size: Tuple[int, int]) -> None:
        super().__init__()
        self.traced = traced
        self.height = int(size[0])
        self.width = int(size[1])

    def forward(self, images: Tensor):  # returns the traced tuple (its type is inferred)
        if images.dim() != 4 or images.shape[0] != 1 or images.shape[2] != self.height \
                or images.shape[3] != self.width:
            raise RuntimeError(
                "model.ts was traced at 1x3x" + str(self.height) + "x" + str(self.width)
                + " and is only valid at that shape; got " + str(images.shape)
                + ". Export again with tools/export.py --size H W for another size."
            )
        return self.traced(images)


def export_torchscript(net: DeployNetwork, path: str,
                       check_sizes: Sequence[Tuple[int, int, int]] = ()) -> Dict[str, Any]:
    """``torch.jit.trace`` of ``net`` at ``1×3×H×W`` (``net.size``), saved to ``path``.

    The trace is run at each ``(batch, height, width)`` of ``check_sizes`` on random images and
    compared with PyTorch (``torch.allclose`` at atol 1e-4, rtol 1e-3). When every one agrees
    the trace is saved as it is; otherwise the saved file is the scripted
    :class:`_FixedSizeGuard` around it, which refuses every shape but the traced one.

    Returns:
        ``{"file", "traced_at": [1, 3, H, W], "shape_generic": bool, "checked_at": [[B, 3, h, w],
        ...], "mismatch": reason or None}``.

    Raises:
        what tracing raises for data-dependent control flow.
    """
    dev = _device(net.model)
    example = torch.zeros(1, 3, *net.size, device=dev)
    with torch.no_grad():
        traced = torch.jit.trace(net, (example,), check_trace=False)
    mismatch = None
    g = torch.Generator().manual_seed(0)
    for b, h, w in check_sizes:
        x = (torch.rand(b, 3, h, w, generator=g) * 255).to(dev)
        with torch.no_grad():
            ref = [t.cpu() for t in net(x)]
            try:
                got = [t.cpu() for t in traced(x)]
            except (RuntimeError, torch.jit.Error) as e:  # a baked-in size the trace cannot run with
                mismatch = f"{b}x3x{h}x{w}: {type(e).__name__}: {str(e).splitlines()[0]}"
                break
        bad = [n for n, r, o in zip(net.output_names, ref, got)
               if r.shape != o.shape or not torch.allclose(o, r, atol=1e-4, rtol=1e-3)]
        if bad:
            mismatch = f"{b}x3x{h}x{w}: outputs {bad} differ from PyTorch"
            break
    if mismatch is None:
        traced.save(path)
    else:
        logger.warning(f"TorchScript trace is not shape-generic ({mismatch}): saving it with a guard "
                       f"that refuses every input shape but 1x3x{net.size[0]}x{net.size[1]}")
        torch.jit.script(_FixedSizeGuard(traced, net.size)).save(path)
    return {"file": path, "traced_at": [1, 3, *net.size], "shape_generic": mismatch is None,
            "checked_at": [[b, 3, h, w] for b, h, w in check_sizes], "mismatch": mismatch}


def compare_outputs(
    names: Sequence[str], reference: Sequence[Tensor], other: Sequence[Tensor],
    atol: float = 1e-4, rtol: float = 1e-3,
) -> Dict[str, Any]:
    """Per output: the maximum absolute difference, and whether every element satisfies
    ``|other − reference| ≤ atol + rtol·|reference|`` (``torch.allclose``'s rule).

    Returns:
        ``{"max_abs_diff": float (over all outputs), "ok": bool, "atol", "rtol",
        "outputs": {name: {"max_abs_diff", "max_abs_ref", "shape", "ok"}}}``.

    Raises:
        ValueError: when the numbers or shapes of the outputs differ (naming the output).
    """
    if len(reference) != len(other) or len(reference) != len(names):
        raise ValueError(f"{len(names)} output names, {len(reference)} reference and {len(other)} outputs")
    per: Dict[str, Any] = {}
    for n, r, o in zip(names, reference, other):
        r, o = r.detach().float().cpu(), o.detach().float().cpu()
        if r.shape != o.shape:
            raise ValueError(f"output '{n}': shape {tuple(o.shape)} vs PyTorch {tuple(r.shape)}")
        per[n] = {
            "max_abs_diff": float((o - r).abs().max()) if r.numel() else 0.0,
            "max_abs_ref": float(r.abs().max()) if r.numel() else 0.0,
            "shape": list(r.shape),
            "ok": bool(torch.allclose(o, r, atol=atol, rtol=rtol)),
        }
    return {
        "max_abs_diff": max((v["max_abs_diff"] for v in per.values()), default=0.0),
        "ok": all(v["ok"] for v in per.values()), "atol": atol, "rtol": rtol, "outputs": per,
    }


def torch_outputs(net: DeployNetwork, images: Tensor) -> List[Tensor]:
    """The PyTorch outputs of ``net`` on ``images`` (no grad), on the CPU."""
    with torch.no_grad():
        return [t.cpu() for t in net(images.to(_device(net.model)))]



def load_images(paths: Sequence[str], size: Tuple[int, int]) -> Tensor:
    """Read RGB images and resize them (bilinear, PIL) to ``size`` = ``(H, W)``:
    ``N×3×H×W`` float32 0..255. Raises ``FileNotFoundError`` / ``ValueError`` naming the file."""
    import numpy as np
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB").resize((int(size[1]), int(size[0])), Image.BILINEAR)
                out.append(torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1))
        except FileNotFoundError:
            raise FileNotFoundError(f"Image not found: {p}") from None
        except OSError as e:
            raise ValueError(f"Cannot read image {p}: {e}") from e
    if not out:
        raise ValueError("No images given")
    return torch.stack(out)

