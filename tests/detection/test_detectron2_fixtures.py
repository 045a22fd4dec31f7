"""Detectron2 checkpoints through the converter reproduce Detectron2's own outputs.

Fixtures: ``<repo>/../shared/fixtures/detectron2/`` (README there; ``BCD_D2_FIXTURES`` names
another folder made the same way): a RetinaNet R18-FPN and a Cascade Mask R-CNN R18-FPN built,
randomly initialised and run by Detectron2 v0.6 on two photos; weights stored in fp16 (the
references were computed in fp32 from those rounded values), loaded here through the automatic
path (``Checkpointer.load`` -> ``maybe_convert_detectron2``) and run in fp32, with the config
``config_from_detectron2`` reads from the fixture's ``config.yaml``; and through
``tools/convert_detectron2.py --d2-config`` on the repository's own base configs.

Tolerances (docs/detection.md, "Detectron2 checkpoints"):

* FPN features: max |ours - ref| <= 2e-3 x max |ref| per level (the reference is stored in fp16,
  whose rounding alone is ~5e-4 of the value);
* RPN proposals: every one of Detectron2's 1000 per image found in ours with box corners within
  0.01 px and objectness logit within 1e-3, except proposals tied at the cut (logit within 1e-3
  of the lowest kept), at most 1 %. Corners, not IoU: a random network proposes boxes of a
  hundredth of a pixel, whose IoU float rounding alone moves below 0.999;
* detections: the same number per image, every reference detection matched one-to-one to one of
  ours of the same class with box corners within 0.1 px and score within 1e-4, except NMS ties
  (one of ours overlapping it past the NMS threshold with a score within 1e-5: a random Cascade
  head scores every box near 2/3, and the last bits decide which of two overlapping boxes NMS
  keeps), at most 10 %;
* masks (pasted at image size): a pair of empty masks agrees; over the others mean mask IoU
  >= 0.99, and every pixel where the masks differ has our probability within 0.01 of the 0.5
  threshold (a random mask head predicts ~0.5 over whole regions, where rounding decides);
* RetinaNet first-step losses: ours x num_pos / (0.9 x 100 + 0.1 x num_pos) within 1e-3
  relative (ours divide by the batch's positive anchors, Detectron2 by an EMA starting at 100).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch


def _helpers():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_d2_fixture.py")
    spec = importlib.util.spec_from_file_location("_d2_fixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_h = _helpers()
FIXTURES, d2_cfg, inputs, load_model = _h.FIXTURES, _h.d2_cfg, _h.inputs, _h.load_model
convert_with_tool = _h.convert_with_tool
match_detections, reference = _h.match_detections, _h.reference

pytestmark = pytest.mark.skipif(
    not os.path.isdir(FIXTURES),
    reason=f"Detectron2 fixtures not found at {FIXTURES} (the shared/ folder beside the clone)",
)


def _run_eval(kind, model=None):
    """Our model (``load_model(kind)`` unless given) on the fixture's images: ``(model, ref,
    outputs, captured backbone features / RPN proposals, mask probabilities and boxes pasted)``."""
    import bcd.modeling.meta_arch.cascade_rcnn as cascade

    if model is None:
        model, _ = load_model(kind)
    ref = reference(kind)
    inp = inputs(ref)
    captured = {"pasted": []}
    hooks = [model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("features", o))]
    if hasattr(model, "proposal_generator"):
        hooks.append(model.proposal_generator.register_forward_hook(
            lambda m, i, o: captured.__setitem__("proposals", o[0])))
    paste = cascade.paste_masks

    def recording_paste(masks, boxes, size, threshold=0.5):
        captured["pasted"].append((masks.clone(), boxes.clone(), size))
        return paste(masks, boxes, size, threshold)

    cascade.paste_masks = recording_paste
    try:
        with torch.no_grad():
            out = model(inp)
    finally:
        cascade.paste_masks = paste
        for h in hooks:
            h.remove()
    return model, ref, out, captured


@pytest.fixture(scope="module")
def retinanet():
    return _run_eval("retinanet_r18_fpn")


@pytest.fixture(scope="module")
def cascade():
    return _run_eval("cascade_mask_rcnn_r18_fpn")


def _check_features(captured, ref):
    assert set(ref["features_fp16"]) <= set(captured["features"])
    for name, r in ref["features_fp16"].items():
        ours, r = captured["features"][name], r.float()
        assert ours.shape == r.shape, name
        err = float((ours - r).abs().max() / r.abs().max())
        assert err <= 2e-3, f"{name}: relative max error {err:.2e}"


def _nms_tie(k, r, inst, nms_thresh=0.5, eps=1e-5):
    """Whether reference detection ``k`` lost to (or beat) one of ours only by float rounding:
    one of ours of its class overlaps it beyond the NMS threshold with a score within ``eps``
    (which of the two NMS keeps is then decided by the scores' last bits), or its score ties
    the lowest we keep (the top-k cut)."""
    from torchvision.ops import box_iou

    if abs(float(r["scores"][k]) - float(inst.scores.min())) <= eps:
        return True
    same = inst.pred_classes == r["classes"][k]
    iou = box_iou(r["boxes"][k:k + 1], inst.pred_boxes)[0]
    return bool((same & (iou > nms_thresh) & ((inst.scores - r["scores"][k]).abs() <= eps)).any())


def _check_detections(out, ref):
    """Same count per image; every reference detection matched one-to-one (same class) with box
    corners <= 0.1 px and score <= 1e-4, except NMS ties (``_nms_tie``: near-equal scores of
    overlapping boxes, as a random Cascade head gives, every score near 2/3), at most 10 %."""
    for i, o in enumerate(out):
        inst, r = o["instances"], ref["instances"][i]
        assert len(inst) == len(r["boxes"]), f"image {i}: {len(inst)} detections, Detectron2 {len(r['boxes'])}"
        pairs, _ = match_detections(inst, r["boxes"], r["scores"], r["classes"], iou_min=0.9)
        unmatched = sorted(set(range(len(r["boxes"]))) - {p[0] for p in pairs})
        untied = [k for k in unmatched if not _nms_tie(k, r, inst)]
        assert not untied, f"image {i}: reference detections {untied} unmatched (not NMS ties)"
        assert len(unmatched) <= 0.1 * len(r["boxes"]), f"image {i}: {len(unmatched)} NMS ties"
        ri = torch.tensor([p[0] for p in pairs])
        oi = torch.tensor([p[1] for p in pairs])
        box_err = float((inst.pred_boxes[oi] - r["boxes"][ri]).abs().max())
        score_err = float((inst.scores[oi] - r["scores"][ri]).abs().max())
        assert box_err <= 0.1, f"image {i}: box corners differ by {box_err:.3f} px"
        assert score_err <= 1e-4, f"image {i}: scores differ by {score_err:.2e}"
    return pairs


def test_retinanet_features_match_detectron2(retinanet):
    _, ref, _, captured = retinanet
    _check_features(captured, ref)


def test_retinanet_detections_match_detectron2(retinanet):
    _, ref, out, _ = retinanet
    _check_detections(out, ref)


def test_retinanet_first_step_losses_match_detectron2(retinanet):
    from bcd.structures import Instances

    model, ref, _, _ = retinanet
    inp = inputs(ref)
    for d, (boxes, classes) in zip(inp, ref["gt"]):
        inst = Instances(tuple(d["image"].shape[-2:]))
        inst.gt_boxes = boxes.float()
        inst.gt_classes = classes.long()
        d["instances"] = inst
    batch = model.preprocess(inp)
    with torch.no_grad():
        anchors = model.extract(batch)["anchors"]
        labels, _ = model.label_anchors(torch.cat(anchors), batch.instances)
    num_pos = int(((labels >= 0) & (labels != model.num_classes)).sum())
    assert num_pos > 0
    model.train()
    try:
        with torch.no_grad():
            losses = model(inp)
    finally:
        model.eval()
    d2_norm = 0.9 * 100 + 0.1 * max(num_pos, 1)  # ref["loss_normalizer_note"]
    for name, value in ref["train_losses_first_step"].items():
        ours = float(losses[name]) * num_pos / d2_norm
        assert ours == pytest.approx(float(value), rel=1e-3), (name, ours, float(value))


def _check_proposals(captured, ref):
    for i, (ours, r) in enumerate(zip(captured["proposals"], ref["proposals"])):
        assert len(ours) == len(r["boxes"])
        corners = (r["boxes"][:, None, :] - ours.proposal_boxes[None, :, :]).abs().amax(-1)
        close = (r["objectness_logits"][:, None] - ours.objectness_logits[None, :]).abs() <= 1e-3
        found = ((corners <= 1e-2) & close).any(dim=1)
        cut = float(r["objectness_logits"].min())
        missing = r["objectness_logits"][~found]
        assert bool(((missing - cut).abs() <= 1e-3).all()), (
            f"image {i}: {int((~found).sum())} proposals not found, logits {missing[:5].tolist()} (cut {cut:.4f})")
        assert float(found.float().mean()) >= 0.99, f"image {i}: only {float(found.float().mean()):.3f} found"


def _check_masks(out, ref, captured):
    from pycocotools import mask as mask_util

    from bcd.modeling.heads.roi_heads import paste_masks

    for i, o in enumerate(out):
        inst, r = o["instances"], ref["instances"][i]
        probs, boxes, size = captured["pasted"][i]
        near = paste_masks(probs, boxes, size, 0.49) ^ paste_masks(probs, boxes, size, 0.51)
        pairs, _ = match_detections(inst, r["boxes"], r["scores"], r["classes"], iou_min=0.9)
        ious, empty = [], 0
        for k, j in pairs:
            rm = torch.from_numpy(mask_util.decode(r["masks_rle"][k]).astype(bool))
            om = inst.pred_masks[j]
            assert om.shape == rm.shape
            union = int((rm | om).sum())
            if union == 0:  # both empty: they agree
                empty += 1
                continue
            ious.append(float((rm & om).sum()) / union)
            far = (rm ^ om) & ~near[j]
            assert not far.any(), f"image {i}, detection {k}: {int(far.sum())} pixels differ away from the threshold"
        assert not ious or np.mean(ious) >= 0.99, (i, np.mean(ious), empty)


def test_cascade_features_and_proposals_match_detectron2(cascade):
    _, ref, _, captured = cascade
    _check_features(captured, ref)
    _check_proposals(captured, ref)


def test_cascade_detections_and_masks_match_detectron2(cascade):
    _, ref, out, captured = cascade
    _check_detections(out, ref)
    _check_masks(out, ref, captured)


@pytest.mark.parametrize("kind,changed", [
    ("retinanet_r18_fpn", {"MODEL.RESNETS.DEPTH", "MODEL.FPN.OUT_CHANNELS", "MODEL.RETINANET.NUM_CLASSES",
                           "MODEL.RETINANET.NUM_CONVS"}),
    ("cascade_mask_rcnn_r18_fpn", {"MODEL.RESNETS.DEPTH", "MODEL.FPN.OUT_CHANNELS", "MODEL.ROI_HEADS.NUM_CLASSES",
                                   "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_MASK_HEAD.CONV_DIM"}),
])
def test_repo_configs_reproduce_detectron2_through_the_converter(kind, changed, tmp_path):
    """tools/convert_detectron2.py --d2-config on the repository's base config: the written
    config and converted file reproduce Detectron2's outputs. The keys it had to set are the
    model's widths / depths / classes (and Detectron2's BGR pixel std, its STRIDE_IN_1X1), not the
    anchors: the base configs hold Detectron2's exact anchor sizes."""
    from bcd.config import get_cfg
    from bcd.engine.checkpoint import Checkpointer
    from bcd.modeling import build_model

    cfg_path, printed = convert_with_tool(kind, str(tmp_path / "converted"))
    set_keys = {line.split(":")[0].strip() for line in printed.splitlines() if line.startswith("  MODEL.")}
    assert changed <= set_keys and "MODEL.ANCHOR_GENERATOR.SIZES" not in set_keys, printed
    assert set_keys <= changed | {"MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.PIXEL_STD"}, printed
    cfg = get_cfg()
    cfg.merge_from_file(cfg_path)
    assert cfg.MODEL.WEIGHTS == str(tmp_path / "converted" / "model_final.pth")
    model = build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    _, ref, out, captured = _run_eval(kind, model.float().eval())
    _check_features(captured, ref)
    _check_detections(out, ref)
    if kind.startswith("cascade"):
        _check_proposals(captured, ref)
        _check_masks(out, ref, captured)


