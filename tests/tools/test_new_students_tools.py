"""tools/export.py and tools/analyze_model.py on the new students: SegFormer-B0 and ESPNet export
to ONNX whose onnxruntime outputs equal PyTorch's (atol 1e-4 + rtol 1e-3·|ref|) on image files,
and the analysis (``flop_count``, torch's FlopCounterMode) counts transformers' attention
(``scaled_dot_product_attention``, the masked ``baddbmm`` of ``nn.MultiheadAttention``) as the
matrix products of an explicit attention, with no formula of our own."""
from __future__ import annotations

import json
import os

import analyze_model as analyze_tool  # tools/ is on sys.path (conftest)
import export as export_tool
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bcd.utils.analysis import analyze_model, flop_count

from .conftest import REPO, save_run


def _cfg(name: str):
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "demo", f"{name}.yaml"))
    return cfg


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        arr = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
        arr[10:40, 20:60] = [200, 30, 30]
        p = str(d / f"img{i}.png")
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("name,classifier", [("segformer_b0_student", "sem_seg_head.decode_head.classifier.weight"),
                                             ("espnet_student", "sem_seg_head.predictor.weight")])
def test_onnx_export_equals_pytorch(name, classifier, images, tmp_path):
    cfg_path, w_path = save_run(str(tmp_path / "run"), _cfg(name), seed=1)
    ckpt = torch.load(w_path, weights_only=True)
    ckpt["model"][classifier] *= 100.0  # logits O(1..10): the comparison bites
    torch.save(ckpt, w_path)
    out = tmp_path / "export"
    rc = export_tool.main(["--config-file", cfg_path, "--output", str(out), "--size", "64", "96",
                           "--images", *images, "MODEL.WEIGHTS", w_path])
    rep = json.load(open(out / "export_report.json"))
    assert rc == 0 and rep["ok"] and rep["outputs"] == ["logits"], rep
    logits = rep["onnx"]["outputs"]["logits"]
    stride = 4 if name.startswith("segformer") else 1
    assert logits["shape"] == [2, 6, 64 // stride, 96 // stride]
    assert logits["max_abs_ref"] > 1.0 and rep["onnx"]["max_abs_diff"] <= 1e-4
    assert rep["torchscript"]["max_abs_diff"] <= 1e-4


class _Explicit(nn.Module):
    def forward(self, q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v


class _Fused(nn.Module):
    def forward(self, q, k, v):
        return nn.functional.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("ev,kernel", [(8, "aten._scaled_dot_product_flash_attention_for_cpu"),
                                       (5, "aten.bmm")])
def test_sdpa_is_counted_as_explicit_attention(ev, kernel):
    # Q·Kᵀ and softmax·V, a multiply-add = 2 FLOPs. Equal head widths run torch's CPU flash
    # kernel, for which FlopCounterMode has no formula (flop_count adds torch's sdpa formula);
    # unequal ones fall back to the math path's bmm, which it counts itself
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, ev)
    explicit = flop_count(lambda: _Explicit()(q, k, v)).total
    fused = flop_count(lambda: _Fused()(q, k, v))
    masked = flop_count(lambda: nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.zeros(10, 7))).total
    assert explicit == fused.total == masked == 2 * (2 * 3 * 10 * 7 * (8 + ev))
    assert set(fused.by_operator) == {kernel}


def test_baddbmm_is_counted_as_its_batched_product():
    # nn.MultiheadAttention with a mask (Mask2Former's masked attention) runs aten.baddbmm
    c, a, b = torch.randn(4, 6, 5), torch.randn(4, 6, 3), torch.randn(4, 3, 5)
    fc = flop_count(lambda: torch.baddbmm(c, a, b))
    assert fc.total == 2 * 4 * 6 * 3 * 5 and set(fc.by_operator) == {"aten.baddbmm"}


def test_analyze_model_counts_segformer_b0_like_the_paper(tmp_path):
    # SegFormer-B0 with ADE20K's 150 classes at 512 x 512: the paper's 3.8 M and 8.4 G, which
    # counts multiply-adds (mmcv / fvcore); bcd counts a multiply-add as 2 FLOPs
    rep = analyze_tool.main(["--config-file", os.path.join(REPO, "configs", "ade20k", "segformer_b0.yaml"),
                             "--tasks", "flop", "parameter", "--size", "512", "512",
                             "--json", str(tmp_path / "a.json"), "MODEL.SEM_SEG_HEAD.NORM", "BN"])
    assert round(rep["params"] / 1e6, 1) == 3.8
    assert 2 * 8.3e9 < rep["flops"] < 2 * 8.5e9  # 16.776 G FLOPs = 8.388 G multiply-adds
    # the attention (CPU flash kernel) is counted: 2.080 G of them
    assert rep["flops_by_operator"]["aten._scaled_dot_product_flash_attention_for_cpu"] > 2e9
    # the Mask2Former teacher is analysed at its crop size too (not the detectors' 800 x 1333)
    assert analyze_tool.default_size(_cfg("mask2former_teacher")) == [128, 128]


def test_espnet_attention_free_counts():
    from bcd.modeling import build_model

    a = analyze_model(build_model(_cfg("espnet_student")), (64, 64), activations=False)
    assert a.params == sum(p.numel() for p in build_model(_cfg("espnet_student")).parameters())
    assert a.flops > 0 and a.by_module["sem_seg_head"]["flops"] > 0
