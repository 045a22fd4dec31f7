"""``launch``: run a function in one process per GPU (NCCL), per CPU process (Gloo), on several
machines (``--dist-url``), or inside processes started by ``torchrun``.
"""
from __future__ import annotations

import logging
import os
import re
import socket
from datetime import timedelta
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..utils import comm

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "expand_slurm_tasks_per_node",
    "find_free_port",
    "first_slurm_host",
    "launch",
    "slurm_environment",
    "started_by_torchrun",
]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def find_free_port() -> int:
    """A TCP port free on this machine now (for single-machine ``dist_url="auto"``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def started_by_torchrun() -> bool:
    """True when ``torchrun`` (or another launcher) set ``RANK`` / ``WORLD_SIZE`` /
    ``LOCAL_RANK`` / ``MASTER_ADDR`` for this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,09],cpu1"`` -> ``"gpu03"``,
    ``"a1,a2"`` -> ``"a1"`` (what ``scontrol show hostnames`` prints first).

    Raises:
        ValueError: for an empty list.
    """
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("SLURM_JOB_NODELIST is empty")
    m = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist)
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]  # zero padding kept: "03" stays "03"
    return prefix + first


def expand_slurm_tasks_per_node(value: str, variable: str = "SLURM_TASKS_PER_NODE") -> List[int]:
    """The task count of every node of a SLURM ``*_TASKS_PER_NODE`` value, in node order:
    ``"2,1(x2)"`` -> ``[2, 1, 1]``, ``"4(x2)"`` -> ``[4, 4]``, ``"3"`` -> ``[3]`` (the format
    of the sbatch / srun manual pages: ``<count>[(x<repetitions>)]`` items separated by commas).

    Raises:
        ValueError: naming ``variable`` and the value when an item has another form.
    """
    counts: List[int] = []
    for item in value.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise ValueError(
                f"{variable} '{value}': item '{item}' is not '<tasks>' or '<tasks>(x<nodes>)' "
                f"(e.g. '2,1(x2)': 2 tasks on the first node, 1 on each of the next two)"
            )
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def slurm_environment(env: Mapping[str, str]) -> Optional[Dict[str, str]]:
    """torchrun's variables for a process started by ``srun`` (one task per GPU), or None when
    this is no multi-task SLURM job step (then ``--num-gpus`` / torchrun apply as usual).

    Reads ``SLURM_PROCID`` (global rank), ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``; the
    world size), ``SLURM_STEP_TASKS_PER_NODE`` (else ``SLURM_TASKS_PER_NODE``; tasks per node,
    expanded per node: ``"2,1(x2)"`` is 2, 1 and 1 tasks), ``SLURM_NODEID`` (this task's node
    among them) and ``SLURM_LOCALID`` (its rank on the node); and ``MASTER_ADDR`` /
    ``MASTER_PORT`` when set, else the first host of ``SLURM_STEP_NODELIST`` /
    ``SLURM_JOB_NODELIST`` and port ``29500 + SLURM_JOB_ID % 10000`` (one port per job).
    Without ``SLURM_NODEID`` / ``SLURM_LOCALID`` they follow from the rank under SLURM's
    default block distribution (consecutive ranks fill a node). Uneven layouts get the count
    of this task's own node: the task alone on its node has local rank 0 and local world
    size 1 (detectron2#3446). Only inside a job *step* (``SLURM_STEP_ID`` set, as under srun):
    a batch script running python directly is one process, whatever ``SLURM_NTASKS`` says.

    Returns:
        ``{"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
        "MASTER_ADDR", "MASTER_PORT"}`` (``GROUP_RANK``: the node's index, as torchrun names it).

    Raises:
        ValueError: naming the variable when one is malformed, missing or inconsistent with
            the others.
    """
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return None
    world = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if world is None:
        return None
    try:
        world_size = int(world)
        rank = int(env["SLURM_PROCID"])
        node = int(env["SLURM_NODEID"]) if env.get("SLURM_NODEID") else None
        local_rank = int(env["SLURM_LOCALID"]) if env.get("SLURM_LOCALID") else None
    except ValueError as e:
        raise ValueError(f"Malformed SLURM task variables: {e}") from e
    if world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise ValueError(f"SLURM_PROCID {rank} is outside the {world_size} tasks of the job step")
    per_node_var = "SLURM_STEP_TASKS_PER_NODE" if env.get("SLURM_STEP_TASKS_PER_NODE") else "SLURM_TASKS_PER_NODE"
    per_node = env.get(per_node_var) or str(world_size)
    counts = expand_slurm_tasks_per_node(per_node, per_node_var)
    if sum(counts) != world_size:
        raise ValueError(
            f"{per_node_var} '{per_node}' adds up to {sum(counts)} tasks but the job step has "
            f"{world_size} (SLURM_STEP_NUM_TASKS / SLURM_NTASKS)"
        )
    if node is None:  # block distribution: node i holds ranks sum(counts[:i]) ..
        node = next(i for i in range(len(counts)) if rank < sum(counts[: i + 1]))
    if not 0 <= node < len(counts):
        raise ValueError(f"SLURM_NODEID {node} is not among the {len(counts)} nodes of {per_node_var} '{per_node}'")
    if local_rank is None:
        local_rank = rank - sum(counts[:node])
    if not 0 <= local_rank < counts[node]:
        raise ValueError(
            f"SLURM_LOCALID {local_rank} of task {rank} is outside the {counts[node]} tasks of its "
            f"node {node} ({per_node_var} '{per_node}')"
        )
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise ValueError("A SLURM job step without MASTER_ADDR nor SLURM_JOB_NODELIST")
        addr = first_slurm_host(nodelist)
    port = env.get("MASTER_PORT") or str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 10000)
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(counts[node]), "GROUP_RANK": str(node),
            "MASTER_ADDR": addr, "MASTER_PORT": port}


def _backend(use_cuda: bool) -> str:
    return "nccl" if use_cuda else "gloo"


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run ``main_func(*args)`` in every process of the job.

    * Under ``torchrun`` (``RANK`` etc. in the environment) this process joins the group given
      by the environment (``env://``) and runs ``main_func``; the other arguments are ignored.
      A process started by ``srun`` in a multi-task SLURM job step is treated the same way,
      with torchrun's variables derived from SLURM's (:func:`slurm_environment`).
    * Else, with ``num_machines * num_gpus_per_machine > 1``, it starts ``num_gpus_per_machine``
      processes on this machine (spawn) with global ranks ``machine_rank * num_gpus_per_machine
      + i``. With CUDA they use NCCL and one GPU each (asking for more GPUs than the machine
      has is an error); without CUDA they run on the CPU with Gloo, so multi-process training
      is testable on CPU.
    * Else ``main_func`` runs in this process, without a process group.

    Args:
        main_func: a function picklable by reference (defined at module level).
        num_gpus_per_machine: processes per machine (``--num-gpus``).
        num_machines, machine_rank: ``--num-machines``, ``--machine-rank``.
        dist_url: ``tcp://host:port`` of machine 0, reachable from every machine; ``"auto"``
            picks a free local port (one machine only).
        args: arguments of ``main_func``.
        timeout: timeout of collective operations.

    Returns:
        ``main_func``'s return value when it runs in this process (single process or torchrun);
        None after spawning.
    """
    if not started_by_torchrun():
        slurm = slurm_environment(os.environ)
        if slurm is not None:  # one process per task started by srun: torchrun's variables
            logger.info("SLURM job step: %s", " ".join(f"{k}={v}" for k, v in sorted(slurm.items())))
            os.environ.update(slurm)
    if started_by_torchrun():
        return _run_under_torchrun(main_func, args, timeout)

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)

    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError(
                "dist_url='auto' only works on one machine; give --dist-url tcp://host:port "
                "of machine 0 for several machines"
            )
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init may be unreliable across machines; prefer tcp://")

    use_cuda = torch.cuda.is_available()
    if use_cuda and torch.cuda.device_count() < num_gpus_per_machine:
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} asks for more GPUs than this machine has "
            f"({torch.cuda.device_count()})"
        )
    if not use_cuda:
        logging.getLogger("bcd").warning(
            f"{num_gpus_per_machine} processes requested and CUDA is not available: running "
            f"{num_gpus_per_machine} CPU processes with Gloo"
        )
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
              timeout, use_cuda),
        daemon=False,
        start_method="spawn",
    )
    return None


