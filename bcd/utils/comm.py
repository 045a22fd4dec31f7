"""Distributed helpers (Detectron2's ``comm``): rank, world size, barriers, gathers, reductions.

Every function works without an initialised process group (a single process): it then behaves
as a world of size 1, so the same code runs in tests, on one GPU and under ``torchrun``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

# Process group of the processes on this machine; set by ``bcd.engine.launch``.
_LOCAL_PROCESS_GROUP: Optional[dist.ProcessGroup] = None
_LOCAL_SIZE: Optional[int] = None


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes taking part in training (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """Rank of this process among the processes of its machine (its GPU index)."""
    if not is_distributed():
        return 0
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_rank(group=_LOCAL_PROCESS_GROUP)
    import os

    return int(os.environ.get("LOCAL_RANK", get_rank()))


def get_local_size() -> int:
    """Number of processes on this machine."""
    if not is_distributed():
        return 1
    if _LOCAL_SIZE is not None:
        return _LOCAL_SIZE
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", get_world_size()))


def is_main_process() -> bool:
    """True on global rank 0 (the process that writes files and logs to the console)."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier over all processes; a no-op in a single process."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        # NCCL needs to know the device of this rank for the barrier's dummy tensor.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather(data: Any) -> List[Any]:
    """Gather any picklable object from every process.

    Returns:
        A list of ``world_size`` objects, the one of rank ``r`` at index ``r`` (on every rank).
    """
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    output: List[Any] = [None] * world_size
    dist.all_gather_object(output, data)
    return output


def gather(data: Any, dst: int = 0) -> List[Any]:
    """Gather a picklable object from every process to rank ``dst``.

    Returns:
        On ``dst``: the list of ``world_size`` objects; on the other ranks: ``[]``.
    """
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    if dist.get_backend() == dist.Backend.NCCL:
        # gather_object is not supported by NCCL on every version; all_gather_object is.
        out = all_gather(data)
        return out if get_rank() == dst else []
    output: Optional[List[Any]] = [None] * world_size if get_rank() == dst else None
    dist.gather_object(data, output, dst=dst)
    return output if output is not None else []


def shared_random_seed() -> int:
    """A random integer in ``[0, 2**31)`` that is the same on every process (rank 0's draw)."""
    seed = int(np.random.randint(2**31))
    return int(all_gather(seed)[0])


def reduce_dict(input_dict: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """Sum (or average) a dict of scalar tensors over all processes, for logging.

    Args:
        input_dict: ``{name: 0-dim tensor}``, the same keys on every process.
        average: divide the sum by the world size.

    Returns:
        The reduced dict. Only rank 0's result is meaningful (``dist.reduce`` to rank 0).
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())  # the same order on every rank
        values = torch.stack([input_dict[k].detach().float().reshape(()) for k in names])
        dist.reduce(values, dst=0)
        if get_rank() == 0 and average:
            values /= world_size
        return {k: v for k, v in zip(names, values)}


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over all processes (a copy; ``x`` itself without a process group).

    Loss normalisers (e.g. the number of positive anchors) go through it so that every rank
    divides by the same value."""
    world_size = get_world_size()
    if world_size == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size
