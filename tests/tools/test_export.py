"""tools/export.py: ONNX (onnxruntime) and TorchScript outputs equal PyTorch's on real image
files within the stated tolerance (atol 1e-4 + rtol 1e-3·|ref|, float32), for a tiny PSPNet and
the demo RetinaNet; adaptive pooling rewritten for ONNX is exact. Input sizes (issue 21, issue 22
item 5): a dynamic ONNX file and the TorchScript file give PyTorch's outputs at a second size and
batch 3; a fixed ONNX file refuses them; a trace that bakes sizes in is saved behind a guard that
refuses other shapes instead of returning wrong numbers."""
from __future__ import annotations

import json
import os

import export as tool  # tools/ is on sys.path (conftest)
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bcd.utils.export import (
    DeployNetwork,
    MatmulAdaptiveAvgPool2d,
    compare_outputs,
    export_onnx,
    run_onnx,
    torch_outputs,
)

from .conftest import REPO, save_run, tiny_seg_cfg


@pytest.fixture(scope="module")
def strong_run(tmp_path_factory):
    """The tiny PSPNet with its classifier scaled up, so logits are O(1..10), not O(0.01)."""
    d = tmp_path_factory.mktemp("strong")
    cfg_path, w_path = save_run(str(d), tiny_seg_cfg(), seed=3)
    ckpt = torch.load(w_path, weights_only=True)
    ckpt["model"]["sem_seg_head.predictor.weight"] *= 200.0
    torch.save(ckpt, w_path)
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        arr = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
        arr[10:40, 20:60] = [200, 30, 30]  # a flat region, as in real scenes
        p = str(d / f"img{i}.png")
        Image.fromarray(arr).save(p)
        images.append(p)
    return cfg_path, w_path, images


@pytest.mark.parametrize("size", [(64, 80), (60, 76)])  # 60×76 is padded to 64×80 inside
def test_onnx_and_torchscript_equal_pytorch(strong_run, tmp_path, size):
    cfg_path, w_path, images = strong_run
    out = tmp_path / "export"
    rc = tool.main(["--config-file", cfg_path, "--output", str(out), "--size", str(size[0]), str(size[1]),
                    "--images", *images, "MODEL.WEIGHTS", w_path])
    rep = json.load(open(out / "export_report.json"))
    assert rc == 0 and rep["ok"] and rep["outputs"] == ["logits"]
    assert rep["input"]["onnx_shape"] == rep["onnx"]["input_shape"] == [1, 3, *size]  # what was exported
    assert rep["onnx"]["second_size"]["refused"]  # the fixed file refuses 3×3×(H-3)×(W+3)
    assert rep["torchscript"]["shape_generic"] and rep["torchscript"]["second_size"]["ok"]
    assert os.path.getsize(out / "model.onnx") > 10_000 and os.path.isfile(out / "model.ts")
    assert rep["onnx"]["max_abs_diff"] <= 1e-4 and rep["torchscript"]["max_abs_diff"] <= 1e-4
    assert rep["onnx"]["outputs"]["logits"]["max_abs_ref"] > 1.0  # the comparison bites

    # independently of DeployNetwork: the model's own preprocess + extract on the same images
    from bcd.engine import Checkpointer
    from bcd.modeling import build_model

    from bcd.utils.export import load_images
    cfg = tool.load_config(cfg_path)
    model = build_model(cfg).eval()
    Checkpointer(model).load(w_path, checkpointables=[])
    x = load_images(images, size)
    with torch.no_grad():
        ref = model.extract(model.preprocess([{"image": im, "height": size[0], "width": size[1]} for im in x]))["logits"]
    got = run_onnx(str(out / "model.onnx"), x)[0]
    assert got.shape == ref.shape == (2, 4, 8, 10)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-3)
    assert ref.abs().max() > 1.0


def test_matmul_adaptive_pool_is_exact():
    for shape in [(2, 3, 8, 10), (1, 2, 7, 13)]:
        x = torch.randn(*shape)
        for bins in [1, 2, 3, 6, (3, 7)]:
            torch.testing.assert_close(MatmulAdaptiveAvgPool2d(bins)(x), nn.AdaptiveAvgPool2d(bins)(x))


def _reference(model, x):
    """The model's own preprocess + extract on each image (independent of DeployNetwork)."""
    h, w = x.shape[-2:]
    with torch.no_grad():
        return model.extract(model.preprocess([{"image": im, "height": h, "width": w} for im in x]))["logits"]


