"""Run by test_sem_seg_evaluation.py as a script: two Gloo processes each evaluate half of the
images of ``make_sem_seg_samples`` and rank 0 pickles the merged result to ``argv[1]``.

A script (not a test-module function) because pytest imports test modules under names that a
spawned child process cannot import again.
"""
import pickle
import socket
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NUM_CLASSES = 5
IGNORE = 255
DATASET = "_test_sem_seg_eval_dist"


def make_sem_seg_samples(seed: int = 0, n: int = 6):
    """``n`` (gt, scores) pairs of different sizes: blob-like ground truth with ignore pixels
    and predictions that are right on about half the pixels. Class 4 never occurs in the
    ground truth (only predicted)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        small = rng.integers(0, NUM_CLASSES - 1, size=(h // 4 + 1, w // 4 + 1))
        gt = np.kron(small, np.ones((4, 4), np.int64))[:h, :w]
        gt[rng.random((h, w)) < 0.1] = IGNORE
        pred = np.where(rng.random((h, w)) < 0.5, gt, rng.integers(0, NUM_CLASSES, size=(h, w)))
        pred[pred == IGNORE] = 0
        scores = torch.rand(NUM_CLASSES, h, w) * 0.5
        scores.scatter_(0, torch.from_numpy(pred)[None], 1.0)
        out.append((gt, scores))
    return out


def _register():
    from bcd.data import MetadataCatalog

    if DATASET not in MetadataCatalog or MetadataCatalog.get(DATASET).get("stuff_classes") is None:
        MetadataCatalog.get(DATASET).set(
            stuff_classes=[f"c{i}" for i in range(NUM_CLASSES)], ignore_label=IGNORE
        )


def evaluate(samples, ratio=0.05):
    from bcd.evaluation.sem_seg_evaluation import SemSegEvaluator

    _register()
    ev = SemSegEvaluator(DATASET, boundary_dilation_ratio=ratio)
    for gt, scores in samples:
        ev.process([{"sem_seg": torch.from_numpy(gt), "file_name": "x"}], [{"sem_seg": scores}])
    return ev.evaluate()


def _worker(rank: int, world: int, port: int, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        samples = make_sem_seg_samples()
        mine = samples[rank::world]  # interleaved halves
        res = evaluate(mine)
        if rank == 0:
            with open(out_file, "wb") as f:
                pickle.dump(dict(res), f)
        else:
            assert res == {}, "non-main ranks return an empty result"
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, _free_port(), sys.argv[1]), nprocs=2, join=True)