def test_all_shape_mismatches_are_listed_at_once():
    """The repository's RetinaNet R18 config without the fixture's keys: every tensor of another
    shape (FPN width, class count) is named in one error, with the way to derive the keys."""
    from bcd.config import get_cfg
    from bcd.engine.checkpoint import Checkpointer
    from bcd.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(_h.REPO, "configs", "coco", "retinanet_r18.yaml"))
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    cfg.MODEL.RETINANET.NUM_CONVS = 2  # only the widths and classes differ
    path = os.path.join(FIXTURES, "retinanet_r18_fpn", "model_final.pth")
    with pytest.raises(ValueError) as e:
        Checkpointer(build_model(cfg)).load(path)
    msg = str(e.value)
    for name in ("fpn_lateral3", "fpn_lateral4", "fpn_lateral5", "fpn_output3", "head.cls_score",
                 "head.bbox_pred", "top_block.p6"):
        assert name in msg, name
    assert "--d2-config" in msg


def test_converter_rejects_a_mismatched_model():
    """A Detectron2 file for another architecture fails naming the file and the keys."""
    from bcd.engine.checkpoint import Checkpointer
    from bcd.modeling import build_model

    cfg = d2_cfg("cascade_mask_rcnn_r18_fpn")
    cfg.MODEL.MASK_ON = False
    model = build_model(cfg)
    path = os.path.join(FIXTURES, "cascade_mask_rcnn_r18_fpn", "model_final.pth")
    with pytest.raises(ValueError) as e:
        Checkpointer(model).load(path)
    assert path in str(e.value) and "mask_head" in str(e.value)


