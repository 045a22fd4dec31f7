"""Loading local pretrained files with torchvision key names, and its errors."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from bcd.modeling.backbone import PretrainedWeightsError, build_backbone


@pytest.fixture
def resnet18_file(tmp_path):
    """A torchvision resnet18 state dict saved as torchvision's download would be."""
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv.state_dict(), path)
    return path, tv.state_dict()


def _r18_cfg(seg_cfg, path, width=1.0, norm="BN"):
    cfg = seg_cfg()
    cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = width
    cfg.MODEL.BACKBONE.WEIGHTS = str(path)
    cfg.MODEL.BACKBONE.NORM = norm
    return cfg


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_round_trip_resnet18(seg_cfg, resnet18_file, norm):
    path, ref = resnet18_file
    model = build_backbone(_r18_cfg(seg_cfg, path, norm=norm))
    ours = model.state_dict()
    pairs = {
        "stem.conv1.weight": "conv1.weight",
        "stem.bn1.running_var": "bn1.running_var",
        "res2.0.conv1.weight": "layer1.0.conv1.weight",
        "res4.0.downsample.1.weight": "layer3.0.downsample.1.weight",
        "res5.1.bn2.running_mean": "layer4.1.bn2.running_mean",
    }
    for k_ours, k_tv in pairs.items():
        torch.testing.assert_close(ours[k_ours], ref[k_tv])
    n_loaded = sum(1 for k in ours if not k.endswith("num_batches_tracked"))
    n_file = sum(1 for k in ref if not k.endswith("num_batches_tracked") and not k.startswith("fc."))
    assert n_loaded == n_file
    if norm == "FrozenBN":
        assert isinstance(model.stem.bn1, FrozenBatchNorm2d)


def test_missing_file_names_it(seg_cfg, tmp_path):
    cfg = _r18_cfg(seg_cfg, tmp_path / "pretrained" / "resnet18-f37072fd.pth")
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth") as e:
        build_backbone(cfg)
    assert "MODEL.BACKBONE.WEIGHTS" in str(e.value)


def test_wrong_keys_are_listed(seg_cfg, resnet18_file, tmp_path):
    _, ref = resnet18_file
    bad = dict(ref)
    bad["layer9.weight"] = bad.pop("layer1.0.conv1.weight")
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(PretrainedWeightsError) as e:
        build_backbone(_r18_cfg(seg_cfg, path))
    msg = str(e.value)
    assert "bad.pth" in msg and "res2.0.conv1.weight" in msg and "layer9.weight" in msg


def test_wrong_architecture_shapes(seg_cfg, tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="resnet34.pth"):
        build_backbone(_r18_cfg(seg_cfg, path))  # R18 has fewer blocks: unexpected keys


def test_width_multiplied_resnet_cannot_load_full_width(seg_cfg, resnet18_file):
    path, _ = resnet18_file
    with pytest.raises(PretrainedWeightsError, match="WIDTH_MULTIPLIER is 0.5") as e:
        build_backbone(_r18_cfg(seg_cfg, path, width=0.5))
    assert "stem.conv1.weight" in str(e.value)  # the offending shapes are listed


def test_half_width_file_of_our_own_loads(seg_cfg, tmp_path):
    """A width-0.5 file with torchvision names (e.g. from ImageNet training at that width) fits."""
    from bcd.modeling.backbone import ResNet

    torch.manual_seed(3)
    src = ResNet(18, 0.5)
    inverse = {"stem.conv1.": "conv1.", "stem.bn1.": "bn1."}
    tv_style = {}
    for k, v in src.state_dict().items():
        for a, b in inverse.items():
            if k.startswith(a):
                k = b + k[len(a):]
        if k.startswith("res"):
            k = f"layer{int(k[3]) - 1}" + k[4:]
        tv_style[k] = v
    path = tmp_path / "r18_half.pth"
    torch.save({"state_dict": tv_style}, path)  # wrapped files are accepted too
    model = build_backbone(_r18_cfg(seg_cfg, path, width=0.5))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)


def test_not_a_state_dict(seg_cfg, tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(PretrainedWeightsError, match="list.pth"):
        build_backbone(_r18_cfg(seg_cfg, path))


def test_mobilenetv2_round_trip(seg_cfg, tmp_path):
    torch.manual_seed(2)
    tv = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(tv.state_dict(), path)
    cfg = seg_cfg(backbone="mobilenetv2")
    cfg.MODEL.MOBILENETV2.WIDTH_MULTIPLIER = 1.0
    cfg.MODEL.BACKBONE.WEIGHTS = str(path)
    model = build_backbone(cfg)
    sd = model.state_dict()
    torch.testing.assert_close(sd["stem.0.0.weight"], tv.state_dict()["features.0.0.weight"])
    torch.testing.assert_close(sd["res4.6.conv.2.weight"], tv.state_dict()["features.13.conv.2.weight"])
    torch.testing.assert_close(sd["res5.3.conv.3.weight"], tv.state_dict()["features.17.conv.3.weight"])
    # half-width MobileNetV2 and the full-width file do not fit
    cfg.MODEL.MOBILENETV2.WIDTH_MULTIPLIER = 0.5
    with pytest.raises(PretrainedWeightsError, match="shapes differ"):
        build_backbone(cfg)
