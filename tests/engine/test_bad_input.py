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


def test_class_count_is_declared_by_the_meta_architecture(cfg):
    from bcd.engine import validation as V
    from bcd.modeling.meta_arch import META_ARCH_REGISTRY, ClassCountKey

    @META_ARCH_REGISTRY.register()
    class T9MyArch(torch.nn.Module):  # a new meta-architecture declares where its count lives
        CLASS_COUNT = ClassCountKey("MODEL.RETINANET.NUM_CLASSES", "thing_classes")

    try:
        from bcd.data import MetadataCatalog

        MetadataCatalog.get("t9_table_ds").set(thing_classes=["x", "y"])
        cfg.MODEL.META_ARCHITECTURE = "T9MyArch"
        cfg.MODEL.RETINANET.NUM_CLASSES = 2
        V.check_class_counts(cfg, ["t9_table_ds"])  # agrees: no error
        cfg.MODEL.RETINANET.NUM_CLASSES = 3
        with pytest.raises(ValueError, match="MODEL.RETINANET.NUM_CLASSES is 3"):
            V.check_class_counts(cfg, ["t9_table_ds"])
    finally:
        META_ARCH_REGISTRY._obj_map.pop("T9MyArch")


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


# ----------------------------------------------------------------------- 4: resume, changed config
def test_resume_with_changed_schedule_uses_the_config_and_logs_the_differences(tmp_path):
    """10 iterations at BASE_LR 0.02, then --resume with MAX_ITER 20, BASE_LR 0.002, a step at
    15 (GAMMA 0.1) and MOMENTUM 0.5: the LR actually used is the new config's."""
    import engine_toy as T

    out = str(tmp_path / "run")
    first = {"SOLVER.MAX_ITER": 10, "SOLVER.BASE_LR": 0.02, "SOLVER.WARMUP_ITERS": 0,
             "SOLVER.LR_SCHEDULER_NAME": "WarmupMultiStepLR", "SOLVER.STEPS": "()",
             "SOLVER.CHECKPOINT_PERIOD": 10, "SOLVER.LOG_PERIOD": 1, "TEST.EVAL_PERIOD": 0}
    T.train_main(T.parse_args(["--num-gpus", "0"] + T.base_opts(out, **first)))
    second = dict(first, **{"SOLVER.MAX_ITER": 20, "SOLVER.BASE_LR": 0.002,
                            "SOLVER.STEPS": "(15,)", "SOLVER.GAMMA": 0.1, "SOLVER.MOMENTUM": 0.5})
    T.train_main(T.parse_args(["--num-gpus", "0", "--resume"] + T.base_opts(out, **second)))

    with open(os.path.join(out, "metrics.json")) as f:
        lr = {r["iteration"]: r["lr"] for r in map(json.loads, f) if "lr" in r}
    assert [lr[i] for i in range(10)] == pytest.approx([0.02] * 10)
    assert [lr[i] for i in range(10, 15)] == pytest.approx([0.002] * 5)
    assert [lr[i] for i in range(15, 20)] == pytest.approx([0.0002] * 5)
    final = torch.load(os.path.join(out, "model_0000019.pth"), weights_only=False)
    assert {g["momentum"] for g in final["optimizer"]["param_groups"]} == {0.5}
    assert final["config"]["SOLVER.BASE_LR"] == 0.002
    log = open(os.path.join(out, "log.txt")).read()
    for line in ["SOLVER.BASE_LR: 0.02 (checkpoint) -> 0.002 (config)",
                 "SOLVER.MAX_ITER: 10 (checkpoint) -> 20 (config)",
                 "SOLVER.STEPS: [] (checkpoint) -> [15] (config)",
                 "SOLVER.MOMENTUM: 0.9 (checkpoint) -> 0.5 (config)"]:
        assert line in log, line


