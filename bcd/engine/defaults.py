"""Detectron2-style defaults: the argument parser, ``default_setup`` and ``DefaultTrainer``.

``DefaultTrainer(cfg)`` builds everything from the config through overridable class methods
(``build_model``, ``build_optimizer``, ``build_lr_scheduler``, ``build_train_loader``,
``build_test_loader``, ``build_evaluator``), registers the default hooks, and trains with
``resume_or_load()`` + ``train()``. ``DefaultTrainer.test(cfg, model)`` evaluates a model on
every ``DATASETS.TEST``.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import random
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..utils import comm
from ..utils.env import collect_env_info, seed_all_rng
from ..utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from ..utils.logger import setup_logger
from . import hooks
from .checkpoint import Checkpointer, ConfigRecord, _atomic_write
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase, unwrap_model

__all__ = [
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "create_ddp_model",
    "DefaultTrainer",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """Detectron2's command line: ``--config-file``, ``--resume``, ``--eval-only``,
    ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url`` and trailing
    ``KEY VALUE`` config overrides."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or f"""
Examples:

Train on 1 GPU (or the CPU when there is none):
    {sys.argv[0]} --config-file cfg.yaml
Train on 8 GPUs, change config options:
    {sys.argv[0]} --config-file cfg.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 16
Resume from OUTPUT_DIR/last_checkpoint:
    {sys.argv[0]} --config-file cfg.yaml --resume
Evaluate weights:
    {sys.argv[0]} --config-file cfg.yaml --eval-only MODEL.WEIGHTS /path/to/model_final.pth
