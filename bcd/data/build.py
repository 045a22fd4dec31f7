"""Data loaders: mapper registry, samplers, aspect-ratio grouping, train / test loaders.

The training stream is defined by indices alone, before any image is read:
``TrainingSampler`` yields an infinite, seeded, shuffled sequence of dataset indices, of which
rank ``r`` takes positions ``r, r + W, r + 2W, ...``; ``GroupedBatchSampler`` groups this rank's
indices into batches of images of the same orientation (from the dicts' ``width`` / ``height``).
Each sample also carries a seed derived from its position in the global stream, and the mapper
runs with python / numpy / torch seeded by it. Hence the images, their augmentations and their
order depend only on ``SEED`` and the iteration, not on ``NUM_WORKERS``; and resuming at
iteration ``N`` skips ``N`` batches of indices (no image is read) to continue the same stream.
"""
from __future__ import annotations

import itertools
import logging
import random
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata
from fvcore.common.registry import Registry

from ..utils import comm
from ..utils.registry import lookup
from .catalog import DatasetCatalog

logger = logging.getLogger(__name__)

MAPPER_REGISTRY = Registry("MAPPER")
MAPPER_REGISTRY.__doc__ = """
Registry of dataset mappers (``INPUT.DATASET_MAPPER_NAME``). An entry is a class built as
``cls(cfg, is_train)`` and called on one dataset dict; it returns the model input dict
(``"image"``: uint8 3×H×W RGB tensor, ``"sem_seg"`` / ``"instances"``, ``"height"``,
``"width"``, ``"file_name"``, ``"image_id"``; see docs/internals.md).
"""


def build_mapper(cfg, is_train: bool) -> Callable[[dict], Any]:
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, built as ``cls(cfg, is_train)``."""
    import bcd.data.mappers  # noqa: F401  (registers the builtin mappers)

    cls = lookup(MAPPER_REGISTRY, cfg.INPUT.DATASET_MAPPER_NAME, "INPUT.DATASET_MAPPER_NAME")
    return cls(cfg, is_train)


def trivial_batch_collator(batch: List[Any]) -> List[Any]:
    """Collate = keep the list of mapped dicts (the model pads and stacks them itself)."""
    return batch


def _has_valid_annotation(d: dict) -> bool:
    return any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", []))


def get_dataset_dicts(
    names: Sequence[str], filter_empty: bool = True
) -> List[dict]:
    """Concatenate the dataset dicts of ``names`` from ``DatasetCatalog``.

    Args:
        names: registered dataset names.
        filter_empty: drop detection images (dicts with ``"annotations"``) without any
            non-crowd annotation (training only, as in Detectron2).

    Raises:
        ValueError: when no name is given or a dataset (after filtering) is empty.
    """
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise ValueError("No dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    dicts: List[dict] = []
    for name in names:
        ds = DatasetCatalog.get(name)
        if len(ds) == 0:
            raise ValueError(f"Dataset '{name}' is empty")
        dicts.extend(ds)
    if filter_empty and len(dicts) > 0 and "annotations" in dicts[0]:
        before = len(dicts)
        dicts = [d for d in dicts if _has_valid_annotation(d)]
        logger.info(f"Removed {before - len(dicts)} images without annotations; {len(dicts)} left")
        if not dicts:
            raise ValueError(f"Datasets {list(names)} have no image with an annotation")
    return dicts


def sample_seed(seed: int, position: int) -> int:
    """The RNG seed of the sample at ``position`` of the global training stream (< 2**31)."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0] % (2**31))


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python / numpy / torch (CPU) for the block and restore their states afterwards, so a
    mapper's augmentations are a function of the sample's seed and the caller's RNGs are
    untouched."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)  # the CPU generator (mappers run on CPU)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class MapDataset(torchdata.Dataset):
    """``dataset[key] = mapper(dicts[i])``, where ``key`` is an index ``i`` or ``(i, seed)``.

    With a seed, the mapper runs with seeded RNGs (reproducible augmentation). A mapper error is
    re-raised naming the dataset dict's ``file_name`` (so a bad file is named, not a bare
    worker crash). A mapper returning None (Detectron2's "skip this image") is an error here,
    since silently skipping would change the batch size.
    """

    def __init__(self, dataset: Sequence[dict], mapper: Callable[[dict], Any]) -> None:
        self._dataset = dataset
        self._mapper = mapper

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, key: Any) -> Any:
        idx, seed = key if isinstance(key, tuple) else (key, None)
        d = self._dataset[idx]
        try:
            if seed is None:
                out = self._mapper(dict(d))
            else:
                with _seeded_rngs(seed):
                    out = self._mapper(dict(d))
        except Exception as e:
            name = str(d.get("file_name", f"dataset index {idx}")) if isinstance(d, dict) else idx
            if str(name) in str(e):
                raise  # the error already names the file
            raise RuntimeError(f"Mapping {name} failed: {type(e).__name__}: {e}") from e
        if out is None:
            name = d.get("file_name", idx) if isinstance(d, dict) else idx
            raise ValueError(f"The mapper returned None for {name}")
        return out


