"""SemanticSegmentor: every backbone × head, losses, named modules, test-time modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bcd.modeling import build_model
from bcd.modeling.meta_arch.semantic_seg import semantic_cross_entropy

BACKBONES = ["resnet18", "resnet50", "mobilenetv2", "efficientnet_b1", "timm:test_resnet"]
HEADS = ["PSPHead", "DeepLabV3PlusHead", "SemanticFPNHead"]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", HEADS)
def test_forward_backward_every_combination(seg_cfg, seg_inputs, backbone, head):
    torch.manual_seed(0)
    cfg = seg_cfg(head=head, backbone=backbone, num_classes=5)
    model = build_model(cfg)
    model.train()
    inputs = seg_inputs(n=2, h=64, w=64, num_classes=5)

    # named modules (distillation hooks) exist and record what the docs say
    names = dict(model.named_modules())
    for n in ["backbone.stem", "backbone.res2", "backbone.res3", "backbone.res4", "backbone.res5",
              "sem_seg_head.feature", "sem_seg_head.predictor", "aux_head"]:
        assert n in names, n
    seen = {}
    for n in ["backbone.res2", "backbone.res5", "sem_seg_head.feature", "sem_seg_head.predictor"]:
        names[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))

    losses = model(inputs)
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    # random init, 5 classes: CE close to log(5) (aux scaled by 0.4)
    assert abs(losses["loss_sem_seg"].item() - np.log(5)) < 0.5
    sum(losses.values()).backward()
    backbone_grads = [p.grad for p in names["backbone"].parameters() if p.grad is not None]
    assert backbone_grads and sum(g.abs().sum() for g in backbone_grads) > 0
    assert model.sem_seg_head.predictor.weight.grad.abs().sum() > 0
    assert model.aux_head.predictor.weight.grad.abs().sum() > 0

    shapes = model.backbone.output_shape()
    assert seen["backbone.res2"].shape[-2:] == (64 // shapes["res2"].stride,) * 2
    assert seen["backbone.res5"].shape[-2:] == (64 // shapes["res5"].stride,) * 2
    logits = seen["sem_seg_head.predictor"]
    assert logits.shape[:2] == (2, 5)
    assert seen["sem_seg_head.feature"].shape[0] == 2
    assert seen["sem_seg_head.feature"].shape[-2:] == logits.shape[-2:]

    model.eval()
    batch = model.preprocess(inputs)
    ex = model.extract(batch)
    assert ex["logits"].shape == logits.shape
    assert set(ex["features"]) == {"res2", "res3", "res4", "res5"}
    outs = model(inputs)
    assert len(outs) == 2 and outs[0]["sem_seg"].shape == (5, 64, 64)
    torch.testing.assert_close(outs[0]["sem_seg"].sum(0), torch.ones(64, 64))


def test_head_output_strides(seg_cfg):
    """PSP: logits at res5's stride (8 here); DeepLabV3+ and Semantic FPN: 1/4."""
    x = [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}] * 2
    for head, stride in [("PSPHead", 8), ("DeepLabV3PlusHead", 4), ("SemanticFPNHead", 4)]:
        model = build_model(seg_cfg(head=head)).eval()
        assert model.extract(model.preprocess(x))["logits"].shape == (2, 5, 64 // stride, 64 // stride)


def test_loss_matches_brute_force_and_ignores_pixels(seg_cfg, seg_inputs):
    cfg = seg_cfg()
    cfg.MODEL.AUX_HEAD.ENABLED = False
    model = build_model(cfg)
    model.train()
    inputs = seg_inputs(n=2, h=64, w=64)
    seen = {}
    model.sem_seg_head.predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("z", o))
    loss = model(inputs)["loss_sem_seg"].item()
    up = F.interpolate(seen["z"], size=(64, 64), mode="bilinear", align_corners=False)
    logp = torch.log_softmax(up.double(), dim=1).detach().numpy()
    labels = torch.stack([x["sem_seg"] for x in inputs]).numpy()
    total, count = 0.0, 0
    for b in range(2):
        for y in range(64):
            for x in range(64):
                if labels[b, y, x] != 255:
                    total -= logp[b, labels[b, y, x], y, x]
                    count += 1
    assert count == 2 * 56 * 64
    assert loss == pytest.approx(total / count, rel=1e-5)
    # changing the logits of ignored pixels changes nothing: all-ignore gives 0, not NaN
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    t = torch.full((1, 4, 4), 255)
    out = semantic_cross_entropy(z, t, 255)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_aux_loss_weight(seg_cfg, seg_inputs):
    cfg = seg_cfg()
    model = build_model(cfg)
    model.train()
    seen = {}
    model.aux_head.predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("aux", o))
    inputs = seg_inputs()
    losses = model(inputs)
    target = torch.stack([x["sem_seg"] for x in inputs])
    up = F.interpolate(seen["aux"], size=(64, 64), mode="bilinear", align_corners=False)
    expected = 0.4 * F.cross_entropy(up, target, ignore_index=255)
    torch.testing.assert_close(losses["loss_aux"], expected)
    model.eval()
    model.aux_head.predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("eval", o))
    model(inputs)
    assert "eval" not in seen  # the auxiliary head only runs in training