# ----------------------------------------------------------------------- 2: batch of one, BN after pooling
def test_pooled_batchnorm_with_one_value_uses_running_statistics():
    from bcd.modeling.heads.common import PooledBatchNorm2d, pooled_conv_norm_act

    block = pooled_conv_norm_act(4, 3, "BN").train()
    bn = block[1]
    assert type(bn) is PooledBatchNorm2d
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.tensor([1.5, 0.0, 2.0]).view(1, 3, 1, 1)
    y = bn(x)  # (x - mean) / sqrt(var + eps) * w + b, by hand
    expected = torch.tensor([(1.5 - 0.5) / 2.0 * 1.0, (0.0 + 1.0) / 0.5 * 2.0 + 1.0, -1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-4)
    assert bn.running_var.tolist() == [4.0, 0.25, 1.0]  # unchanged by that step
    # Two values per channel: plain BatchNorm2d, batch statistics and running update.
    ref = torch.nn.BatchNorm2d(3).train()
    ref.load_state_dict(bn.state_dict())
    x2 = torch.randn(2, 3, 1, 1)
    torch.testing.assert_close(bn(x2), ref(x2))
    torch.testing.assert_close(bn.running_var, ref.running_var)
    # The state dict is BatchNorm2d's: checkpoints load into either.
    assert list(bn.state_dict()) == list(torch.nn.BatchNorm2d(3).state_dict())


@pytest.mark.parametrize("head", ["PSPHead", "DeepLabV3PlusHead"])
def test_batch_of_one_trains_heads_that_pool_to_1x1(tmp_path, head):
    img, lbl = write_sem_seg_folder(str(tmp_path / "d"), n=2, size=32)
    entry = sem_seg_custom(f"t9_b1_{head}", img, lbl, ["a", "b", "c"])
    out = tmp_path / "out"
    _run(tiny_sem_seg_opts(out, [entry], [entry["NAME"]], [], head=head, batch=1, iters=2)
         + ["SOLVER.LOG_PERIOD", "1"])
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    losses = [r["loss_sem_seg"] for r in rows if "loss_sem_seg" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (out / "model_final.pth").is_file()


def test_one_image_per_process_with_two_processes(tmp_path):
    import engine_toy as T
    from bcd.engine import launch

    img, lbl = write_sem_seg_folder(str(tmp_path / "d"), n=2, size=32)
    entry = sem_seg_custom("t9_b1_ddp", img, lbl, ["a", "b", "c"])
    out = tmp_path / "out"
    args = T.parse_args(["--num-gpus", "2"] + tiny_sem_seg_opts(
        out, [entry], ["t9_b1_ddp"], [], batch=2, iters=2))
    launch(T.train_main, 2, dist_url="auto", args=(args,))
    assert "World size: 2" in (out / "log.txt").read_text()
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ----------------------------------------------------------------------- 1: high-bit-depth images
def test_16bit_png_refused_without_a_scaling_rule(tmp_path):
    img, lbl = write_sem_seg_folder(str(tmp_path / "d"), image_mode="I;16")
    entry = sem_seg_custom("t9_16_refuse", img, lbl, ["a", "b", "c"])
    out = tmp_path / "out"
    from bcd.data.io import ImageReadError

    with pytest.raises(ImageReadError) as e:
        _run(tiny_sem_seg_opts(out, [entry], ["t9_16_refuse"], []))
    msg = str(e.value)
    assert os.path.join(img, "0.png") in msg and "mode I;16" in msg
    assert "INPUT.INTENSITY_SCALING" in msg and "400..3000" in msg
    assert not out.exists()


def _mapped_and_preprocessed(cfg, dataset_dict, mapper_cls):
    from bcd.modeling import build_model

    mapped = mapper_cls(cfg, is_train=False)(dataset_dict)
    model = build_model(cfg).eval()
    return mapped, model.preprocess([mapped]).tensor[0]  # padded at the bottom / right


@pytest.mark.parametrize("rule", ["fixed", "minmax"])
def test_16bit_png_values_reach_the_model_scaled_by_the_rule(tmp_path, cfg, rule):
    from bcd.data.mappers.sem_seg import SemSegDatasetMapper

    img, lbl = write_sem_seg_folder(str(tmp_path / "d"), n=1, size=16, image_mode="I;16")
    raw = np.asarray(Image.open(os.path.join(img, "0.png"))).astype(np.float64)
    assert raw.min() == 400 and raw.max() == 3000
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.WEIGHTS", "",
                         "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.WIDTH_MULTIPLIER", "0.125",
                         "MODEL.SEM_SEG_HEAD.NAME", "PSPHead", "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res5']",
                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.SEM_SEG_HEAD.CHANNELS", "16",
                         "MODEL.AUX_HEAD.ENABLED", "False", "INPUT.BASE_SIZE", "[-1, -1]",
                         "INPUT.SIZE_DIVISIBILITY", "16",
                         "INPUT.INTENSITY_SCALING", rule, "INPUT.INTENSITY_RANGE", "[0.0, 4000.0]"])
    d = {"file_name": os.path.join(img, "0.png"), "sem_seg_file_name": os.path.join(lbl, "0.png"),
         "height": 16, "width": 16, "image_id": 0}
    mapped, x = _mapped_and_preprocessed(cfg, d, SemSegDatasetMapper)
    expected = raw * 255.0 / 4000.0 if rule == "fixed" else (raw - 400.0) * 255.0 / 2600.0
    assert mapped["image"].dtype == torch.float32 and mapped["image"].shape == (3, 16, 16)
    for c in range(3):  # one grey channel repeated; full precision (not 8-bit steps)
        np.testing.assert_allclose(mapped["image"][c].numpy(), expected, rtol=1e-6, atol=1e-4)
        mean, std = cfg.MODEL.PIXEL_MEAN[c], cfg.MODEL.PIXEL_STD[c]
        np.testing.assert_allclose(x[c, :16, :16].numpy(), (expected - mean) / std, rtol=1e-5, atol=1e-4)
    assert len(np.unique(mapped["image"][0].numpy())) > 200  # more levels than 8 bits keep here


