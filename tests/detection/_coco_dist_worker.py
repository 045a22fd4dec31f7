"""Run by test_coco_evaluator.py as a script: two Gloo processes each give COCOEvaluator half of
the images (with deterministic detections) and rank 0 pickles the merged result to ``argv[3]``.

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

DATASET = "_test_coco_eval_dist"


def predictions(d):
    """Deterministic detections of one dataset dict: jittered true boxes plus one false box."""
    from bcd.structures import Instances

    rng = np.random.default_rng(int(d["image_id"]))
    boxes, scores, classes = [], [], []
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.1 * min(w, h), size=4)
        boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
        scores.append(float(rng.random()))
        classes.append(int(a["category_id"]))
    boxes.append([5.0, 5.0, 40.0, 50.0])
    scores.append(0.3)
    classes.append(0)
    inst = Instances((d["height"], d["width"]))
    inst.pred_boxes = torch.tensor(boxes, dtype=torch.float32)
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": inst}


def evaluate(json_file, image_root, rank=0, world=1):
    import bcd.data.datasets  # noqa: F401
    from bcd.data.catalog import DatasetCatalog
    from bcd.data.datasets.coco import register_coco_instances
    from bcd.evaluation.coco_evaluation import COCOEvaluator

    if DATASET not in DatasetCatalog:
        register_coco_instances(DATASET, json_file, image_root)
    dicts = DatasetCatalog.get(DATASET)
    ev = COCOEvaluator(DATASET, None)
    ev.reset()
    for d in dicts[rank::world]:
        ev.process([d], [predictions(d)])
    return ev.evaluate()


def _worker(rank, port, json_file, image_root, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    res = evaluate(json_file, image_root, rank, 2)
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(res, f)
    else:
        assert len(res) == 0, res  # only the main process returns results
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, sys.argv[1], sys.argv[2], sys.argv[3]), nprocs=2)
