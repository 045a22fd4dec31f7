#!/usr/bin/env python
"""Train or evaluate a model (and its distillation) from a config, Detectron2 style.

    python tools/train_net.py --config-file X.yaml [--num-gpus N] [KEY VALUE ...]
    python tools/train_net.py --config-file X.yaml --resume
    python tools/train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file X.yaml --num-machines 2 --machine-rank 0 \
        --dist-url tcp://host0:port

Devices: with ``--num-gpus N > 0`` and CUDA available, each process uses one GPU (NCCL);
without CUDA (or with ``--num-gpus 0``) training runs on the CPU, in ``N`` Gloo processes when
``N > 1``. ``MODEL.DEVICE`` given on the command line wins.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, Optional

import torch

# Run from a checkout without installing: make `import bcd` find the package beside tools/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bcd.config import get_cfg  # noqa: E402
from bcd.engine import (  # noqa: E402
    Checkpointer,
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    launch,
)
from bcd.modeling.backbone import without_init_weights  # noqa: E402
from bcd.utils import comm  # noqa: E402

logger = logging.getLogger("bcd.train_net")


class Trainer(DefaultTrainer):
    """The trainer of this script; override a ``build_*`` class method here to customise."""


def setup(args: argparse.Namespace):
    """Config from ``--config-file`` and the trailing overrides, device resolved, frozen;
    then ``default_setup`` (output dir, logs, ``config.yaml``, seeds)."""
    cfg = get_cfg()
    if args.config_file:
        if not os.path.isfile(args.config_file):
            raise FileNotFoundError(f"Config file not found: {args.config_file}")
        cfg.merge_from_file(args.config_file)
    opts = list(args.opts or [])
    cfg.merge_from_list(opts)
    if "MODEL.DEVICE" not in opts[0::2]:
        use_cuda = args.num_gpus > 0 and torch.cuda.is_available()
        cfg.MODEL.DEVICE = "cuda" if use_cuda else "cpu"
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but CUDA is not available; use MODEL.DEVICE cpu"
        )
    cfg.freeze()
    # Datasets are registered and checked before default_setup writes anything, so a missing
    # folder or a malformed annotation file fails at once and leaves OUTPUT_DIR untouched.
    # Also the class count and ignore value against the datasets' metadata (bcd/engine/validation.py).
    from bcd.engine.validation import validate_run

    validate_run(cfg, splits=("TEST",) if args.eval_only else ("TRAIN", "TEST"))
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Train (returns the final evaluation results) or, with ``--eval-only``, evaluate."""
    cfg = setup(args)
    # The ImageNet file (MODEL.BACKBONE.WEIGHTS) only starts a training: a checkpoint loaded
    # after the build (--eval-only, --resume with a last_checkpoint, MODEL.WEIGHTS, all loaded
    # strictly) overwrites every weight, so the model is built without asking for it.
    if args.eval_only or cfg.MODEL.WEIGHTS or (
        args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    ):
        cfg = without_init_weights(cfg)
    if args.eval_only:
        if len(cfg.KD.LOSSES):
            # A distillation config evaluates its deployable student: no teacher is built or
            # needed (model_final.pth holds the student; a full checkpoint's student.* part fits).
            from bcd.distill import student_config

            logger.info("--eval-only on a distillation config: evaluating its student (no teacher)")
            cfg = student_config(cfg)
        model = Trainer.build_model(cfg)
        checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
            raise ValueError(
                "--eval-only needs weights: MODEL.WEIGHTS path/to/model_final.pth (or --resume "
                "with a last_checkpoint in OUTPUT_DIR)"
            )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        comm.synchronize()
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