def test_detection_mapper_reads_through_the_same_reader(tmp_path, cfg):
    from bcd.data.mappers.detection import DetectionDatasetMapper

    arr = np.linspace(400, 3000, 32 * 40).reshape(32, 40).astype(np.uint16)
    path = str(tmp_path / "a.png")
    Image.fromarray(arr).save(path)
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "1000",
                         "INPUT.INTENSITY_SCALING", "fixed", "INPUT.INTENSITY_RANGE", "[0.0, 4000.0]"])
    out = DetectionDatasetMapper(cfg, is_train=False)(
        {"file_name": path, "height": 32, "width": 40, "image_id": 1, "annotations": []})
    np.testing.assert_allclose(out["image"][1].numpy(), arr * 255.0 / 4000.0, rtol=1e-6, atol=1e-4)


def test_16bit_colour_png_and_float_tiff_at_full_precision(tmp_path):
    import cv2

    from bcd.data.io import IntensityScaling, read_image

    rgb = np.stack([np.full((4, 5), v, np.uint16) for v in (1000, 2000, 3000)], axis=2)
    rgb[0, 0] = (1001, 2001, 3001)  # differs from its neighbours in the low byte only
    cv2.imwrite(str(tmp_path / "c.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    out = read_image(str(tmp_path / "c.png"), "RGB", IntensityScaling("fixed", [0, 4000]))
    np.testing.assert_allclose(out, rgb * 255.0 / 4000.0, rtol=1e-6)  # PIL alone gives the high byte
    bgr = read_image(str(tmp_path / "c.png"), "BGR", IntensityScaling("fixed", [0, 4000]))
    np.testing.assert_allclose(bgr, out[:, :, ::-1])

    f = np.array([[-1.0, 0.0], [0.5, 3.0]], dtype=np.float32)
    Image.fromarray(f).save(str(tmp_path / "f.tif"))
    out = read_image(str(tmp_path / "f.tif"), "L", IntensityScaling("minmax"))
    np.testing.assert_allclose(out[:, :, 0], (f + 1.0) * 255.0 / 4.0, rtol=1e-6)
    with pytest.raises(ValueError, match="INPUT.INTENSITY_RANGE"):
        IntensityScaling("fixed", [5, 5])


# ----------------------------------------------------------------------- 3: COCO json without area / iscrowd
def _coco_without_area(root):
    images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
              {"id": 2, "file_name": "b.png", "height": 30, "width": 30}]
    anns = [  # no "area", no "iscrowd"; one with a polygon, two with boxes only
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12],
         "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 5, 25, 30]},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 30, 30]},
    ]
    cats = [{"id": 3, "name": "cat3"}, {"id": 7, "name": "cat7"}]  # cat7: no ground truth
    return write_coco(root, images, anns, cats), os.path.join(root, "img")