def _set_local_groups(node_of_rank: Sequence[Hashable], rank: int) -> None:
    """Create one process group per machine and keep this process's in ``comm``.

    ``node_of_rank[r]`` is the machine of global rank ``r`` (the same list on every rank:
    ``dist.new_group`` must be called by all ranks, in the same order). Machines may hold
    different numbers of processes (an uneven SLURM layout such as ``2,1(x2)``).
    """
    for node in dict.fromkeys(node_of_rank):  # first-seen order, identical on every rank
        ranks = [r for r, n in enumerate(node_of_rank) if n == node]
        group = dist.new_group(ranks)
        if node == node_of_rank[rank]:
            comm._LOCAL_PROCESS_GROUP = group
            comm._LOCAL_SIZE = len(ranks)


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Tuple,
    timeout: timedelta,
    use_cuda: bool,
) -> None:
    global_rank = machine_rank * num_per_machine + local_rank
    # Environment for code that reads it (e.g. the logger, libraries expecting torchrun's).
    os.environ.update(
        RANK=str(global_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(num_per_machine),
    )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:
        # Two CPU processes on a machine share its cores: avoid oversubscription.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    try:
        dist.init_process_group(
            backend=_backend(use_cuda), init_method=dist_url, world_size=world_size,
            rank=global_rank, timeout=timeout,
        )
    except Exception as e:
        raise RuntimeError(f"Process group initialisation failed with url {dist_url}: {e}") from e
    _set_local_groups([r // num_per_machine for r in range(world_size)], global_rank)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _join_local_group(local_rank: int) -> None:
    """Under torchrun / srun: group the processes by machine from what each one reports (its
    node index ``GROUP_RANK``, else its host name) and check that ``LOCAL_RANK`` (the CUDA
    device each process took) numbers the processes of every machine ``0..n-1`` in rank order,
    which is what ``comm.get_local_rank()`` returns."""
    node = os.environ.get("GROUP_RANK") or socket.gethostname()
    reports = comm.all_gather((node, local_rank))
    node_of_rank = [n for n, _ in reports]
    for n in dict.fromkeys(node_of_rank):
        ranks = [r for r, m in enumerate(node_of_rank) if m == n]
        locals_ = [reports[r][1] for r in ranks]
        if locals_ != list(range(len(ranks))):
            raise RuntimeError(
                f"Machine {n!r} runs global ranks {ranks} with LOCAL_RANK {locals_}: expected "
                f"{list(range(len(ranks)))} (one process per device, numbered in rank order)"
            )
    _set_local_groups(node_of_rank, dist.get_rank())


def _run_under_torchrun(main_func: Callable[..., Any], args: Tuple, timeout: timedelta) -> Any:
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=_backend(use_cuda), init_method="env://", timeout=timeout)
        _join_local_group(local_rank)
    try:
        return main_func(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
