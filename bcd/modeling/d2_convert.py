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
converted file once. ``config_from_detectron2(d2_config)`` reads Detectron2's ``config.yaml``
into the ``bcd`` keys of the same model (widths, classes, head convs, anchors, input format,
pixel statistics, test thresholds), so no value has to be guessed.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["is_detectron2_state_dict", "convert_detectron2_state_dict", "maybe_convert_detectron2",
           "anchor_permutation", "config_from_detectron2"]

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
    shapes = []
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
            shapes.append(f"{key} {tuple(t.shape)} vs the model's {new} {tuple(ref.shape)}")
            continue
        out[new] = t.to(ref.dtype)
    if shapes:  # every mismatch at once: widths, classes and head depths show together
        raise ValueError(
            f"Detectron2 checkpoint {source}: {len(shapes)} tensors have another shape than the model "
            f"(check the config's widths / classes / convs; tools/convert_detectron2.py --d2-config "
            f"derives them from Detectron2's config.yaml):\n  " + "\n  ".join(shapes))
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


# ---------------------------------------------------------------------------------- configs
def _get(d: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def config_from_detectron2(d2: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """The ``bcd`` config values that build the model of a Detectron2 config and run it at test
    time as Detectron2 does: ``{dotted key: value}`` over every key that decides the weights'
    shapes or the test-time computation (architecture, depth, ``STRIDE_IN_1X1``, norm, FPN
    width / levels / top block, class count, head convs, anchor sizes and aspect ratios, RPN and
    RoI-head settings, input format, pixel statistics in RGB order, test sizes and thresholds).

    Supported: ``RetinaNet`` and ``GeneralizedRCNN`` with ``StandardROIHeads`` (-> ``MaskRCNN``)
    or ``CascadeROIHeads`` (-> ``CascadeMaskRCNN``), on ``build_resnet_fpn_backbone`` /
    ``build_retinanet_resnet_fpn_backbone`` (ResNet-18 .. 152).

    Args:
        d2: Detectron2's config as a dict (``yaml.safe_load`` of its dumped ``config.yaml``).

    Raises:
        ValueError: naming the Detectron2 key of anything ``bcd`` cannot build the same way
            (ResNeXt widths, deformable convs, a dilated res5, another FPN fuse, an anchor
            offset, RoIAlign without ``aligned``, head norms, conv box heads, ...).
    """
    m = d2.get("MODEL", {})
    out: "OrderedDict[str, Any]" = OrderedDict()

    def need(key: str, ok: bool, want: str) -> None:
        if not ok:
            raise ValueError(f"Detectron2 config: MODEL.{key} = {_get(m, key)!r}; bcd builds {want} only")

    arch = m.get("META_ARCHITECTURE")
    roi_name = _get(m, "ROI_HEADS.NAME")
    if arch == "RetinaNet":
        bcd_arch = "RetinaNet"
    elif arch == "GeneralizedRCNN" and roi_name in ("CascadeROIHeads", "StandardROIHeads"):
        bcd_arch = "CascadeMaskRCNN" if roi_name == "CascadeROIHeads" else "MaskRCNN"
    else:
        raise ValueError(f"Detectron2 config: MODEL.META_ARCHITECTURE {arch!r} (ROI_HEADS.NAME {roi_name!r}); "
                         "bcd converts RetinaNet and GeneralizedRCNN with StandardROIHeads / CascadeROIHeads")
    out["MODEL.META_ARCHITECTURE"] = bcd_arch
    # backbone: ResNet + FPN
    backbone = _get(m, "BACKBONE.NAME")
    need("BACKBONE.NAME", backbone in ("build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"),
         "ResNet-FPN backbones (build_resnet_fpn_backbone, build_retinanet_resnet_fpn_backbone)")
    r = m.get("RESNETS", {})
    depth = int(r.get("DEPTH", 50))
    need("RESNETS.NUM_GROUPS", int(r.get("NUM_GROUPS", 1)) == 1, "ResNets (NUM_GROUPS 1, not ResNeXt)")
    need("RESNETS.WIDTH_PER_GROUP", int(r.get("WIDTH_PER_GROUP", 64)) == 64, "WIDTH_PER_GROUP 64")
    need("RESNETS.STEM_OUT_CHANNELS", int(r.get("STEM_OUT_CHANNELS", 64)) == 64, "a 64-channel stem")
    need("RESNETS.RES2_OUT_CHANNELS", int(r.get("RES2_OUT_CHANNELS", 256)) == (64 if depth in (18, 34) else 256),
         "the standard widths (64 for R18 / R34, 256 otherwise)")
    need("RESNETS.RES5_DILATION", int(r.get("RES5_DILATION", 1)) == 1, "RES5_DILATION 1")
    need("RESNETS.DEFORM_ON_PER_STAGE", not any(r.get("DEFORM_ON_PER_STAGE", [])), "no deformable convs")
    out["MODEL.BACKBONE.NAME"] = "build_resnet_fpn_backbone"
    out["MODEL.BACKBONE.NORM"] = r.get("NORM", "FrozenBN")
    out["MODEL.BACKBONE.FREEZE_AT"] = int(_get(m, "BACKBONE.FREEZE_AT", 2))
    out["MODEL.BACKBONE.WEIGHTS"] = ""  # every weight comes from the checkpoint
    out["MODEL.RESNETS.DEPTH"] = depth
    out["MODEL.RESNETS.WIDTH_MULTIPLIER"] = 1.0
    out["MODEL.RESNETS.OUTPUT_STRIDE"] = 32
    out["MODEL.RESNETS.STRIDE_IN_1X1"] = bool(r.get("STRIDE_IN_1X1", True))
    out["MODEL.RESNETS.OUT_FEATURES"] = list(r.get("OUT_FEATURES", ["res2", "res3", "res4", "res5"]))
    f = m.get("FPN", {})
    need("FPN.FUSE_TYPE", f.get("FUSE_TYPE", "sum") == "sum", "FUSE_TYPE sum")
    out["MODEL.FPN.IN_FEATURES"] = list(f.get("IN_FEATURES", []))
    out["MODEL.FPN.OUT_CHANNELS"] = int(f.get("OUT_CHANNELS", 256))
    out["MODEL.FPN.NORM"] = f.get("NORM", "")
    if backbone == "build_retinanet_resnet_fpn_backbone":  # LastLevelP6P7 on res5
        out["MODEL.FPN.TOP_BLOCK"], out["MODEL.FPN.TOP_BLOCK_IN"] = "P6P7", "res5"
    else:  # LastLevelMaxPool
        out["MODEL.FPN.TOP_BLOCK"] = "P6"
    # anchors (Detectron2 order size-major; the conversion permutes the head channels)
    a = m.get("ANCHOR_GENERATOR", {})
    need("ANCHOR_GENERATOR.NAME", a.get("NAME", "DefaultAnchorGenerator") == "DefaultAnchorGenerator",
         "DefaultAnchorGenerator")
    need("ANCHOR_GENERATOR.OFFSET", float(a.get("OFFSET", 0.0)) == 0.0, "OFFSET 0.0")
    out["MODEL.ANCHOR_GENERATOR.SIZES"] = [list(x) for x in a.get("SIZES", [])]
    out["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"] = [list(x) for x in a.get("ASPECT_RATIOS", [])]
    if bcd_arch == "RetinaNet":
        n = m.get("RETINANET", {})
        need("RETINANET.NORM", not n.get("NORM", ""), "head convs without norm")
        for k in ("NUM_CLASSES", "NUM_CONVS", "PRIOR_PROB", "FOCAL_LOSS_ALPHA", "FOCAL_LOSS_GAMMA",
                  "SCORE_THRESH_TEST", "TOPK_CANDIDATES_TEST", "NMS_THRESH_TEST"):
            if k in n:
                out[f"MODEL.RETINANET.{k}"] = n[k]
        out["MODEL.RETINANET.IN_FEATURES"] = list(n.get("IN_FEATURES", []))
        out["MODEL.RETINANET.IOU_THRESHOLDS"] = list(n.get("IOU_THRESHOLDS", [0.4, 0.5]))
        out["MODEL.RETINANET.BBOX_REG_WEIGHTS"] = list(n.get("BBOX_REG_WEIGHTS", [1.0, 1.0, 1.0, 1.0]))
        out["MODEL.RETINANET.SMOOTH_L1_BETA"] = float(n.get("SMOOTH_L1_LOSS_BETA", 0.1))
    else:
        rpn = m.get("RPN", {})
        need("RPN.HEAD_NAME", rpn.get("HEAD_NAME", "StandardRPNHead") == "StandardRPNHead", "StandardRPNHead")
        need("RPN.CONV_DIMS", list(rpn.get("CONV_DIMS", [-1])) == [-1], "one RPN conv of the input width")
        for k in ("IN_FEATURES", "IOU_THRESHOLDS", "BBOX_REG_WEIGHTS"):
            out[f"MODEL.RPN.{k}"] = list(rpn[k])
        for k in ("BATCH_SIZE_PER_IMAGE", "POSITIVE_FRACTION", "SMOOTH_L1_BETA", "LOSS_WEIGHT",
                  "PRE_NMS_TOPK_TRAIN", "PRE_NMS_TOPK_TEST", "POST_NMS_TOPK_TRAIN", "POST_NMS_TOPK_TEST",
                  "NMS_THRESH"):
            if k in rpn:
                out[f"MODEL.RPN.{k}"] = rpn[k]
        out["MODEL.RPN.MIN_SIZE"] = float(_get(m, "PROPOSAL_GENERATOR.MIN_SIZE", 0))
        rh = m.get("ROI_HEADS", {})
        for k in ("NUM_CLASSES", "BATCH_SIZE_PER_IMAGE", "POSITIVE_FRACTION", "PROPOSAL_APPEND_GT",
                  "SCORE_THRESH_TEST", "NMS_THRESH_TEST"):
            if k in rh:
                out[f"MODEL.ROI_HEADS.{k}"] = rh[k]
        out["MODEL.ROI_HEADS.IN_FEATURES"] = list(rh.get("IN_FEATURES", []))
        out["MODEL.ROI_HEADS.IOU_THRESHOLDS"] = list(rh.get("IOU_THRESHOLDS", [0.5]))
        bh = m.get("ROI_BOX_HEAD", {})
        need("ROI_BOX_HEAD.NUM_CONV", int(bh.get("NUM_CONV", 0)) == 0, "FC box heads (NUM_CONV 0)")
        need("ROI_BOX_HEAD.POOLER_TYPE", bh.get("POOLER_TYPE", "ROIAlignV2") == "ROIAlignV2",
             "ROIAlignV2 (aligned RoIAlign)")
        for k in ("NUM_FC", "FC_DIM", "POOLER_RESOLUTION", "POOLER_SAMPLING_RATIO", "CLS_AGNOSTIC_BBOX_REG",
                  "SMOOTH_L1_BETA"):
            if k in bh:
                out[f"MODEL.ROI_BOX_HEAD.{k}"] = bh[k]
        c = m.get("ROI_BOX_CASCADE_HEAD", {})
        if bcd_arch == "CascadeMaskRCNN":
            out["MODEL.ROI_BOX_CASCADE_HEAD.IOUS"] = list(c.get("IOUS", [0.5, 0.6, 0.7]))
            out["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS"] = [list(w) for w in c.get("BBOX_REG_WEIGHTS", [])]
        else:  # one stage: the RoI heads' IoU and the box head's weights
            out["MODEL.ROI_BOX_CASCADE_HEAD.IOUS"] = [float(out["MODEL.ROI_HEADS.IOU_THRESHOLDS"][0])]
            out["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS"] = [list(bh.get("BBOX_REG_WEIGHTS", [10.0, 10.0, 5.0, 5.0]))]
        out["MODEL.MASK_ON"] = bool(m.get("MASK_ON", False))
        if out["MODEL.MASK_ON"]:
            mh = m.get("ROI_MASK_HEAD", {})
            need("ROI_MASK_HEAD.POOLER_TYPE", mh.get("POOLER_TYPE", "ROIAlignV2") == "ROIAlignV2",
                 "ROIAlignV2 (aligned RoIAlign)")
            need("ROI_MASK_HEAD.NORM", not mh.get("NORM", ""), "mask heads without norm")
            for k in ("NUM_CONV", "CONV_DIM", "POOLER_RESOLUTION", "POOLER_SAMPLING_RATIO", "CLS_AGNOSTIC_MASK"):
                if k in mh:
                    out[f"MODEL.ROI_MASK_HEAD.{k}"] = mh[k]
    # input: bcd feeds RGB; Detectron2's mean / std are in its INPUT.FORMAT order
    fmt = _get(d2, "INPUT.FORMAT", "BGR")
    if fmt not in ("BGR", "RGB"):
        raise ValueError(f"Detectron2 config: INPUT.FORMAT {fmt!r}; bcd converts BGR and RGB models")
    mean = [float(v) for v in m.get("PIXEL_MEAN", [103.53, 116.28, 123.675])]
    std = [float(v) for v in m.get("PIXEL_STD", [1.0, 1.0, 1.0])]
    out["MODEL.PIXEL_MEAN"] = mean[::-1] if fmt == "BGR" else mean
    out["MODEL.PIXEL_STD"] = std[::-1] if fmt == "BGR" else std
    out["MODEL.D2_INPUT_FORMAT"] = fmt
    i = d2.get("INPUT", {})
    for k in ("MIN_SIZE_TEST", "MAX_SIZE_TEST", "MAX_SIZE_TRAIN", "MIN_SIZE_TRAIN_SAMPLING"):
        if k in i:
            out[f"INPUT.{k}"] = i[k]
    if "MIN_SIZE_TRAIN" in i:
        v = i["MIN_SIZE_TRAIN"]
        out["INPUT.MIN_SIZE_TRAIN"] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
    if "DETECTIONS_PER_IMAGE" in d2.get("TEST", {}):
        out["TEST.DETECTIONS_PER_IMAGE"] = int(d2["TEST"]["DETECTIONS_PER_IMAGE"])
    return out

