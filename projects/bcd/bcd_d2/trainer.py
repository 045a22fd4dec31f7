"""The project's trainer: Detectron2's ``DefaultTrainer`` with ``bcd``'s KD rules.

What differs from ``DefaultTrainer`` (everything else is Detectron2's: the LR scheduler, the
writers, ``EvalHook`` with Detectron2's evaluators, ``DetectionCheckpointer``, ``launch``):

* the model is ``bcd_d2.build_model``: the ``Distiller`` when ``KD.LOSSES`` is set;
* the step (:class:`KDTrainerLoop`) sums only the loss dict's ``loss*`` entries (the ``kd/*``
  entries are logs) and logs ``bcd``'s way: every entry averaged over the processes and checked
  finite on all of them; ``loss_kd_*`` and ``kd/*`` are written as the value of their iteration
  (no median), so ``loss_kd_<x> = kd/<x>/raw × kd/<loss>/weight`` on every line of
  ``metrics.json``;
* the optimizer is Detectron2's SGD, with the ``Distiller``'s ``lr_multipliers``
  (``{"kd_modules": KD.LR_MULTIPLIER}``) as its per-parameter LR factors;
* hooks: ``KDIterationHook``, ``KDTemperatureHook``, ``RNGStatesHook`` and, for a ``Distiller``,
  ``KDPeriodicCheckpointer`` (``model_final.pth`` = the student alone); evaluation keeps the
  random states as they were (its data loader draws a seed);
* ``--resume``: besides Detectron2's state (model with the KD modules, the KD iteration and the
  temperatures; optimizer; scheduler; iteration) the random states of every process, the data
  position (:class:`bcd_d2.data.ResumableSampler`) and the ``loss_normalizer`` that
  Detectron2's dense detectors keep outside their state dict. A resumed run then ends with the
  weights of an uninterrupted one when ``DATALOADER.NUM_WORKERS`` is 0 (worker processes
  restart their random streams) and ``DATALOADER.ASPECT_RATIO_GROUPING`` is False;
* a model on the CPU is wrapped in DDP without device ids (Gloo), so ``--num-gpus N`` runs N CPU
  processes on a machine without CUDA;
* ``MODEL.WEIGHTS`` initialises the student (not the Distiller, whose key names differ).
"""
from __future__ import annotations

import logging
import math
import os
import time
import weakref
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.data.common import ToIterableDataset
from detectron2.engine import DefaultTrainer, SimpleTrainer, create_ddp_model, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bcd.engine.train_loop import UNSMOOTHED_PREFIXES

from .checkpoint import ModelCheckpointer
from .data import ResumableSampler
from .distiller import Distiller, build_model
from .hooks import (
    KDIterationHook,
    KDPeriodicCheckpointer,
    KDTemperatureHook,
    RNGStatesHook,
    portable_rng_state,
    restore_rng_state,
)

__all__ = ["KDTrainerLoop", "Trainer", "build_evaluator", "total_loss"]

