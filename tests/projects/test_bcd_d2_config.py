"""The Detectron2 project's config: bcd's KD node on a Detectron2 config, model-zoo names, and every
config under projects/bcd/configs (loaded with its model-zoo bases, its teacher's config loaded,
every KD feature name checked against the student and teacher built on the meta device)."""
from __future__ import annotations

import glob
import os

import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed (projects/bcd/README.md)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "projects", "bcd", "configs")


def _as_dict(node):
    return {k: _as_dict(v) if isinstance(v, dict) else v for k, v in node.items()}


def test_kd_node_is_bcds_own():
    """Every KD key and default of the standalone toolkit, nothing retyped, plus KD.D2."""
    import bcd_d2
    from detectron2.config import get_cfg as d2_get_cfg

    from bcd.config import get_cfg

    ours = _as_dict(bcd_d2.get_cfg().KD)
    d2_node = ours.pop("D2")
    theirs = _as_dict(get_cfg().KD)
    # KD.APD is still written in bcd/config/defaults.py, outside kd_defaults.py (issue 20 moves
    # it); the project refuses APD (bcd_d2.distiller.UNSUPPORTED_LOSSES) in any case.
    if "APD" not in ours:
        theirs.pop("APD", None)
    assert ours == theirs
    assert d2_node == {"TEACHER_LOGITS": "", "TEACHER_EARLY_EXIT": True}
    # on a plain Detectron2 config too, with one node class throughout
    cfg = d2_get_cfg()
    bcd_d2.add_bcd_config(cfg)
    assert _as_dict(cfg.KD) == dict(ours, D2=d2_node) and ours
    assert type(cfg.KD.BOUNDARY.TEMPERATURE) is type(cfg)
    with pytest.raises(KeyError, match="already has a KD node"):
        bcd_d2.add_bcd_config(cfg)


def test_model_zoo_names(tmp_path):
    import bcd_d2
    from detectron2 import model_zoo

    zoo = model_zoo.get_config("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    cfg = bcd_d2.get_cfg()
    cfg.merge_from_file("model_zoo://COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    assert _as_dict(cfg.MODEL) == _as_dict(zoo.MODEL) and cfg.SOLVER.MAX_ITER == zoo.SOLVER.MAX_ITER
    # as a _BASE_ (Detectron2 prepends the including file's folder) and through a relative base
    (tmp_path / "a.yaml").write_text('_BASE_: "model_zoo://COCO-Detection/retinanet_R_50_FPN_1x.yaml"\n'
                                     "MODEL:\n  RETINANET:\n    NUM_CLASSES: 3\n")
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\nSOLVER:\n  MAX_ITER: 7\n')
    cfg = bcd_d2.get_cfg()
    cfg.merge_from_file(str(tmp_path / "b.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.MODEL.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    assert (cfg.MODEL.RETINANET.NUM_CLASSES, cfg.SOLVER.MAX_ITER) == (3, 7)
    with pytest.raises(FileNotFoundError, match="model_zoo://COCO-Detection/nope.yaml"):
        bcd_d2.get_cfg().merge_from_file("model_zoo://COCO-Detection/nope.yaml")


def test_teacher_config():
    import bcd_d2

    cfg = bcd_d2.get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "COCO-Detection", "bcd_retinanet_R_101_to_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "KD.TEACHER.OPTS", "['MODEL.RETINANET.NUM_CONVS', 2]"])
    tcfg = bcd_d2.teacher_config(cfg)
    assert tcfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.RESNETS.DEPTH == 50
    assert tcfg.MODEL.RETINANET.NUM_CONVS == 2 and tcfg.MODEL.DEVICE == "cpu"
    assert tcfg.MODEL.WEIGHTS == "" and list(tcfg.KD.LOSSES) == []
    cfg.KD.TEACHER.CONFIG_FILE = "projects/bcd/configs/nope.yaml"
    with pytest.raises(FileNotFoundError, match="KD.TEACHER.CONFIG_FILE 'projects/bcd/configs/nope.yaml'"):
        bcd_d2.teacher_config(cfg)


ALL_CONFIGS = sorted(os.path.relpath(p, CONFIGS) for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
                     if not os.path.basename(p).startswith("Base-"))


def test_every_table_row_has_a_config():
    names = set(ALL_CONFIGS)
    for method in ("bcd", "cwd", "pkd", "fgd"):
        for row in ("COCO-Detection/{}_retinanet_R_101_to_R_50_FPN_1x.yaml",
                    "COCO-InstanceSegmentation/{}_mask_rcnn_R_101_to_R_50_FPN_1x.yaml",
                    "Misc/{}_cascade_mask_rcnn_R_101_to_R_50_FPN_1x.yaml"):
            assert row.format(method) in names
    assert {"Misc/bcd_semantic_R_101_to_R_50_FPN_1x.yaml", "Misc/cwd_semantic_R_101_to_R_50_FPN_1x.yaml"} <= names


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_loads_and_its_features_exist(name, tmp_path):
    """The config and its teacher load; every feature name is a module of the student and the
    teacher (validate_run: both built on the meta device)."""
    import bcd_d2

    cfg = bcd_d2.get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    cfg.MODEL.DEVICE = "cpu"
    if not name.startswith("test/"):
        assert any(b.startswith("model_zoo://") for b in _bases(os.path.join(CONFIGS, name))), name
    if len(cfg.KD.LOSSES):
        weights = cfg.KD.TEACHER.WEIGHTS
        assert weights, name
        if "://" not in weights:  # a teacher trained first: stand in an empty file
            cfg.KD.TEACHER.WEIGHTS = str(tmp_path / "teacher.pth")
            open(cfg.KD.TEACHER.WEIGHTS, "wb").close()
    bcd_d2.validate_run(cfg)


def _bases(path):
    """The ``_BASE_`` names of a config file and of the project files it includes."""
    import yaml

    base = yaml.safe_load(open(path)).get("_BASE_", [])
    base = [base] if isinstance(base, str) else list(base)
    out = list(base)
    for b in base:
        if not b.startswith("model_zoo://"):
            out += _bases(os.path.join(os.path.dirname(path), b))
    return out