def test_convert_tool_writes_what_the_automatic_path_loads(tmp_path):
    """tools/convert_detectron2.py with --config-file and --d2-config: the written file loads
    strictly and equals the on-the-fly conversion; the config it writes sets what Detectron2's
    config says (RGB pixel statistics, STRIDE_IN_1X1) on top of the given one."""
    import contextlib
    import importlib.util
    import io

    from bcd.config import get_cfg
    from bcd.modeling import build_model
    from bcd.modeling.d2_convert import convert_detectron2_state_dict

    kind = "cascade_mask_rcnn_r18_fpn"
    cfg = d2_cfg(kind)
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]  # a value the Detectron2 config corrects
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.dump())
    spec = importlib.util.spec_from_file_location(
        "convert_detectron2", os.path.join(_h.REPO, "tools", "convert_detectron2.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "converted.pth"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tool.main(["--config-file", str(cfg_file), "--input", os.path.join(FIXTURES, kind, "model_final.pth"),
                   "--output", str(out), "--d2-config", os.path.join(FIXTURES, kind, "config.yaml")])
    assert "MODEL.PIXEL_STD: [1.0, 1.0, 1.0]" in buf.getvalue()
    written_cfg = get_cfg()
    written_cfg.merge_from_file(str(tmp_path / "config.yaml"))
    assert written_cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0] and written_cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
    written = torch.load(out, weights_only=True)["model"]
    model = build_model(d2_cfg(kind))
    model.load_state_dict(written, strict=True)
    d2 = torch.load(os.path.join(FIXTURES, kind, "model_final.pth"), weights_only=True)["model"]
    direct = convert_detectron2_state_dict(d2, model, "BGR")
    assert set(direct) == set(written)
    assert all(torch.equal(direct[k], written[k]) for k in direct)
    # the stem saw BGR: converted weights take RGB, i.e. reversed input channels
    assert torch.equal(written["backbone.bottom_up.stem.conv1.weight"],
                       d2["backbone.bottom_up.stem.conv1.weight"].float().flip(1))


