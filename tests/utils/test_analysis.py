"""bcd/utils/analysis.py: FLOPs / activations / params against hand counts and against the
convolution / linear formula applied to every layer that ran, the unit against fvcore's, the
modules that did not run, latency fields."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from bcd.structures import ImageBatch
from bcd.utils.analysis import (
    FLOP_UNIT,
    analyze_model,
    count_flops,
    count_params,
    flatten_tensors,
    flop_count,
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
    assert a.flops == 2 * 8 * 3 * 9 * 16 * 20  # a multiply-add per weight and output pixel = 2 FLOPs
    assert a.activations == 8 * 16 * 20
    assert a.params == count_params(m) == 8 * 3 * 9 + 8
    assert a.by_module["conv"]["flops"] == a.flops and a.by_module["conv"]["params"] == 224
    assert count_flops(m, (16, 20)) == a.flops
    assert a.not_run == []
    assert m.training  # mode restored


def test_one_unit_linear_10_is_200_flops_and_twice_fvcore():
    lin = nn.Linear(10, 10)
    x = torch.randn(1, 10)
    assert flop_count(lambda: lin(x)).total == 200  # 100 multiply-adds
    fv = FlopCountAnalysis(lin, (x,))
    fv.unsupported_ops_warnings(False)
    assert fv.total() == 100  # fvcore: one fused multiply-add = one "flop"
    # forward and backward of a training step: dX and dW products too
    y = flop_count(lambda: lin(x.requires_grad_()).sum().backward())
    assert y.total == 3 * 200
    assert "multiply-add counts 2" in FLOP_UNIT


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


def _conv_linear_flops(model, run):
    """Brute-force reference: 2 × multiply-adds of every Conv / ConvTranspose / Linear call,
    from its weight and output shapes (module names -> FLOPs)."""
    out = {}

    def hook(name):
        def fn(m, inp, y):
            if isinstance(m, nn.ConvTranspose2d):  # every input pixel meets the whole kernel
                n = inp[0].numel() * m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            elif isinstance(m, nn.Conv2d):
                n = y.numel() * m.weight[0].numel()
            else:
                n = y.numel() * m.in_features
            out[name] = out.get(name, 0) + 2 * n
        return fn

    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
          if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        run()
    finally:
        for h in hs:
            h.remove()
    return out


def test_flops_equal_the_layer_formula_and_training_heads_are_named():
    """The whole meta-architecture at 60×44 (padded to 64×48 by preprocess): every FLOP is a
    convolution's, so the total and each module's count equal the formula summed over the convs
    that ran; the auxiliary (training-only) head is named as not run."""
    torch.manual_seed(0)
    model = _tiny_pspnet().eval()
    a = analyze_model(model, (60, 44))
    ref = _conv_linear_flops(model, lambda: model([{"image": torch.zeros(3, 60, 44, dtype=torch.uint8),
                                                    "height": 60, "width": 44}]))
    assert a.flops == sum(ref.values()) > 0
    for mod in ("backbone", "backbone.res5", "sem_seg_head"):
        assert a.by_module[mod]["flops"] == sum(v for k, v in ref.items() if k.startswith(mod + "."))
    assert a.by_module["aux_head"]["flops"] == 0  # the auxiliary head does not run in eval mode
    assert a.not_run == [("aux_head", count_params(model.aux_head))]
    table = format_analysis(a, max_depth=2)
    assert "backbone.res5" in table and "sem_seg_head.predictor" in table
    assert "backbone.res5.0" not in table
    assert "Not counted (did not run" in table and "aux_head" in table


def test_latency_fields():
    model = OneConv()
    lat = measure_latency(model, (16, 16), batch_size=2, warmup=1, iters=3, mode="inference")
    assert lat["iters"] == 3 and lat["batch_size"] == 2 and lat["device"] == "cpu"
    assert lat["min_ms"] <= lat["median_ms"] <= lat["max_ms"]
    assert lat["images_per_s"] == pytest.approx(2 / (lat["median_ms"] / 1000))
    assert measure_latency(model, (16, 16), iters=1, warmup=0, mode="network")["mode"] == "network"
    with pytest.raises(ValueError, match="mode"):
        measure_latency(model, (16, 16), mode="train")


class AttentionNet(nn.Module):
    """Tokens from a 1×1 conv, a query embedding attending to them (``nn.MultiheadAttention``
    reads its ``out_proj`` weights and the embedding is read as ``.weight``: neither forward is
    called), and an unused head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1)
        self.queries = nn.Embedding(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.unused = nn.Linear(8, 8)

    def forward(self, inputs):
        x = torch.stack([d["image"].float() for d in inputs])
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # B×HW×8
        q = self.queries.weight.unsqueeze(0).repeat(len(inputs), 1, 1)  # as Mask2Former's queries
        return self.attn(q, tokens, tokens, need_weights=False)[0]


def test_modules_whose_parameters_a_parent_reads_ran():
    """Not counted means not run: out_proj's FLOPs are in the attention's count, so it is not
    listed; the head nothing reads is."""
    m = AttentionNet()
    a = analyze_model(m, (4, 5))
    assert a.not_run == [("unused", count_params(m.unused))]
    hw, d, q = 4 * 5, 8, 4
    # conv; q / k / v projections, Q·Kᵀ and ·V, out_proj: multiply-adds, 2 FLOPs each
    assert a.flops == 2 * (hw * 3 * d + (q + 2 * hw) * d * d + 2 * q * hw * d + q * d * d)
