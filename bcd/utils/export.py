"""Export the deployable network of a meta-architecture to ONNX and TorchScript, and check the
exported files against PyTorch on given images.

What is exported (:class:`DeployNetwork`): ``preprocess`` + ``extract`` of the model (see
``docs/internals.md``) on a fixed-size batch of RGB images, without post-processing:

* input ``images``: ``B×3×H×W`` float32, RGB, 0..255 (normalisation by ``MODEL.PIXEL_MEAN/STD``
  and padding to the size divisibility happen inside the exported graph);
* outputs: every top-level entry of ``extract`` except the intermediate ``features`` and the
  input-independent ``anchors`` / ``strides``: semantic / object segmentation ``logits``
  (``B×K×h×w`` at the head's stride); RetinaNet ``cls_logits_<l>`` / ``bbox_reg_<l>``, GFL
  ``cls_logits_<l>`` / ``bbox_dist_<l>`` per FPN level ``l``; (Cascade) Mask R-CNN the RPN's
  ``objectness_<l>`` / ``anchor_deltas_<l>`` (its RoI heads work on data-dependent proposals and
  are not part of the graph). Decoding, NMS and resizing to the image size stay in Python
  (``model.inference`` / the detectors' ``postprocess``).

The graph is traced at one input size (``1×3×H×W``; padding and pooling sizes are computed in
Python when tracing), so the exported ONNX file takes exactly that shape (run a batch image by
image, as :func:`run_onnx` does); the TorchScript file is traced the same way.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "DeployNetwork",
    "StaticAdaptiveAvgPool2d",
    "compare_outputs",
    "export_onnx",
    "export_torchscript",
    "load_images",
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
        with torch.no_grad():
            probe = torch.rand(1, 3, *self.size, device=_device(model)) * 255
            ref = model.preprocess([{"image": probe[0], "height": self.size[0], "width": self.size[1]}])
            self._template = ref
            self.padded = (int(ref.tensor.shape[-2]), int(ref.tensor.shape[-1]))
            self._static = all(hasattr(model, a) for a in ("pixel_mean", "pixel_std"))
            if self._static and not torch.allclose(self._preprocess(probe).tensor, ref.tensor, atol=1e-5):
                self._static = False  # the model's preprocess does more: trace it as it is
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
        """``model.preprocess`` with Python-int padding: the traced graph then has static shapes
        (``pad_to_divisible`` reads sizes from tensors, which the tracer records as dynamic and
        which hides the spatial size from ops such as adaptive pooling). Checked against
        ``model.preprocess`` when the network is built."""
        x = (images.float() - self.model.pixel_mean) / self.model.pixel_std
        # zero blocks of constant size, concatenated: ONNX's Pad (F.pad) loses the static shape
        # in the exporter's shape inference even with zero padding
        n, c = int(images.shape[0]), int(images.shape[1])
        (h, w), (H, W) = self.size, self.padded
        if W > w:
            x = torch.cat([x, x.new_zeros(n, c, h, W - w)], dim=3)
        if H > h:
            x = torch.cat([x, x.new_zeros(n, c, H - h, W)], dim=2)
        return dataclasses.replace(
            self._template, tensor=x, image_sizes=[self.size] * n,
            inputs=[{"height": self.size[0], "width": self.size[1]}] * n,
        )

    def _extract(self, images: Tensor) -> Dict[str, Any]:
        if getattr(self, "_static", False):
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


class StaticAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products with averaging matrices built from the
    input size at trace time: ``y = A_h · x · A_wᵀ``, ``A[i, floor(i·L/n) : ceil((i+1)·L/n)] =
    1 / bin length`` (PyTorch's definition of the adaptive bins). Exact up to float rounding;
    the legacy ONNX exporter cannot export adaptive pooling whose output size does not divide
    the input size (PSPNet's bins 3 and 6), matrix products it can."""

    def __init__(self, output_size) -> None:
        super().__init__()
        o = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        self.output_size = tuple(o)

    @staticmethod
    def _matrix(n: int, length: int, like: Tensor) -> Tensor:
        a = torch.zeros(n, length, dtype=like.dtype, device=like.device)
        for i in range(n):
            start, end = (i * length) // n, -((-(i + 1) * length) // n)
            a[i, start:end] = 1.0 / (end - start)
        return a

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh = self.output_size[0] if self.output_size[0] is not None else h
        ow = self.output_size[1] if self.output_size[1] is not None else w
        return torch.matmul(torch.matmul(self._matrix(oh, h, x), x), self._matrix(ow, w, x).t())


def _static_pools(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` with every ``nn.AdaptiveAvgPool2d`` replaced by
    :class:`StaticAdaptiveAvgPool2d` (for the ONNX exporter; the original is left as it is)."""
    import copy

    net = copy.deepcopy(net)
    for name, m in list(net.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(m, child_name, StaticAdaptiveAvgPool2d(child.output_size))
    return net


def export_onnx(net: DeployNetwork, path: str, opset: int = 17) -> str:
    """Write ``net`` to ``path`` as ONNX (input ``images`` ``1×3×H×W``, outputs
    ``net.output_names``), with torch's TorchScript-based exporter (``dynamo=False``: it needs no
    onnxscript and traces exactly what :class:`DeployNetwork` runs), adaptive average pooling
    written as matrix products (:class:`StaticAdaptiveAvgPool2d`). Checked with
    ``onnx.checker``. Returns ``path``."""
    import onnx

    example = torch.zeros(1, 3, *net.size, device=_device(net.model))
    # Static shapes: adaptive pooling (PSP) and the padding need the spatial size at export time,
    # and a symbolic batch axis hides it from the exporter's shape inference.
    with torch.no_grad():
        torch.onnx.export(
            _static_pools(net), (example,), path, dynamo=False, opset_version=opset, input_names=["images"],
            output_names=list(net.output_names), do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(path))
    return path


def run_onnx(path: str, images: Tensor) -> List[Tensor]:
    """Run an exported file with onnxruntime (CPU) on ``images`` (``B×3×H×W`` float32), one image
    at a time (the graph's batch is 1); outputs concatenated along the batch axis."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    per_image = [sess.run(None, {"images": im[None].detach().cpu().float().numpy()}) for im in images]
    return [torch.cat([torch.from_numpy(o[i]) for o in per_image]) for i in range(len(per_image[0]))]


def export_torchscript(net: DeployNetwork, path: str) -> str:
    """``torch.jit.trace`` of ``net`` at its size, saved to ``path``. Raises what tracing raises
    for data-dependent control flow."""
    example = torch.zeros(1, 3, *net.size, device=_device(net.model))
    with torch.no_grad():
        traced = torch.jit.trace(net, (example,), check_trace=False)
    traced.save(path)
    return path


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

