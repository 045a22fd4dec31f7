"""Backbones of semantic segmentation: named stages, strides, dilation, widths, torchvision parity."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from bcd.modeling.backbone import (
    EfficientNetBackbone,
    MobileNetV2Backbone,
    ResNet,
    TimmBackbone,
    build_backbone,
    get_norm,
)
from bcd.modeling.backbone.resnet import resnet_key_map

STAGES = ["res2", "res3", "res4", "res5"]


def _hooked_outputs(backbone: nn.Module, x: torch.Tensor):
    """Run ``backbone`` with forward hooks on ``stem``, ``res2``..``res5``; return what they saw."""
    seen = {}
    handles = [
        getattr(backbone, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n in ["stem"] + STAGES
    ]
    out = backbone(x)
    for h in handles:
        h.remove()
    return out, seen


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize(
    "output_stride,strides",
    [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])],
)
def test_resnet_stage_strides_and_hooks(depth, output_stride, strides):
    model = ResNet(depth, width_multiplier=0.25, output_stride=output_stride).eval()
    x = torch.randn(2, 3, 64, 96)
    out, seen = _hooked_outputs(model, x)
    shapes = model.output_shape()
    assert seen["stem"].shape[-2:] == (16, 24)
    for name, s in zip(STAGES, strides):
        assert shapes[name].stride == s
        assert out[name].shape == (2, shapes[name].channels, 64 // s, 96 // s)
        # the named module's output is the returned feature (what distillation hooks record)
        assert torch.equal(seen[name], out[name])
    assert model.size_divisibility == max(strides)


@pytest.mark.parametrize(
    "depth,width,channels",
    [
        (18, 0.5, [32, 64, 128, 256]),
        (18, 0.25, [16, 32, 64, 128]),
        (34, 0.5, [32, 64, 128, 256]),
        (50, 0.5, [128, 256, 512, 1024]),
        (18, 1.0, [64, 128, 256, 512]),
    ],
)
def test_resnet_width_multiplier_channels(depth, width, channels):
    model = ResNet(depth, width_multiplier=width)
    assert [model.output_shape()[n].channels for n in STAGES] == channels
    assert model.stem.conv1.out_channels == (channels[0] if depth < 50 else channels[0] // 4)
    # every conv of a stage is scaled: the widest 3×3 conv of res5 has 512·width channels
    convs3 = [m for m in model.res5.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert max(c.out_channels for c in convs3) == int(512 * width)


def test_resnet18_half_width_has_about_a_quarter_of_the_parameters():
    full = sum(p.numel() for p in ResNet(18, 1.0).parameters())
    half = sum(p.numel() for p in ResNet(18, 0.5).parameters())
    # conv weights scale with width², BN with width: between 1/4 and 1/4 + a little
    assert 0.24 < half / full < 0.26


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_torchvision_at_width_1(depth):
    """Same weights -> same features as torchvision's resnet (structure and key mapping)."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    ours = ResNet(depth).eval()
    ours.load_state_dict({resnet_key_map(k): v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    ref = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = ours(x)
    for i, name in enumerate(STAGES, start=1):
        ref = getattr(tv, f"layer{i}")(ref)
        torch.testing.assert_close(out[name], ref)


def test_resnet50_dilation_matches_torchvision_replace_stride_with_dilation():
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    ours = ResNet(50, output_stride=8).eval()
    ours.load_state_dict({resnet_key_map(k): v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    torch.testing.assert_close(ours(x)["res5"], ref)


def test_resnet18_dilation_pattern():
    """BasicBlock dilation (unsupported by torchvision): the stride-2 conv of a dilated stage
    gets stride 1 and the previous dilation, the others the stage dilation."""
    m = ResNet(18, 0.25, output_stride=8)
    assert m.res4[0].conv1.stride == (1, 1) and m.res4[0].conv1.dilation == (1, 1)
    assert m.res4[0].downsample[0].stride == (1, 1)
    assert m.res4[0].conv2.dilation == (2, 2) and m.res4[1].conv1.dilation == (2, 2)
    assert m.res5[0].conv1.dilation == (2, 2) and m.res5[0].conv1.padding == (2, 2)
    assert m.res5[1].conv2.dilation == (4, 4) and m.res5[1].conv2.padding == (4, 4)
    assert m.res3[0].conv1.stride == (2, 2)


def test_deep_stem():
    m = ResNet(18, 0.5, deep_stem=True).eval()
    assert [m.stem.conv1.out_channels, m.stem.conv2.out_channels, m.stem.conv3.out_channels] == [16, 16, 32]
    assert m(torch.randn(1, 3, 32, 32))["res2"].shape == (1, 32, 8, 8)


@pytest.mark.parametrize(
    "cls,kwargs,channels",
    [
        (MobileNetV2Backbone, {}, [24, 32, 96, 320]),
        (EfficientNetBackbone, {"variant": "b1"}, [24, 40, 112, 320]),
    ],
)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_mobile_backbones_strides(cls, kwargs, channels, output_stride):
    model = cls(output_stride=output_stride, **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    out, seen = _hooked_outputs(model, x)
    assert seen["stem"].shape[-2:] == (32, 32)
    for name, c in zip(STAGES, channels):
        s = model.output_shape()[name].stride
        assert s == min({"res2": 4, "res3": 8, "res4": 16, "res5": 32}[name], output_stride)
        assert out[name].shape == (1, c, 64 // s, 64 // s)
        assert torch.equal(seen[name], out[name])


@pytest.mark.parametrize(
    "cls,builder,end", [(MobileNetV2Backbone, "mobilenet_v2", 18), (EfficientNetBackbone, "efficientnet_b0", 8)]
)
def test_mobile_backbones_match_torchvision(cls, builder, end, tmp_path):
    """Loading torchvision's state dict gives torchvision's features (up to the dropped 1×1 conv)."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, builder)(weights=None).eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    kwargs = {"variant": "b0"} if cls is EfficientNetBackbone else {}
    ours = cls(output_stride=32, **kwargs).eval()
    ours.load_torchvision(str(path))
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x)["res5"], tv.features[:end](x))


def test_mobilenetv2_width_multiplier():
    m = MobileNetV2Backbone(width_multiplier=0.5, output_stride=8)
    assert [m.output_shape()[n].channels for n in STAGES] == [16, 16, 48, 160]


@pytest.mark.parametrize("output_stride", [32, 8])
def test_timm_backbone_named_levels(output_stride):
    model = TimmBackbone("test_resnet", output_stride=output_stride).eval()
    x = torch.randn(1, 3, 64, 64)
    out, seen = _hooked_outputs(model, x)
    expected = [4, 8, 16, 32] if output_stride == 32 else [4, 8, 8, 8]
    assert [model.output_shape()[n].stride for n in STAGES] == expected
    for name, s in zip(STAGES, expected):
        assert out[name].shape[-2:] == (64 // s, 64 // s)
        assert out[name].shape[1] == model.output_shape()[name].channels
        assert torch.equal(seen[name], out[name])
    assert seen["stem"].shape[-2:] == (32, 32)


def test_timm_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not_a_model"):
        TimmBackbone("not_a_model")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        TimmBackbone("test_resnet", weights=str(tmp_path / "nope.pth"))


def test_timm_loads_local_checkpoint(tmp_path):
    import timm

    torch.manual_seed(0)
    src = timm.create_model("test_resnet")
    path = tmp_path / "test_resnet.pth"
    torch.save(src.state_dict(), path)
    model = TimmBackbone("test_resnet", weights=str(path))
    fresh = TimmBackbone("test_resnet")
    ref = src.state_dict()
    loaded = model.body.state_dict()
    assert len(loaded) > 50 and set(loaded) <= set(ref)
    for k, v in loaded.items():
        torch.testing.assert_close(v, ref[k])
    # and the file mattered: a model without it differs
    assert not torch.equal(fresh.body.state_dict()["conv1.0.weight"], ref["conv1.0.weight"])


def test_get_norm_kinds():
    assert isinstance(get_norm("BN", 8), nn.BatchNorm2d)
    assert isinstance(get_norm("SyncBN", 8), nn.SyncBatchNorm)
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    gn = get_norm("GN", 16)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 16
    assert get_norm("GN", 64).num_groups == 32
    assert isinstance(get_norm("", 8), nn.Identity)
    with pytest.raises(ValueError, match="XN"):
        get_norm("XN", 8)


@pytest.mark.parametrize("norm", ["GN", "FrozenBN", "SyncBN"])
def test_resnet_with_other_norms_runs_backward(norm):
    m = ResNet(18, 0.25, output_stride=8, norm=norm)
    out = m(torch.randn(2, 3, 32, 32))
    out["res5"].mean().backward()
    assert m.stem.conv1.weight.grad is not None and m.stem.conv1.weight.grad.abs().sum() > 0


def test_freeze_at(seg_cfg):
    cfg = seg_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    m = build_backbone(cfg)
    assert all(not p.requires_grad for p in m.stem.parameters())
    assert all(not p.requires_grad for p in m.res2.parameters())
    assert all(p.requires_grad for p in m.res3.parameters())
    assert isinstance(m.stem.bn1, FrozenBatchNorm2d) and isinstance(m.res2[0].bn1, FrozenBatchNorm2d)
    assert isinstance(m.res3[0].bn1, nn.BatchNorm2d)


def test_bad_config_values(seg_cfg):
    with pytest.raises(ValueError, match="DEPTH"):
        ResNet(20)
    with pytest.raises(ValueError, match="OUTPUT_STRIDE"):
        ResNet(18, output_stride=4)
    cfg = seg_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_nothing"
    with pytest.raises(KeyError, match="build_nothing"):
        build_backbone(cfg)