logger = logging.getLogger("bcd_d2")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def total_loss(loss_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training objective: the sum of the entries whose key starts with ``loss``.

    Raises:
        KeyError: no such entry.
    """
    terms = [v for k, v in loss_dict.items() if k.startswith("loss")]
    if not terms:
        raise KeyError(f"The model's loss dict has no entry whose key starts with 'loss'; got {sorted(loss_dict)}")
    return sum(terms[1:], terms[0])


class KDTrainerLoop(SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` step (and ``AMPTrainer``'s with ``grad_scaler``) whose
    objective is :func:`total_loss` and whose logs follow :meth:`write_kd_metrics`.

    Args:
        model, data_loader, optimizer: as for ``SimpleTrainer``.
        grad_scaler: a ``torch.amp.GradScaler`` for mixed precision on CUDA (``SOLVER.AMP``), or None.
        precision: the autocast dtype with ``grad_scaler``.
    """

    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer,
                 grad_scaler: Optional[Any] = None, precision: torch.dtype = torch.float16) -> None:
        super().__init__(model, data_loader, optimizer)
        self.grad_scaler = grad_scaler
        self.precision = precision

    def run_step(self) -> None:
        assert self.model.training, "[KDTrainerLoop] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        amp = self.grad_scaler is not None
        with torch.autocast("cuda", dtype=self.precision, enabled=amp):
            loss_dict = self.model(data)
            losses = total_loss(loss_dict)
        self.optimizer.zero_grad()
        if amp:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        if amp:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "",
                       iter: Optional[int] = None) -> None:
        self.write_kd_metrics(loss_dict, data_time, self.iter if iter is None else iter, prefix)

    @staticmethod
    def write_kd_metrics(loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int,
                         prefix: str = "") -> None:
        """Average every entry over the processes (each process gets all: they raise together),
        check it finite, put it in the event storage (main process): ``total_loss`` = the sum
        of the ``loss*`` entries; ``loss_kd_*`` / ``kd/*`` without smoothing
        (``bcd.engine.train_loop.UNSMOOTHED_PREFIXES``).

        Raises:
            FloatingPointError: naming the non-finite entries and the iteration.
        """
        metrics = {k: float(v.detach().float().cpu().item()) if torch.is_tensor(v) else float(v)
                   for k, v in loss_dict.items()}
        gathered = comm.all_gather({"metrics": metrics, "data_time": data_time})
        mean = {k: sum(g["metrics"][k] for g in gathered) / len(gathered) for k in metrics}
        bad = sorted(f"{k}={v}" for k, v in mean.items() if not math.isfinite(v))
        if bad:
            raise FloatingPointError(f"Loss became infinite or NaN at iteration={cur_iter}: {', '.join(bad)}")
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
        storage.put_scalar("data_time", max(g["data_time"] for g in gathered), cur_iter=cur_iter)
        storage.put_scalar(f"{prefix}total_loss", sum(v for k, v in mean.items() if k.startswith("loss")),
                           cur_iter=cur_iter)
        for k, v in mean.items():
            storage.put_scalar(k, v, smoothing_hint=not k.startswith(UNSMOOTHED_PREFIXES), cur_iter=cur_iter)

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


@contextmanager
def _random_states_kept() -> Iterator[None]:
    """Run a block (an evaluation) without changing the random states of this process."""
    state = portable_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def build_evaluator(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """Detectron2's evaluator for the dataset's ``evaluator_type`` (``coco``, ``sem_seg``,
    ``coco_panoptic_seg``, ``cityscapes_instance``, ``cityscapes_sem_seg``, ``pascal_voc``,
    ``lvis``), as Detectron2's ``tools/train_net.py`` chooses it.

    Raises:
        NotImplementedError: naming the dataset and its ``evaluator_type``.
    """
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    evaluators: List[DatasetEvaluator] = []
    if kind in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if kind in ("coco", "coco_panoptic_seg"):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
    if kind == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if kind == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    if kind == "cityscapes_sem_seg":
        return CityscapesSemSegEvaluator(dataset_name)
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder)
    if not evaluators:
        raise NotImplementedError(f"no evaluator for dataset '{dataset_name}' (evaluator_type {kind!r})")
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


