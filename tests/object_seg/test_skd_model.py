"""ObjectSegmentor and its self-distillation: deployed model = inference network alone (state-
dict keys, params, FLOPs), no gradient into the auxiliary branches from the inference path,
the losses against independent computations, and the method switches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bcd.distill.report import count_flops, count_params
from bcd.engine import Checkpointer
from bcd.modeling import build_model
from bcd.modeling.losses.object_seg import (
    binary_distillation,
    feature_consistency,
    structure_loss,
)


def _cfg(cfg, method="skd", backbone="r18", **skd):
    cfg.MODEL.META_ARCHITECTURE = "ObjectSegmentor"
    if backbone == "mnv2":
        cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_backbone"
        cfg.MODEL.MOBILENETV2.OUTPUT_STRIDE = 32
        cfg.MODEL.MOBILENETV2.WIDTH_MULTIPLIER = 0.25
    else:
        cfg.MODEL.RESNETS.DEPTH = 18 if backbone == "r18" else 50
        cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = 0.125 if backbone == "r18" else 0.0625
    cfg.MODEL.OBJECT_SEG.CHANNELS = 8
    cfg.MODEL.OBJECT_SEG.STRUCTURE_KERNEL = 5
    cfg.MODEL.SKD.AUX_CHANNELS = 8
    cfg.MODEL.SKD.METHOD = method
    for k, v in skd.items():
        cfg.MODEL.SKD[k] = v
    return cfg


def _inputs(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.zeros(size, size, dtype=torch.long)
        mask[size // 4 : size // 2, size // 4 : 3 * size // 4] = 1
        out.append({"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=g),
                    "sem_seg": mask, "height": size, "width": size})
    return out


def _f3net_structure_loss(pred, mask):
    # F3Net (Wei et al. 2020), train.py, with `reduce='none'` spelt in today's API
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    wbce = F.binary_cross_entropy_with_logits(pred, mask, reduction="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    pred = torch.sigmoid(pred)
    inter = ((pred * mask) * weit).sum(dim=(2, 3))
    union = ((pred + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def test_structure_loss_equals_f3net():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 40, 40, generator=g)
    target = (torch.rand(3, 40, 40, generator=g) > 0.6).long()
    ours = structure_loss(logits, target, kernel=31)
    assert ours.item() == pytest.approx(_f3net_structure_loss(logits, target[:, None].float()).item(), rel=1e-6)
    # ignored pixels (padding) change nothing when they carry weight 0 in both terms
    valid = torch.ones(3, 40, 40, dtype=torch.bool)
    assert structure_loss(logits, target, valid, 31).item() == pytest.approx(ours.item(), rel=1e-6)


def test_binary_distillation_values_and_stop_gradient():
    s = torch.tensor([[[[0.0, 2.0]]]], requires_grad=True)
    t = torch.tensor([[[[1.0, -1.0]]]], requires_grad=True)
    ps, pt = torch.sigmoid(s.detach()), torch.sigmoid(t.detach())
    bce = -(pt * ps.log() + (1 - pt) * (1 - ps).log()).mean()
    assert binary_distillation(s, t, 1.0, "bce").item() == pytest.approx(bce.item(), rel=1e-6)
    ent = -(pt * pt.log() + (1 - pt) * (1 - pt).log()).mean()
    assert binary_distillation(s, t, 1.0, "kl").item() == pytest.approx((bce - ent).item(), rel=1e-5)
    assert binary_distillation(s, t, 1.0, "mse").item() == pytest.approx(((ps - pt) ** 2).mean().item(), rel=1e-6)
    # temperature: T^2 * BCE(σ(s/T), σ(t/T))
    ps2, pt2 = torch.sigmoid(s.detach() / 2), torch.sigmoid(t.detach() / 2)
    bce2 = -(pt2 * ps2.log() + (1 - pt2) * (1 - ps2).log()).mean() * 4
    assert binary_distillation(s, t, 2.0, "bce").item() == pytest.approx(bce2.item(), rel=1e-6)
    binary_distillation(s, t, 1.0, "kl").backward()
    assert s.grad is not None and t.grad is None  # the teacher map is sg(·)
    with pytest.raises(ValueError, match="DIVERGENCE"):
        binary_distillation(s, t, 1.0, "js")


def test_feature_consistency_value():
    u = torch.tensor([[[[3.0]], [[4.0]]]], requires_grad=True)  # 1×2×1×1, norm 5
    a = torch.tensor([[[[1.0]], [[0.0]]]], requires_grad=True)
    expected = (0.6 - 1.0) ** 2 + (0.8 - 0.0) ** 2
    loss = feature_consistency(u, a)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert a.grad is None and u.grad is not None


@pytest.mark.parametrize("backbone", ["r18", "mnv2"])
def test_deployed_model_is_the_inference_network(cfg, backbone):
    skd = build_model(_cfg(cfg.clone(), "skd", backbone))
    plain = build_model(_cfg(cfg.clone(), "none", backbone))
    deployed = skd.deploy_model()
    keys = set(deployed.state_dict())
    assert keys == set(plain.state_dict())
    assert not any(k.startswith("aux.") for k in keys)
    assert any(k.startswith("aux.") for k in skd.state_dict())
    assert count_params(deployed) == count_params(plain) < count_params(skd)
    flops = count_flops(deployed, (64, 64))
    assert flops is not None and flops == count_flops(plain, (64, 64))
    # the full model's traced inference path is the same network: the aux branches never run
    assert count_flops(skd, (64, 64)) == flops
    # the view shares the weights (no copy)
    assert deployed.decoder.predictor.weight is skd.decoder.predictor.weight


def test_no_gradient_reaches_aux_at_test_time(cfg):
    model = build_model(_cfg(cfg, "skd"))
    model.eval()
    batch = model.preprocess(_inputs(1))
    logits = model.whole_logits(batch.tensor)  # the inference path, with autograd on
    logits.sum().backward()
    assert all(p.grad is None for p in model.aux.parameters())
    assert model.decoder.predictor.weight.grad is not None
    out = model(_inputs(1))
    assert out[0]["object_seg"].shape == (32, 32)


def test_inference_path_terms_send_no_gradient_into_aux(cfg):
    # Only the losses of the inference output / features: top-down (its finest-map term) and
    # feature consistency must leave the aux network untouched (teachers are detached).
    model = build_model(_cfg(cfg, "skd", TOP_DOWN_WEIGHT=1.0))
    model.train()
    batch = model.preprocess(_inputs(2))
    levels = model._levels(model.backbone(batch.tensor))
    p_inf, feats = model.decoder(levels)
    aux_logits, aux_feats = model.aux(levels)
    loss = binary_distillation(p_inf, aux_logits[0]) + sum(
        feature_consistency(u, a) for u, a in zip(feats, aux_feats))
    loss.backward()
    assert all(p.grad is None for p in model.aux.parameters())


@pytest.mark.parametrize(
    "method,keys",
    [
        ("none", {"loss_object_seg"}),
        ("skd", {"loss_object_seg", "loss_aux", "loss_skd_top_down", "loss_skd_consistency"}),
        ("byot", {"loss_object_seg", "loss_aux", "loss_byot_kd", "loss_byot_feature"}),
        ("dks", {"loss_object_seg", "loss_aux", "loss_dks"}),
    ],
)
def test_methods_train_and_give_their_losses(cfg, method, keys):
    model = build_model(_cfg(cfg, method))
    model.train()
    losses = model(_inputs(2))
    assert set(losses) == keys
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    if method != "none":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux.parameters())


def test_switches(cfg):
    m = build_model(_cfg(cfg.clone(), "skd", PYRAMID="denseaspp", CONSISTENCY="prediction", DIVERGENCE="kl"))
    m.train()
    assert "loss_skd_consistency" in m(_inputs(2))
    assert m.aux.top_down
    assert not build_model(_cfg(cfg.clone(), "byot")).aux.top_down  # independent branches
    assert build_model(_cfg(cfg.clone(), "byot", AUX_FUSION="top_down")).aux.top_down
    with pytest.raises(ValueError, match="METHOD"):
        build_model(_cfg(cfg.clone(), "selfie"))
    with pytest.raises(ValueError, match="AUX_CHANNELS"):
        build_model(_cfg(cfg.clone(), "skd", AUX_CHANNELS=16))
    bad = _cfg(cfg.clone(), "none")
    bad.MODEL.OBJECT_SEG.IN_FEATURES = ["res2", "res9"]
    with pytest.raises(KeyError, match="res9"):
        build_model(bad)


def test_model_final_loads_into_training_config_model(cfg, tmp_path):
    torch.manual_seed(0)
    trained = build_model(_cfg(cfg.clone(), "skd"))
    trained.eval()
    Checkpointer(trained, save_dir=str(tmp_path)).save_model_only("model_final")  # as PeriodicCheckpointer
    state = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert not any(k.startswith("aux.") for k in state)
    torch.manual_seed(1)
    fresh = build_model(_cfg(cfg.clone(), "skd"))  # --eval-only builds the training config
    fresh.eval()
    Checkpointer(fresh).load(str(tmp_path / "model_final.pth"))
    inp = _inputs(1)
    assert torch.allclose(fresh(inp)[0]["object_seg"], trained(inp)[0]["object_seg"])
