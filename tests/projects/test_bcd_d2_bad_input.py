"""Bad input to projects/bcd/train_net.py: a clear error naming the key (and file or module), raised
before anything is written to OUTPUT_DIR where the config alone shows it."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("detectron2", reason="Detectron2 is not installed (projects/bcd/README.md)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_CONFIGS = os.path.join(REPO, "projects", "bcd", "configs", "test")
KD_CONFIG = os.path.join(TEST_CONFIGS, "bcd_retinanet_R_18_tiny.yaml")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(TEST_CONFIGS, "retinanet_R_18_tiny_teacher.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    tmp = tmp_path_factory.mktemp("teacher")
    DetectionCheckpointer(build_model(cfg), str(tmp)).save("teacher")
    return str(tmp / "teacher.pth")


def _refused(train_net, tmp_path, exc, opts, *messages):
    out = tmp_path / "out"
    with pytest.raises(exc) as e:
        train_net(["--config-file", KD_CONFIG, "DATASETS.TEST", "()", "OUTPUT_DIR", str(out), *opts])
    for m in messages:
        assert m in str(e.value), (m, str(e.value))
    assert not out.exists()  # refused before default_setup writes config.yaml / log.txt
    return str(e.value)


def test_unknown_feature_name(tmp_path, teacher, train_net, demo_datasets):
    msg = _refused(train_net, tmp_path, KeyError,
                   ["KD.TEACHER.WEIGHTS", teacher, "KD.CONTEXT.STUDENT_FEATURES",
                    "['backbone.bottom_up.res2', 'backbone.bottom_up.res3', 'backbone.bottom_up.res4', 'backbone.bottom_up.res6']"],
                   "KD.CONTEXT.STUDENT_FEATURES", "backbone.bottom_up.res6")
    assert "backbone.bottom_up.res5" in msg  # among the closest valid names


def test_missing_teacher_config_and_weights(tmp_path, teacher, train_net, demo_datasets):
    _refused(train_net, tmp_path, FileNotFoundError, ["KD.TEACHER.CONFIG_FILE", "projects/bcd/configs/test/nope.yaml"],
             "KD.TEACHER.CONFIG_FILE", "nope.yaml")
    _refused(train_net, tmp_path, FileNotFoundError, ["KD.TEACHER.CONFIG_FILE", "model_zoo://COCO-Detection/nope.yaml"],
             "model_zoo://COCO-Detection/nope.yaml", "not available in Model Zoo")
    _refused(train_net, tmp_path, FileNotFoundError, ["KD.TEACHER.WEIGHTS", str(tmp_path / "none.pth")],
             "KD.TEACHER.WEIGHTS", "none.pth")
    _refused(train_net, tmp_path, ValueError, ["KD.TEACHER.WEIGHTS", ""], "KD.TEACHER.WEIGHTS is empty")


def test_unknown_or_unsupported_loss_and_dataset(tmp_path, teacher, train_net, demo_datasets):
    _refused(train_net, tmp_path, KeyError, ["KD.TEACHER.WEIGHTS", teacher, "KD.LOSSES", "['BoundryDistillation']"],
             "KD.LOSSES", "BoundryDistillation", "BoundaryDistillation")
    _refused(train_net, tmp_path, ValueError, ["KD.TEACHER.WEIGHTS", teacher, "KD.LOSSES", "['APD']"],
             "KD.LOSSES: APD is not supported")
    _refused(train_net, tmp_path, KeyError, ["KD.TEACHER.WEIGHTS", teacher, "DATASETS.TRAIN", "('demo_det_tran',)"],
             "DATASETS.TRAIN", "demo_det_tran", "demo_det_train")


def test_teacher_weights_that_do_not_fit(tmp_path, train_net, demo_datasets):
    """Weights of the student's architecture for the teacher's (other FPN width, head depth): the
    error names the file and the mis-shaped / unexpected keys."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(TEST_CONFIGS, "retinanet_R_18_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    DetectionCheckpointer(build_model(cfg), str(tmp_path)).save("student")
    wrong = str(tmp_path / "student.pth")
    with pytest.raises(ValueError) as e:
        train_net(["--config-file", KD_CONFIG, "DATASETS.TEST", "()", "KD.TEACHER.WEIGHTS", wrong,
                   "OUTPUT_DIR", str(tmp_path / "out")])
    msg = str(e.value)
    assert "KD.TEACHER.WEIGHTS" in msg and wrong in msg
    assert "missing keys" in msg and "keys of another shape" in msg and "backbone.fpn_lateral3.weight" in msg


def test_eval_only_needs_weights(tmp_path, train_net, demo_datasets):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--eval-only needs weights"):
        train_net(["--config-file", KD_CONFIG, "--eval-only", "DATASETS.TEST", "('demo_det_val',)", "OUTPUT_DIR", str(out)])

