"""Hugging Face ``transformers`` checkpoints as the weights of the ``bcd`` models built on
``transformers``' model code (SegFormer's MiT encoder and decode head, Mask2Former).

A *transformers checkpoint* is a folder written by ``save_pretrained`` (``config.json`` + the
weights) or an ``hf://<repo_id>[@<revision>]`` name, resolved to such a folder in the Hugging
Face cache by ``bcd.modeling.backbone.weights.resolve_hf``. It is accepted wherever ``bcd``
takes trained weights: ``MODEL.WEIGHTS`` (the checkpointer, ``--eval-only``, the tools) and
``KD.TEACHER.WEIGHTS`` (the Distiller's teacher).

The checkpoint is read by ``transformers`` itself (``<Class>.from_pretrained``: its key renaming
for older checkpoints, sharded files, safetensors / ``.bin``) and the model's state dict is
renamed to ``bcd``'s keys by the converter registered for the checkpoint's ``model_type``
(``HF_CHECKPOINT_CONVERTERS``: ``"segformer"`` in ``bcd/modeling/heads/segformer.py``,
``"mask2former"`` in ``bcd/modeling/meta_arch/mask2former.py``). Missing or mis-shaped weights
are errors naming the checkpoint and the keys; nothing is silently initialised.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict, Optional, Tuple

from torch import Tensor, nn

from .backbone.weights import HF_SCHEME, PretrainedWeightsError, _listing, resolve_hf

__all__ = [
    "HF_CHECKPOINT_CONVERTERS",
    "hf_checkpoint_config",
    "hf_checkpoint_state_dict",
    "is_hf_checkpoint",
    "load_hf_pretrained",
    "prefixed_state",
]

logger = logging.getLogger(__name__)

#: ``model_type`` of a checkpoint's ``config.json`` -> ``fn(folder, model, key) -> state dict``
#: with the keys of ``model`` (a ``bcd`` meta-architecture); ``key`` is the config key named in
#: errors.
HF_CHECKPOINT_CONVERTERS: Dict[str, Callable[[str, nn.Module, str], Dict[str, Tensor]]] = {}

def is_hf_checkpoint(path: str) -> bool:
    """True for an ``hf://`` name or a folder holding a ``config.json``."""
    return bool(path) and (path.startswith(HF_SCHEME) or os.path.isfile(os.path.join(path, "config.json")))


def hf_checkpoint_config(folder: str) -> dict:
    """The ``config.json`` of a checkpoint folder as a dict (errors name the file)."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise PretrainedWeightsError(f"Cannot read the transformers config {path}: {e}") from e


def load_hf_pretrained(cls, path: str, key: str, allow_missing: Tuple[str, ...] = (), **kwargs) -> nn.Module:
    """``cls.from_pretrained`` of a checkpoint folder or ``hf://`` name, on the CPU, refusing
    missing and mis-shaped weights (``transformers`` would initialise them at random).

    Args:
        cls: a ``transformers`` model class (``SegformerModel``, ``AutoBackbone``, ...).
        path: folder or ``hf://`` name.
        key: the config key named in errors (``MODEL.WEIGHTS``, ``MODEL.BACKBONE.WEIGHTS`` ...).
        allow_missing: substrings of weight names the checkpoint may lack (new layers the model
            adds on top of a pretrained trunk, e.g. a backbone's output norms).
        **kwargs: passed to ``from_pretrained`` (e.g. ``out_features``).

    Raises:
        FileNotFoundError: the name cannot be resolved (see ``resolve_hf``).
        PretrainedWeightsError: unreadable checkpoint, missing or mis-shaped weights.
    """
    folder = resolve_hf(path, key=key)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{key} '{path}': {folder} holds no config.json (not a transformers checkpoint)")
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as e:  # transformers raises many types for unreadable / mismatching files
        raise PretrainedWeightsError(
            f"{key} '{path}': transformers cannot load {folder} as {getattr(cls, '__name__', cls)} "
            f"({type(e).__name__}: {e})"
        ) from e
    missing = [k for k in info.get("missing_keys", []) if not any(a in k for a in allow_missing)]
    mismatched = [str(m) for m in info.get("mismatched_keys", [])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights of the model are not in the checkpoint: {_listing(sorted(missing))}")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ: {_listing(mismatched)}")
    if problems:
        raise PretrainedWeightsError(f"{key} '{path}' ({folder}) does not fit {type(model).__name__}: " + "; ".join(problems))
    unexpected = info.get("unexpected_keys", [])
    if unexpected:
        logger.info("%s '%s': %d checkpoint entries not used (%s)", key, path, len(unexpected), _listing(sorted(unexpected)))
    return model.float().eval()


def prefixed_state(state: Dict[str, Tensor], mapping: Dict[str, str]) -> Dict[str, Tensor]:
    """Rename the keys of a transformers state dict: each key that starts with one of
    ``mapping``'s prefixes gets that prefix replaced (first match, ``""`` matches every key);
    keys matching none are dropped."""
    out: Dict[str, Tensor] = {}
    for k, v in state.items():
        for src, dst in mapping.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = v
                break
    return out


def hf_checkpoint_state_dict(path: str, model: nn.Module, key: str = "MODEL.WEIGHTS") -> Dict[str, Tensor]:
    """The weights of a transformers checkpoint with ``model``'s key names.

    Dispatches on ``config.json``'s ``model_type`` through ``HF_CHECKPOINT_CONVERTERS``.

    Raises:
        FileNotFoundError: unresolvable name (see ``resolve_hf``).
        PretrainedWeightsError: no converter for the checkpoint's model type, or a loading error.
    """
    folder = resolve_hf(path, key=key)
    model_type = hf_checkpoint_config(folder).get("model_type", "")
    fn: Optional[Callable] = HF_CHECKPOINT_CONVERTERS.get(model_type)
    if fn is None:
        raise PretrainedWeightsError(
            f"{key} '{path}': transformers checkpoints of model_type '{model_type}' are not "
            f"supported (supported: {sorted(HF_CHECKPOINT_CONVERTERS)})"
        )
    logger.info("%s '%s': transformers '%s' checkpoint %s", key, path, model_type, folder)
    return fn(folder, model, key)
