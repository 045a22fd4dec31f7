"""Samplers, aspect-ratio grouping, seeded mapping, and the loaders."""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

import engine_toy as T
from bcd.data.build import (
    GroupedBatchSampler,
    InferenceSampler,
    MapDataset,
    TrainingSampler,
    build_mapper,
    build_test_loader,
    build_train_loader,
)


def _take(it, n):
    return list(itertools.islice(iter(it), n))


def test_training_sampler_is_seeded_and_covers_each_epoch():
    a = _take(TrainingSampler(10, seed=5, rank=0, world_size=1), 30)
    b = _take(TrainingSampler(10, seed=5, rank=0, world_size=1), 30)
    c = _take(TrainingSampler(10, seed=6, rank=0, world_size=1), 30)
    assert a == b and a != c
    for epoch in range(3):  # each block of 10 is a permutation
        assert sorted(i for i, _ in a[10 * epoch:10 * epoch + 10]) == list(range(10))
    assert len({s for _, s in a}) == 30  # one seed per position


def test_sharding_interleaves_the_global_stream():
    single = _take(TrainingSampler(7, seed=1, rank=0, world_size=1), 30)
    shards = [_take(TrainingSampler(7, seed=1, rank=r, world_size=3), 10) for r in range(3)]
    for r in range(3):
        assert shards[r] == single[r::3]


def test_inference_sampler_partitions():
    parts = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_grouped_batches_and_start_iter():
    group_ids = [0, 1, 0, 1, 1, 0, 0, 1]
    sampler = TrainingSampler(8, seed=0, rank=0, world_size=1)
    gbs = GroupedBatchSampler(sampler, 2, group_ids)
    batches = _take(gbs, 20)
    for batch in batches:
        assert len(batch) == 2
        assert len({group_ids[i] for i, _ in batch}) == 1
    # Brute force: the same grouping by hand from the index stream.
    buckets, expected = {0: [], 1: []}, []
    for item in sampler:
        buckets[group_ids[item[0]]].append(item)
        if len(buckets[group_ids[item[0]]]) == 2:
            expected.append(buckets[group_ids[item[0]]])
            buckets[group_ids[item[0]]] = []
        if len(expected) == 20:
            break
    assert batches == expected
    gbs.start_iter = 7
    assert _take(gbs, 13) == batches[7:]
    plain = GroupedBatchSampler(sampler, 3)
    assert _take(plain, 2) == [_take(sampler, 6)[:3], _take(sampler, 6)[3:]]


def test_map_dataset_seeds_the_mapper_and_restores_rngs():
    def mapper(d):
        return (d["x"], random.random(), float(np.random.rand()), float(torch.rand(())))

    ds = MapDataset([{"x": 1}, {"x": 2}], mapper)
    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    before = (random.random(), np.random.rand(), torch.rand(()))
    random.seed(0); np.random.seed(0); torch.manual_seed(0)
    out1 = ds[(1, 123)]
    after = (random.random(), np.random.rand(), torch.rand(()))
    assert after == before  # the caller's RNG streams are untouched
    random.seed(99)
    assert ds[(1, 123)] == out1  # the same seed, the same augmentation
    assert ds[(1, 124)] != out1

    def broken(d):
        raise OSError("cannot identify image file")

    with pytest.raises(RuntimeError, match="img_7.png"):
        MapDataset([{"file_name": "img_7.png"}], broken)[0]


def test_train_loader_batches_and_resume_position(cfg, tmp_path):
    cfg.merge_from_list(T.base_opts(str(tmp_path)))
    loader = build_train_loader(cfg)
    first = [[d["image_id"] for d in b] for b in _take(loader, 6)]
    assert all(len(b) == 4 for b in first)
    loader2 = build_train_loader(cfg)
    loader2.batch_sampler.start_iter = 4
    assert [[d["image_id"] for d in b] for b in _take(loader2, 2)] == first[4:]
    # Same images and same random flips with worker processes.
    cfg.DATALOADER.NUM_WORKERS = 2
    loader3 = build_train_loader(cfg)
    b0 = next(iter(loader))
    b3 = next(iter(loader3))
    for x, y in zip(b0, b3):
        assert torch.equal(x["image"], y["image"])

    cfg.SOLVER.IMS_PER_BATCH = 3
    assert len(next(iter(build_train_loader(cfg)))) == 3
    test_loader = build_test_loader(cfg, "toy_val")
    ids = [b[0]["image_id"] for b in test_loader]
    assert ids == list(range(T.TRAIN_SIZE, T.TRAIN_SIZE + T.VAL_SIZE))


def test_starting_a_loader_leaves_the_global_rng_alone(cfg, tmp_path):
    # A resumed run starts its iterator after restoring the RNG states; if that drew from the
    # global generator, dropout masks after a resume would differ from an uninterrupted run.
    cfg.merge_from_list(T.base_opts(str(tmp_path)))
    for loader in (build_train_loader(cfg), build_test_loader(cfg, "toy_val")):
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        iter(loader)
        assert torch.equal(torch.rand(3), expected)


def test_unknown_mapper_and_dataset_are_clear_errors(cfg):
    cfg.INPUT.DATASET_MAPPER_NAME = "NoSuchMapper"
    with pytest.raises(KeyError, match="NoSuchMapper"):
        build_mapper(cfg, True)
    cfg.INPUT.DATASET_MAPPER_NAME = "ToyMapper"
    cfg.DATASETS.TRAIN = ("toy_trian",)
    with pytest.raises(KeyError, match="toy_train"):  # the closest registered name is given
        build_train_loader(cfg)
