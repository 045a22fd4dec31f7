"""Detectron2 checkpoints through the converter reproduce Detectron2's own outputs.

Fixtures: ``<repo>/../shared/fixtures/detectron2/`` (README there): a RetinaNet R18-FPN and a
Cascade Mask R-CNN R18-FPN built, randomly initialised and run by Detectron2 v0.6 on two photos;
weights stored in fp16 (the references were computed in fp32 from those rounded values), loaded
here through the automatic path (``Checkpointer.load`` -> ``maybe_convert_detectron2``) and run
in fp32.

Tolerances (docs/detection.md, "Detectron2 checkpoints"):

* FPN features: max |ours - ref| <= 2e-3 x max |ref| per level (the reference is stored in fp16,
  whose rounding alone is ~5e-4 of the value);
* RPN proposals: >= 99 % of Detectron2's 1000 per image found in ours with IoU >= 0.999 and
  objectness logits within 1e-3 (proposals with tied logits may swap at the top-k cut);
* detections: the same number per image, every reference detection matched one-to-one to one of
  ours of the same class with box corners within 0.1 px and score within 1e-4;
* masks (pasted at image size): mean mask IoU >= 0.99 over the matched detections, min >= 0.95;
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
match_detections, reference = _h.match_detections, _h.reference

pytestmark = pytest.mark.skipif(
    not os.path.isdir(FIXTURES),
    reason=f"Detectron2 fixtures not found at {FIXTURES} (the shared/ folder beside the clone)",
)


def _run_eval(kind):
    model, cfg = load_model(kind)
    ref = reference(kind)
    inp = inputs(ref)
    captured = {}
    hooks = [model.backbone.register_forward_hook(lambda m, i, o: captured.__setitem__("features", o))]
    if hasattr(model, "proposal_generator"):
        hooks.append(model.proposal_generator.register_forward_hook(
            lambda m, i, o: captured.__setitem__("proposals", o[0])))
    with torch.no_grad():
        out = model(inp)
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


def _check_detections(out, ref):
    for i, o in enumerate(out):
        inst, r = o["instances"], ref["instances"][i]
        assert len(inst) == len(r["boxes"]), f"image {i}: {len(inst)} detections, Detectron2 {len(r['boxes'])}"
        pairs, _ = match_detections(inst, r["boxes"], r["scores"], r["classes"], iou_min=0.9)
        assert len(pairs) == len(r["boxes"]), f"image {i}: {len(r['boxes']) - len(pairs)} unmatched"
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


def test_cascade_features_and_proposals_match_detectron2(cascade):
    from torchvision.ops import box_iou

    _, ref, _, captured = cascade
    _check_features(captured, ref)
    for i, (ours, r) in enumerate(zip(captured["proposals"], ref["proposals"])):
        assert len(ours) == len(r["boxes"])
        iou = box_iou(r["boxes"], ours.proposal_boxes)
        close = (r["objectness_logits"][:, None] - ours.objectness_logits[None, :]).abs() <= 1e-3
        found = ((iou >= 0.999) & close).any(dim=1).float().mean()
        assert float(found) >= 0.99, f"image {i}: only {float(found):.3f} of the proposals found"


def test_cascade_detections_and_masks_match_detectron2(cascade):
    from pycocotools import mask as mask_util

    _, ref, out, _ = cascade
    _check_detections(out, ref)
    for i, o in enumerate(out):
        inst, r = o["instances"], ref["instances"][i]
        pairs, _ = match_detections(inst, r["boxes"], r["scores"], r["classes"], iou_min=0.9)
        ious = []
        for k, j in pairs:
            rm = mask_util.decode(r["masks_rle"][k]).astype(bool)
            om = inst.pred_masks[j].numpy()
            assert om.shape == rm.shape
            ious.append((rm & om).sum() / max((rm | om).sum(), 1))
        ious = np.array(ious)
        assert ious.mean() >= 0.99 and ious.min() >= 0.95, (ious.mean(), ious.min())


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
    """tools/convert_detectron2.py: the written file loads strictly and equals the on-the-fly
    conversion; with --d2-config it reports the RGB pixel statistics."""
    import contextlib
    import importlib.util
    import io

    from bcd.modeling import build_model
    from bcd.modeling.d2_convert import convert_detectron2_state_dict

    kind = "cascade_mask_rcnn_r18_fpn"
    cfg = d2_cfg(kind)
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
    assert "MODEL.PIXEL_MEAN: [123.675, 116.28, 103.53]" in buf.getvalue()
    written = torch.load(out, weights_only=True)["model"]
    model = build_model(cfg)
    model.load_state_dict(written, strict=True)
    d2 = torch.load(os.path.join(FIXTURES, kind, "model_final.pth"), weights_only=True)["model"]
    direct = convert_detectron2_state_dict(d2, model, "BGR")
    assert set(direct) == set(written)
    assert all(torch.equal(direct[k], written[k]) for k in direct)
    # the stem saw BGR: converted weights take RGB, i.e. reversed input channels
    assert torch.equal(written["backbone.bottom_up.stem.conv1.weight"],
                       d2["backbone.bottom_up.stem.conv1.weight"].float().flip(1))


def test_anchor_permutation_maps_size_major_to_ratio_major():
    from bcd.modeling.d2_convert import anchor_permutation

    # 3 sizes x 3 ratios: torchvision index r*3+s holds Detectron2's s*3+r
    assert anchor_permutation(3, 3) == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    assert anchor_permutation(1, 3) == [0, 1, 2]  # one size per level (RPN): identity
    assert anchor_permutation(2, 3) == [0, 3, 1, 4, 2, 5]
