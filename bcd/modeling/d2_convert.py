"""Detectron2 checkpoints -> ``bcd`` models (RetinaNet, Mask R-CNN, Cascade Mask R-CNN).

Detectron2 (v0.6) state dicts are recognised by their key names (``backbone.bottom_up.stem.conv1.norm.*``,
``backbone.fpn_lateral*``, ``proposal_generator.rpn_head.*``, ...). Besides renaming keys, the
conversion handles what differs in the computation:

* **input channels**: Detectron2's MSRA / Caffe2 models read BGR images (``INPUT.FORMAT: BGR``);
  ``bcd`` feeds RGB. The stem's first conv has its input channels reversed (``MODEL.D2_INPUT_FORMAT``).
  The pixel mean / std are *config*: set ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` to Detectron2's in
  RGB order (for its defaults: ``[123.675, 116.28, 103.53]`` / ``[1.0, 1.0, 1.0]``).
* **ResNet layout**: Detectron2's ``STRIDE_IN_1X1: True`` (MSRA) puts a bottleneck's stride in
  its first 1×1 conv; set ``MODEL.RESNETS.STRIDE_IN_1X1`` to the checkpoint's value (weights have
  the same shapes in both layouts, so it cannot be read from the file; irrelevant for R18 / R34).
* **anchor order**: Detectron2 enumerates a cell's anchors size-major, torchvision's
  ``AnchorGenerator`` aspect-ratio-major; the per-anchor output channels of the RetinaNet head
  and the RPN head are permuted accordingly (identity with one size per level).
* FrozenBN statistics, fp16 storage (cast to the model's dtype), missing ``num_batches_tracked``
  (taken from the model).

``maybe_convert_detectron2(state, model, input_format)`` is what the checkpointer
(``MODEL.WEIGHTS``) and the Distiller (``KD.TEACHER.WEIGHTS``) call: it returns ``state``
unchanged unless it is a Detectron2 state dict. ``tools/convert_detectron2.py`` writes the
converted file once.
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["is_detectron2_state_dict", "convert_detectron2_state_dict", "maybe_convert_detectron2",
           "anchor_permutation"]

_D2_MARKERS = (
    "backbone.bottom_up.stem.conv1.norm.",
    "backbone.fpn_lateral",
    "proposal_generator.rpn_head.objectness_logits.",
    "roi_heads.box_head.fc1.",
    "roi_heads.mask_head.mask_fcn1.",
)


def is_detectron2_state_dict(state: Dict[str, object]) -> bool:
    """True when the key names are Detectron2's (never true for ``bcd``'s own checkpoints)."""
    return any(k.startswith(m) or (".norm." in k and k.startswith("backbone.bottom_up.res"))
               for k in state for m in _D2_MARKERS)


def anchor_permutation(num_sizes: int, num_ratios: int) -> List[int]:
    """For each torchvision anchor index (ratio-major: ``r·S + s``) the Detectron2 index
    (size-major: ``s·R + r``) of the same (size, ratio) anchor."""
    return [(a % num_sizes) * num_ratios + a // num_sizes for a in range(num_sizes * num_ratios)]


def _permute_anchor_channels(t: Tensor, perm: List[int]) -> Tensor:
    """Reorder dim 0 of a conv weight / bias laid out as ``A×per_anchor``."""
    A = len(perm)
    per = t.shape[0] // A
    if per * A != t.shape[0]:
        raise ValueError(f"Cannot split {t.shape[0]} output channels into {A} anchors")
    idx = torch.tensor([perm[a] * per + j for a in range(A) for j in range(per)])
    return t[idx]


_NORM = re.compile(r"^(backbone\.bottom_up\.res\d+\.\d+)\.conv(\d)\.norm\.(.+)$")
_SHORT = re.compile(r"^(backbone\.bottom_up\.res\d+\.\d+)\.shortcut\.(norm\.)?(.+)$")
_FPN = re.compile(r"^backbone\.fpn_(lateral|output)(\d)\.(weight|bias)$")
_BOX_HEAD = re.compile(r"^roi_heads\.box_head\.(?:(\d+)\.)?fc([12])\.(weight|bias)$")
_BOX_PRED = re.compile(r"^roi_heads\.box_predictor\.(?:(\d+)\.)?(cls_score|bbox_pred)\.(weight|bias)$")
_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)$")


def _rename(key: str, fpn_first: int) -> Optional[str]:
    """Detectron2 key -> ours (None: not a model parameter, dropped)."""
    if key.startswith("backbone.bottom_up.stem.conv1.norm."):
        return "backbone.bottom_up.stem.bn1." + key.rsplit(".", 1)[1]
    m = _NORM.match(key)
    if m:
        return f"{m.group(1)}.bn{m.group(2)}.{m.group(3)}"
    m = _SHORT.match(key)
    if m:
        return f"{m.group(1)}.downsample.{1 if m.group(2) else 0}.{m.group(3)}"
    m = _FPN.match(key)
    if m:
        kind = "inner_blocks" if m.group(1) == "lateral" else "layer_blocks"
        return f"backbone.fpn.{kind}.{int(m.group(2)) - fpn_first}.0.{m.group(3)}"
    if key.startswith("backbone.top_block."):
        return "backbone.fpn.extra_blocks." + key[len("backbone.top_block."):]
    rpn = {"proposal_generator.rpn_head.conv.": "proposal_generator.rpn_head.conv.0.0.",
           "proposal_generator.rpn_head.objectness_logits.": "proposal_generator.rpn_head.cls_logits.",
           "proposal_generator.rpn_head.anchor_deltas.": "proposal_generator.rpn_head.bbox_pred."}
    for a, b in rpn.items():
        if key.startswith(a):
            return b + key[len(a):]
    m = _BOX_HEAD.match(key)
    if m:
        return f"roi_heads.box_head.{m.group(1) or 0}.fc{5 + int(m.group(2))}.{m.group(3)}"
    m = _BOX_PRED.match(key)
    if m:
        return f"roi_heads.box_predictor.{m.group(1) or 0}.{m.group(2)}.{m.group(3)}"
    m = _MASK_FCN.match(key)
    if m:
        return f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"
    if key.startswith("roi_heads.mask_head.deconv."):
        return "roi_heads.mask_predictor.conv5_mask." + key.rsplit(".", 1)[1]
    if key.startswith("roi_heads.mask_head.predictor."):
        return "roi_heads.mask_predictor.mask_fcn_logits." + key.rsplit(".", 1)[1]
    if key in ("pixel_mean", "pixel_std") or "cell_anchors" in key:
        return None  # buffers that are config here
    return key  # same name (stem conv, block convs, RetinaNet head)


def _anchor_layout(model: nn.Module) -> Optional[Tuple[int, int]]:
    """(sizes, ratios) per cell of the model's anchor generator (first level)."""
    ag = getattr(model, "anchor_generator", None)
    if ag is None:
        ag = getattr(getattr(model, "proposal_generator", None), "anchor_generator", None)
    if ag is None:
        return None
    return len(ag.sizes[0]), len(ag.aspect_ratios[0])


