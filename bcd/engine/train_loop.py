"""The training loop with Detectron2's hook protocol: ``TrainerBase``, ``SimpleTrainer``,
``AMPTrainer``.

``TrainerBase.train`` runs ``before_train``, then for each iteration ``before_step``,
``run_step``, ``after_step``, then ``after_train`` (also after an exception, so writers flush).
``SimpleTrainer.run_step`` does one optimisation step: the model returns a dict of scalar losses;
every entry whose key starts with ``"loss"`` is summed; every entry is checked for finiteness
before the backward pass, so a non-finite loss raises ``FloatingPointError`` (naming the entry
and the iteration) before any parameter changes; so does a non-finite model buffer (BatchNorm
running statistics updated by that forward pass), naming the buffer.

The trainer owns every optimizer: the main one and the model's extra optimizers
(``bcd.solver.OptimizerSpec``, e.g. APD's teacher adapter), each minimising its own entries of
the loss dict. One backward pass differentiates the sum of all objectives (so DDP averages every
gradient over the processes); each objective must reach its own parameters only, which the
trainer checks at every step.
"""
from __future__ import annotations

import abc
import logging
import math
import time
import weakref
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..solver.build import ExtraOptimizer
from ..utils import comm
from ..utils.events import EventStorage, get_event_storage
from .checkpoint import nonfinite_tensors

logger = logging.getLogger(__name__)

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer", "extra_objectives", "unwrap_model"]