def test_config_from_detectron2_refuses_what_bcd_cannot_build():
    import yaml

    from bcd.modeling.d2_convert import config_from_detectron2

    d2 = yaml.safe_load(open(os.path.join(FIXTURES, "retinanet_r18_fpn", "config.yaml")))
    for key, value, word in (("RESNETS.NUM_GROUPS", 32, "ResNeXt"), ("ANCHOR_GENERATOR.OFFSET", 0.5, "OFFSET"),
                             ("RESNETS.RES5_DILATION", 2, "RES5_DILATION"), ("FPN.FUSE_TYPE", "avg", "sum")):
        bad = yaml.safe_load(yaml.safe_dump(d2))
        node = bad["MODEL"]
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
        with pytest.raises(ValueError, match=f"MODEL.{key}.*{word}"):
            config_from_detectron2(bad)


def test_anchor_permutation_maps_size_major_to_ratio_major():
    from bcd.modeling.d2_convert import anchor_permutation

    # 3 sizes x 3 ratios: torchvision index r*3+s holds Detectron2's s*3+r
    assert anchor_permutation(3, 3) == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    assert anchor_permutation(1, 3) == [0, 1, 2]  # one size per level (RPN): identity
    assert anchor_permutation(2, 3) == [0, 3, 1, 4, 2, 5]
