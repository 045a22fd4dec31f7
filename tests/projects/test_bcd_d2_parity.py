"""Parity: the same weights in Detectron2 (projects/bcd/bcd_d2) and in bcd (through the existing
Detectron2 converter) give the same KD losses on the same batch.

For the two Detectron2 fixtures (``<repo>/../shared/fixtures/detectron2``: a RetinaNet R18-FPN and a
Cascade Mask R-CNN R18-FPN, built and randomly initialised by Detectron2 v0.6), the teacher is
the fixture's checkpoint and the student the same architecture with every weight perturbed (a
Detectron2 checkpoint written here). Both frameworks build their ``Distiller`` with BCD (boundary +
context on the ResNet stages), CWD and PKD (on FPN levels), the KD modules of the bcd side are
copied into the Detectron2 side, and one training forward runs on the same two images (BGR for
Detectron2, RGB for bcd, whose converted stem reads RGB) with the same ground truth.

Asserted: the recorded student and teacher features agree (max |a - b| <= 1e-5 max |b| per
feature; the check is shown to fail on features of different weights), the padded batch and
image sizes agree, and every KD entry (``loss_kd_*``, ``kd/*/raw``, ``kd/*/weight``) agrees
within 1e-5 relative. fp32: the two frameworks sum convolutions in different orders (the BGR /
RGB stem); measured here, features and losses differ by at most ~1e-6 relative.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="Detectron2 is not installed (projects/bcd/README.md)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fixture_helpers():
    path = os.path.join(REPO, "tests", "detection", "_d2_fixture.py")
    spec = importlib.util.spec_from_file_location("_d2_fixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_h = _fixture_helpers()
FIXTURES = _h.FIXTURES
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FIXTURES),
    reason=f"Detectron2 fixtures not found at {FIXTURES} (the shared/ folder beside the clone)",
)

STAGES = ["backbone.bottom_up.res2", "backbone.bottom_up.res3", "backbone.bottom_up.res4",
          "backbone.bottom_up.res5"]
LEVELS = {"retinanet_r18_fpn": ["p3", "p4", "p5", "p6"], "cascade_mask_rcnn_r18_fpn": ["p2", "p3", "p4", "p5"]}
LOSSES = ["BoundaryDistillation", "ContextDistillation", "ChannelWiseDistillation", "PKD"]


def _kd_opts(kind):
    fpn = [f"backbone[{p}]" for p in LEVELS[kind]]
    return [
        "KD.LOSSES", str(LOSSES), "KD.BCD_HFA.DIM", "16", "SOLVER.MAX_ITER", "100",
        "KD.BOUNDARY.STUDENT_FEATURES", str(STAGES), "KD.BOUNDARY.TEACHER_FEATURES", str(STAGES),
        "KD.CONTEXT.STUDENT_FEATURES", str(STAGES), "KD.CONTEXT.TEACHER_FEATURES", str(STAGES),
        "KD.CWD.STUDENT_FEATURES", str(fpn[:2]), "KD.CWD.TEACHER_FEATURES", str(fpn[:2]),
        "KD.PKD.STUDENT_FEATURES", str(fpn), "KD.PKD.TEACHER_FEATURES", str(fpn),
        # L_bd and the teacher boundary head's fit (pseudo labels from the GT boxes) both run
        "KD.BOUNDARY.TEACHER_HEAD_FIT_ITERS", "0",
    ]


def _perturbed_student(kind, path):
    """The fixture's weights, each perturbed by ~10 % (variances kept positive), as a
    Detectron2 checkpoint: the student."""
    state = torch.load(os.path.join(FIXTURES, kind, "model_final.pth"), weights_only=True)["model"]
    g = torch.Generator().manual_seed(1)
    out = {}
    for k, v in state.items():
        if not torch.is_floating_point(v):
            out[k] = v
            continue
        v = v.float()
        noise = torch.randn(v.shape, generator=g)
        out[k] = v * torch.exp(0.1 * noise) if k.endswith("running_var") else v * (1 + 0.1 * noise) + 0.01 * noise
    torch.save({"model": out}, path)
    return path


def _batch(kind):
    """Two fixture photos at 160 px (longest side), BGR uint8, with two GT boxes each."""
    import torch.nn.functional as F
    from detectron2.structures import BitMasks, Boxes, Instances

    ref = torch.load(os.path.join(FIXTURES, kind, "reference.pt"), weights_only=True)
    d2, ours = [], []
    from bcd.structures import Instances as BInstances

    for i, img in enumerate(ref["images_bgr"]):
        h, w = img.shape[1:]
        s = 160.0 / max(h, w)
        H, W = int(round(h * s)), int(round(w * s))
        img = F.interpolate(img[None].float(), size=(H, W), mode="bilinear", align_corners=False)[0]
        img = img.round().clamp(0, 255).to(torch.uint8)
        boxes = torch.tensor([[10.0, 12.0, 80.0, 90.0], [60.0 + 10 * i, 40.0, 140.0, 100.0]])
        classes = torch.tensor([0, 2 - i])
        masks = torch.zeros(2, H, W, dtype=torch.bool)
        for j, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[j, y0:y1, x0:x1] = True
        inst = Instances((H, W), gt_boxes=Boxes(boxes), gt_classes=classes, gt_masks=BitMasks(masks))
        d2.append({"image": img, "height": H, "width": W, "instances": inst})
        binst = BInstances((H, W), gt_boxes=boxes, gt_classes=classes, gt_masks=masks.to(torch.uint8))
        ours.append({"image": img.flip(0).contiguous(), "height": H, "width": W, "instances": binst})
    return d2, ours


def _capture(distiller):
    """Wrap the distiller's loss step to keep what it was given (features, context)."""
    seen = {}
    inner = distiller._kd_losses

    def wrapped(s_feats, t_feats, ctx, it):
        seen.update(student=s_feats, teacher=t_feats, ctx=ctx)
        return inner(s_feats, t_feats, ctx, it)

    distiller._kd_losses = wrapped
    return seen