Two machines (run on each, machine-rank 0 and 1):
    (machine0)$ {sys.argv[0]} --config-file cfg.yaml --num-machines 2 --machine-rank 0 --dist-url tcp://host0:port
    (machine1)$ {sys.argv[0]} --config-file cfg.yaml --num-machines 2 --machine-rank 1 --dist-url tcp://host0:port
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from OUTPUT_DIR/last_checkpoint (model, optimizer, scheduler, iteration, "
        "hooks); without it MODEL.WEIGHTS initialises the model only",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate, do not train")
    parser.add_argument(
        "--num-gpus", type=int, default=1,
        help="processes per machine: one per GPU (NCCL); without CUDA, CPU processes (Gloo); "
        "0 = CPU",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialization URL for pytorch distributed backend: tcp://host:port of machine 0 "
        "(needed with several machines); 'auto' picks a free local port",
    )
    parser.add_argument(
        "opts",
        help="Modify config options at the end of the command, as KEY VALUE pairs "
        "(e.g. SOLVER.IMS_PER_BATCH 8)",
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


def default_setup(cfg, args: Optional[argparse.Namespace] = None) -> None:
    """Prepare a run: create ``OUTPUT_DIR``, set up logging (console + ``log.txt``), log the
    environment, the arguments and the config, write ``config.yaml``, seed every RNG with
    ``SEED + rank`` and set the determinism / cuDNN flags."""
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    log = setup_logger(output_dir, distributed_rank=rank, name="bcd")

    log.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    log.info("Environment info:\n" + collect_env_info())
    if args is not None:
        log.info("Command line arguments: " + str(args))
        config_file = getattr(args, "config_file", "")
        if config_file:
            with open(config_file, encoding="utf-8") as f:
                log.info(f"Contents of args.config_file={config_file}:\n{f.read()}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        text = cfg.dump()
        _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        log.info(f"Full config saved to {path}")

    seed = seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    log.info(f"Seed of this process: {seed}")
    if cfg.DETERMINISTIC:
        # cuBLAS needs this for deterministic matmuls on CUDA >= 10.2.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """Console line with ETA, ``OUTPUT_DIR/metrics.json`` and TensorBoard events in
    ``OUTPUT_DIR``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


def create_ddp_model(
    model: nn.Module, *, broadcast_buffers: bool = False, find_unused_parameters: bool = False
) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when there are several processes.

    Only parameters with ``requires_grad`` take part in gradient reduction (a frozen teacher
    inside a ``Distiller`` is ignored). ``broadcast_buffers=False``: each process keeps its own
    BN statistics (use SyncBN for synchronised ones) and the teacher's buffers are not re-sent
    every step. ``find_unused_parameters=False``: every trainable parameter must receive a
    gradient each step (set True in a trainer subclass for models with conditional branches).
    """
    if comm.get_world_size() == 1:
        return model
    kwargs: Dict[str, Any] = {}
    device = next(model.parameters()).device
    if device.type == "cuda":
        kwargs["device_ids"] = [comm.get_local_rank()]
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        # Newer PyTorch renames the per-forward buffer broadcast (and deprecates the old name).
        kwargs["forward_sync_buffers"] = broadcast_buffers
    else:
        kwargs["broadcast_buffers"] = broadcast_buffers
    # The parameters of extra optimizers (APD's teacher adapter) are DDP's like the others: the
    # trainer's one backward pass reaches them, and DDP averages their gradients.
    return DistributedDataParallel(
        model, find_unused_parameters=find_unused_parameters, **kwargs
    )


def rng_state() -> Dict[str, Any]:
    """This process's random states: Python ``random``, NumPy, torch (and CUDA when in use);
    saved per process in full checkpoints so that ``--resume`` continues the same draws."""
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class DefaultTrainer(TrainerBase):
    """The trainer of ``tools/train_net.py``, built from a config.

    It builds the model (``bcd.distill.build_model``: the ``Distiller`` when ``KD.LOSSES`` is
    set), the optimizer, the LR scheduler and the train loader; wraps the model in DDP with
    several processes; trains with ``SimpleTrainer`` or ``AMPTrainer``
    (``SOLVER.AMP.ENABLED``); and registers the hooks: iteration timer, LR scheduler, the
    model's own ``training_hooks()``, periodic checkpointer, evaluation every
    ``TEST.EVAL_PERIOD`` (and at the end), best checkpoint, writers.

    Override the ``build_*`` class methods to change a part, as in Detectron2.
    """

    # DDP's find_unused_parameters: False (faster); a subclass sets True for models whose
    # trainable parameters do not all receive a gradient every step.
    DDP_FIND_UNUSED_PARAMETERS: bool = False

    def __init__(self, cfg) -> None:
        super().__init__()
        if not logging.getLogger("bcd").handlers:
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        from .validation import validate_run

        validate_run(cfg)  # datasets registered and checked, class count and ignore value

        # The loader first: a missing or malformed dataset fails at once, before a large model
        # (and a teacher) is built. Building it draws no random number when SEED >= 0.
        data_loader = self.build_train_loader(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # optimizers the model declares for some of its parameters (bcd.solver.OptimizerSpec)
        extra_optimizers = self.build_extra_optimizers(cfg, model)
        model = create_ddp_model(
            model, broadcast_buffers=False,
            find_unused_parameters=self.DDP_FIND_UNUSED_PARAMETERS,
        )

        from ..solver import build_gradient_clipper

        clipper = build_gradient_clipper(cfg)
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer: SimpleTrainer = AMPTrainer(
                model, data_loader, optimizer, clipper, extra_optimizers=extra_optimizers)
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer, clipper, extra_optimizers)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)

        # Every optimizer is a checkpointable; on --resume each keeps its moments and takes the
        # config's hyper-parameters (Checkpointer.load). The extra ones have constant LRs.
        checkpointables: Dict[str, Any] = {"optimizer": optimizer}
        checkpointables.update({f"optimizer.{n}": e.optimizer for n, e in extra_optimizers.items()})
        checkpointables["scheduler"] = self.scheduler
        if isinstance(self._trainer, AMPTrainer):
            checkpointables["grad_scaler"] = self._trainer.grad_scaler
        # --resume: the config's schedule and optimizer values are used; those that differ from
        # the checkpoint's run are logged (bcd/engine/checkpoint.py, ConfigRecord).
        checkpointables["config"] = ConfigRecord(cfg)
        self.checkpointer = Checkpointer(unwrap_model(model), cfg.OUTPUT_DIR, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self._last_eval_results: Optional[Dict[str, float]] = None
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ delegation
    @property
    def model(self) -> nn.Module:
        """The model being trained (DDP-wrapped with several processes)."""
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The main optimizer (the model's parameters but those of ``extra_optimizers``)."""
        return self._trainer.optimizer

    @property
    def extra_optimizers(self):
        """``{name: ExtraOptimizer}``: the optimizers the model declares (``bcd.solver``)."""
        return self._trainer.extra_optimizers

    @property
    def data_loader(self):
        return self._trainer.data_loader

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    # ------------------------------------------------------------------ resume
    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a ``last_checkpoint`` in ``OUTPUT_DIR``: restore the model,
        optimizer, scheduler, grad scaler, hooks, RNG states and data position, and continue
        after the saved iteration. Otherwise load ``MODEL.WEIGHTS`` (model only) if given, and
        reseed every RNG with ``SEED + rank`` (``SEED >= 0``): the random state at iteration 0 is
        then the seed's alone, not that of whatever the model drew while it was built (a
        Distiller's teacher and KD modules draw numbers a plain student does not), so two runs
        with the same ``SEED`` draw the same dropout masks and the same augmentations -- the
        pairing of ``tools/evidence.py`` (docs/evidence.md)."""
        checkpoint = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            if self.cfg.SEED >= 0:
                seed_all_rng(self.cfg.SEED + comm.get_rank())
            return
        self.start_iter = int(checkpoint.get("iteration", -1)) + 1
        self.iter = self.start_iter
        if "hooks" in checkpoint:
            self.load_hook_states(checkpoint["hooks"])
        rng_states = checkpoint.get("rng_states")
        if rng_states is not None and len(rng_states) == comm.get_world_size():
            set_rng_state(rng_states[comm.get_rank()])
        elif rng_states is not None:
            logger.warning(
                f"The checkpoint was written by {len(rng_states)} processes, this run has "
                f"{comm.get_world_size()}: random states are not restored"
            )
        batch_sampler = getattr(self.data_loader, "batch_sampler", None)
        if hasattr(batch_sampler, "start_iter"):
            batch_sampler.start_iter = self.start_iter  # continue the same data stream
        else:
            logger.warning(
                "The training loader has no batch_sampler.start_iter: the data order after "
                "resuming differs from an uninterrupted run"
            )
        logger.info(f"Resuming from iteration {self.start_iter}")

    def checkpoint_extra_state(self) -> Dict[str, Any]:
        """What a full checkpoint holds besides the model and checkpointables: the iteration,
        the hooks' states and every process's RNG states (a collective call)."""
        return {
            "iteration": self.iter,
            "hooks": self.hook_states(),
            "rng_states": comm.all_gather(rng_state()),
        }

    # ------------------------------------------------------------------ hooks
    def build_hooks(self) -> List[Optional[HookBase]]:
        """The default hooks, in order: timer, LR scheduler, the model's ``training_hooks()``,
        periodic checkpointer, evaluation, best checkpoint, writers (main process), then the
        model's hooks marked ``after_eval = True``."""
        cfg = self.cfg
        ret: List[Optional[HookBase]] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
        ]
        model_hooks = getattr(unwrap_model(self.model), "training_hooks", None)
        model_hooks = list(model_hooks()) if callable(model_hooks) else []
        model_hooks += self.build_kd_hooks()
        # A model hook with ``after_eval = True`` (the KD report) goes last, after the final
        # evaluation and the writers.
        ret.extend(h for h in model_hooks if not getattr(h, "after_eval", False))
        ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        if len(cfg.DATASETS.TEST) > 0:
            def test_and_save_results() -> Optional[Dict[str, float]]:
                self._last_eval_results = self.test(self.cfg, unwrap_model(self.model))
                return self._last_eval_results

            ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
            if cfg.TEST.BEST_CHECKPOINT_METRIC:
                ret.append(hooks.BestCheckpointer(
                    cfg.TEST.EVAL_PERIOD, self.checkpointer, cfg.TEST.BEST_CHECKPOINT_METRIC,
                    cfg.TEST.BEST_CHECKPOINT_MODE,
                ))
        if comm.is_main_process():
            # Last, so that evaluation results of the same iteration are written too.
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD))
        ret.extend(h for h in model_hooks if getattr(h, "after_eval", False))
        return ret

    def build_kd_hooks(self) -> List[HookBase]:
        """For a ``Distiller``: ``KDTemperatureHook`` and, with ``KD.REPORT``, ``KDReportHook``
        (after the final evaluation and writers); none for a plain model."""
        from ..distill import Distiller

        model = unwrap_model(self.model)
        if not isinstance(model, Distiller):
            return []
        ret: List[HookBase] = [hooks.KDTemperatureHook(model)]
        if model.cfg.KD.REPORT:
            ret.append(hooks.KDReportHook(model))
        return ret

    def build_writers(self) -> List[EventWriter]:
        """Console, ``metrics.json``, TensorBoard."""
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def train(self) -> Optional[Dict[str, float]]:
        """Train from ``start_iter`` to ``SOLVER.MAX_ITER``.

        Returns:
            The last evaluation results (flattened ``task/metric``) on the main process.
        """
        super().train(self.start_iter, self.max_iter)
        return self._last_eval_results if comm.is_main_process() else None

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        """``bcd.distill.build_model(cfg)``: the config's model, or the ``Distiller`` when
        ``KD.LOSSES`` is set."""
        from ..distill import build_model

        model = build_model(cfg)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        """``bcd.solver.build_optimizer`` (param groups, LR multipliers; the parameters of the
        model's extra optimizers left out)."""
        from ..solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_extra_optimizers(cls, cfg, model: nn.Module):
        """``bcd.solver.build_extra_optimizers``: one optimizer per ``OptimizerSpec`` the model
        declares (``model.extra_optimizers()``; the Distiller's come from its losses)."""
        from ..solver import build_extra_optimizers

        return build_extra_optimizers(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        """``bcd.solver.build_lr_scheduler``."""
        from ..solver import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """``bcd.data.build.build_train_loader`` with the mapper of ``INPUT.DATASET_MAPPER_NAME``."""
        from ..data.build import build_train_loader

        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        """``bcd.data.build.build_test_loader``."""
        from ..data.build import build_test_loader

        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None):
        """``bcd.evaluation.build_evaluator`` (by the dataset's ``evaluator_type``), writing
        into ``OUTPUT_DIR/inference/<dataset>`` by default."""
        from ..evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model: nn.Module, evaluators: Optional[Sequence[Any]] = None
             ) -> Dict[str, float]:
        """Evaluate ``model`` on every ``DATASETS.TEST``.

        Args:
            evaluators: one per test dataset; default ``build_evaluator`` for each.

        Returns:
            Flattened results: ``{"task/metric": value}`` for one test dataset,
            ``{"dataset/task/metric": value}`` for several (main process; ``{}`` elsewhere).
        """
        from ..data.datasets import register_from_config
        from ..evaluation import flatten_results_dict, inference_on_dataset, print_csv_format

        register_from_config(cfg, splits=("TEST",))
        names = list(cfg.DATASETS.TEST)
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(
                f"{len(evaluators)} evaluators given for {len(names)} DATASETS.TEST {names}"
            )
        results: "OrderedDict[str, Any]" = OrderedDict()
        for idx, name in enumerate(names):
            data_loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            results_i = inference_on_dataset(model, data_loader, evaluator)
            results[name] = results_i
            if comm.is_main_process() and results_i:
                logger.info(f"Evaluation results for {name}:")
                print_csv_format(results_i)
        if len(results) == 1:
            return flatten_results_dict(next(iter(results.values())))
        return flatten_results_dict(results)

    @staticmethod
    def auto_scale_workers(cfg, num_workers: int):
        """Scale batch size, LR, iterations, warm-up, steps, evaluation and checkpoint periods
        linearly from ``SOLVER.REFERENCE_WORLD_SIZE`` processes to ``num_workers`` (Detectron2's
        rule); unchanged when the reference is 0 or equal.

        Note: iteration counts elsewhere (e.g. ``KD.SCHEDULE``) are not scaled.
        """
        old_world_size = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if old_world_size == 0 or old_world_size == num_workers:
            return cfg
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        if cfg.SOLVER.IMS_PER_BATCH % old_world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by "
                f"SOLVER.REFERENCE_WORLD_SIZE ({old_world_size})"
            )
        scale = num_workers / old_world_size
        cfg.SOLVER.IMS_PER_BATCH = bs = int(round(cfg.SOLVER.IMS_PER_BATCH * scale))
        cfg.SOLVER.BASE_LR = lr = cfg.SOLVER.BASE_LR * scale
        cfg.SOLVER.MAX_ITER = max_iter = int(round(cfg.SOLVER.MAX_ITER / scale))
        cfg.SOLVER.WARMUP_ITERS = warmup = int(round(cfg.SOLVER.WARMUP_ITERS / scale))
        cfg.SOLVER.STEPS = tuple(int(round(s / scale)) for s in cfg.SOLVER.STEPS)
        cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
        cfg.SOLVER.CHECKPOINT_PERIOD = int(round(cfg.SOLVER.CHECKPOINT_PERIOD / scale))
        cfg.SOLVER.REFERENCE_WORLD_SIZE = num_workers
        logger.info(
            f"Auto-scaling the config to batch_size={bs}, learning_rate={lr}, "
            f"max_iter={max_iter}, warmup={warmup}"
        )
        if frozen:
            cfg.freeze()
        return cfg