def test_coco_without_area_and_iscrowd_is_completed_with_one_warning(tmp_path, caplog):
    import logging

    from pycocotools import mask as mask_util

    from bcd.data.datasets.coco import load_coco_gt, register_coco_instances
    from bcd.evaluation.coco_evaluation import COCOEvaluator
    from bcd.structures import Instances

    json_file, image_root = _coco_without_area(str(tmp_path / "coco"))
    register_coco_instances("t9_noarea", json_file, image_root)
    from bcd.data import DatasetCatalog

    with caplog.at_level(logging.WARNING):
        dicts = DatasetCatalog.get("t9_noarea")
        ev = COCOEvaluator("t9_noarea", None)
        gt = ev.coco_gt
        DatasetCatalog.get("t9_noarea")
    warnings = [r.getMessage() for r in caplog.records if "derived the fields" in r.getMessage()]
    assert len(warnings) == 1 and json_file in warnings[0]
    assert "'area' of 3 annotations" in warnings[0] and "'iscrowd' = 0 for 3" in warnings[0]
    assert gt is load_coco_gt(json_file)  # the evaluator scores the loader's ground truth
    rle = mask_util.frPyObjects([[2, 3, 12, 3, 12, 15, 2, 15]], 40, 50)
    assert gt.anns[1]["area"] == float(mask_util.area(rle)[0])  # from the mask
    assert gt.anns[2]["area"] == 25 * 30 and gt.anns[3]["area"] == 900  # from the box
    assert all(a["iscrowd"] == 0 for d in dicts for a in d["annotations"])

    def pred(boxes):
        inst = Instances((40, 50))
        inst.pred_boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
        return {"instances": inst}

    # Perfect detections: AP 100 (no KeyError 'area' from pycocotools).
    ev.reset()
    ev.process([dicts[0]], [pred([[2, 3, 12, 15], [20, 5, 45, 35]])])
    ev.process([dicts[1]], [pred([[0, 0, 30, 30]])])
    res = ev.evaluate()["bbox"]
    assert res["AP"] == pytest.approx(100.0) and res["AP-cat3"] == pytest.approx(100.0)
    assert np.isnan(res["AP-cat7"])  # no ground truth: undefined, not 0

    # No detections: 0 where ground truth exists, undefined (NaN) where none does.
    ev.reset()
    for d in dicts:
        ev.process([d], [pred([])])
    res = ev.evaluate()["bbox"]
    assert res["AP"] == 0.0 and res["AP-cat3"] == 0.0
    assert np.isnan(res["AP-cat7"]) and np.isnan(res["APl"])  # no box above 96² pixels


def test_coco_with_bad_iscrowd_or_nameless_category_is_refused(tmp_path):
    from bcd.data.datasets.coco import load_coco_json

    json_file, image_root = _coco_without_area(str(tmp_path / "a"))
    data = json.load(open(json_file))
    data["annotations"][1]["iscrowd"] = 2
    json.dump(data, open(json_file, "w"))
    with pytest.raises(ValueError, match=r"annotation id 2 has iscrowd 2"):
        load_coco_json(json_file, image_root)
    data["annotations"][1]["iscrowd"] = 0
    del data["categories"][0]["name"]
    json.dump(data, open(json_file, "w"))
    with pytest.raises(ValueError) as e:
        load_coco_json(json_file, image_root)
    assert json_file in str(e.value) and "has no 'name'" in str(e.value)
