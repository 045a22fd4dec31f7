#!/usr/bin/env python
"""Train or evaluate a Detectron2 model, with ``bcd``'s distillation when ``KD.LOSSES`` is set.

Detectron2's ``tools/train_net.py``, for the configs of ``projects/bcd/configs`` (Detectron2
configs with ``bcd``'s ``KD`` node; ``_BASE_`` may name model-zoo configs as ``model_zoo://...``):

    python projects/bcd/train_net.py --config-file CONFIG.yaml [--num-gpus N] [KEY VALUE ...]
    python projects/bcd/train_net.py --config-file CONFIG.yaml --resume
    python projects/bcd/train_net.py --config-file CONFIG.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python projects/bcd/train_net.py --config-file CONFIG.yaml --num-machines 2 --machine-rank 0 \
        --dist-url tcp://host0:port

A distillation config is the student's config (``MODEL.META_ARCHITECTURE`` is the student's) plus
``KD.LOSSES`` and ``KD.TEACHER`` (a Detectron2 config and its trained weights). ``--eval-only``
evaluates the student alone (``model_final.pth`` of a distillation run, or with ``--resume`` the
student part of the last full checkpoint), loaded strictly. ``MODEL.DEVICE``: ``cuda`` when
``--num-gpus`` > 0 and CUDA is available, else ``cpu`` (then ``--num-gpus N`` > 1 starts N Gloo
processes); a value given on the command line wins.
"""
import os
import sys

# Run from a checkout: `import bcd` (the repository root) and `import bcd_d2` (this folder).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))
sys.path.insert(0, _HERE)

import torch  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

import bcd_d2  # noqa: E402


class Trainer(bcd_d2.Trainer):
    """The trainer of this script; override a ``build_*`` class method here to customise."""


def setup(args):
    """Config from ``--config-file`` and the overrides, device resolved, frozen, checked
    (``bcd_d2.validate_run``: nothing is written when it fails), then ``default_setup``."""
    cfg = bcd_d2.get_cfg()
    cfg.merge_from_file(args.config_file)
    opts = list(args.opts or [])
    cfg.merge_from_list(opts)
    if "MODEL.DEVICE" not in opts[0::2]:
        cfg.MODEL.DEVICE = "cuda" if args.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    cfg.freeze()
    bcd_d2.validate_run(cfg, eval_only=args.eval_only)
    default_setup(cfg, args)
    return cfg


def main(args):
    """Train (returns the final evaluation results) or, with ``--eval-only``, evaluate."""
    cfg = setup(args)
    if args.eval_only:
        model = bcd_d2.build_student(cfg)
        checkpointer = bcd_d2.ModelCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume and checkpointer.has_checkpoint():
            weights, key = checkpointer.get_checkpoint_file(), "--resume: last_checkpoint"
        else:
            weights, key = cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS"
        if not weights:
            raise ValueError("--eval-only needs weights: MODEL.WEIGHTS path/to/model_final.pth (or --resume "
                             "with a last_checkpoint in OUTPUT_DIR)")
        bcd_d2.load_weights(model, weights, key)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

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
