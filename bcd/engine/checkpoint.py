"""``Checkpointer``: fvcore's checkpointer with atomic writes and strict, explained loading.

* Files are written to a temporary name in the same directory, flushed to disk, then renamed
  (``os.replace`` is atomic on POSIX), so a crash never leaves a truncated ``model_*.pth``;
  ``last_checkpoint`` is rewritten the same way and only after the checkpoint is complete.
* Loading a state dict that does not fit the model (missing or unexpected keys, shape
  mismatches) raises ``ValueError`` naming the file and the first offending keys, instead of
  fvcore's warning. A file holding the deployed model only (``model_final.pth`` of a
  distillation run: the student) loads into a model whose ``deploy_model()`` it fits; a full
  checkpoint of a wrapper (``student.*`` keys) loads into the plain model it wraps.
* Checkpoints are pickles (they hold optimizer and hook states): load only files you trust.
* A Hugging Face ``transformers`` checkpoint (an ``hf://`` name or a ``save_pretrained`` folder)
  loads into the models built on transformers' code (SegFormer, Mask2Former): it is read by
  transformers and renamed by ``bcd/modeling/hf_checkpoint.py``, then loaded as strictly.
* A checkpoint is written only when every parameter and buffer of the model is finite; otherwise
  ``save`` raises ``FloatingPointError`` naming the tensors and writes nothing, so
  ``last_checkpoint`` never names a non-finite state (``nonfinite_tensors`` does the check; the
  trainer also runs it on the buffers after each forward pass).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from fvcore.common.checkpoint import Checkpointer as _FvCheckpointer
from torch import nn

from ..utils import comm
from ..utils.state_dict import state_dict_mismatch  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

__all__ = ["Checkpointer", "ConfigRecord", "atomic_torch_save", "deploy_model", "nonfinite_tensors"]


def nonfinite_tensors(named_tensors: Iterable[Tuple[str, Any]]) -> List[str]:
    """Names of the floating-point tensors holding an inf or NaN, in order (``[]`` when all are
    finite). One device synchronisation for the whole set, however many tensors it has.

    Args:
        named_tensors: ``(name, tensor)`` pairs: ``model.named_buffers()``, a state dict's
            ``items()``; non-tensors and integer tensors are skipped.
    """
    items = [
        (k, v) for k, v in named_tensors
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 0
    ]
    if not items:
        return []
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(v).all() for _, v in items]).cpu()
    return [k for (k, _), ok in zip(items, finite.tolist()) if not ok]


def _refuse_nonfinite(state: Dict[str, Any], path: str, last: str) -> None:
    bad = nonfinite_tensors(state.items())
    if bad:
        raise FloatingPointError(
            f"Not writing checkpoint {path}: model tensors hold inf or NaN: "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} ({len(bad)} in all). "
            f"A checkpoint is written only from a finite state; last_checkpoint still names "
            f"{last or 'no checkpoint'}."
        )


def deploy_model(model: nn.Module) -> nn.Module:
    """The part of ``model`` that is deployed: ``model.deploy_model()`` when defined (the
    Distiller returns its student), else ``model`` itself."""
    fn = getattr(model, "deploy_model", None)
    return fn() if callable(fn) else model


def _atomic_write(path: str, write_fn) -> None:
    """Write ``path`` through ``write_fn(file)`` into a temporary file, fsync, then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some file systems do not allow fsync on a directory
        pass


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def _load_optimizer_keeping_hyperparameters(
    optimizer: torch.optim.Optimizer, state: Dict[str, Any], path: str, name: str = "optimizer"
) -> None:
    """Restore the optimizer's per-parameter state (momentum buffers, Adam moments) from
    ``state`` but keep the hyper-parameters of its groups (``lr``, ``initial_lr``,
    ``weight_decay``, ``momentum``, ``betas`` ...) as built from the current config: on
    ``--resume`` the config's values take effect (torch's ``load_state_dict`` would restore the
    checkpoint's). The one mechanism for every optimizer of a run (the main one and the extra
    ones, ``optimizer.<name>``). Differences are logged, naming the optimizer (``name``); LR
    changes are logged by ``ConfigRecord`` as the config keys that set them, and the main LR of
    the current iteration is set afterwards by the scheduler's ``load_state_dict``.
    """
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    changed = []
    for i, (group, hp) in enumerate(zip(optimizer.param_groups, fresh)):
        for k, v in hp.items():
            old = group.get(k)
            if k not in ("lr", "initial_lr") and old != v:  # LRs are reported by ConfigRecord
                changed.append(f"group {i} {k}: {old} (checkpoint) -> {v} (config)")
            group[k] = v
    if changed:
        logger.warning(
            f"Resuming from {path}: hyper-parameters of '{name}' differ from the checkpoint's; the "
            f"config's values are used: {'; '.join(changed[:10])}"
        )


