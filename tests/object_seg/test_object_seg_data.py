"""Object-segmentation data: folder loading, custom and builtin registration, mask
binarisation, the generated demo data, and the mapper (training and test sizes)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from bcd.data.catalog import DatasetCatalog, MetadataCatalog
from bcd.data.datasets import DATASET_CHECKS, register_from_config
from bcd.data.datasets.demo_object_seg import build_demo_object_seg, render_object_scene
from bcd.data.datasets.object_seg import BUILTIN_OBJECT_SEG, load_object_seg
from bcd.data.mappers.object_seg import ObjectSegDatasetMapper, binarize_mask


def _write_pair(root, stem, h=30, w=40, value=255, image_ext=".jpg"):
    os.makedirs(root / "image", exist_ok=True)
    os.makedirs(root / "mask", exist_ok=True)
    img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(root / "image" / (stem + image_ext))
    m = np.zeros((h, w), np.uint8)
    m[5:15, 10:30] = value
    Image.fromarray(m).save(root / "mask" / (stem + ".png"))


def test_load_pairs_mixed_extensions_and_missing_mask(tmp_path):
    _write_pair(tmp_path, "a", image_ext=".jpg")
    _write_pair(tmp_path, "b", h=20, w=25, image_ext=".png")
    dicts = load_object_seg(str(tmp_path / "image"), str(tmp_path / "mask"))
    assert [d["image_id"] for d in dicts] == ["a", "b"]
    assert (dicts[1]["height"], dicts[1]["width"]) == (20, 25)
    assert dicts[0]["mask_file_name"].endswith(os.path.join("mask", "a.png"))
    os.remove(tmp_path / "mask" / "b.png")
    with pytest.raises(FileNotFoundError, match="b.png"):
        load_object_seg(str(tmp_path / "image"), str(tmp_path / "mask"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_object_seg(str(tmp_path / "nowhere"), None)


def test_binarisation_threshold_is_strict():
    m = np.array([[0, 127, 128, 129, 255]], np.uint8)
    assert binarize_mask(m, 128).tolist() == [[0, 0, 0, 1, 1]]
    assert binarize_mask(m[..., None], 0).tolist() == [[0, 1, 1, 1, 1]]


def test_custom_dataset_from_config(cfg, tmp_path):
    _write_pair(tmp_path, "a", value=100)
    cfg.DATASETS.CUSTOM = [
        {"NAME": "test_os_custom", "TYPE": "object_seg", "IMAGE_DIR": str(tmp_path / "image"),
         "MASK_DIR": str(tmp_path / "mask"), "MASK_THRESHOLD": 50}
    ]
    cfg.DATASETS.TRAIN = ("test_os_custom",)
    cfg.DATASETS.TEST = ()
    register_from_config(cfg)
    assert MetadataCatalog.get("test_os_custom").evaluator_type == "object_seg"
    d = DatasetCatalog.get("test_os_custom")[0]
    assert d["mask_threshold"] == 50
    # the dataset's threshold reaches the mapper: value 100 > 50 is foreground
    out = ObjectSegDatasetMapper(cfg, is_train=False)(d)
    assert int(out["sem_seg"].sum()) == 10 * 20

    bad = dict(cfg.DATASETS.CUSTOM[0], NAME="test_os_bad", MASK_DIRR="x")
    cfg.DATASETS.CUSTOM = [bad]
    with pytest.raises(KeyError, match="MASK_DIRR"):
        register_from_config(cfg)


def test_builtin_names_and_missing_folder_error(monkeypatch, tmp_path):
    monkeypatch.setenv("BCD_DATASETS", str(tmp_path))
    for name in ("sod_duts_tr", "sod_duts_te", "sod_ecssd", "sod_hku_is", "sod_pascal_s",
                 "sod_dut_omron", "sod_soc", "sod_thur15k", "cod_train", "cod_camo_test",
                 "cod_cod10k_test", "cod_chameleon", "cod_nc4k"):
        assert name in DatasetCatalog and name in BUILTIN_OBJECT_SEG
        assert MetadataCatalog.get(name).evaluator_type == "object_seg"
    with pytest.raises(FileNotFoundError, match=os.path.join("SOD", "ECSSD", "image")):
        DATASET_CHECKS["sod_ecssd"]()
    _write_pair(tmp_path / "COD" / "TestDataset" / "NC4K", "x")
    os.rename(tmp_path / "COD/TestDataset/NC4K/image", tmp_path / "COD/TestDataset/NC4K/Imgs")
    os.rename(tmp_path / "COD/TestDataset/NC4K/mask", tmp_path / "COD/TestDataset/NC4K/GT")
    DATASET_CHECKS["cod_nc4k"]()
    assert len(DatasetCatalog.get("cod_nc4k")) == 1


def test_demo_data_is_deterministic_and_labelled_generated(tmp_path):
    a_img, a_mask = render_object_scene("cod", 7)
    b_img, b_mask = render_object_scene("cod", 7)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert set(np.unique(a_mask).tolist()) <= {0, 255} and a_mask.any()
    s_img, _ = render_object_scene("sod", 7)
    assert not np.array_equal(s_img.shape, a_img.shape) or not np.array_equal(s_img, a_img)
    with pytest.raises(ValueError, match="task"):
        render_object_scene("xyz", 0)
    for name in ("demo_sod_train", "demo_sod_val", "demo_cod_train", "demo_cod_val"):
        meta = MetadataCatalog.get(name)
        assert meta.generated is True and "GENERATED" in meta.description


def test_demo_build_small_root(tmp_path, monkeypatch):
    import bcd.data.datasets.demo_object_seg as demo

    monkeypatch.setattr(demo, "OBJECT_SEG_DEMO_SPLITS", {"train": (0, 3), "val": (10000, 2)})
    folder = build_demo_object_seg(str(tmp_path))
    assert "GENERATED" in open(os.path.join(folder, "README.txt")).read()
    dicts = load_object_seg(os.path.join(folder, "cod", "val", "image"), os.path.join(folder, "cod", "val", "mask"))
    assert len(dicts) == 2
    img, mask = render_object_scene("cod", 10000)
    assert (dicts[0]["height"], dicts[0]["width"]) == mask.shape


def test_mapper_train_and_test(cfg, tmp_path):
    _write_pair(tmp_path, "a", h=30, w=40)
    d = load_object_seg(str(tmp_path / "image"), str(tmp_path / "mask"))[0]
    cfg.INPUT.OBJECT_SEG.TRAIN_SIZE = [32, 48]
    cfg.INPUT.OBJECT_SEG.TEST_SIZE = [64, 64]
    torch.manual_seed(0)
    tr = ObjectSegDatasetMapper(cfg, is_train=True)(d)
    assert tr["image"].shape == (3, 32, 48) and tr["image"].dtype == torch.uint8
    assert tr["sem_seg"].shape == (32, 48) and set(tr["sem_seg"].unique().tolist()) <= {0, 1}
    te = ObjectSegDatasetMapper(cfg, is_train=False)(d)
    # the image goes to the network's size, the mask stays at the original size
    assert te["image"].shape == (3, 64, 64)
    assert te["sem_seg"].shape == (30, 40) and (te["height"], te["width"]) == (30, 40)
    assert int(te["sem_seg"].sum()) == 10 * 20

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "mask" / "a.png")
    with pytest.raises(ValueError, match="a.png"):
        ObjectSegDatasetMapper(cfg, is_train=False)(d)
