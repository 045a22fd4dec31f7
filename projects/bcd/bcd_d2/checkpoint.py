"""Loading weights into one plain Detectron2 model (a student or a teacher) with Detectron2's
``DetectionCheckpointer``: model-zoo names (``detectron2://``), ``.pkl`` files, URLs."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

__all__ = ["ModelCheckpointer", "load_weights"]


class ModelCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for a plain model that also reads a distillation checkpoint.

    A checkpoint of the project's ``Distiller`` (keys ``student.*``, ``kd_modules.*``,
    ``kd_iteration``: the ``model_XXXXXXX.pth`` files that ``--resume`` reads) loads its
    ``student.`` part; any other checkpoint loads as Detectron2 loads it. After a load,
    ``incompatible`` holds fvcore's ``_IncompatibleKeys`` (missing, unexpected, mis-shaped keys).
    """

    incompatible: Optional[Any] = None

    def _load_model(self, checkpoint: Dict[str, Any]):
        state = checkpoint.get("model", {})
        if any(k.startswith("student.") for k in state):
            checkpoint["model"] = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights(model: nn.Module, path: str, key: str) -> None:
    """Load ``path`` into ``model`` through :class:`ModelCheckpointer`, strictly.

    Args:
        model: a plain Detectron2 model (not DDP-wrapped).
        path: a local file, a ``detectron2://`` model-zoo name or a URL (Detectron2's
            ``PathManager``).
        key: the config key that named ``path``, for the errors.

    Raises:
        ValueError: ``path`` is empty, or the checkpoint does not fit ``model``: the message names
            the file and the missing, unexpected and mis-shaped keys.
        FileNotFoundError: a local ``path`` that does not exist.
    """
    if not path:
        raise ValueError(f"{key} is empty: a checkpoint is needed")
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"{key} '{path}' does not exist")
    ckpt = ModelCheckpointer(model)
    ckpt.load(path, checkpointables=[])
    inc = ckpt.incompatible
    problems = []
    if inc is not None:
        if inc.missing_keys:
            problems.append(f"{len(inc.missing_keys)} missing keys (first: {sorted(inc.missing_keys)[:5]})")
        if inc.unexpected_keys:
            problems.append(f"{len(inc.unexpected_keys)} unexpected keys (first: {sorted(inc.unexpected_keys)[:5]})")
        if inc.incorrect_shapes:
            shapes = [f"{k}: {tuple(a)} in the file, {tuple(b)} in the model" for k, a, b in inc.incorrect_shapes[:5]]
            problems.append(f"{len(inc.incorrect_shapes)} keys of another shape ({'; '.join(shapes)})")
    if problems:
        raise ValueError(f"{key} '{path}' does not fit the model ({type(model).__name__}): " + ", ".join(problems))
