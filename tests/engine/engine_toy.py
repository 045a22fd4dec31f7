"""A toy task for the engine tests: a dataset, a mapper, a meta-architecture and an evaluator.

Each image is 3×8×8 random uint8 pixels fixed by its ``image_id``; the target is the mean of its
first channel in [0, 1] (invariant to the horizontal flip the training mapper applies at
random). ``ToyRegressor`` (conv 3x3, ReLU, conv 1x1, global average) regresses it. It has no
batch norm, so one process with batch 2b and two with batch b compute the same gradient.

Module-level switches let tests inject a failure: ``NAN_AT_ITER`` makes ``loss_mse`` NaN at that
iteration, ``STOP_AT_ITER`` (or the environment variable ``TOY_STOP_AT_ITER``, seen by spawned
processes) raises ``ToyStop`` (an interrupted run).
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcd.data import DatasetCatalog, MetadataCatalog
from bcd.data.build import MAPPER_REGISTRY
from bcd.engine import HookBase
from bcd.evaluation import EVALUATOR_TYPES, DatasetEvaluator
from bcd.modeling import META_ARCH_REGISTRY
from bcd.utils import comm
from bcd.utils.events import get_event_storage

TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")

NAN_AT_ITER: Optional[int] = None
STOP_AT_ITER: Optional[int] = None

TRAIN_SIZE = 32
VAL_SIZE = 8


class ToyStop(Exception):
    """Raised by the toy model at ``STOP_AT_ITER`` to simulate an interrupted run."""


def toy_image(image_id: int) -> np.ndarray:
    """The 3×8×8 uint8 image of ``image_id`` (fixed by it)."""
    return np.random.RandomState(1000 + image_id).randint(0, 256, size=(3, 8, 8), dtype=np.uint8)


def toy_target(image_id: int) -> float:
    """Mean of the first channel, in [0, 1]."""
    return float(toy_image(image_id)[0].astype(np.float64).mean() / 255.0)


def _dicts(offset: int, n: int) -> List[dict]:
    return [
        {"file_name": f"toy_{i}.png", "image_id": i, "height": 8, "width": 8}
        for i in range(offset, offset + n)
    ]


def register_toy_datasets() -> None:
    if "toy_train" not in DatasetCatalog:
        DatasetCatalog.register("toy_train", lambda: _dicts(0, TRAIN_SIZE))
        DatasetCatalog.register("toy_val", lambda: _dicts(TRAIN_SIZE, VAL_SIZE))
        MetadataCatalog.get("toy_val").set(evaluator_type="toy_regression")


@MAPPER_REGISTRY.register()
class ToyMapper:
    """Dataset dict -> ``{"image": uint8 3×8×8, "target": float, ...}``; random flip in training."""

    def __init__(self, cfg, is_train: bool) -> None:
        self.is_train = is_train

    def __call__(self, d: dict) -> dict:
        image = toy_image(d["image_id"])
        if self.is_train and np.random.rand() < 0.5:
            image = image[:, :, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "target": toy_target(d["image_id"]),
            "height": d["height"],
            "width": d["width"],
            "image_id": d["image_id"],
            "file_name": d["file_name"],
        }


class StepCounter(HookBase):
    """A stateful training hook (as a KD schedule would be): counts the steps it saw."""

    def __init__(self) -> None:
        self.count = 0

    def after_step(self) -> None:
        self.count += 1

    def state_dict(self) -> Dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.count = int(state["count"])


@META_ARCH_REGISTRY.register()
class ToyRegressor(nn.Module):
    """Regress the mean of the first channel: conv3x3(3->8) - ReLU - conv1x1(8->1) - mean."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 1, 1)
        self.counter = StepCounter()

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def training_hooks(self) -> List[HookBase]:
        return [self.counter]

    def forward(self, batched_inputs: List[dict]):
        x = torch.stack([d["image"] for d in batched_inputs]).to(self.device).float() / 255.0
        pred = self.head(F.relu(self.body(x))).mean(dim=(1, 2, 3))  # B
        if not self.training:
            return [{"pred": p} for p in pred]
        target = torch.tensor([d["target"] for d in batched_inputs], device=self.device)
        storage = get_event_storage()
        stop_at = STOP_AT_ITER
        if stop_at is None and os.environ.get("TOY_STOP_AT_ITER"):  # for spawned processes
            stop_at = int(os.environ["TOY_STOP_AT_ITER"])
        if stop_at is not None and storage.iter == stop_at:
            raise ToyStop(f"stopped at iteration {storage.iter}")
        loss_mse = F.mse_loss(pred, target)
        if NAN_AT_ITER is not None and storage.iter == NAN_AT_ITER:
            loss_mse = loss_mse * float("nan")
        storage.put_scalar("toy/pred_mean", pred.detach().mean())
        return {"loss_mse": loss_mse, "loss_l1": 0.1 * F.l1_loss(pred, target)}


class ToyEvaluator(DatasetEvaluator):
    """Mean squared error of the predictions over the whole dataset (gathered over ranks)."""

    def reset(self) -> None:
        self._errors: List[tuple] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for i, o in zip(inputs, outputs):
            self._errors.append((i["image_id"], (float(o["pred"]) - i["target"]) ** 2))

    def evaluate(self):
        errors = [e for part in comm.gather(self._errors) for e in part]
        if not comm.is_main_process():
            return OrderedDict()
        ids = sorted(i for i, _ in errors)
        return OrderedDict(toy={"mse": float(np.mean([e for _, e in errors])), "count": len(ids)})


EVALUATOR_TYPES["toy_regression"] = lambda cfg, name, out: ToyEvaluator()
register_toy_datasets()


def base_opts(output_dir: str, **overrides) -> List[str]:
    """Command-line overrides of a short deterministic CPU run of the toy task."""
    opts = {
        "MODEL.META_ARCHITECTURE": "ToyRegressor",
        "INPUT.DATASET_MAPPER_NAME": "ToyMapper",
        "DATASETS.TRAIN": "('toy_train',)",
        "DATASETS.TEST": "('toy_val',)",
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 4,
        "SOLVER.BASE_LR": 0.5,
        "SOLVER.MOMENTUM": 0.9,
        "SOLVER.WEIGHT_DECAY": 1e-4,
        "SOLVER.MAX_ITER": 40,
        "SOLVER.WARMUP_ITERS": 5,
        "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR",
        "SOLVER.CHECKPOINT_PERIOD": 20,
        "SOLVER.LOG_PERIOD": 5,
        "TEST.EVAL_PERIOD": 20,
        "SEED": 7,
        "DETERMINISTIC": True,
        "OUTPUT_DIR": output_dir,
    }
    opts.update(overrides)
    out: List[str] = []
    for k, v in opts.items():
        out += [k, str(v)]
    return out


def _train_net():
    if TOOLS_DIR not in sys.path:
        sys.path.insert(0, TOOLS_DIR)
    import train_net

    return train_net


def parse_args(argv: List[str]):
    """``tools/train_net.py``'s argument parser applied to ``argv``."""
    from bcd.engine import default_argument_parser

    return default_argument_parser().parse_args(argv)


def train_main(args):
    """``tools/train_net.py``'s ``main`` (a module-level function: picklable for spawn)."""
    return _train_net().main(args)


if __name__ == "__main__":
    # Entry point for torchrun: `torchrun --nproc_per_node 2 engine_toy.py --config-file ...`
    from bcd.engine import launch

    a = parse_args(sys.argv[1:])
    launch(train_main, a.num_gpus, a.num_machines, a.machine_rank, a.dist_url, args=(a,))