def _find_index_dataset(loader: Any) -> Optional[ToIterableDataset]:
    """The ``ToIterableDataset`` inside Detectron2's train loader (its sampler runs there)."""
    obj = loader
    for _ in range(4):  # AspectRatioGroupedDataset -> DataLoader -> ToIterableDataset
        if isinstance(obj, ToIterableDataset):
            return obj
        obj = getattr(obj, "dataset", None)
    return None


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with ``bcd``'s distillation (see the module docstring); the builder
    class methods are Detectron2's and are overridden the same way."""

    def __init__(self, cfg) -> None:
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self._index_dataset = _find_index_dataset(data_loader)
        if self._index_dataset is not None:
            self._index_dataset.sampler = ResumableSampler(
                self._index_dataset.sampler, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
        else:
            logger.warning("The train loader has no ToIterableDataset: a resumed run restarts its data stream")

        on_cuda = next(model.parameters()).device.type == "cuda"
        # A Distiller's KD modules do not all get a gradient every step (the BCD teacher head
        # after its fitting phase, a loss past its STOP_ITER).
        model = create_ddp_model(model, broadcast_buffers=False,
                                 find_unused_parameters=isinstance(model, Distiller),
                                 **({} if on_cuda else {"device_ids": None}))
        # SOLVER.AMP.ENABLED: Detectron2's AMPTrainer recipe (CUDA, float16, GradScaler)
        scaler = torch.amp.GradScaler("cuda") if cfg.SOLVER.AMP.ENABLED else None
        self._trainer = KDTrainerLoop(model, data_loader, optimizer, scaler)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.rng_states: Optional[List[Dict[str, Any]]] = None
        self._resumed_rng_states: Optional[List[Dict[str, Any]]] = None
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ resume
    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a ``last_checkpoint``: restore the full state (module docstring) and
        continue after its iteration. Otherwise load ``MODEL.WEIGHTS`` into the student (the
        model itself without distillation), as Detectron2 does (not strict: an ImageNet file
        has no heads)."""
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=True)
            self.start_iter = self.iter + 1
            if self._index_dataset is not None:
                self._index_dataset.sampler.start_iter = self.start_iter
            # Create the loader's iterator now (it draws a seed from torch's generator, as the
            # uninterrupted run did at its start), then restore the saved random states.
            _ = self._trainer._data_loader_iter
            states = self._resumed_rng_states
            if states is not None and len(states) == comm.get_world_size():
                restore_rng_state(states[comm.get_rank()])
            elif states is not None:
                logger.warning(f"The checkpoint was written by {len(states)} processes, this run has "
                               f"{comm.get_world_size()}: random states are not restored")
            return
        model = _unwrap(self.model)
        target = model.deploy_model() if isinstance(model, Distiller) else model
        ModelCheckpointer(target).load(self.cfg.MODEL.WEIGHTS, checkpointables=[])

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if self.rng_states is not None:
            ret["rng_states"] = self.rng_states
        # Detectron2's dense detectors (RetinaNet, FCOS) keep the EMA of their positive-anchor
        # count as a plain attribute, outside the state dict.
        ret["loss_normalizers"] = {
            name: float(m.loss_normalizer) for name, m in _unwrap(self.model).named_modules()
            if isinstance(getattr(m, "loss_normalizer", None), (int, float))
        }
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._resumed_rng_states = state_dict.get("rng_states")
        modules = dict(_unwrap(self.model).named_modules())
        for name, value in state_dict.get("loss_normalizers", {}).items():
            if name in modules:
                modules[name].loss_normalizer = value

    def train(self) -> Optional[Mapping[str, Any]]:
        """Detectron2's ``train()``; returns the last evaluation's results on the main process
        (Detectron2 returns them only with ``TEST.EXPECTED_RESULTS``)."""
        super().train()
        return getattr(self, "_last_eval_results", None) if comm.is_main_process() else None

    # ------------------------------------------------------------------ hooks
    def build_hooks(self) -> List[Optional[hooks.HookBase]]:
        """Detectron2's default hooks with the KD hooks before the checkpointer (so a checkpoint
        holds the state after this step's temperature update) and the random states kept across
        evaluations."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # save some memory and time for PreciseBN
        model = _unwrap(self.model)
        ret: List[Optional[hooks.HookBase]] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg),
                            cfg.TEST.PRECISE_BN.NUM_ITER)
            if cfg.TEST.PRECISE_BN.ENABLED and hooks.get_bn_modules(self.model) else None,
        ]
        if isinstance(model, Distiller):
            ret += [KDIterationHook(model), KDTemperatureHook(model)]
        ret.append(RNGStatesHook(cfg.SOLVER.CHECKPOINT_PERIOD))
        if comm.is_main_process():
            ckpt = KDPeriodicCheckpointer if isinstance(model, Distiller) else hooks.PeriodicCheckpointer
            ret.append(ckpt(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            with _random_states_kept():
                self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        """:func:`bcd_d2.build_model`: the ``Distiller`` when ``KD.LOSSES`` is set."""
        model = build_model(cfg)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        """Detectron2's SGD (``detectron2.solver.build_optimizer``) with the model's
        ``lr_multipliers`` (``{parameter-name prefix: factor}``) as LR factors."""
        mults = dict(getattr(_unwrap(model), "lr_multipliers", {}) or {})

        def lr_factor(name: str) -> float:
            for prefix, f in mults.items():
                if name == prefix or name.startswith(prefix + "."):
                    return float(f)
            return 1.0

        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            lr_factor_func=lr_factor if mults else None,
        )
        sgd = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                              nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        return maybe_add_gradient_clipping(cfg, sgd)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
        """:func:`build_evaluator` into ``OUTPUT_DIR/inference`` by default."""
        return build_evaluator(cfg, dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))
