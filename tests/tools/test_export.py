"""tools/export.py: ONNX (onnxruntime) and TorchScript outputs equal PyTorch's on real image
files within the stated tolerance (atol 1e-4 + rtol 1e-3·|ref|, float32), for a tiny PSPNet and
the demo RetinaNet; adaptive pooling rewritten for ONNX is exact."""
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
    StaticAdaptiveAvgPool2d,
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


def test_static_adaptive_pool_is_exact():
    x = torch.randn(2, 3, 8, 10)
    for bins in [1, 2, 3, 6, (3, 7)]:
        torch.testing.assert_close(StaticAdaptiveAvgPool2d(bins)(x), nn.AdaptiveAvgPool2d(bins)(x))


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

