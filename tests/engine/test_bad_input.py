"""Issue 9: bad input and bad state, each case on data generated here, through tools/train_net.py.

Refusals must name the key / file and leave OUTPUT_DIR unwritten.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import List

import numpy as np
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


def _two_category_coco(root):
    import sys

    sys.path.insert(0, os.path.join(REPO, "tests", "detection"))
    from conftest import write_coco  # the detection tests' generator

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