def test_dynamic_onnx_and_torchscript_at_two_sizes_and_batch_3(strong_run, tmp_path):
    from bcd.engine import Checkpointer
    from bcd.modeling import build_model
    from bcd.utils.export import load_images

    cfg_path, w_path, images = strong_run
    out = tmp_path / "export"
    rc = tool.main(["--config-file", cfg_path, "--output", str(out), "--size", "64", "80", "--dynamic",
                    "--check-size", "61", "67", "--images", *images, "MODEL.WEIGHTS", w_path])
    rep = json.load(open(out / "export_report.json"))
    assert rc == 0 and rep["ok"]
    assert rep["input"]["onnx_shape"] == rep["onnx"]["input_shape"] == ["batch", 3, "height", "width"]
    assert rep["checks"]["second_size"] == [3, 3, 61, 67] and rep["onnx"]["second_size"]["ok"]
    model = build_model(tool.load_config(cfg_path)).eval()
    Checkpointer(model).load(w_path, checkpointables=[])
    ts = torch.jit.load(str(out / "model.ts"))
    for size in [(64, 80), (61, 67), (96, 40)]:
        x = torch.cat([load_images(images, size)] * 2)[:3]  # batch 3
        ref = _reference(model, x)
        assert ref.abs().max() > 1.0
        got = run_onnx(str(out / "model.onnx"), x)[0]
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-3)
        with torch.no_grad():
            torch.testing.assert_close(ts(x)[0], ref, atol=1e-4, rtol=1e-3)


class _BakesSizes(nn.Module):
    """A meta-architecture whose extract takes a Python int from the input's shape: tracing
    bakes it in (the case of pytorch#42653)."""

    size_divisibility = 1

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))
        self.register_buffer("pixel_std", torch.ones(3, 1, 1))

    def preprocess(self, inputs):
        from bcd.structures import ImageBatch

        x = torch.stack([(d["image"].float() - self.pixel_mean) / self.pixel_std for d in inputs])
        return ImageBatch(tensor=x, image_sizes=[tuple(x.shape[-2:])] * len(x), inputs=list(inputs))

    def extract(self, batch):
        x = batch.tensor
        half = int(x.shape[-1]) // 2
        return {"logits": x[..., :half] * 2.0}


def test_torchscript_that_bakes_sizes_refuses_other_shapes(tmp_path):
    from bcd.utils.export import export_torchscript

    net = DeployNetwork(_BakesSizes(), (8, 10)).eval()
    info = export_torchscript(net, str(tmp_path / "m.ts"), check_sizes=[(3, 7, 12)])
    assert not info["shape_generic"] and "7x12" not in str(info["traced_at"]) and info["mismatch"]
    ts = torch.jit.load(str(tmp_path / "m.ts"))
    x = torch.rand(1, 3, 8, 10) * 255
    torch.testing.assert_close(ts(x)[0], net(x)[0])  # right at the traced size
    with pytest.raises(torch.jit.Error, match=r"traced at 1x3x8x10 and is only valid at that shape; got \[1, 3, 7, 12\]"):
        ts(torch.rand(1, 3, 7, 12))
    with pytest.raises(torch.jit.Error, match="traced at 1x3x8x10"):
        ts(torch.rand(3, 3, 8, 10))


def test_detector_network_exports(tmp_path):
    from bcd.config import get_cfg
    from bcd.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "demo", "det_retinanet_student.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    net = DeployNetwork(build_model(cfg).eval(), (96, 128))
    assert net.output_names[0] == "cls_logits_0" and net.output_names[-1].startswith("bbox_reg_")
    images = torch.rand(2, 3, 96, 128) * 255
    ref = torch_outputs(net, images)
    path = export_onnx(net, str(tmp_path / "det.onnx"))
    cmp = compare_outputs(net.output_names, ref, run_onnx(path, images))
    assert cmp["ok"] and cmp["max_abs_diff"] <= 1e-4
    assert len(cmp["outputs"]) == len(ref) == 10  # 5 FPN levels × (class, box)


def test_missing_weights_is_an_error(tiny_run, tmp_path):
    cfg_path, _ = tiny_run
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        tool.main(["--config-file", cfg_path, "--output", str(tmp_path / "x")])


def test_kd_config_exports_its_student_without_the_teacher(strong_run, tmp_path):
    """A distillation config exports its student alone: no teacher file is read, and the
    exported graph computes what the student's own config exports."""
    cfg_path, w_path, images = strong_run
    kd = tool.load_config(cfg_path)
    kd.KD.LOSSES = ["PixelKD"]
    kd.KD.TEACHER.CONFIG_FILE = cfg_path
    kd.KD.TEACHER.WEIGHTS = str(tmp_path / "missing_teacher.pth")
    kd_path = tmp_path / "kd.yaml"
    kd_path.write_text(kd.dump())
    args = ["--formats", "onnx", "--size", "64", "80", "--images", *images, "MODEL.WEIGHTS", w_path]
    assert tool.main(["--config-file", str(kd_path), "--output", str(tmp_path / "kd"), *args]) == 0
    assert tool.main(["--config-file", cfg_path, "--output", str(tmp_path / "plain"), *args]) == 0
    from bcd.utils.export import load_images

    x = load_images(images, (64, 80))
    a = run_onnx(str(tmp_path / "kd" / "model.onnx"), x)[0]
    b = run_onnx(str(tmp_path / "plain" / "model.onnx"), x)[0]
    assert torch.equal(a, b) and not os.path.exists(kd.KD.TEACHER.WEIGHTS)

