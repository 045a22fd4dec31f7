"""ResNet-FPN backbone (torchvision FeaturePyramidNetwork) used by the detectors."""
from __future__ import annotations

import pytest
import torch

from bcd.config import get_cfg
from bcd.modeling.backbone import build_backbone


def _cfg(in_features, top_block="", top_block_in="res5", width=0.5, norm=""):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = width
    cfg.MODEL.FPN.IN_FEATURES = in_features
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FPN.TOP_BLOCK = top_block
    cfg.MODEL.FPN.TOP_BLOCK_IN = top_block_in
    cfg.MODEL.FPN.NORM = norm
    return cfg


@pytest.mark.parametrize(
    "in_features,top_block,names",
    [
        (["res2", "res3", "res4", "res5"], "", ["p2", "p3", "p4", "p5"]),
        (["res2", "res3", "res4", "res5"], "P6", ["p2", "p3", "p4", "p5", "p6"]),
        (["res3", "res4", "res5"], "P6P7", ["p3", "p4", "p5", "p6", "p7"]),
    ],
)
def test_levels_and_strides(in_features, top_block, names):
    fpn = build_backbone(_cfg(in_features, top_block)).eval()
    out = fpn(torch.randn(2, 3, 128, 96))
    assert list(out) == names
    shapes = fpn.output_shape()
    assert list(shapes) == names
    for n in names:
        s = 2 ** int(n[1:])
        assert shapes[n].stride == s and shapes[n].channels == 32
        assert out[n].shape == (2, 32, -(-128 // s), -(-96 // s))
    assert fpn.size_divisibility == 32
    # the detectors hook the ResNet stages under bottom_up
    for stage in ["res2", "res3", "res4", "res5"]:
        assert hasattr(fpn.bottom_up, stage)


@pytest.mark.parametrize("top_block_in", ["res5", "p5"])
def test_p6p7_input_follows_config_even_with_equal_channels(top_block_in):
    """ResNet-18 at width 0.5 has a 256-channel res5: with OUT_CHANNELS 256 torchvision's own
    rule (equal channels -> P5) would silently pick P5; here TOP_BLOCK_IN decides."""
    cfg = _cfg(["res3", "res4", "res5"], "P6P7", top_block_in, width=0.5)
    cfg.MODEL.FPN.OUT_CHANNELS = 256
    fpn = build_backbone(cfg).eval()
    seen = {}
    fpn.fpn.extra_blocks.p6.register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0]))
    fpn.bottom_up.res5.register_forward_hook(lambda m, i, o: seen.__setitem__("res5", o))
    out = fpn(torch.randn(1, 3, 64, 64))
    expected = seen["res5"] if top_block_in == "res5" else out["p5"]
    assert torch.equal(seen["in"], expected)
    # p7 = conv(relu(p6))
    p7 = fpn.fpn.extra_blocks.p7(torch.relu(out["p6"]))
    torch.testing.assert_close(out["p7"], p7)


def test_p6_maxpool_is_subsampled_p5():
    fpn = build_backbone(_cfg(["res2", "res3", "res4", "res5"], "P6")).eval()
    out = fpn(torch.randn(1, 3, 128, 128))
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])


def test_backward_and_gn_norm():
    fpn = build_backbone(_cfg(["res3", "res4", "res5"], "P6P7", norm="GN"))
    out = fpn(torch.randn(2, 3, 64, 64))
    sum(v.mean() for v in out.values()).backward()
    assert fpn.bottom_up.stem.conv1.weight.grad.abs().sum() > 0
    assert fpn.fpn.extra_blocks.p7.weight.grad.abs().sum() > 0
    assert isinstance(fpn.fpn.inner_blocks[0][1], torch.nn.GroupNorm)


def test_errors():
    cfg = _cfg(["res3", "res4", "res5"], "P6P7")
    cfg.MODEL.RESNETS.OUTPUT_STRIDE = 8
    with pytest.raises(ValueError, match="dilated"):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="TOP_BLOCK"):
        build_backbone(_cfg(["res3", "res4", "res5"], "P8"))
    with pytest.raises(ValueError, match="IN_FEATURES"):
        build_backbone(_cfg(["res3", "res4", "res6"]))