class TrainingSampler(torchdata.Sampler):
    """Infinite stream of ``(index, sample_seed)`` for this rank.

    The global stream concatenates permutations of ``range(size)`` drawn from a generator seeded
    with ``seed`` (or ``range(size)`` repeated when ``shuffle`` is False); rank ``r`` of ``W``
    takes positions ``r, r + W, ...``. ``seed`` must be the same on every rank.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset; got size={size}")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        stream = itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)
        for k, idx in enumerate(stream):
            position = self._rank + k * self._world_size  # position in the global stream
            yield idx, sample_seed(self._seed, position)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class InferenceSampler(torchdata.Sampler):
    """Each index of ``range(size)`` exactly once over all ranks, in contiguous shards (rank 0
    the first ~size/W indices)."""

    def __init__(self, size: int, rank: Optional[int] = None, world_size: Optional[int] = None):
        self._size = size
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        shard = [size // world_size + int(r < size % world_size) for r in range(world_size)]
        begin = sum(shard[:rank])
        self._local_indices = range(begin, begin + shard[rank])

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)


class GroupedBatchSampler(torchdata.Sampler):
    """Batches of ``batch_size`` from an infinite sampler, each batch from one group.

    With ``group_ids`` (e.g. 0 for landscape, 1 for portrait images) a sample waits in its
    group's bucket until the bucket is full, so images in a batch pad to a similar size; without
    it batches are consecutive samples. ``start_iter`` batches are skipped at the start of each
    iteration over the sampler (used to resume: indices only, no image is read).
    """

    def __init__(
        self,
        sampler: torchdata.Sampler,
        batch_size: int,
        group_ids: Optional[Sequence[int]] = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"Batch size per process must be positive; got {batch_size}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_ids = None if group_ids is None else np.asarray(group_ids)
        self.start_iter = 0

    def __iter__(self) -> Iterator[List[Any]]:
        batches = self._batches()
        return itertools.islice(batches, self.start_iter, None)

    def _batches(self) -> Iterator[List[Any]]:
        if self.group_ids is None:
            it = iter(self.sampler)
            while True:
                yield list(itertools.islice(it, self.batch_size))
        buckets: Dict[int, List[Any]] = {}
        for item in self.sampler:
            idx = item[0] if isinstance(item, tuple) else item
            bucket = buckets.setdefault(int(self.group_ids[idx]), [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]


def _worker_init_fn(worker_id: int) -> None:
    # Samples are seeded individually (MapDataset); this only decorrelates code that draws
    # random numbers outside the mapper.
    seed = torch.initial_seed() % (2**31)
    random.seed(seed)
    np.random.seed(seed)


def build_train_loader(
    cfg,
    mapper: Optional[Callable[[dict], Any]] = None,
    dataset: Optional[Sequence[dict]] = None,
) -> torchdata.DataLoader:
    """The infinite training loader of ``cfg.DATASETS.TRAIN``.

    Each iteration yields a list of ``SOLVER.IMS_PER_BATCH // world_size`` mapped dicts.
    ``loader.batch_sampler.start_iter`` sets how many batches to skip (resume).

    Args:
        cfg: the config.
        mapper: callable on one dataset dict; default ``build_mapper(cfg, is_train=True)``.
        dataset: list of dataset dicts; default those of ``DATASETS.TRAIN``.
    """
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes "
            f"({world_size})"
        )
    if dataset is None:
        dataset = get_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
    if mapper is None:
        mapper = build_mapper(cfg, is_train=True)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"Unknown DATALOADER.SAMPLER_TRAIN '{cfg.DATALOADER.SAMPLER_TRAIN}'; "
            "use 'TrainingSampler'"
        )
    seed = cfg.SEED if cfg.SEED >= 0 else None  # None: a seed shared by all ranks
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed)
    group_ids = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        missing = [i for i, d in enumerate(dataset) if "width" not in d or "height" not in d]
        if missing:
            raise KeyError(
                "DATALOADER.ASPECT_RATIO_GROUPING needs 'width' and 'height' in every dataset "
                f"dict; {len(missing)} dicts lack them (first: index {missing[0]})"
            )
        group_ids = [int(d["width"] < d["height"]) for d in dataset]  # 1 = portrait
    batch_sampler = GroupedBatchSampler(sampler, total // world_size, group_ids)
    return torchdata.DataLoader(
        MapDataset(dataset, mapper),
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_worker_init_fn,
        # Its own generator: starting an iterator must not draw from the global RNG, or a
        # resumed run (iterator started after the RNG states are restored) would diverge.
        generator=_loader_generator(),
    )


def _loader_generator() -> torch.Generator:
    """A fixed-seed generator for a DataLoader's own draws (worker base seeds). Augmentations
    do not depend on it: ``MapDataset`` seeds each sample from its stream position."""
    return torch.Generator().manual_seed(0)


def build_test_loader(
    cfg,
    dataset_name: str,
    mapper: Optional[Callable[[dict], Any]] = None,
) -> torchdata.DataLoader:
    """The loader of one test dataset: every image once over all ranks, batch 1, in order."""
    dataset = get_dataset_dicts([dataset_name], filter_empty=False)
    if mapper is None:
        mapper = build_mapper(cfg, is_train=False)
    sampler = InferenceSampler(len(dataset))
    return torchdata.DataLoader(
        MapDataset(dataset, mapper),
        batch_sampler=torchdata.BatchSampler(sampler, 1, drop_last=False),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
        generator=_loader_generator(),
    )
