"""The transformer pairs of the paper's Table II: BCD and CWD train the demo SegFormer-B0 student
from the demo Mask2Former teacher (its weights a transformers checkpoint written here with random
weights, loaded as KD.TEACHER.WEIGHTS), BCD trains ESPNet from it, with finite losses that move
the student; every new distillation config loads, names an existing teacher config with the
student's classes, and its feature names exist in the models it builds."""
from __future__ import annotations

import glob
import os

import pytest
import torch

from bcd.config import get_cfg
from bcd.distill import build_model
from bcd.distill.recorder import FeatureRecorder
from bcd.solver import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEACHER = "configs/demo/mask2former_teacher.yaml"


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A save_pretrained folder of the demo Mask2Former teacher (random weights)."""
    from bcd.modeling import build_model as build_plain

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, TEACHER))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("m2f") / "mask2former-demo"
    build_plain(cfg).mask2former.save_pretrained(folder)
    return str(folder)


def _inputs(n=2, h=64, w=64, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        label = torch.randint(0, classes, (h, w), generator=g)
        label[:8] = 255
        out.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                    "sem_seg": label, "height": h, "width": w, "image_id": i})
    return out


def _train(cfg, steps=3):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_optimizer(cfg, model)
    # SOLVER.LR_MULTIPLIERS name the student's own modules: its head trains at their rate
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for prefix, mult in cfg.SOLVER.LR_MULTIPLIERS:
        head = [lr_of[id(p)] for n, p in model.named_parameters() if n.startswith(f"student.{prefix}.")]
        assert head and all(abs(lr - mult * cfg.SOLVER.BASE_LR) < 1e-12 for lr in head), (prefix, set(head))
    before = {k: v.detach().clone() for k, v in model.student.state_dict().items() if v.is_floating_point()}
    history = []
    for it in range(steps):
        model.set_iteration(it)
        losses = model(_inputs(seed=it))
        total = sum(v for k, v in losses.items() if k.startswith("loss"))
        assert all(torch.isfinite(v).all() for v in losses.values()), losses
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    moved = [k for k, v in model.student.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 2  # the student trains
    assert not any(p.requires_grad for p in model.teacher.parameters())  # the teacher is frozen
    return model, history


@pytest.mark.parametrize("config,kd_keys", [
    ("configs/demo/bcd_segformer_b0_student.yaml", ["loss_kd_boundary", "loss_kd_context"]),
    ("configs/demo/cwd_segformer_b0_student.yaml", ["loss_kd_cwd"]),
    ("configs/demo/bcd_espnet_student.yaml", ["loss_kd_boundary", "loss_kd_context"]),
])
def test_students_train_from_the_mask2former_teacher(config, kd_keys, teacher_checkpoint):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.KD.TEACHER.WEIGHTS = teacher_checkpoint  # a transformers checkpoint folder
    cfg.KD.REPORT = False
    if "BoundaryDistillation" in cfg.KD.LOSSES:
        cfg.KD.BOUNDARY.TEACHER_HEAD_FIT_ITERS = 1  # L_bd is active from the second step on
    cfg.SOLVER.MAX_ITER = 10
    model, history = _train(cfg)
    assert type(model.teacher).__name__ == "Mask2FormerSegmentor"
    for key in kd_keys:
        assert history[-1][key] > 0, (key, history[-1])
    assert history[-1]["loss_sem_seg"] > 0


# ------------------------------------------------------------------------------ the configs
NEW_KD_CONFIGS = sorted(
    p for ds in ("voc", "cityscapes", "ade20k", "coco_stuff_10k")
    for pat in ("bcd_*segformer*.yaml", "bcd_*espnet*.yaml", "bcd_*mask2former*.yaml", "bcd_kd_*.yaml",
                "bcd_deeplabv3plus_*.yaml")
    for p in glob.glob(os.path.join(ROOT, "configs", ds, pat))
)


def _load(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    return cfg


def test_every_table_ii_row_has_its_configs():
    names = {os.path.relpath(p, ROOT) for p in NEW_KD_CONFIGS}
    for ds in ("voc", "cityscapes", "ade20k", "coco_stuff_10k"):
        assert {f"configs/{ds}/bcd_segformer_b0.yaml", f"configs/{ds}/bcd_kd_segformer_b0.yaml"} <= names
    for student in ("segformer_b0", "espnet", "deeplabv3plus_mobilenetv2"):
        assert f"configs/ade20k/bcd_mask2former_{student}.yaml" in names
        assert f"configs/ade20k/bcd_kd_mask2former_{student}.yaml" in names
    assert {"configs/ade20k/bcd_espnet.yaml", "configs/coco_stuff_10k/bcd_deeplabv3plus_mobilenetv2.yaml",
            "configs/coco_stuff_10k/bcd_deeplabv3plus_r18.yaml"} <= names
    for teacher in ("configs/coco_stuff_10k/deeplabv3plus_r101.yaml", "configs/ade20k/mask2former_r50.yaml",
                    "configs/ade20k/mask2former_swin_t.yaml"):
        assert os.path.isfile(os.path.join(ROOT, teacher))


@pytest.mark.parametrize("path", NEW_KD_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_new_kd_config_loads_with_a_matching_teacher(path):
    from bcd.data.catalog import DatasetCatalog
    import bcd.data.datasets  # noqa: F401  (registers the builtin datasets)

    cfg = _load(path)
    assert cfg.KD.LOSSES[:2] == ["BoundaryDistillation", "ContextDistillation"]
    if "bcd_kd_" in os.path.basename(path):
        assert cfg.KD.LOSSES[2:] == ["PixelKD"]
    tcfg = _load(os.path.join(ROOT, cfg.KD.TEACHER.CONFIG_FILE))
    assert tcfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert cfg.DATASETS.TRAIN == tcfg.DATASETS.TRAIN
    for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
        assert name in DatasetCatalog
    if cfg.MODEL.BACKBONE.NAME == "build_mit_backbone":  # the SegFormer head at 10x (the solver prefixes student.)
        assert cfg.SOLVER.LR_MULTIPLIERS == [["sem_seg_head", 10.0]]
    if tcfg.MODEL.META_ARCHITECTURE == "Mask2FormerSegmentor":
        assert cfg.KD.TEACHER.WEIGHTS == "hf://facebook/mask2former-swin-tiny-ade-semantic"


@pytest.mark.parametrize("path", [
    "configs/ade20k/bcd_kd_mask2former_segformer_b0.yaml",
    "configs/ade20k/bcd_kd_mask2former_espnet.yaml",
    "configs/coco_stuff_10k/bcd_kd_segformer_b0.yaml",
])
def test_feature_names_exist_in_student_and_teacher(path):
    from bcd.modeling import build_model as build_plain

    cfg = _load(os.path.join(ROOT, path))
    tcfg = _load(os.path.join(ROOT, cfg.KD.TEACHER.CONFIG_FILE))
    s_names, t_names = [], []
    for node in (cfg.KD.BOUNDARY, cfg.KD.CONTEXT, cfg.KD.PIXEL_KD):
        s_names += list(node.STUDENT_FEATURES)
        t_names += list(node.TEACHER_FEATURES)
    for c, names in ((cfg, s_names), (tcfg, t_names)):
        c = c.clone()
        c.KD.LOSSES = []
        c.MODEL.BACKBONE.WEIGHTS = ""
        c.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            model = build_plain(c)
        FeatureRecorder(model, names, "model").remove()  # raises on a missing module
