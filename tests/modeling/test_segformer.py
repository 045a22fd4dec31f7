"""SegFormer (MiT-B0..B5 + all-MLP decoder) as a SemanticSegmentor backbone / head pair on
transformers' model code: parameter counts equal transformers' own SegformerForSemanticSegmentation
of the same config, the stage features have the documented strides, a transformers checkpoint
(random weights, save_pretrained) loads through our config (folder and hf:// name) and gives
transformers' logits, encoder-only checkpoints load as MODEL.BACKBONE.WEIGHTS, bad weights are
clear errors. Nothing downloads."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import SegformerForImageClassification, SegformerForSemanticSegmentation

from bcd.config import get_cfg
from bcd.engine import Checkpointer
from bcd.modeling import build_model
from bcd.modeling.backbone.mit import MIT_VARIANTS, mit_config
from bcd.modeling.backbone.weights import PretrainedWeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(path: str = "configs/demo/segformer_b0_student.yaml", **over):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.merge_from_list([x for kv in over.items() for x in kv])
    return cfg


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("variant", sorted(MIT_VARIANTS))
def test_parameter_count_equals_transformers_segformer(variant):
    decoder = MIT_VARIANTS[variant][2]
    cfg = _cfg("configs/ade20k/segformer_b0.yaml")
    cfg.merge_from_list(["MODEL.SEGFORMER.VARIANT", variant, "MODEL.SEM_SEG_HEAD.CHANNELS", decoder,
                         "MODEL.BACKBONE.WEIGHTS", "", "MODEL.DEVICE", "meta"])
    with torch.device("meta"):  # structure only: B5 has 85 M parameters
        ours = build_model(cfg)
        ref = SegformerForSemanticSegmentation(mit_config(variant, num_labels=150))
    assert _count(ours) == _count(ref)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        ("backbone.encoder." + k[len("segformer."):] if k.startswith("segformer.") else "sem_seg_head." + k):
        tuple(v.shape) for k, v in ref.state_dict().items()}
    if variant == "b0":
        assert round(_count(ours) / 1e6, 1) == 3.8  # the paper's SegFormer-B0 (Table II)


def test_stage_features_have_the_documented_strides():
    model = build_model(_cfg()).eval()
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (32, 4), "res3": (64, 8), "res4": (160, 16), "res5": (256, 32)}
    inputs = [{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)} for _ in range(2)]
    with torch.no_grad():
        out = model.extract(model.preprocess(inputs))
    for name, s in shapes.items():
        assert out["features"][name].shape == (2, s.channels, 64 // s.stride, 96 // s.stride)
    assert out["logits"].shape == (2, 6, 16, 24)  # 1/4
    names = dict(model.named_modules())
    for n in ("backbone.stem", "backbone.res2", "backbone.res5", "sem_seg_head.feature", "sem_seg_head.predictor"):
        assert n in names
    # the feature tap is transformers' ReLU after the fuse conv + BN: 256 channels at 1/4
    rec = {}
    h = names["sem_seg_head.feature"].register_forward_hook(lambda m, i, o: rec.setdefault("f", o))
    with torch.no_grad():
        model.extract(model.preprocess(inputs))
    h.remove()
    assert rec["f"].shape == (2, 256, 16, 24) and rec["f"].min() >= 0
    # feature shares its module with transformers' head: nothing is duplicated in the state dict
    assert not any(k.startswith("sem_seg_head.feature") for k in model.state_dict())


def _random_segformer(num_labels: int = 6, seed: int = 0) -> SegformerForSemanticSegmentation:
    torch.manual_seed(seed)
    hf = SegformerForSemanticSegmentation(mit_config("b0", num_labels=num_labels)).eval()
    with torch.no_grad():  # eval-mode BN must do something for the comparison to bite
        bn = hf.decode_head.batch_norm
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return hf


def _assert_same_logits(model, hf):
    g = torch.Generator().manual_seed(1)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8)} for _ in range(2)]
    model.eval()
    with torch.no_grad():
        batch = model.preprocess(inputs)
        ours = model.extract(batch)["logits"]
        theirs = hf(pixel_values=batch.tensor).logits
    assert theirs.abs().max() > 0.1  # the comparison bites
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_transformers_checkpoint_loads_and_gives_transformers_logits(tmp_path, hf_cache):
    hf = _random_segformer()
    folder = tmp_path / "segformer-b0-demo"
    hf.save_pretrained(folder)
    # a save_pretrained folder as MODEL.WEIGHTS (checkpointer: --eval-only, the tools)
    model = build_model(_cfg())
    Checkpointer(model).load(str(folder), checkpointables=[])
    _assert_same_logits(model, hf)
    # the same checkpoint by name, from the (test's) Hugging Face cache, offline
    hf_cache("org/segformer-b0-demo", str(folder))
    model = build_model(_cfg())
    Checkpointer(model).load("hf://org/segformer-b0-demo", checkpointables=[])
    _assert_same_logits(model, hf)
    # a name that is not cached: the error names the repo, the cache and how to fill it
    with pytest.raises(FileNotFoundError) as e:
        Checkpointer(build_model(_cfg())).load("hf://org/absent", checkpointables=[])
    msg = str(e.value)
    assert "'hf://org/absent'" in msg and hf_cache.cache in msg and "hf download org/absent" in msg
    assert "BCD_OFFLINE=1" in msg


def test_wrong_checkpoints_are_clear_errors(tmp_path):
    # another class count: the decode head's classifier does not fit
    other = tmp_path / "nine"
    _random_segformer(num_labels=9).save_pretrained(other)
    with pytest.raises(ValueError, match=r"(?s)do not fit.*sem_seg_head\.decode_head\.classifier"):
        Checkpointer(build_model(_cfg())).load(str(other), checkpointables=[])
    # a checkpoint that lacks a weight: transformers would initialise it at random; an error here
    from safetensors.torch import load_file, save_file

    holed = tmp_path / "holed"
    _random_segformer().save_pretrained(holed)
    tensors = load_file(holed / "model.safetensors")
    dropped = [k for k in tensors if "linear_fuse" in k]
    assert dropped
    save_file({k: v for k, v in tensors.items() if k not in dropped}, holed / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(PretrainedWeightsError, match="not in the checkpoint: decode_head.linear_fuse.weight"):
        Checkpointer(build_model(_cfg())).load(str(holed), checkpointables=[])
    # an ImageNet encoder checkpoint is not a whole model: it names MODEL.BACKBONE.WEIGHTS
    enc = tmp_path / "mit"
    SegformerForImageClassification(mit_config("b0", num_labels=10)).save_pretrained(enc)
    with pytest.raises(PretrainedWeightsError, match="give it as MODEL.BACKBONE.WEIGHTS"):
        Checkpointer(build_model(_cfg())).load(str(enc), checkpointables=[])


def test_encoder_checkpoint_as_backbone_weights(tmp_path):
    torch.manual_seed(2)
    imagenet = SegformerForImageClassification(mit_config("b0", num_labels=10))
    imagenet.save_pretrained(tmp_path / "mit-b0")
    model = build_model(_cfg(**{"MODEL.BACKBONE.WEIGHTS": str(tmp_path / "mit-b0")}))
    ours = model.backbone.encoder.state_dict()
    theirs = imagenet.segformer.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    # a B1 encoder (other widths) for a B0 backbone: names the key and the differing fields
    SegformerForImageClassification(mit_config("b1", num_labels=10)).save_pretrained(tmp_path / "mit-b1")
    with pytest.raises(PretrainedWeightsError, match=r"not a MiT-b0 encoder \(MODEL.SEGFORMER.VARIANT\).*hidden_sizes"):
        build_model(_cfg(**{"MODEL.BACKBONE.WEIGHTS": str(tmp_path / "mit-b1")}))
    # a torchvision-style backbone refuses a transformers folder, naming what takes one
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.WEIGHTS = str(tmp_path / "mit-b0")
    cfg.MODEL.RESNETS.DEPTH = 18
    with pytest.raises(PretrainedWeightsError, match="build_mit_backbone"):
        build_model(cfg)


def test_recipe_and_one_training_step(seg_inputs):
    cfg = _cfg("configs/ade20k/segformer_b0.yaml")
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.LR_SCHEDULER_NAME, s.POLY_POWER, s.MAX_ITER) == ("AdamW", 6e-5, "WarmupPolyLR", 1.0, 160000)
    assert s.LR_MULTIPLIERS == [["sem_seg_head", 10.0]] and not cfg.MODEL.AUX_HEAD.ENABLED
    assert cfg.MODEL.BACKBONE.WEIGHTS == "hf://nvidia/mit-b0"
    assert cfg.INPUT.CROP.SIZE == [512, 512] and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150

    from bcd.solver import build_optimizer

    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_optimizer(cfg, model)
    lrs = {round(g["lr"] / cfg.SOLVER.BASE_LR, 6) for g in opt.param_groups}
    assert lrs == {1.0, 10.0}  # the decode head at 10x
    losses = model(seg_inputs(n=2, h=64, w=64, num_classes=6))
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    assert model.backbone.encoder.stages[0].patch_embeddings.proj.weight.grad.abs().sum() > 0