def _flatten(node: Any, prefix: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


class ConfigRecord:
    """The config values that a resumed run compares with the checkpoint's (a checkpointable).

    ``state_dict()`` is ``{"SOLVER.BASE_LR": 0.02, ...}`` for every key under ``nodes``; on
    ``load_state_dict`` (``--resume``) every key whose checkpoint value differs from the current
    config is logged as a warning, with both values. The config's values are the ones used:
    schedules (``SOLVER.*``, ``KD.*``) are computed from the config and the iteration, the LR
    scheduler keeps the config's base LRs and the optimizer the config's hyper-parameters.

    Args:
        cfg: the run's config.
        nodes: top-level nodes to record (default: ``SOLVER`` and ``KD``).
    """

    def __init__(self, cfg, nodes: Sequence[str] = ("SOLVER", "KD")) -> None:
        self.values: Dict[str, Any] = {}
        for n in nodes:
            if n in cfg:
                self.values.update(_flatten(cfg[n], n))
        self.differences: Dict[str, Tuple[Any, Any]] = {}

    def state_dict(self) -> Dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.differences = {
            k: (state[k], v) for k, v in self.values.items() if k in state and state[k] != v
        }
        if self.differences:
            lines = "\n  ".join(
                f"{k}: {old!r} (checkpoint) -> {new!r} (config)"
                for k, (old, new) in sorted(self.differences.items())
            )
            logger.warning(
                "Resuming with config values that differ from the run that wrote the checkpoint; "
                f"the config's values take effect from the resumed iteration on:\n  {lines}"
            )


class Checkpointer(_FvCheckpointer):
    """fvcore ``Checkpointer`` with atomic saves and strict loading (see the module doc).

    Args:
        model: the unwrapped model (not DDP).
        save_dir: where checkpoints and ``last_checkpoint`` go.
        save_to_disk: default: only the main process writes.
        **checkpointables: objects with ``state_dict`` / ``load_state_dict`` saved beside the
            model (optimizer, scheduler, grad scaler ...).
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ) -> None:
        if save_to_disk is None:
            save_to_disk = comm.is_main_process()
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self._loading_path = ""

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` with the model, the checkpointables and ``kwargs``,
        then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        path = self._path_for(name)
        # Parameters and buffers (BN running statistics) alike: a checkpoint with inf in it
        # silently predicts garbage after --eval-only and cannot be resumed from.
        last = self.get_checkpoint_file() if self.has_checkpoint() else ""
        _refuse_nonfinite(data["model"], path, os.path.basename(last))
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(os.path.basename(path))

    def save_model_only(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` = ``{"model": deploy_model(model).state_dict()}``
        (plus ``kwargs``) without touching ``last_checkpoint``: the deployable weights."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": deploy_model(self.model).state_dict()}
        data.update(kwargs)
        path = self._path_for(name)
        _refuse_nonfinite(data["model"], path, "")
        self.logger.info(f"Saving model weights to {path}")
        atomic_torch_save(data, path)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode("utf-8")))

    def _path_for(self, name: str) -> str:
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename:
            raise ValueError(f"Checkpoint name must be a plain file name; got '{name}'")
        return os.path.join(self.save_dir, basename)

    # ------------------------------------------------------------------ loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load the model (strictly) and the checkpointables from ``path``.

        Returns:
            The remaining data of the file (``iteration``, ``hooks`` ...).

        Raises:
            FileNotFoundError: naming ``path`` when it does not exist.
            ValueError: naming ``path`` and the keys when the weights do not fit the model.
        """
        from ..modeling.hf_checkpoint import hf_checkpoint_state_dict, is_hf_checkpoint

        if is_hf_checkpoint(path):
            # a transformers checkpoint (folder / hf:// name): the model only, no training state
            self._loading_path = path
            self.logger.info(f"Loading transformers checkpoint {path} ...")
            self._load_model({"model": hf_checkpoint_state_dict(path, deploy_model(self.model))})
            return {}
        if path and not os.path.isfile(path):
            local = self.path_manager.get_local_path(path)
            if not os.path.isfile(local):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            path = local
        self._loading_path = path
        names = list(self.checkpointables) if checkpointables is None else list(checkpointables)
        checkpoint = super().load(path, checkpointables=[])  # the model only
        for key in names:  # in registration order: optimizers before the scheduler
            if key not in checkpoint:
                logger.warning(f"{path} holds no state for '{key}'; it starts afresh")
                continue
            obj = self.checkpointables[key]
            state = checkpoint.pop(key)
            self.logger.info(f"Loading {key} from {path} ...")
            if isinstance(obj, torch.optim.Optimizer):
                _load_optimizer_keeping_hyperparameters(obj, state, path, key)
            else:
                obj.load_state_dict(state)
        return checkpoint

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            # Full checkpoints hold optimizer / hook states (python objects), hence not
            # weights_only; see the module docstring.
            loaded = torch.load(filename, map_location=torch.device("cpu"), weights_only=False)
        except Exception as e:
            raise ValueError(f"Cannot read checkpoint file {filename}: {type(e).__name__}: {e}") from e
        if not isinstance(loaded, dict):
            raise ValueError(
                f"Checkpoint file {filename} holds a {type(loaded).__name__}, not a dict"
            )
        if "model" not in loaded:
            if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
                loaded = {"model": loaded}  # a bare state dict
            else:
                raise ValueError(
                    f"Checkpoint file {filename} has no 'model' entry (keys: "
                    f"{sorted(loaded)[:10]})"
                )
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]) -> None:
        state = dict(checkpoint.pop("model"))
        # Weights saved from a DDP-wrapped model carry the "module." prefix.
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module."):]: v for k, v in state.items()}
        for k, v in list(state.items()):  # numpy arrays (e.g. converted weights) -> tensors
            if not isinstance(v, torch.Tensor) and hasattr(v, "__array__"):
                state[k] = torch.as_tensor(v)
        # Detectron2 checkpoints (key names, BGR stem, anchor order): bcd/modeling/d2_convert.py
        from ..modeling.d2_convert import maybe_convert_detectron2

        state = maybe_convert_detectron2(state, deploy_model(self.model), source=self._loading_path)

        candidates = [("model", self.model)]
        deployed = deploy_model(self.model)
        if deployed is not self.model:
            candidates.append(("deploy_model()", deployed))
        problems = {}
        for label, target in candidates:
            problems[label] = state_dict_mismatch(target.state_dict(), state)
            if not problems[label]:
                target.load_state_dict(state, strict=True)
                if label != "model":
                    logger.info(f"Loaded {self._loading_path} into the model's {label}")
                return None
        # A full checkpoint of a larger model (e.g. a Distiller's model_XXXXXXX.pth: keys
        # "student.*", "kd_modules.*") loads into a plain model that is one of its sub-modules.
        model_state = self.model.state_dict()
        for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not state_dict_mismatch(model_state, sub):
                self.model.load_state_dict(sub, strict=True)
                ignored = sorted(k for k in state if not k.startswith(prefix))
                logger.info(
                    f"Loaded the '{prefix[:-1]}' part of {self._loading_path}; ignored "
                    f"{len(ignored)} other entries (first: {', '.join(ignored[:5])})"
                )
                return None
        lines = "\n  ".join(f"into the {label}: {msg}" for label, msg in problems.items())
        raise ValueError(
            f"The weights in {self._loading_path} do not fit {type(self.model).__name__}:\n  "
            f"{lines}"
        )
