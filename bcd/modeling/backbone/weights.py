"""Load a local ImageNet-pretrained file with torchvision key names into one of our backbones.

Nothing is downloaded: ``MODEL.BACKBONE.WEIGHTS`` names a file on disk (e.g. torchvision's
``resnet101-63fe2227.pth``, which torchvision itself fetches from
``https://download.pytorch.org/models/``). Our backbones rename torchvision's modules (``layer1``
becomes ``res2``), so each backbone gives a function mapping a torchvision key to ours (or to
``None`` for keys it does not use, such as the classifier ``fc.*``).
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

__all__ = ["load_torchvision_weights", "read_state_dict", "PretrainedWeightsError"]

logger = logging.getLogger(__name__)

# Printed with a missing-file error: where the files named in our configs come from.
_WHERE = (
    "Pretrained backbone files are not downloaded by bcd: copy torchvision's file (e.g. "
    "resnet101-63fe2227.pth from https://download.pytorch.org/models/, or the file that "
    "`torchvision.models.resnet101(weights='IMAGENET1K_V1')` caches under "
    "~/.cache/torch/hub/checkpoints/) to that path, or set MODEL.BACKBONE.WEIGHTS \"\" to train "
    "from random initialisation."
)
_MAX_LISTED = 8


class PretrainedWeightsError(RuntimeError):
    """A pretrained file that does not fit the backbone (keys or shapes)."""


def read_state_dict(path: str) -> Dict[str, Tensor]:
    """Read a state dict from ``path`` (a plain state dict, or one under "state_dict" / "model").

    Raises:
        FileNotFoundError: naming the file and how to obtain it.
        PretrainedWeightsError: when the file holds no tensor dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.BACKBONE.WEIGHTS: file '{path}' does not exist. {_WHERE}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have many types; name the file in any case
        raise PretrainedWeightsError(f"Cannot read pretrained weights '{path}': {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(
            f"Pretrained weights '{path}' hold no state dict of tensors (got {type(obj).__name__})"
        )
    return obj


def _listing(keys: List[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return shown + more


def load_torchvision_weights(
    module: nn.Module,
    path: str,
    key_map: Callable[[str], Optional[str]],
    hint: str = "",
) -> None:
    """Copy the tensors of ``path`` into ``module`` after renaming them with ``key_map``.

    Every entry of ``module.state_dict()`` must be filled and every mapped key of the file must
    exist in ``module`` with the same shape; otherwise nothing is loaded and the error names the
    file and the offending keys. ``num_batches_tracked`` counters are not required on either side
    (FrozenBN has none; they carry no weights).

    Args:
        module: the backbone to fill.
        path: local file with torchvision key names.
        key_map: torchvision key -> our key, or ``None`` to skip the entry (classifier).
        hint: a sentence appended to shape errors (e.g. why width-multiplied nets cannot load).

    Raises:
        FileNotFoundError, PretrainedWeightsError.
    """
    source = read_state_dict(path)
    mapped: Dict[str, Tensor] = {}
    for k, v in source.items():
        new_k = key_map(k)
        if new_k is not None:
            mapped[new_k] = v

    target = module.state_dict()
    is_counter = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    missing = [k for k in target if k not in mapped and not is_counter(k)]
    unexpected = [k for k in mapped if k not in target and not is_counter(k)]
    mismatched = [
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in mapped and tuple(mapped[k].shape) != tuple(target[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys of the model are not in the file: {_listing(missing)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} keys of the file (after renaming) are not in the model: "
            f"{_listing(unexpected)}"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ: {_listing(mismatched)}")
    if problems:
        msg = f"Pretrained weights '{path}' do not fit {type(module).__name__}: " + "; ".join(
            problems
        )
        if hint:
            msg += ". " + hint
        raise PretrainedWeightsError(msg)

    to_load = {k: v for k, v in mapped.items() if k in target}
    module.load_state_dict(to_load, strict=False)
    logger.info("Loaded %d pretrained tensors from %s", len(to_load), path)
