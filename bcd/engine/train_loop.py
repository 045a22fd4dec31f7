"""The training loop with Detectron2's hook protocol: ``TrainerBase``, ``SimpleTrainer``,
``AMPTrainer``.

``TrainerBase.train`` runs ``before_train``, then for each iteration ``before_step``,
``run_step``, ``after_step``, then ``after_train`` (also after an exception, so writers flush).
``SimpleTrainer.run_step`` does one optimisation step: the model returns a dict of scalar losses;
every entry whose key starts with ``"loss"`` is summed; every entry is checked for finiteness
before the backward pass, so a non-finite loss raises ``FloatingPointError`` (naming the entry
and the iteration) before any parameter changes; so does a non-finite model buffer (BatchNorm
running statistics updated by that forward pass), naming the buffer.
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

from ..utils import comm
from ..utils.events import EventStorage, get_event_storage
from .checkpoint import nonfinite_tensors

logger = logging.getLogger(__name__)

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer", "unwrap_model"]

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


class SimpleTrainer(TrainerBase):
    """One optimisation step per iteration: load a batch, forward, check, backward, step.

    Args:
        model: in training mode, ``model(batch)`` returns ``{name: scalar tensor}``; entries
            whose key starts with ``"loss"`` are summed into the training objective; other
            entries (e.g. accuracies) are only logged.
        data_loader: an iterable yielding batches (lists of input dicts) forever.
        optimizer: a torch optimizer over the model's trainable parameters.
        grad_clipper: optional function clipping the gradients of a list of parameters in place.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        grad_clipper: Optional[Callable[[List[torch.Tensor]], Any]] = None,
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.grad_clipper = grad_clipper
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
        self.check_and_log(loss_dict, data_time)

        self.optimizer.zero_grad(set_to_none=True)
        losses.backward()
        if self.grad_clipper is not None:
            self.grad_clipper(self._trainable_params())
        self.optimizer.step()

    @staticmethod
    def _total_loss(loss_dict: Dict[str, torch.Tensor]) -> torch.Tensor:
        terms = [v for k, v in loss_dict.items() if k.startswith("loss")]
        if not terms:
            raise KeyError(
                "The model's loss dict has no entry whose key starts with 'loss'; got keys "
                f"{sorted(loss_dict)}"
            )
        return sum(terms[1:], terms[0])

    def check_and_log(self, loss_dict: Dict[str, torch.Tensor], data_time: float) -> None:
        """Gather the scalars of every process, raise on a non-finite one, put them in storage.

        Every process gets every process's values (one all-gather), so all raise together and
        none waits forever in the backward pass of DDP.

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

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])


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
    ) -> None:
        super().__init__(model, data_loader, optimizer, grad_clipper)
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
        self.check_and_log(loss_dict, data_time)

        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses).backward()
        if self.grad_clipper is not None:
            self.grad_scaler.unscale_(self.optimizer)  # clip the true gradients
            self.grad_clipper(self._trainable_params())
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
