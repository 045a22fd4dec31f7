"""APD on detector FPN levels (the extension, bcd/distill/losses/apd.py ``APDDetection``) and the
pixel-KD switches of the APD recipe (``KD.PIXEL_KD.REDUCTION`` / ``RESIZE``)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bcd.config import get_cfg
from bcd.distill.losses import KD_LOSS_REGISTRY, FeatureShape, KDContext
from bcd.distill.losses.apd import APDDetection, apd_terms, assign_fpn_levels, detection_level_labels
from bcd.structures.image_batch import ImageBatch
from bcd.structures.instances import Instances


def _ctx(batch, mask=False):
    names = {f.name for f in dataclasses.fields(KDContext)}
    kw = {"mask": mask} if "mask" in names else {"use_label_mask": mask}
    return KDContext(batch, batch, None, None, {}, 0, 10, ignore_value=255, **kw)


def test_fpn_level_rule():
    # sqrt(wh) = 224 -> level 4; 112 -> 3; 448 -> 5; 20 -> clamped to 3; 2000 -> clamped to 7
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [10, 10, 458, 458],
                          [0, 0, 20, 20], [0, 0, 2000, 2000]], dtype=torch.float32)
    assert assign_fpn_levels(boxes, 3, 7).tolist() == [4, 3, 5, 3, 7]
    assert assign_fpn_levels(boxes, 3, 7, canonical_box_size=112).tolist() == [5, 4, 6, 3, 7]


def test_one_fpn_level_rule_for_rois_and_apd():
    # the rule RoI pooling used before (torchvision's LevelMapper) on random boxes, and the
    # pooler itself assigns by it
    from torchvision.ops.poolers import LevelMapper

    from bcd.modeling.heads.roi_heads import ROIPooler
    from bcd.modeling.heads.roi_heads import assign_fpn_levels as owner

    assert assign_fpn_levels is owner
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 800
    wh = torch.exp(torch.rand(500, 2, generator=g) * 7)  # 1 .. 1100 px sides
    boxes = torch.cat([xy, xy + wh], 1)
    ref = LevelMapper(2, 5, canonical_scale=224, canonical_level=4)([boxes]) + 2
    assert torch.equal(owner(boxes, 2, 5), ref)
    pooler = ROIPooler(7, [4, 8, 16, 32])
    feats = [torch.full((1, 1, 256 // s, 256 // s), float(s)) for s in (4, 8, 16, 32)]
    pooled = pooler(feats, [boxes[:20] / 4])
    expected = torch.tensor([4.0, 8.0, 16.0, 32.0])[owner(boxes[:20] / 4, 2, 5) - 2]
    assert torch.allclose(pooled.amax(dim=(1, 2, 3)), expected)


def test_level_labels_by_hand():
    # 16x16 input, an 8x8 image in it (the rest is padding); level grid 4x4 (stride 4):
    # cell centres at 2, 6, 10, 14 px.
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 4.0], [4.0, 0.0, 8.0, 7.0]])]
    classes = [torch.tensor([1, 0])]
    levels = [torch.tensor([3, 4])]  # the second box belongs to another level
    lab = detection_level_labels(boxes, classes, levels, 3, (4, 4), (16, 16), [(8, 8)], 2, -1)
    K_bg, I = 2, -1
    expected = torch.tensor([
        [1, I, I, I],     # y=2: x=2 in box 0; x=6 in both boxes (the smaller, box 1, is painted last)
        [K_bg, I, I, I],  # y=6: x=2 background, x=6 in box 1 (other level)
        [I, I, I, I],     # y=10, 14: padding
        [I, I, I, I],
    ])
    assert torch.equal(lab[0], expected)


def _cfg():
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.KD.APD.ADAPT_DIM = 8
    cfg.KD.APD.STUDENT_FEATURES = ["backbone[p3]", "backbone[p4]"]
    cfg.KD.APD.TEACHER_FEATURES = ["backbone[p3]", "backbone[p4]"]
    cfg.KD.APD.DET.CANONICAL_BOX_SIZE = 32.0  # 32-px boxes -> P4, smaller -> P3
    return cfg


def test_detection_loss_matches_the_terms_per_level_and_trains_tr_t_only():
    assert KD_LOSS_REGISTRY.get("APDDetection") is APDDetection
    torch.manual_seed(0)
    shapes_s = {"backbone[p3]": FeatureShape(6, 8, 8, (64, 64)), "backbone[p4]": FeatureShape(6, 4, 4, (64, 64))}
    shapes_t = {"backbone[p3]": FeatureShape(10, 8, 8, (64, 64)), "backbone[p4]": FeatureShape(10, 4, 4, (64, 64))}
    m = APDDetection(_cfg(), shapes_s, shapes_t)
    assert m.levels == [3, 4] and m.num_classes == 3
    m.train()
    g = torch.Generator().manual_seed(1)
    xs = {k: torch.randn(2, 6, v.height, v.width, generator=g, requires_grad=True) for k, v in shapes_s.items()}
    xt = {k: torch.randn(2, 10, v.height, v.width, generator=g) for k, v in shapes_t.items()}
    inst = [Instances((64, 64), gt_boxes=torch.tensor([[0.0, 0.0, 32.0, 32.0], [40.0, 40.0, 56.0, 56.0]]),
                      gt_classes=torch.tensor([2, 0])),
            Instances((48, 64), gt_boxes=torch.tensor([[8.0, 8.0, 24.0, 24.0]]), gt_classes=torch.tensor([1]))]
    batch = ImageBatch(torch.zeros(2, 3, 64, 64), [(64, 64), (48, 64)], instances=inst)
    # expected, with the adapters as they are before the teacher-adapter step
    exp_ap, exp_pa = [], []
    with torch.no_grad():
        for lvl, k in zip((3, 4), shapes_t):
            lv = [assign_fpn_levels(i.gt_boxes, 3, 4, 32.0, 4) for i in inst]
            lab = detection_level_labels([i.gt_boxes for i in inst], [i.gt_classes for i in inst], lv, lvl,
                                         tuple(xt[k].shape[-2:]), (64, 64), batch.image_sizes, 3, -1)
            assert (lab == 3).any()  # background is a class of its own
            t = apd_terms(m.student_adapter(xs[k]), m.teacher_adapter(xt[k]), lab, None, 4, 10.0, -1)
            exp_ap.append(t["ap"]); exp_pa.append(t["pa"])
    out = m(xs, xt, _ctx(batch))
    assert out["loss_kd_apd_det"].item() == pytest.approx(10 * torch.stack(exp_ap).mean().item(), rel=1e-5)
    assert out["loss_kd_apd_det_pa"].item() == pytest.approx(10 * torch.stack(exp_pa).mean().item(), rel=1e-5)
    # apd_soft (the objective of Tr_T's optimizer) reaches Tr_T only
    assert list(m.extra_optimizers()) == ["teacher_adapter"]
    tr_t = list(m.teacher_adapter.parameters())
    grads = torch.autograd.grad(out["apd_soft"], list(xs.values()) + tr_t, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads[:len(xs)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(xs):])
    (out["loss_kd_apd_det"] + out["loss_kd_apd_det_pa"]).backward()
    assert all(p.grad is None for p in m.teacher_adapter.parameters())
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs.values())


@pytest.mark.parametrize("config,expected", [
    ("configs/coco/mask_rcnn_r50.yaml", 80), ("configs/coco/cascade_mask_rcnn_r50.yaml", 80),
    ("configs/coco/retinanet_r50.yaml", 80), ("configs/coco/gfl_r50.yaml", 80),
    ("configs/demo/det_retinanet_student.yaml", 3),
])
def test_detector_class_count_comes_from_the_meta_architecture(config, expected):
    # one owner: the meta-architecture's CLASS_COUNT, also read by the start-of-run checks
    import os

    from bcd.distill.losses.apd import _detector_num_classes
    from bcd.modeling.meta_arch import class_count_key

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(root, config))
    assert _detector_num_classes(cfg) == expected
    assert class_count_key(cfg.MODEL.META_ARCHITECTURE).num_classes(cfg) == expected


def test_detection_loss_rejects_a_segmentor_config():
    cfg = _cfg()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    shapes = {"backbone[p3]": FeatureShape(6, 8, 8, (64, 64)), "backbone[p4]": FeatureShape(6, 4, 4, (64, 64))}
    with pytest.raises(ValueError, match="META_ARCHITECTURE"):
        APDDetection(cfg, shapes, shapes)


# ------------------------------------------------------------------ pixel KD, APD's switches
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
def test_pixel_kd_elementwise_at_input_size_is_the_codes_kldivloss():
    from bcd.distill.losses.pixel_kd import PixelKD

    cfg = get_cfg()
    node = cfg.KD.PIXEL_KD
    node.MASK, node.REDUCTION, node.RESIZE = False, "elementwise", "input"
    shape = FeatureShape(5, 4, 4, (32, 32))
    m = PixelKD(cfg, {"sem_seg_head.predictor": shape}, {"sem_seg_head.predictor": shape})
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    batch = ImageBatch(torch.zeros(2, 3, 32, 32), [(32, 32), (24, 32)])
    out = m({"sem_seg_head.predictor": s}, {"sem_seg_head.predictor": t}, _ctx(batch))["loss_kd_pixel"]
    # tool/train.py CriterionKD: both upsampled (align_corners=True), KLDivLoss() default mean
    up = lambda x: F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=True)  # noqa: E731
    ref = torch.nn.KLDivLoss()(F.log_softmax(up(s), dim=1), F.softmax(up(t), dim=1))
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    node.REDUCTION, node.RESIZE = "tokens", "logits"
    tok = PixelKD(cfg, {"sem_seg_head.predictor": shape}, {"sem_seg_head.predictor": shape})
    out2 = tok({"sem_seg_head.predictor": s}, {"sem_seg_head.predictor": t}, _ctx(batch))["loss_kd_pixel"]
    ref2 = torch.nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s, 1).permute(0, 2, 3, 1).reshape(-1, 5), F.softmax(t, 1).permute(0, 2, 3, 1).reshape(-1, 5))
    assert out2.item() == pytest.approx(ref2.item(), rel=1e-5)
    node.REDUCTION = "sum"
    with pytest.raises(ValueError, match="KD.PIXEL_KD.REDUCTION"):
        PixelKD(cfg, {"sem_seg_head.predictor": shape}, {"sem_seg_head.predictor": shape})


# ------------------------------------------------------------------ through the Distiller
@pytest.mark.parametrize("student_cfg,teacher_cfg", [
    ("configs/demo/apd_det_retinanet_student.yaml", "configs/demo/det_retinanet_teacher.yaml"),
    ("configs/demo/apd_det_gfl_student.yaml", "configs/demo/det_gfl_teacher.yaml"),
])
def test_detector_distiller_step(tmp_path, student_cfg, teacher_cfg):
    import os

    from bcd.distill import build_model

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tcfg = get_cfg()
    tcfg.merge_from_file(os.path.join(root, teacher_cfg))
    torch.manual_seed(0)
    w = tmp_path / "teacher.pth"
    torch.save({"model": build_model(tcfg).state_dict()}, w)
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(root, student_cfg))
    cfg.KD.TEACHER.WEIGHTS = str(w)
    cfg.KD.SHAPE_PROBE_SIZE = [64, 64]
    m = build_model(cfg)
    m.train()
    apd = m.kd_modules["apd_det"]
    assert apd.levels == [3, 4, 5, 6, 7]
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(2):
        inst = Instances((64, 96), gt_boxes=torch.tensor([[4.0, 4.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]]),
                         gt_classes=torch.tensor([0, 2]))
        inputs.append({"image": torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8),
                       "instances": inst, "height": 64, "width": 96, "image_id": i})
    before = [p.detach().clone() for p in apd.teacher_adapter.parameters()]
    losses = m(inputs)
    assert {"loss_kd_apd_det", "loss_kd_apd_det_pa", "apd_soft"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is None for p in apd.teacher_adapter.parameters())
    assert all(p.grad is not None for p in apd.student_adapter.parameters())
    # one trainer step: the Distiller publishes the adapter's optimizer, the trainer steps it
    from bcd.engine.train_loop import SimpleTrainer
    from bcd.solver import build_extra_optimizers, build_optimizer
    from bcd.utils.events import EventStorage

    extra = build_extra_optimizers(cfg, m)
    assert list(extra) == ["apd_det.teacher_adapter"]
    trainer = SimpleTrainer(m, iter([inputs]), build_optimizer(cfg, m), extra_optimizers=extra)
    with EventStorage(0):
        trainer.run_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, apd.teacher_adapter.parameters()))
