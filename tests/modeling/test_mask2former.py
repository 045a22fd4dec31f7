"""Mask2Former as a semantic segmentor / distillation teacher on transformers' model code: the
configs build with transformers' own parameter count (the paper's R50 teacher: 44.0 M), the
published logits are Mask2Former's semantic inference computed independently from transformers'
outputs, the features have the documented strides, a save_pretrained checkpoint loads through
our config (MODEL.WEIGHTS, KD.TEACHER.WEIGHTS, hf:// names), the training loss is transformers'
Mask2Former loss, and ImageNet backbone checkpoints load. Nothing downloads."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from transformers import Mask2FormerForUniversalSegmentation, SwinConfig, SwinForImageClassification

from bcd.config import get_cfg
from bcd.engine import Checkpointer
from bcd.modeling import build_model
from bcd.modeling.backbone.weights import PretrainedWeightsError
from bcd.modeling.meta_arch.mask2former import mask2former_config, semantic_targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = "configs/demo/mask2former_teacher.yaml"


def _cfg(path: str = DEMO, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.merge_from_list(list(opts))
    return cfg


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("path,millions", [("configs/ade20k/mask2former_r50.yaml", 44.0),
                                           ("configs/ade20k/mask2former_swin_t.yaml", 47.4)])
def test_configs_build_with_transformers_parameter_count(path, millions):
    cfg = _cfg(path, "MODEL.BACKBONE.WEIGHTS", "", "MODEL.DEVICE", "meta")
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150
    with torch.device("meta"):
        ours = build_model(cfg)
        ref = Mask2FormerForUniversalSegmentation(mask2former_config(cfg))
    assert _count(ours) == _count(ref)  # the wrapper adds no parameter
    assert round(_count(ours) / 1e6, 1) == millions  # R50: the paper's 44.0 M (Table II)
    assert ours.mask2former.config.num_labels == 150 and ours.mask2former.config.num_queries == 100


def _random_teacher(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _inputs(n=2, h=64, w=96, classes=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, classes, (h, w), generator=g)
        label[: h // 8] = 255
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                    "sem_seg": label, "height": h, "width": w})
    return out


@pytest.mark.parametrize("features", ["pixel_decoder", "backbone"])
def test_published_logits_and_features(features):
    cfg = _cfg(DEMO, "MODEL.MASK2FORMER.FEATURES", features)
    model = _random_teacher(cfg)
    with torch.no_grad():
        batch = model.preprocess(_inputs())
        out = model.extract(batch)
        hf = model.mask2former(pixel_values=batch.tensor, output_hidden_states=True)
    # Mask2Former's semantic inference, written out query by query
    cls = hf.class_queries_logits.softmax(-1)[..., :-1]  # B x Q x K
    masks = hf.masks_queries_logits.sigmoid()  # B x Q x h x w
    scores = sum(cls[:, q, :, None, None] * masks[:, q, None] for q in range(cls.shape[1]))
    torch.testing.assert_close(out["logits"], scores.clamp_min(1e-6).log(), atol=1e-5, rtol=1e-5)
    assert out["logits"].shape == (2, 6, 16, 24)
    shapes = model.backbone.output_shape()
    want = {"pixel_decoder": [64, 64, 64, 64], "backbone": [32, 64, 128, 256]}[features]
    assert [shapes[n].channels for n in ("res2", "res3", "res4", "res5")] == want
    for name, s in shapes.items():
        assert out["features"][name].shape == (2, s.channels, 64 // s.stride, 96 // s.stride), name
    if features == "pixel_decoder":
        torch.testing.assert_close(out["features"]["res2"], hf.pixel_decoder_last_hidden_state)
        torch.testing.assert_close(out["features"]["res5"], hf.pixel_decoder_hidden_states[0])
    else:
        torch.testing.assert_close(out["features"]["res3"], hf.encoder_hidden_states[1])
    names = dict(model.named_modules())
    for n in ("backbone.res2", "backbone.res5", "sem_seg_head.feature", "sem_seg_head.predictor"):
        assert n in names
    # "scores": the same semantic scores, not their log
    cfg.MODEL.MASK2FORMER.LOGITS = "scores"
    model = _random_teacher(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model.extract(batch)["logits"], scores, atol=1e-5, rtol=1e-5)


def test_evaluation_is_the_semantic_inference_at_the_input_size():
    model = _random_teacher(_cfg())
    inputs = _inputs(n=1, h=60, w=90)  # padded to 64 x 96 inside
    with torch.no_grad():
        probs = model(inputs)[0]["sem_seg"]
        batch = model.preprocess(inputs)
        hf = model.mask2former(pixel_values=batch.tensor)
    masks = F.interpolate(hf.masks_queries_logits, size=(64, 96), mode="bilinear", align_corners=False)
    scores = torch.einsum("bqc,bqhw->bchw", hf.class_queries_logits.softmax(-1)[..., :-1], masks.sigmoid())
    want = scores[0, :, :60, :90]
    assert probs.shape == (6, 60, 90)
    torch.testing.assert_close(probs, want / want.sum(0, keepdim=True), atol=1e-5, rtol=1e-4)


def test_transformers_checkpoint_loads_as_weights_and_teacher(tmp_path, hf_cache):
    from bcd.distill.distiller import load_teacher_weights

    cfg = _cfg()
    source = _random_teacher(cfg, seed=3)
    folder = tmp_path / "m2f"
    source.mask2former.save_pretrained(folder)
    hf_cache("org/m2f-demo", str(folder))
    batch = source.preprocess(_inputs())
    with torch.no_grad():
        want = source.extract(batch)["logits"]
    for how, path in (("checkpointer", str(folder)), ("teacher", str(folder)), ("teacher", "hf://org/m2f-demo")):
        model = _random_teacher(cfg, seed=4)
        if how == "checkpointer":
            Checkpointer(model).load(path, checkpointables=[])
        else:
            load_teacher_weights(model, path)
        with torch.no_grad():
            torch.testing.assert_close(model.extract(batch)["logits"], want, rtol=0, atol=0)
    # another class count: named in the error
    other = _random_teacher(_cfg(DEMO, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9))
    other.mask2former.save_pretrained(tmp_path / "nine")
    with pytest.raises(ValueError, match=r"(?s)KD.TEACHER.WEIGHTS.*class_predictor"):
        load_teacher_weights(_random_teacher(cfg), str(tmp_path / "nine"))


def test_training_loss_is_transformers_mask2former_loss():
    cfg = _cfg()
    model = _random_teacher(cfg).train()
    inputs = _inputs()
    inputs[1]["sem_seg"][:] = 255  # an image without any labelled pixel still trains
    batch = model.preprocess(inputs)
    torch.manual_seed(5)  # the loss samples points at random
    losses = model.forward_batch(batch)
    assert {"loss_cross_entropy", "loss_mask", "loss_dice", "loss_dice_0"} <= set(losses)
    assert len(losses) == 3 * cfg.MODEL.MASK2FORMER.DEC_LAYERS
    total = sum(losses.values())
    assert torch.isfinite(total)
    masks, classes = semantic_targets(batch.sem_seg, 6, 255)
    torch.manual_seed(5)
    ref = model.mask2former(pixel_values=batch.tensor, mask_labels=masks, class_labels=classes).loss
    torch.testing.assert_close(total, ref)
    total.backward()
    assert model.mask2former.class_predictor.weight.grad.abs().sum() > 0


def test_semantic_targets():
    label = torch.tensor([[[0, 0, 255], [3, 3, 0]]])
    masks, classes = semantic_targets(label, 4, 255)
    assert classes[0].tolist() == [0, 3]
    assert masks[0].tolist() == [[[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [1, 1, 0]]]
    with pytest.raises(ValueError, match=r"labels \[7\] outside \[0, 4\)"):
        semantic_targets(torch.tensor([[[7]]]), 4, 255)


def test_imagenet_backbone_checkpoint_loads(tmp_path):
    cfg = _cfg()
    s = cfg.MODEL.MASK2FORMER.SWIN
    torch.manual_seed(6)
    imagenet = SwinForImageClassification(SwinConfig(embed_dim=s.EMBED_DIM, depths=list(s.DEPTHS),
                                                     num_heads=list(s.NUM_HEADS), window_size=s.WINDOW_SIZE,
                                                     num_labels=10))
    imagenet.save_pretrained(tmp_path / "swin")
    model = build_model(_cfg(DEMO, "MODEL.BACKBONE.WEIGHTS", str(tmp_path / "swin")))
    ours = model.mask2former.model.pixel_level_module.encoder.state_dict()
    theirs = imagenet.state_dict()  # SwinForImageClassification: swin.* as SwinBackbone
    shared = [k for k in ours if not k.startswith("hidden_states_norms")]
    assert len(shared) > 20 and set(shared) <= set(theirs)  # every trunk weight comes from the file
    for k in shared:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    # a checkpoint of another window size does not fit: the error names the key
    SwinForImageClassification(SwinConfig(embed_dim=s.EMBED_DIM, depths=list(s.DEPTHS), num_heads=list(s.NUM_HEADS),
                                          window_size=7, num_labels=10)).save_pretrained(tmp_path / "swin7")
    with pytest.raises(PretrainedWeightsError, match="MODEL.BACKBONE.WEIGHTS"):
        build_model(_cfg(DEMO, "MODEL.BACKBONE.WEIGHTS", str(tmp_path / "swin7")))


def test_bad_options_are_refused():
    for key, value, msg in [("MODEL.MASK2FORMER.FEATURES", "decoder", "MODEL.MASK2FORMER.FEATURES"),
                            ("MODEL.MASK2FORMER.LOGITS", "probs", "MODEL.MASK2FORMER.LOGITS"),
                            ("MODEL.MASK2FORMER.BACKBONE", "vit", "MODEL.MASK2FORMER.BACKBONE"),
                            ("MODEL.AUX_HEAD.ENABLED", True, "MODEL.AUX_HEAD.ENABLED")]:
        with pytest.raises(ValueError, match=msg):
            build_model(_cfg(DEMO, key, value))