def test_preprocess_pads_images_and_labels(seg_cfg):
    cfg = seg_cfg()
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    model = build_model(cfg)
    a = {"image": torch.full((3, 40, 50), 200, dtype=torch.uint8), "sem_seg": torch.ones(40, 50, dtype=torch.long)}
    b = {"image": torch.full((3, 30, 70), 10, dtype=torch.uint8), "sem_seg": torch.zeros(30, 70, dtype=torch.long)}
    batch = model.preprocess([a, b])
    assert batch.tensor.shape == (2, 3, 64, 96)
    assert batch.image_sizes == [(40, 50), (30, 70)]
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1)
    torch.testing.assert_close(batch.tensor[0, :, 0, :1], (200 - mean) / std)
    assert batch.tensor[0, :, 40:].abs().sum() == 0 and batch.tensor[0, :, :, 50:].abs().sum() == 0
    assert (batch.sem_seg[0, :40, :50] == 1).all() and (batch.sem_seg[0, 40:] == 255).all()
    assert (batch.sem_seg[1, :30, 70:] == 255).all() and (batch.sem_seg[1, :30, :70] == 0).all()
    # divisibility is at least the backbone stride, even when INPUT.SIZE_DIVISIBILITY is smaller
    cfg.INPUT.SIZE_DIVISIBILITY = 0
    assert build_model(cfg).size_divisibility == 8


def test_eval_output_at_original_size_and_padding_cropped(seg_cfg):
    torch.manual_seed(0)
    model = build_model(seg_cfg()).eval()
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    out = model([{"image": img, "height": 80, "width": 100}])[0]["sem_seg"]
    assert out.shape == (5, 80, 100)
    # equals: logits of the padded image, upsampled, cropped to 40×50, resized to 80×100
    batch = model.preprocess([{"image": img}])
    logits = model.extract(batch)["logits"]
    logits = F.interpolate(logits, size=batch.tensor.shape[-2:], mode="bilinear", align_corners=False)
    ref = F.interpolate(logits[:, :, :40, :50], size=(80, 100), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref[0].softmax(0))


def test_slide_equals_whole_when_window_covers_image(seg_cfg):
    torch.manual_seed(0)
    cfg = seg_cfg()
    model = build_model(cfg).eval()
    inputs = [{"image": torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8), "height": 48, "width": 64}]
    whole = model(inputs)[0]["sem_seg"]
    model.test_mode, model.test_crop_size, model.test_stride = "slide", (64, 96), (32, 32)
    slide = model(inputs)[0]["sem_seg"]
    torch.testing.assert_close(slide, whole)


def test_slide_windows_by_hand(seg_cfg):
    """64×48 image, 32×32 windows every 24 px: rows (0,32),(24,56),(32,64); cols (0,32),(16,48)."""
    torch.manual_seed(0)
    model = build_model(seg_cfg()).eval()
    model.test_crop_size, model.test_stride = (32, 32), (24, 24)
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        got = model.slide_logits(x)
        acc = torch.zeros(1, 5, 64, 48)
        cnt = torch.zeros(1, 1, 64, 48)
        for y1, y2 in [(0, 32), (24, 56), (32, 64)]:
            for x1, x2 in [(0, 32), (16, 48)]:
                acc[:, :, y1:y2, x1:x2] += model.whole_logits(x[:, :, y1:y2, x1:x2])
                cnt[:, :, y1:y2, x1:x2] += 1
    assert cnt.min() >= 1
    torch.testing.assert_close(got, acc / cnt)


def test_flip_and_multiscale_tta(seg_cfg):
    torch.manual_seed(0)
    model = build_model(seg_cfg()).eval()
    img = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    inp = [{"image": img, "height": 64, "width": 64}]
    inp_flipped = [{"image": img.flip(-1), "height": 64, "width": 64}]
    plain = model(inp)[0]["sem_seg"]
    model.test_flip = True
    flip = model(inp)[0]["sem_seg"]
    # flip TTA averages the image and its mirror: mirroring the input mirrors the output exactly
    torch.testing.assert_close(model(inp_flipped)[0]["sem_seg"], flip.flip(-1))
    assert not torch.allclose(flip, plain)
    model.test_flip = False
    plain_flipped = model(inp_flipped)[0]["sem_seg"].flip(-1)
    torch.testing.assert_close(flip, (plain + plain_flipped) / 2)
    # multi-scale: the mean of the single-scale probabilities
    model.test_scales = [0.5]
    half = model(inp)[0]["sem_seg"]
    assert half.shape == (5, 64, 64)
    model.test_scales = [0.5, 1.0]
    torch.testing.assert_close(model(inp)[0]["sem_seg"], (half + plain) / 2)


