"""bcd/utils/analysis.py: FLOPs / activations / params against hand counts and fvcore run
directly on the network, latency fields."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from bcd.structures import ImageBatch
from bcd.utils.analysis import (
    analyze_model,
    count_flops,
    count_params,
    flatten_tensors,
    format_analysis,
    measure_latency,
)


class OneConv(nn.Module):
    """The smallest meta-architecture: normalise, one 3×3 conv (3 -> 8 channels, padding 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def preprocess(self, inputs: List[Dict[str, Any]]) -> ImageBatch:
        x = torch.stack([d["image"].float() / 255.0 for d in inputs])
        return ImageBatch(tensor=x, image_sizes=[tuple(x.shape[-2:])] * len(inputs), inputs=inputs)

    def extract(self, batch: ImageBatch) -> Dict[str, Any]:
        y = self.conv(batch.tensor)
        return {"logits": y, "nested": {"a": [y.mean()]}, "stride": 1}

    def forward(self, inputs):
        return [{"sem_seg": o} for o in self.extract(self.preprocess(inputs))["logits"]]


def test_hand_counted_conv():
    m = OneConv()
    a = analyze_model(m, (16, 20))
    assert a.flops == 8 * 3 * 9 * 16 * 20  # one MAC per weight and output pixel; bias free
    assert a.activations == 8 * 16 * 20
    assert a.params == count_params(m) == 8 * 3 * 9 + 8
    assert a.by_module["conv"]["flops"] == a.flops and a.by_module["conv"]["params"] == 224
    assert count_flops(m, (16, 20)) == a.flops
    assert m.training  # mode restored


def test_flatten_tensors_order():
    t = [torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)]
    out = flatten_tensors({"a": t[0], "b": {"c": [t[1], 3]}, "d": (t[2],)})
    assert [float(x) for x in out] == [0.0, 1.0, 2.0]


def _tiny_pspnet():
    from bcd.config import get_cfg
    from bcd.modeling import build_model

    c = get_cfg()
    c.MODEL.DEVICE = "cpu"
    c.MODEL.RESNETS.DEPTH = 18
    c.MODEL.RESNETS.WIDTH_MULTIPLIER = 0.25
    c.MODEL.RESNETS.OUTPUT_STRIDE = 8
    c.MODEL.BACKBONE.NORM = "BN"
    c.MODEL.SEM_SEG_HEAD.NAME = "PSPHead"
    c.MODEL.SEM_SEG_HEAD.NORM = "BN"
    c.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    c.MODEL.SEM_SEG_HEAD.CHANNELS = 16
    c.MODEL.AUX_HEAD.ENABLED = True  # a training-only head: no FLOPs at inference
    c.MODEL.AUX_HEAD.CHANNELS = 8
    c.INPUT.SIZE_DIVISIBILITY = 8
    return build_model(c)


def test_flops_equal_fvcore_on_the_network_directly():
    """The whole meta-architecture at 60×44 (padded to 64×48 by preprocess) against fvcore on
    backbone + head applied to the padded tensor by hand."""
    torch.manual_seed(0)
    model = _tiny_pspnet().eval()
    a = analyze_model(model, (60, 44))

    class Net(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.backbone, self.head = m.backbone, m.sem_seg_head

        def forward(self, x):
            return self.head(self.backbone(x))

    x = torch.zeros(1, 3, 64, 48)  # the size preprocess pads to (divisibility 8)
    direct = FlopCountAnalysis(Net(model), (x,))
    direct.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert a.flops == direct.total()
    bb = FlopCountAnalysis(model.backbone, (x,))
    bb.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert a.by_module["backbone"]["flops"] == bb.total()
    assert a.by_module["backbone.res5"]["flops"] == bb.by_module()["res5"]
    assert a.by_module["aux_head"]["flops"] == 0  # the auxiliary head does not run in extract
    table = format_analysis(a, max_depth=2)
    assert "backbone.res5" in table and "sem_seg_head.predictor" in table
    assert "backbone.res5.0" not in table


def test_latency_fields():
    model = OneConv()
    lat = measure_latency(model, (16, 16), batch_size=2, warmup=1, iters=3, mode="inference")
    assert lat["iters"] == 3 and lat["batch_size"] == 2 and lat["device"] == "cpu"
    assert lat["min_ms"] <= lat["median_ms"] <= lat["max_ms"]
    assert lat["images_per_s"] == pytest.approx(2 / (lat["median_ms"] / 1000))
    assert measure_latency(model, (16, 16), iters=1, warmup=0, mode="network")["mode"] == "network"
    with pytest.raises(ValueError, match="mode"):
        measure_latency(model, (16, 16), mode="train")