def assert_features_match(a, b, what, tol=1e-5):
    """Every feature of ``a`` equals ``b``'s (same shape, max |a - b| <= tol · max |b|)."""
    assert set(a) == set(b), (what, sorted(a), sorted(b))
    for name in a:
        x, y = a[name].detach().float(), b[name].detach().float()
        assert x.shape == y.shape, f"{what} {name}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        err = (x - y).abs().max().item()
        scale = y.abs().max().item()
        assert err <= tol * max(scale, 1e-12), f"{what} {name}: max |diff| {err:.3g} vs max |value| {scale:.3g}"


def _build_pair(kind, tmp_path):
    import bcd_d2
    from detectron2.utils.events import EventStorage

    from bcd.distill import Distiller as BcdDistiller
    from bcd.engine.checkpoint import Checkpointer

    fixture = os.path.join(FIXTURES, kind)
    student_w = _perturbed_student(kind, str(tmp_path / f"{kind}_student.pth"))
    teacher_w = os.path.join(fixture, "model_final.pth")
    opts = _kd_opts(kind)

    # Detectron2 side
    cfg = bcd_d2.get_cfg()
    cfg.merge_from_file(os.path.join(fixture, "config.yaml"))
    cfg.merge_from_list(opts + ["MODEL.DEVICE", "cpu", "KD.TEACHER.CONFIG_FILE", os.path.join(fixture, "config.yaml"),
                                "KD.TEACHER.WEIGHTS", teacher_w])
    d2 = bcd_d2.build_model(cfg)
    bcd_d2.load_weights(d2.student, student_w, "student")

    # bcd side: its own config of the fixture, the Detectron2 files converted on load
    bcfg = _h.d2_cfg(kind)
    teacher_yaml = tmp_path / f"{kind}_bcd_teacher.yaml"
    teacher_yaml.write_text(bcfg.dump())
    bcfg.merge_from_list(opts + ["KD.TEACHER.CONFIG_FILE", str(teacher_yaml), "KD.TEACHER.WEIGHTS", teacher_w])
    ours = BcdDistiller(bcfg)
    Checkpointer(ours.student).load(student_w)

    # the KD modules (HFA, heads, connectors) start from the same weights
    d2.kd_modules.load_state_dict(ours.kd_modules.state_dict())
    d2_inputs, our_inputs = _batch(kind)
    seen_d2, seen_ours = _capture(d2), _capture(ours)
    for m in (d2, ours):
        m.train()
        m.set_iteration(5)
    torch.manual_seed(0)
    with EventStorage(5):
        out_d2 = d2(d2_inputs)
    torch.manual_seed(0)
    out_ours = ours(our_inputs)
    return out_d2, out_ours, seen_d2, seen_ours


@pytest.fixture(scope="module", params=["retinanet_r18_fpn", "cascade_mask_rcnn_r18_fpn"])
def pair(request, tmp_path_factory):
    return request.param, _build_pair(request.param, tmp_path_factory.mktemp(request.param))


def test_recorded_features_are_the_same(pair):
    _, (_, _, seen_d2, seen_ours) = pair
    assert_features_match(seen_d2["student"], seen_ours["student"], "student")
    assert_features_match(seen_d2["teacher"], seen_ours["teacher"], "teacher")
    # The comparison has teeth: the teacher's features are not the (perturbed) student's.
    with pytest.raises(AssertionError):
        assert_features_match(seen_d2["student"], seen_ours["teacher"], "student vs teacher")


def test_batches_are_the_same(pair):
    _, (_, _, seen_d2, seen_ours) = pair
    a, b = seen_d2["ctx"].student_batch, seen_ours["ctx"].student_batch
    assert a.tensor.shape == b.tensor.shape and a.image_sizes == b.image_sizes
    # Detectron2 normalises BGR with its BGR mean, bcd RGB with the same values reversed
    torch.testing.assert_close(a.tensor.flip(1), b.tensor, rtol=0, atol=1e-4)
    for x, y in zip(a.instances, b.instances):
        assert torch.equal(x.gt_boxes, y.gt_boxes) and torch.equal(x.gt_classes, y.gt_classes)


def test_kd_losses_are_the_same(pair):
    kind, (out_d2, out_ours, _, _) = pair
    kd = sorted(k for k in out_ours if k.startswith(("loss_kd_", "kd/")))
    assert {"loss_kd_boundary", "loss_kd_boundary_teacher_head", "loss_kd_context", "loss_kd_cwd",
            "loss_kd_pkd"} <= set(kd)
    assert kd == sorted(k for k in out_d2 if k.startswith(("loss_kd_", "kd/")))
    for k in kd:
        a, b = float(out_d2[k]), float(out_ours[k])
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9), f"{kind} {k}: Detectron2 {a} vs bcd {b}"
    # not a comparison of zeros: every main KD term is non-trivial here
    for k in ("loss_kd_boundary", "loss_kd_boundary_teacher_head", "loss_kd_context", "loss_kd_cwd", "loss_kd_pkd"):
        assert float(out_ours[k]) > 1e-4, (k, float(out_ours[k]))