# Loss-dict keys the storage keeps unsmoothed (see SimpleTrainer.check_and_log).
UNSMOOTHED_PREFIXES = ("loss_kd_", "kd/")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    while isinstance(model, (DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class HookBase:
    """A hook called by the trainer around training and around each step.

    ``self.trainer`` (a weak proxy) is set when the hook is registered. A hook that defines
    ``state_dict()`` / ``load_state_dict()`` has its state saved in checkpoints under
    ``"hooks"`` and restored on ``--resume``.
    """

    trainer: "TrainerBase"

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration (also when training stopped on an error)."""

    def before_step(self) -> None:
        """Called before each iteration; ``self.trainer.iter`` is the iteration about to run."""

    def after_step(self) -> None:
        """Called after each iteration; ``self.trainer.iter`` is the iteration just run."""


class TrainerBase(abc.ABC):
    """Runs hooks around an abstract ``run_step`` for iterations ``[start_iter, max_iter)``.

    Attributes:
        iter: the current iteration (after training: ``max_iter``).
        start_iter, max_iter: the range of iterations of ``train()``.
        storage: the ``EventStorage`` open during training.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: EventStorage

    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """Append ``hooks`` (None entries are skipped); they run in the order registered."""
        hooks = [h for h in hooks if h is not None]
        for h in hooks:
            if not isinstance(h, HookBase):
                raise TypeError(f"Hooks must derive from HookBase; got {type(h).__name__}")
            # A weak proxy avoids a reference cycle trainer -> hook -> trainer.
            h.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` with the hooks."""
        logger.info(f"Starting training from iteration {start_iter}")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # Training finished: iter == max_iter, so hooks' after_train can tell a
                # completed run from one interrupted by an exception.
                self.iter += 1
            except Exception:
                logger.exception(f"Exception during training at iteration {self.iter}:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    @abc.abstractmethod
    def run_step(self) -> None:
        """One iteration of training (subclasses define it)."""

    # ------------------------------------------------------------------ state
    def hook_states(self) -> Dict[str, Any]:
        """``{hook key: state}`` of the hooks that define ``state_dict()``."""
        states = {}
        for key, h in self._stateful_hooks().items():
            states[key] = h.state_dict()  # type: ignore[attr-defined]
        return states

    def load_hook_states(self, states: Mapping[str, Any]) -> None:
        """Restore the hooks' states saved by ``hook_states()``; unmatched keys are logged."""
        hooks = self._stateful_hooks()
        for key, state in states.items():
            if key in hooks:
                hooks[key].load_state_dict(state)  # type: ignore[attr-defined]
            else:
                logger.warning(f"Checkpoint has state of hook '{key}', which is not registered")
        for key in hooks:
            if key not in states:
                logger.warning(f"Checkpoint has no state for hook '{key}'; it starts afresh")

    def _stateful_hooks(self) -> Dict[str, HookBase]:
        out: Dict[str, HookBase] = {}
        for h in self._hooks:
            if callable(getattr(h, "state_dict", None)):
                key = type(h).__qualname__
                n = 1
                while key in out:  # two hooks of one class: number them in order
                    n += 1
                    key = f"{type(h).__qualname__}_{n}"
                out[key] = h
        return out


def _as_loss_dict(outputs: Any) -> Dict[str, torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return {"loss": outputs}
    if not isinstance(outputs, Mapping):
        raise TypeError(
            "In training mode the model must return a dict of scalar losses; got "
            f"{type(outputs).__name__}"
        )
    return dict(outputs)


def extra_objectives(
    loss_dict: Mapping[str, torch.Tensor], extra_optimizers: Mapping[str, ExtraOptimizer]
) -> Dict[str, torch.Tensor]:
    """``{name: sum of its objective entries}`` of the extra optimizers (those with a graph):
    what the step's backward pass adds to the main objective for them.

    Raises:
        KeyError: an objective entry missing from the loss dict, naming the optimizer.
    """
    out: Dict[str, torch.Tensor] = {}
    for name, e in extra_optimizers.items():
        missing = [k for k in e.objective if k not in loss_dict]
        if missing:
            raise KeyError(
                f"Optimizer '{name}' minimises the loss entries {list(e.objective)}, but the "
                f"model's loss dict has no {missing} (keys: {sorted(loss_dict)})"
            )
        terms = [loss_dict[k] for k in e.objective
                 if isinstance(loss_dict[k], torch.Tensor) and loss_dict[k].requires_grad]
        if terms:
            out[name] = sum(terms[1:], terms[0])
    return out


class SimpleTrainer(TrainerBase):
    """One optimisation step per iteration: load a batch, forward, check, backward, step.

    Args:
        model: in training mode, ``model(batch)`` returns ``{name: scalar tensor}``; entries
            whose key starts with ``"loss"`` are summed into the training objective; other
            entries (e.g. accuracies) are only logged, or are the objective of an extra optimizer.
        data_loader: an iterable yielding batches (lists of input dicts) forever.
        optimizer: a torch optimizer over the model's trainable parameters (those of the extra
            optimizers excepted).
        grad_clipper: optional function clipping the gradients of a list of parameters in place
            (the main optimizer's).
        extra_optimizers: ``{name: ExtraOptimizer(optimizer, objective keys)}``
            (``bcd.solver.build_extra_optimizers``): each is stepped after the main one on the
            gradient of the sum of its loss-dict entries, except at an iteration where these are 0
            on every process (nothing to fit: an Adam step on a zero gradient would still move the
            weights by its moments).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        grad_clipper: Optional[Callable[[List[torch.Tensor]], Any]] = None,
        extra_optimizers: Optional[Mapping[str, ExtraOptimizer]] = None,
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.grad_clipper = grad_clipper
        self.extra_optimizers: Dict[str, ExtraOptimizer] = dict(extra_optimizers or {})
        self._data_loader_iter_obj = None

    @property
    def _data_loader_iter(self):
        # Created on first use, so the loader's start position can be set (resume) first.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def _trainable_params(self) -> List[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def run_step(self) -> None:
        if not self.model.training:
            raise RuntimeError("[SimpleTrainer] the model was left in eval mode")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        loss_dict = _as_loss_dict(self.model(data))
        losses = self._total_loss(loss_dict)
        extra = self._extra_objectives(loss_dict)
        gathered = self.check_and_log(loss_dict, data_time)
        self._check_objectives_apart(losses, extra)

        self._zero_grad()
        sum(extra.values(), losses).backward()
        if self.grad_clipper is not None:
            self.grad_clipper(self._trainable_params())
        self.optimizer.step()
        for name in self._extra_to_step(gathered):
            self.extra_optimizers[name].optimizer.step()

    # ------------------------------------------------------------------ extra optimizers
    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for e in self.extra_optimizers.values():
            e.optimizer.zero_grad(set_to_none=True)

    def _extra_objectives(self, loss_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return extra_objectives(loss_dict, self.extra_optimizers)

    def _check_objectives_apart(self, losses: torch.Tensor, extra: Mapping[str, torch.Tensor]) -> None:
        """Each objective reaches its own parameters only (one backward pass sums them all).

        ``torch.autograd.grad(..., allow_unused=True)`` from each objective to the others'
        parameters: with the graphs apart nothing runs (the graph walk alone is the cost).

        Raises:
            RuntimeError: naming the objective and the parameters it should not reach.
        """
        if not extra:
            return
        groups = {"the main optimizer": self._trainable_params()}
        groups.update({f"optimizer '{n}'": [p for g in e.optimizer.param_groups for p in g["params"]]
                       for n, e in self.extra_optimizers.items()})
        objectives = {"the main objective (the 'loss*' entries)": ("the main optimizer", losses)}
        objectives.update({f"the objective of optimizer '{n}' ({list(self.extra_optimizers[n].objective)})":
                           (f"optimizer '{n}'", v) for n, v in extra.items()})
        for what, (own, value) in objectives.items():
            if not value.requires_grad:
                continue
            for other, params in groups.items():
                if other == own or not params:
                    continue
                grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                reached = [p for p, g in zip(params, grads) if g is not None]
                if reached:
                    names = {id(p): n for n, p in unwrap_model(self.model).named_parameters()}
                    shown = [names.get(id(p), "?") for p in reached[:3]]
                    raise RuntimeError(
                        f"At iteration {self.iter}, {what} reaches {len(reached)} parameters of "
                        f"{other} ({', '.join(shown)}{' ...' if len(reached) > 3 else ''}): every "
                        "objective must reach its own parameters only; detach what it takes from "
                        "the others"
                    )

    def _extra_to_step(self, gathered: List[Dict[str, Any]]) -> List[str]:
        """The extra optimizers whose objective is non-zero on some process this iteration."""
        return [
            name for name, e in self.extra_optimizers.items()
            if any(m["metrics"].get(k, 0.0) != 0.0 for m in gathered for k in e.objective)
        ]

    @staticmethod
    def _total_loss(loss_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        terms = [v for k, v in loss_dict.items() if k.startswith("loss")]
        if not terms:
            raise KeyError(
                "The model's loss dict has no entry whose key starts with 'loss'; got keys "
                f"{sorted(loss_dict)}"
            )
        return sum(terms[1:], terms[0])

    def check_and_log(self, loss_dict: Dict[str, torch.Tensor], data_time: float) -> List[Dict[str, Any]]:
        """Gather the scalars of every process, raise on a non-finite one, put them in storage.

        Every process gets every process's values (one all-gather), so all raise together and
        none waits forever in the backward pass of DDP.

        Returns:
            Per process ``{"metrics": {key: float}, "data_time", "bad_buffers"}`` (rank order).

        Raises:
            FloatingPointError: naming the non-finite entries, the iteration and the ranks.
        """
        metrics = {}
        for k, v in loss_dict.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    raise ValueError(
                        f"Loss entry '{k}' must be a scalar; got a tensor of shape "
                        f"{tuple(v.shape)}"
                    )
                metrics[k] = v.detach().float().cpu().item()
            else:
                metrics[k] = float(v)
        # The forward also updated buffers (BatchNorm running statistics): a step whose loss is
        # still finite can leave inf there (activations overflowing), and a checkpoint of that
        # state would predict garbage. Checked here, before the parameters change.
        bad_buffers = nonfinite_tensors(unwrap_model(self.model).named_buffers())
        all_metrics = comm.all_gather(
            {"metrics": metrics, "data_time": data_time, "bad_buffers": bad_buffers}
        )

        bad = sorted({
            f"{k}={v} (rank {rank})" if len(all_metrics) > 1 else f"{k}={v}"
            for rank, m in enumerate(all_metrics)
            for k, v in m["metrics"].items()
            if not math.isfinite(v)
        })
        if bad:
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={self.iter}: {', '.join(bad)}. "
                f"Training stops; the last checkpoint is left as it was."
            )
        bad = sorted({
            f"{name} (rank {rank})" if len(all_metrics) > 1 else name
            for rank, m in enumerate(all_metrics)
            for name in m.get("bad_buffers", [])
        })
        if bad:
            raise FloatingPointError(
                f"Model buffers became infinite or NaN in the forward pass of iteration="
                f"{self.iter}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Training "
                f"stops before the step; the last checkpoint is left as it was."
            )

        storage = get_event_storage()
        # The slowest worker's data time: the one the step waited for.
        storage.put_scalar("data_time", max(m["data_time"] for m in all_metrics))
        keys = all_metrics[0]["metrics"].keys()
        mean = {k: sum(m["metrics"][k] for m in all_metrics) / len(all_metrics) for k in keys}
        total = sum(v for k, v in mean.items() if k.startswith("loss"))
        storage.put_scalar("total_loss", total)
        for k, v in mean.items():
            # Distillation scalars are written as the value of their own iteration (no median),
            # all of them alike, so that on every written line
            # loss_kd_<x> = kd/<x>/raw × kd/<loss>/weight (the median of a product is not the
            # product of medians, and a latest-value weight beside median losses misleads).
            storage.put_scalar(k, v, smoothing_hint=not k.startswith(UNSMOOTHED_PREFIXES))
        return all_metrics

    def state_dict(self) -> Dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict()}
        state.update({f"optimizer.{n}": e.optimizer.state_dict() for n, e in self.extra_optimizers.items()})
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        for n, e in self.extra_optimizers.items():
            e.optimizer.load_state_dict(state_dict[f"optimizer.{n}"])


class AMPTrainer(SimpleTrainer):
    """``SimpleTrainer`` with automatic mixed precision.

    On CUDA the forward runs in ``float16`` with a ``GradScaler`` (dynamic loss scaling); on
    CPU in ``bfloat16``, which needs no scaler (its exponent range is float32's).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        grad_clipper: Optional[Callable[[List[torch.Tensor]], Any]] = None,
        device_type: Optional[str] = None,
        precision: Optional[torch.dtype] = None,
        extra_optimizers: Optional[Mapping[str, ExtraOptimizer]] = None,
    ) -> None:
        super().__init__(model, data_loader, optimizer, grad_clipper, extra_optimizers)
        if device_type is None:
            device_type = next(unwrap_model(model).parameters()).device.type
        self.device_type = device_type
        self.precision = precision or (torch.float16 if device_type == "cuda" else torch.bfloat16)
        self.grad_scaler = torch.amp.GradScaler(
            device_type, enabled=self.precision == torch.float16
        )

    def run_step(self) -> None:
        if not self.model.training:
            raise RuntimeError("[AMPTrainer] the model was left in eval mode")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            loss_dict = _as_loss_dict(self.model(data))
            losses = self._total_loss(loss_dict)
            extra = self._extra_objectives(loss_dict)
        gathered = self.check_and_log(loss_dict, data_time)
        self._check_objectives_apart(losses, extra)

        self._zero_grad()
        self.grad_scaler.scale(sum(extra.values(), losses)).backward()
        if self.grad_clipper is not None:
            self.grad_scaler.unscale_(self.optimizer)  # clip the true gradients
            self.grad_clipper(self._trainable_params())
        self.grad_scaler.step(self.optimizer)
        for name in self._extra_to_step(gathered):
            self.grad_scaler.step(self.extra_optimizers[name].optimizer)  # unscales, skips on inf
        self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