def convert_detectron2_state_dict(state: Dict[str, object], model: nn.Module,
                                  input_format: str = "BGR", source: str = "") -> Dict[str, Tensor]:
    """Convert a Detectron2 state dict to ``model``'s keys, layout and dtype.

    Args:
        state: Detectron2's ``checkpoint["model"]`` (tensors or numpy arrays).
        model: the ``bcd`` model it is for (RetinaNet, MaskRCNN or CascadeMaskRCNN); its anchor
            generator decides the channel permutation, its state dict the dtypes.
        input_format: ``"BGR"`` (reverse the stem's input channels) or ``"RGB"``.
        source: file name for error messages.

    Returns:
        A state dict that loads strictly into ``model``.

    Raises:
        ValueError: keys that do not map onto the model, or shapes that differ, naming ``source``.
    """
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"MODEL.D2_INPUT_FORMAT must be 'BGR' or 'RGB'; got '{input_format}'")
    target = model.state_dict()
    levels = [int(m.group(2)) for k in state for m in [_FPN.match(k)] if m]
    fpn_first = min(levels) if levels else 0
    layout = _anchor_layout(model)
    perm = anchor_permutation(*layout) if layout else None
    out: Dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        new = _rename(key, fpn_first)
        if new is None:
            continue
        t = torch.as_tensor(value)
        if new not in target:
            unknown.append(f"{key} (as {new})")
            continue
        if new == "backbone.bottom_up.stem.conv1.weight" and input_format == "BGR":
            t = t.flip(1)  # BGR-trained first conv -> RGB input
        if perm is not None and new.split(".")[-2] in ("cls_score", "bbox_pred", "cls_logits") and (
                new.startswith("head.") or new.startswith("proposal_generator.")):
            t = _permute_anchor_channels(t, perm)
        ref = target[new]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"Detectron2 checkpoint {source}: {key} has shape {tuple(t.shape)}, but the "
                             f"model's {new} has {tuple(ref.shape)} (check the config's widths / classes)")
        out[new] = t.to(ref.dtype)
    for key, ref in target.items():
        if key not in out and key.endswith("num_batches_tracked"):
            out[key] = ref.clone()
    missing = sorted(set(target) - set(out))
    if unknown or missing:
        raise ValueError(
            f"Detectron2 checkpoint {source} does not fit {type(model).__name__}: "
            f"{len(unknown)} unmapped keys (first: {unknown[:5]}), {len(missing)} model keys missing "
            f"(first: {missing[:5]}); check META_ARCHITECTURE, MODEL.MASK_ON, the number of cascade "
            "stages and the FPN levels")
    return out


def maybe_convert_detectron2(state: Dict[str, object], model: nn.Module, input_format: Optional[str] = None,
                             source: str = "") -> Dict[str, object]:
    """``state`` converted when it is a Detectron2 state dict, else ``state`` itself.

    ``input_format`` defaults to the model's ``d2_input_format`` attribute (``MODEL.D2_INPUT_FORMAT``),
    else ``"BGR"``.
    """
    if not is_detectron2_state_dict(state):
        return state
    if input_format is None:
        input_format = getattr(model, "d2_input_format", "BGR")
    logger.info(f"{source or 'checkpoint'}: Detectron2 key names; converting for {type(model).__name__} "
                f"(input {input_format} -> RGB, anchor order size-major -> ratio-major)")
    return convert_detectron2_state_dict(state, model, input_format, source)
