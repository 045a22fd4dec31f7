"""State-dict comparison shared by the checkpointer (``bcd.engine``) and the teacher loader
(``bcd.distill``): it lives here, below both, so neither imports the other."""
from __future__ import annotations

from typing import Any, Dict

import torch

__all__ = ["state_dict_mismatch"]


def state_dict_mismatch(model_state: Dict[str, torch.Tensor], ckpt_state: Dict[str, Any], n: int = 5) -> str:
    """Why ``ckpt_state`` does not load strictly into a model with ``model_state``: the first
    ``n`` missing, unexpected and mis-shaped keys, or '' when it fits."""
    missing = [k for k in model_state if k not in ckpt_state]
    unexpected = [k for k in ckpt_state if k not in model_state]
    shapes = [
        f"{k} (checkpoint {tuple(ckpt_state[k].shape)}, model {tuple(v.shape)})"
        for k, v in model_state.items()
        if k in ckpt_state and isinstance(ckpt_state[k], torch.Tensor)
        and tuple(ckpt_state[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:n])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:n])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:n])})")
    return "; ".join(parts)