def test_config_errors(seg_cfg):
    cfg = seg_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NAME = "NoHead"
    with pytest.raises(KeyError, match="NoHead"):
        build_model(cfg)
    cfg = seg_cfg()
    cfg.TEST.SEM_SEG.MODE = "tiles"
    with pytest.raises(ValueError, match="TEST.SEM_SEG.MODE"):
        build_model(cfg)
    cfg = seg_cfg(head="DeepLabV3PlusHead")
    cfg.MODEL.SEM_SEG_HEAD.LOW_LEVEL_FEATURE = "res1"
    with pytest.raises(ValueError, match="LOW_LEVEL_FEATURE"):
        build_model(cfg)
    cfg = seg_cfg()
    model = build_model(cfg).train()
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}] * 2)
    bad = {"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "sem_seg": torch.zeros(16, 16).long(),
           "file_name": "a.jpg"}
    with pytest.raises(ValueError, match="a.jpg"):
        model([bad, bad])


def test_eval_accepts_labels_at_original_size(seg_cfg):
    """The test mapper resizes the image (INPUT.BASE_SIZE) but keeps the label at the original
    size: evaluation outputs are at height × width, the label is left to the evaluator."""
    model = build_model(seg_cfg()).eval()
    x = {"image": torch.zeros(3, 32, 48, dtype=torch.uint8), "sem_seg": torch.zeros(64, 96).long(),
         "height": 64, "width": 96}
    assert model.preprocess([x]).sem_seg is None
    assert model([x])[0]["sem_seg"].shape == (5, 64, 96)


def test_every_meta_architecture_batches_through_image_batch_from_inputs():
    """Preprocessing (normalise, pad, batch) has one owner, ``ImageBatch.from_inputs``: each
    meta-architecture's ``preprocess`` gives exactly its result, checked against hand-made
    padding and normalisation."""
    import inspect

    from bcd.modeling.meta_arch import META_ARCH_REGISTRY
    from bcd.structures import ImageBatch, Instances

    mean = torch.tensor([100.0, 110.0, 120.0]).view(3, 1, 1)
    std = torch.tensor([50.0, 60.0, 70.0]).view(3, 1, 1)
    g = torch.Generator().manual_seed(0)
    ims = [torch.randint(0, 256, (3, 5, 7), generator=g, dtype=torch.uint8),
           torch.randint(0, 256, (3, 6, 4), generator=g, dtype=torch.uint8)]
    labs = [torch.randint(0, 3, (5, 7), generator=g), torch.randint(0, 3, (6, 4), generator=g)]
    inputs = [{"image": im, "sem_seg": lab, "instances": Instances(tuple(im.shape[-2:]))} for im, lab in zip(ims, labs)]
    b = ImageBatch.from_inputs(inputs, mean, std, size_divisibility=4, ignore_value=9)
    assert b.tensor.shape == (2, 3, 8, 8) and b.image_sizes == [(5, 7), (6, 4)]
    exp = torch.zeros(2, 3, 8, 8)
    exp[0, :, :5, :7] = (ims[0].float() - mean) / std
    exp[1, :, :6, :4] = (ims[1].float() - mean) / std
    assert torch.equal(b.tensor, exp)
    lab = torch.full((2, 8, 8), 9)
    lab[0, :5, :7], lab[1, :6, :4] = labs[0], labs[1]
    assert torch.equal(b.sem_seg, lab) and len(b.instances) == 2
    # a label of another size: left out, or (training) an error naming the input
    bad = [dict(inputs[0], sem_seg=labs[1], file_name="x.png"), inputs[1]]
    assert ImageBatch.from_inputs(bad, mean, std, 4).sem_seg is None
    with pytest.raises(ValueError, match=r"'x.png': sem_seg of size \(6, 4\) does not match its image \(5, 7\)"):
        ImageBatch.from_inputs(bad, mean, std, 4, strict_labels=True)
    # every registered meta-architecture's preprocess is this one function
    for name, cls in META_ARCH_REGISTRY:
        fn = getattr(cls, "preprocess", None)
        if fn is None or name == "Distiller":
            continue
        assert "ImageBatch.from_inputs(" in inspect.getsource(fn), name


def test_every_meta_architecture_declares_its_class_count():
    """``CLASS_COUNT`` (a ``ClassCountKey``) on every meta-architecture of ``bcd``, naming a key
    of the default config; the Mask2Former segmentor's is the semantic segmentor's."""
    from bcd.config import get_cfg
    from bcd.modeling.meta_arch import META_ARCH_REGISTRY, ClassCountKey
    from bcd.modeling.meta_arch.mask2former import Mask2FormerSegmentor
    from bcd.modeling.meta_arch.semantic_seg import SemanticSegmentor

    cfg = get_cfg()
    for name, cls in META_ARCH_REGISTRY:
        if name == "Distiller" or not cls.__module__.startswith("bcd."):
            continue  # the Distiller's is its student's; test toys registered by other tests
        key = getattr(cls, "CLASS_COUNT", None)
        assert isinstance(key, ClassCountKey), name
        if key.num_classes_key:
            assert key.num_classes(cfg) > 0, name
    assert Mask2FormerSegmentor.CLASS_COUNT == SemanticSegmentor.CLASS_COUNT
