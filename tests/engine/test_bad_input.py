"""Issue 9: bad input and bad state, each case on data generated here, through tools/train_net.py.

Refusals must name the key / file and leave OUTPUT_DIR unwritten.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import List

import numpy as np
import torch
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_net():
    spec = importlib.util.spec_from_file_location(
        "bcd_train_net_bad_input", os.path.join(REPO, "tools", "train_net.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(argv: List[str]):
    from bcd.engine import default_argument_parser

    return _train_net().main(default_argument_parser().parse_args(["--num-gpus", "0"] + argv))


def write_sem_seg_folder(root, n=4, size=16, num_classes=3, image_mode="RGB", values=None):
    """``root/img/<i>.png`` and ``root/lbl/<i>.png`` (labels ``0..num_classes-1`` in stripes)."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "lbl"), exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        if image_mode == "I;16":
            lo, hi = values or (400, 3000)
            arr = rng.integers(lo, hi + 1, size=(size, size)).astype(np.uint16)
            arr.flat[0], arr.flat[1] = lo, hi  # the range is reached in every image
            Image.fromarray(arr).save(os.path.join(root, "img", f"{i}.png"))
        else:
            arr = rng.integers(0, 256, size=(size, size, 3)).astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(root, "img", f"{i}.png"))
        lbl = (np.arange(size)[None, :].repeat(size, 0) * num_classes // size).astype(np.uint8)
        Image.fromarray(lbl).save(os.path.join(root, "lbl", f"{i}.png"))
    return os.path.join(root, "img"), os.path.join(root, "lbl")


def sem_seg_custom(name, image_dir, label_dir, classes, ignore_label=255):
    return {"NAME": name, "TYPE": "sem_seg", "IMAGE_DIR": image_dir, "LABEL_DIR": label_dir,
            "CLASSES": list(classes), "IGNORE_LABEL": ignore_label, "IMAGE_EXT": ".png"}


def tiny_sem_seg_opts(out, entries, train, test, num_classes=3, head="PSPHead", batch=2, iters=2):
    """A PSPNet on ResNet-18 ×0.125 with 32×32 inputs: seconds on a CPU."""
    return [
        "MODEL.DEVICE", "cpu",
        "MODEL.BACKBONE.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.125",
        "MODEL.RESNETS.OUTPUT_STRIDE", "8",
        "MODEL.SEM_SEG_HEAD.NAME", head,
        "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res5']" if head == "DeepLabV3PlusHead" else "['res5']",
        "MODEL.SEM_SEG_HEAD.LOW_LEVEL_FEATURE", "res2",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
        "MODEL.SEM_SEG_HEAD.CHANNELS", "16",
        "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.AUX_HEAD.ENABLED", "False",
        "INPUT.BASE_SIZE", "[32, 32]",
        "INPUT.CROP.SIZE", "[32, 32]",
        "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", "1.0",
        "INPUT.SIZE_DIVISIBILITY", "8",
        "DATASETS.CUSTOM", str(entries),
        "DATASETS.TRAIN", str(tuple(train)),
        "DATASETS.TEST", str(tuple(test)),
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", str(batch),
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.BASE_LR", "0.01",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "TEST.EVAL_PERIOD", "0",
        "SEED", "0",
        "OUTPUT_DIR", str(out),
    ]


# ----------------------------------------------------------------------- 6: ignore value
def test_ignore_label_disagreeing_with_ignore_value_is_refused(tmp_path):
    img, lbl = write_sem_seg_folder(str(tmp_path / "d"))
    entry = sem_seg_custom("t9_ign_train", img, lbl, ["a", "b", "c"], ignore_label=0)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(tiny_sem_seg_opts(out, [entry], ["t9_ign_train"], []))
    msg = str(e.value)
    assert "DATASETS.CUSTOM['t9_ign_train'].IGNORE_LABEL" in msg
    assert "MODEL.SEM_SEG_HEAD.IGNORE_VALUE is 255" in msg and "with 0" in msg
    assert not out.exists()


# ----------------------------------------------------------------------- 7: class count
def test_sem_seg_class_count_disagreeing_with_dataset_is_refused(tmp_path):
    img, lbl = write_sem_seg_folder(str(tmp_path / "d"))
    train = sem_seg_custom("t9_cls_train", img, lbl, ["a", "b", "c"])
    val = sem_seg_custom("t9_cls_val", img, lbl, ["a", "b", "c", "d"])
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:  # the train set agrees; the test set has 4 classes
        _run(tiny_sem_seg_opts(out, [train, val], ["t9_cls_train"], ["t9_cls_val"]))
    msg = str(e.value)
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 3" in msg and "'t9_cls_val' has 4 classes" in msg
    assert not out.exists()


def write_coco(root, images, annotations, categories):
    """``root/ann.json`` and grey PNGs ``root/img/<file_name>``; returns the json path."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for im in images:
        arr = np.full((im["height"], im["width"], 3), 100, dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(root, "img", im["file_name"]))
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def _two_category_coco(root):
    images = [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 20], "iscrowd": 0, "area": 400},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 30, 20, 20], "iscrowd": 0, "area": 400},
    ]
    cats = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
    return write_coco(root, images, anns, cats), os.path.join(root, "img")


@pytest.mark.parametrize("arch,key", [("RetinaNet", "MODEL.RETINANET.NUM_CLASSES"),
                                      ("GFL", "MODEL.GFL.NUM_CLASSES")])
def test_detector_class_count_disagreeing_with_coco_categories_is_refused(tmp_path, arch, key):
    json_file, image_root = _two_category_coco(str(tmp_path / "coco"))
    name = f"t9_det_cls_{arch}"
    entry = {"NAME": name, "TYPE": "coco", "JSON_FILE": json_file, "IMAGE_ROOT": image_root}
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _run(["--config-file", os.path.join(REPO, "configs/demo/det_retinanet_student.yaml"),
              "MODEL.META_ARCHITECTURE", arch, key, "1", "DATASETS.CUSTOM", str([entry]),
              "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
              "OUTPUT_DIR", str(out)])
    msg = str(e.value)
    assert f"{key} is 1" in msg and f"'{name}' has 2 classes" in msg and "['one', 'two']" in msg
    assert not out.exists()


def test_class_count_table_is_extensible(cfg):
    from bcd.engine import validation as V

    V.register_class_count_key("MyArch", "MODEL.RETINANET.NUM_CLASSES", "thing_classes")
    try:
        from bcd.data import MetadataCatalog

        MetadataCatalog.get("t9_table_ds").set(thing_classes=["x", "y"])
        cfg.MODEL.META_ARCHITECTURE = "MyArch"
        cfg.MODEL.RETINANET.NUM_CLASSES = 2
        V.check_class_counts(cfg, ["t9_table_ds"])  # agrees: no error
        cfg.MODEL.RETINANET.NUM_CLASSES = 3
        with pytest.raises(ValueError, match="MODEL.RETINANET.NUM_CLASSES is 3"):
            V.check_class_counts(cfg, ["t9_table_ds"])
    finally:
        V.CLASS_COUNT_KEYS.pop("MyArch")


# ----------------------------------------------------------------------- 5: finite checkpoints
class _ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(2)

    def forward(self, batch):
        x = torch.stack([d["image"] for d in batch]).float()
        return {"loss": self.bn(self.conv(x)).square().mean()}


def test_checkpoint_refuses_nonfinite_buffer_and_keeps_last_checkpoint(tmp_path):
    from bcd.engine import Checkpointer

    model = _ConvBN()
    ckpt = Checkpointer(model, str(tmp_path))
    ckpt.save("model_0000000")
    model.bn.running_var[1] = float("inf")
    with pytest.raises(FloatingPointError) as e:
        ckpt.save("model_0000001")
    assert "bn.running_var" in str(e.value) and "model_0000001.pth" in str(e.value)
    assert "last_checkpoint still names model_0000000.pth" in str(e.value)
    with pytest.raises(FloatingPointError, match="bn.running_var"):
        ckpt.save_model_only("model_final")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


def test_nonfinite_buffer_from_a_finite_loss_step_stops_before_the_update():
    """Huge weights: BN's batch variance overflows to inf, its training output (x - mean) / inf
    is 0, so the loss is finite while running_var becomes inf. The step must not happen."""
    from bcd.engine import SimpleTrainer
    from bcd.utils.events import EventStorage

    model = _ConvBN()
    with torch.no_grad():
        model.conv.weight.fill_(1e25)
    before = {k: v.clone() for k, v in model.named_parameters()}
    batches = iter(lambda: [{"image": torch.full((1, 2, 2), 3.0)}, {"image": torch.full((1, 2, 2), 5.0)}], None)
    trainer = SimpleTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    with EventStorage(0):
        with pytest.raises(FloatingPointError) as e:
            trainer.run_step()
    assert "bn.running_var" in str(e.value) and "iteration=0" in str(e.value)
    assert not torch.isfinite(model.bn.running_var).all()  # the forward did write inf ...
    for k, v in model.named_parameters():  # ... but no parameter was updated
        assert torch.equal(v, before[k]), k


def test_cwd_distillation_at_absurd_lr_leaves_only_finite_checkpoints(tmp_path):
    """The issue's case: CWD at LR 1e4 (SGD); a checkpoint after every iteration."""
    from bcd.config import get_cfg
    from bcd.modeling import build_model

    img, lbl = write_sem_seg_folder(str(tmp_path / "d"), n=4, size=32)
    entry = sem_seg_custom("t9_cwd_train", img, lbl, ["a", "b", "c"])
    out = tmp_path / "out"
    opts = tiny_sem_seg_opts(out, [entry], ["t9_cwd_train"], [], iters=8)
    teacher_cfg = get_cfg()
    teacher_cfg.merge_from_list(opts)  # the same tiny PSPNet as teacher (random weights)
    teacher_yaml = tmp_path / "teacher.yaml"
    teacher_yaml.write_text(teacher_cfg.dump())
    torch.manual_seed(0)
    torch.save({"model": build_model(teacher_cfg).state_dict()}, tmp_path / "teacher.pth")
    with pytest.raises(FloatingPointError) as e:
        _run(opts + ["KD.LOSSES", "['ChannelWiseDistillation']",
                     "KD.TEACHER.CONFIG_FILE", str(teacher_yaml),
                     "KD.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth"),
                     "KD.SHAPE_PROBE_SIZE", "[32, 32]", "SOLVER.OPTIMIZER", "SGD",
                     "SOLVER.BASE_LR", "1e4", "SOLVER.CHECKPOINT_PERIOD", "1"])
    assert "running_var" in str(e.value) or "NaN" in str(e.value)
    last = (out / "last_checkpoint").read_text()
    stopped_at = int(str(e.value).split("iteration=")[1].split(":")[0])
    assert last == f"model_{stopped_at - 1:07d}.pth"  # every finished iteration was saved
    for name in os.listdir(out):
        if name.startswith("model_"):
            state = torch.load(out / name, weights_only=False)["model"]
            bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            assert not bad, (name, bad[:3])
