"""Semantic-segmentation data: readers, folder / list loading, custom datasets from the config,
builtin registrations, the generated demo dataset, transforms and the mapper."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data import DatasetCatalog, MetadataCatalog
from bcd.data.datasets import register_from_config
from bcd.data.datasets.demo import DEMO_CLASSES, build_demo_sem_seg, render_scene
from bcd.data.datasets.sem_seg import load_sem_seg
from bcd.data.io import ImageReadError, read_image, read_sem_seg
from bcd.data.mappers.sem_seg import SemSegDatasetMapper
from bcd.data.transforms import (
    pad_to_size,
    random_crop_category_area,
    random_hflip,
    random_scale,
    resize_scale,
)


def _write_pair(folder, stem, h=24, w=32, label_hw=None, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    os.makedirs(os.path.join(folder, "lab"), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(folder, "img", stem + ".png"))
    lh, lw = label_hw or (h, w)
    lab = rng.integers(0, 3, (lh, lw)).astype(np.uint8)
    lab[0, 0] = 255
    Image.fromarray(lab).save(os.path.join(folder, "lab", stem + ".png"))
    return os.path.join(folder, "img", stem + ".png"), os.path.join(folder, "lab", stem + ".png"), lab


# ------------------------------------------------------------------ readers and bad files
def test_read_image_and_palette_label(tmp_path):
    img_path, _, _ = _write_pair(str(tmp_path), "a")
    assert read_image(img_path).shape == (24, 32, 3)
    np.testing.assert_array_equal(read_image(img_path, "BGR"), read_image(img_path)[:, :, ::-1])
    lab = np.array([[0, 1], [255, 5]], np.uint8)
    p = Image.fromarray(lab, mode="P")
    p.putpalette([255, 0, 0] * 256)  # colours must not matter: the indices are the labels
    p.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_sem_seg(str(tmp_path / "pal.png")), lab)


def test_corrupt_image_error_names_file(tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        read_image(str(bad))
    # a truncated PNG fails on decoding, not at open
    good = tmp_path / "ok.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(str(trunc))
    with pytest.raises(ImageReadError, match="missing.png"):
        read_sem_seg(str(tmp_path / "missing.png"))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb_label.png")
    with pytest.raises(ImageReadError, match="rgb_label.png"):
        read_sem_seg(str(tmp_path / "rgb_label.png"))


def test_mapper_errors_name_the_file(tmp_path, cfg):
    img, lab, _ = _write_pair(str(tmp_path), "wrong", label_hw=(20, 32))
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    mapper = SemSegDatasetMapper(cfg, is_train=False)
    with pytest.raises(ValueError, match="wrong.png.*20×32.*24×32"):
        mapper({"file_name": img, "sem_seg_file_name": lab, "image_id": 0})
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="broken.png"):
        mapper({"file_name": str(bad), "sem_seg_file_name": lab, "image_id": 1})
    img2, lab2, _ = _write_pair(str(tmp_path), "ok")
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2  # the label holds class 2: out of range
    with pytest.raises(ValueError, match="ok.png.*outside"):
        SemSegDatasetMapper(cfg, is_train=False)({"file_name": img2, "sem_seg_file_name": lab2, "image_id": 2})


# ------------------------------------------------------------------ loading and registration
def test_load_folders_and_list_file(tmp_path):
    for i in range(3):
        _write_pair(str(tmp_path), f"s{i}", seed=i)
    d = load_sem_seg(str(tmp_path / "img"), str(tmp_path / "lab"), ".png", ".png")
    assert [x["image_id"] for x in d] == ["s0", "s1", "s2"]
    assert d[0]["sem_seg_file_name"].endswith(os.path.join("lab", "s0.png"))
    assert (d[0]["height"], d[0]["width"]) == (24, 32)
    (tmp_path / "list.txt").write_text("s2\ns0\n")
    d = load_sem_seg(str(tmp_path / "img"), str(tmp_path / "lab"), ".png", ".png", str(tmp_path / "list.txt"))
    assert [x["image_id"] for x in d] == ["s2", "s0"]
    (tmp_path / "list2.txt").write_text("s1\nnope\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_sem_seg(str(tmp_path / "img"), str(tmp_path / "lab"), ".png", ".png", str(tmp_path / "list2.txt"))
    os.remove(tmp_path / "lab" / "s1.png")
    with pytest.raises(FileNotFoundError, match="s1.png"):
        load_sem_seg(str(tmp_path / "img"), str(tmp_path / "lab"), ".png", ".png")


def test_custom_dataset_from_yaml(tmp_path, cfg):
    for i in range(2):
        _write_pair(str(tmp_path), f"c{i}", seed=i)
    yaml = tmp_path / "cfg.yaml"
    yaml.write_text(
        "DATASETS:\n  TRAIN: ('_my_custom_train',)\n  CUSTOM:\n"
        f"    - NAME: _my_custom_train\n      TYPE: sem_seg\n      IMAGE_DIR: {tmp_path / 'img'}\n"
        f"      LABEL_DIR: {tmp_path / 'lab'}\n      IMAGE_EXT: .png\n"
        "      CLASSES: [sky, road, car]\n      IGNORE_LABEL: 255\n"
    )
    cfg.merge_from_file(str(yaml))
    register_from_config(cfg)
    register_from_config(cfg)  # idempotent
    dicts = DatasetCatalog.get("_my_custom_train")
    assert len(dicts) == 2
    meta = MetadataCatalog.get("_my_custom_train")
    assert meta.stuff_classes == ["sky", "road", "car"] and meta.ignore_label == 255
    assert meta.evaluator_type == "sem_seg" and len(meta.stuff_colors) == 3
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    out = SemSegDatasetMapper(cfg, is_train=False)(dicts[0])
    assert out["sem_seg"].shape == (24, 32)


def test_custom_dataset_unknown_key(cfg):
    from bcd.data.datasets.sem_seg import register_custom_sem_seg

    with pytest.raises(KeyError, match="LABEL_DIRR"):
        register_custom_sem_seg({"NAME": "_x", "TYPE": "sem_seg", "IMAGE_DIR": "a", "LABEL_DIRR": "b", "CLASSES": ["a"]})


def test_builtin_missing_folder_is_lazy_and_named(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path))
    for name, n in (("cityscapes_fine_sem_seg_val", 19), ("voc_2012_sem_seg_train_aug", 21),
                    ("ade20k_sem_seg_val", 150), ("coco_stuff_10k_sem_seg_test", 171),
                    ("pascal_context_59_sem_seg_val", 59)):
        assert len(MetadataCatalog.get(name).stuff_classes) == n
        with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*README"):
            DatasetCatalog.get(name)
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").evaluator_type == "cityscapes_sem_seg"


def test_builtin_cityscapes_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path))
    img_dir = tmp_path / "cityscapes" / "leftImg8bit" / "val" / "lindau"
    gt_dir = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(img_dir / "lindau_000000_000019_leftImg8bit.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(gt_dir / "lindau_000000_000019_gtFine_labelTrainIds.png")
    (d,) = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    assert d["sem_seg_file_name"].endswith("lindau_000000_000019_gtFine_labelTrainIds.png")
    assert d["image_id"] == os.path.join("lindau", "lindau_000000_000019")


# ------------------------------------------------------------------ generated demo dataset
def test_demo_dataset_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path))
    train = DatasetCatalog.get("demo_sem_seg_train")  # built on first use
    val = DatasetCatalog.get("demo_sem_seg_val")
    assert len(train) == 300 and len(val) == 60
    assert not set(d["image_id"] for d in train) & set(d["image_id"] for d in val)
    folder = tmp_path / "demo_sem_seg"
    assert "GENERATED" in (folder / "README.txt").read_text()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".demo")]  # no temp folder left
    meta = MetadataCatalog.get("demo_sem_seg_train")
    assert meta.generated is True and meta.stuff_classes == DEMO_CLASSES and len(DEMO_CLASSES) == 6
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    labels = np.stack([read_sem_seg(d["sem_seg_file_name"]) for d in train[:100]])
    assert Image.open(train[0]["sem_seg_file_name"]).mode == "P"
    values = set(np.unique(labels).tolist())
    assert values == {0, 1, 2, 3, 4, 5, 255}
    assert 0 < (labels == 255).mean() < 0.05
    assert read_image(train[0]["file_name"]).shape == (128, 128, 3)
    # deterministic: the same scene twice, and the stored label is the rendered one
    a, la = render_scene(7)
    b, lb = render_scene(7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(read_sem_seg(str(folder / "SegmentationClass" / "demo_000007.png")), la)
    # building again keeps the existing copy
    assert build_demo_sem_seg(str(tmp_path)) == str(folder)


def test_demo_incomplete_folder_is_reported(tmp_path):
    (tmp_path / "demo_sem_seg").mkdir()
    with pytest.raises(RuntimeError, match="demo_sem_seg.*not a complete"):
        build_demo_sem_seg(str(tmp_path))


# ------------------------------------------------------------------ transforms and mapper
def test_random_crop_respects_category_area():
    torch.manual_seed(0)
    lab = np.zeros((100, 100), np.int64)
    lab[:, 90:] = 1  # class 1 only in a 10-pixel strip on the right
    img = np.zeros((100, 100, 3), np.uint8)
    for _ in range(20):
        _, c = random_crop_category_area(img, lab, (40, 40), 0.9, 255, max_tries=200)
        vals, cnt = np.unique(c, return_counts=True)
        assert len(vals) == 2 and cnt.max() / cnt.sum() < 0.9
    _, c = random_crop_category_area(img, lab, (200, 50), 1.0, 255)
    assert c.shape == (100, 50)  # clipped to the image


def test_flip_scale_pad_keep_image_and_label_aligned():
    torch.manual_seed(1)
    lab = np.random.default_rng(0).integers(0, 5, (30, 40))
    img = np.repeat((lab * 50).astype(np.uint8)[..., None], 3, axis=2)  # image encodes label
    flipped = 0
    for _ in range(8):
        i2, l2 = random_hflip(img, lab)
        np.testing.assert_array_equal(i2[..., 0], (l2 * 50).astype(np.uint8))
        flipped += int(np.array_equal(l2, lab[:, ::-1]))
    assert 0 < flipped < 8
    i3, l3 = random_scale(img, lab, [-1], [2.0, 2.0])
    assert i3.shape[:2] == l3.shape == (60, 80)
    i3, l3 = random_scale(img, lab, [36, 100], [0.5, 0.5])
    assert i3.shape[:2] == l3.shape == (18, 24)  # fits 18x50 keeping the ratio: scale 0.6
    # orientation-independent fit (mmseg keep_ratio): long edge <= 2048, short edge <= 512
    assert resize_scale(np.zeros((500, 375, 3), np.uint8), None, (512, 2048))[0].shape == (683, 512, 3)
    assert resize_scale(np.zeros((375, 500, 3), np.uint8), None, (512, 2048))[0].shape == (512, 683, 3)
    i4, l4 = pad_to_size(img, lab, (35, 41), 255)
    assert l4.shape == (35, 41) and (l4[30:] == 255).all() and (l4[:, 40:] == 255).all() and (i4[30:] == 0).all()


def test_mapper_train_and_test(tmp_path, cfg):
    img, lab, lab_np = _write_pair(str(tmp_path), "m", h=24, w=32)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.INPUT.BASE_SIZE = [24, 32]
    cfg.INPUT.SCALE_RANGE = [0.5, 2.0]
    cfg.INPUT.CROP.SIZE = [40, 40]
    torch.manual_seed(0)
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    d = {"file_name": img, "sem_seg_file_name": lab, "height": 24, "width": 32, "image_id": "m"}
    seen_pad = False
    for _ in range(6):
        out = mapper(d)
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 40, 40)
        assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (40, 40)
        assert set(out["sem_seg"].unique().tolist()) <= {0, 1, 2, 255}
        seen_pad |= bool((out["sem_seg"][-1] == 255).all())
        assert (out["height"], out["width"]) == (24, 32)
    assert seen_pad  # a crop larger than the scaled image is padded with the ignore value
    test = SemSegDatasetMapper(cfg, is_train=False)(d)
    assert test["image"].shape == (3, 24, 32)
    np.testing.assert_array_equal(test["sem_seg"].numpy(), lab_np)
    np.testing.assert_array_equal(test["image"].permute(1, 2, 0).numpy(), read_image(img))
    # the model input contract: no label file -> no "sem_seg" in test mode
    assert "sem_seg" not in SemSegDatasetMapper(cfg, is_train=False)({"file_name": img, "image_id": 0})


def test_mapper_registered(cfg):
    from bcd.data.build import MAPPER_REGISTRY

    assert MAPPER_REGISTRY.get("SemSegDatasetMapper") is SemSegDatasetMapper


def test_loader_worker_error_names_bad_file(tmp_path, cfg):
    """A corrupt image inside a DataLoader worker surfaces in the main process with its name."""
    from bcd.data.build import build_test_loader

    _write_pair(str(tmp_path), "fine", seed=1)
    _write_pair(str(tmp_path), "zz_corrupt", seed=2)
    (tmp_path / "img" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    from bcd.data.build import MapDataset, trivial_batch_collator
    from bcd.data.datasets.sem_seg import register_custom_sem_seg

    register_custom_sem_seg({"NAME": "_bad_file_ds", "TYPE": "sem_seg", "IMAGE_DIR": str(tmp_path / "img"),
                             "LABEL_DIR": str(tmp_path / "lab"), "IMAGE_EXT": ".png",
                             "CLASSES": ["a", "b", "c"]})
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.DATALOADER.NUM_WORKERS = 1
    with pytest.raises(Exception, match="zz_corrupt.png"):
        # reading sizes at load time already names the file
        for _ in build_test_loader(cfg, "_bad_file_ds"):
            pass
    # the same through the mapper, in a worker (dataset dicts without sizes)
    dicts = [{"file_name": str(tmp_path / "img" / n), "sem_seg_file_name": str(tmp_path / "lab" / n), "image_id": n}
             for n in ("fine.png", "zz_corrupt.png")]
    loader = torch.utils.data.DataLoader(MapDataset(dicts, SemSegDatasetMapper(cfg, False)), batch_size=1,
                                         num_workers=1, collate_fn=trivial_batch_collator)
    with pytest.raises(Exception, match="zz_corrupt.png"):
        for _ in loader:
            pass


def test_demo_older_version_is_rebuilt(tmp_path):
    folder = build_demo_sem_seg(str(tmp_path))
    readme = os.path.join(folder, "README.txt")
    stale = open(readme).read().replace("(version ", "(version 0")  # e.g. "(version 02,"
    with open(readme, "w") as f:
        f.write(stale)
    os.remove(os.path.join(folder, "JPEGImages", "demo_000000.jpg"))
    assert build_demo_sem_seg(str(tmp_path)) == folder
    assert os.path.isfile(os.path.join(folder, "JPEGImages", "demo_000000.jpg"))  # rebuilt
    assert "(version 0" not in open(readme).read()
