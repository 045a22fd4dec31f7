"""SLURM job steps: torchrun's variables derived from SLURM's (bcd/engine/launch.py)."""
import pytest

from bcd.engine.launch import expand_slurm_tasks_per_node, first_slurm_host, slurm_environment


def _step(**kw):
    env = {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
           "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_JOB_ID": "123456"}
    env.update(kw)
    return {k: v for k, v in env.items() if v is not None}


def test_two_nodes_four_tasks_each():
    assert slurm_environment(_step()) == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": str(29500 + 123456 % 10000),
    }


def test_explicit_master_and_step_values_win():
    env = _step(MASTER_ADDR="10.0.0.2", MASTER_PORT="40000", SLURM_STEP_TASKS_PER_NODE="2,2",
                SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="a1,a2", SLURM_PROCID="3")
    out = slurm_environment(env)
    assert (out["MASTER_ADDR"], out["MASTER_PORT"], out["WORLD_SIZE"], out["LOCAL_WORLD_SIZE"]) == (
        "10.0.0.2", "40000", "4", "2")


def test_not_a_multi_task_step():
    assert slurm_environment({}) is None
    assert slurm_environment(_step(SLURM_STEP_ID=None)) is None  # the batch script itself
    assert slurm_environment(_step(SLURM_STEP_NUM_TASKS="1", SLURM_NTASKS="1")) is None
    with pytest.raises(ValueError, match="SLURM"):
        slurm_environment(_step(SLURM_PROCID="x"))
    with pytest.raises(ValueError, match="NODELIST"):
        slurm_environment(_step(SLURM_JOB_NODELIST=None))


@pytest.mark.parametrize("nodelist,first", [("gpu[03-05,09],cpu1", "gpu03"), ("a1,a2", "a1"),
                                            ("node-7", "node-7"), ("n[1,4]", "n1")])
def test_first_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_launch_joins_through_env_under_srun(monkeypatch):
    import importlib
    import os

    L = importlib.import_module("bcd.engine.launch")  # the module (bcd.engine.launch is also a function)

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
              "GROUP_RANK"):
        # setenv first, so that monkeypatch records the variable and undoes what launch writes
        # (delenv of an absent variable records nothing: launch's values leaked into later tests,
        # whose train_net subprocesses then waited for a torchrun master at gpu07)
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    for k, v in _step().items():
        monkeypatch.setenv(k, v)
    seen = {}

    def fake(main_func, args, timeout):  # what torchrun-started processes run
        seen.update({k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")})
        return main_func(*args)

    monkeypatch.setattr(L, "_run_under_torchrun", fake)
    assert L.launch(lambda x: x * 2, 1, args=(21,)) == 42
    assert seen == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07"}


def test_launch_left_no_torchrun_variables_behind():
    # runs after the test above (file order): its environment was restored
    import os

    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "GROUP_RANK"} & set(os.environ)


# ------------------------------------------------------------------ uneven layouts (issue 22)
@pytest.mark.parametrize("value,counts", [("2,1(x2)", [2, 1, 1]), ("4(x2)", [4, 4]), ("3", [3]),
                                          ("1(x2),3,2(x1)", [1, 1, 3, 2]), (" 2 , 1(x3)", [2, 1, 1, 1])])
def test_tasks_per_node_expanded_per_node(value, counts):
    assert expand_slurm_tasks_per_node(value) == counts


@pytest.mark.parametrize("value", ["2,x", "2(3)", "(x2)", "", "2,,1"])
def test_malformed_tasks_per_node_names_the_variable(value):
    with pytest.raises(ValueError, match="SLURM_STEP_TASKS_PER_NODE"):
        expand_slurm_tasks_per_node(value, "SLURM_STEP_TASKS_PER_NODE")


# 4 tasks on 3 nodes, block distribution: node 0 ranks 0-1, node 1 rank 2, node 2 rank 3.
_UNEVEN = [  # (SLURM_PROCID, SLURM_NODEID, SLURM_LOCALID) -> (LOCAL_RANK, LOCAL_WORLD_SIZE)
    (0, 0, 0, 0, 2), (1, 0, 1, 1, 2), (2, 1, 0, 0, 1), (3, 2, 0, 0, 1)]


@pytest.mark.parametrize("with_ids", [True, False])
@pytest.mark.parametrize("rank,node,local,exp_local,exp_size", _UNEVEN)
def test_uneven_layout_gives_each_task_its_own_node_count(rank, node, local, exp_local, exp_size, with_ids):
    env = _step(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="4", SLURM_NTASKS="4",
                SLURM_STEP_TASKS_PER_NODE="2,1(x2)", SLURM_TASKS_PER_NODE="2,1(x2)",
                SLURM_NODEID=str(node) if with_ids else None,
                SLURM_LOCALID=str(local) if with_ids else None, SLURM_JOB_NODELIST="n[1-3]")
    out = slurm_environment(env)
    assert (out["LOCAL_RANK"], out["LOCAL_WORLD_SIZE"], out["GROUP_RANK"]) == (
        str(exp_local), str(exp_size), str(node))


def test_cyclic_distribution_uses_the_node_and_local_ids():
    # --distribution=cyclic on 2,1(x2): rank 3 is the second task of node 0
    env = _step(SLURM_PROCID="3", SLURM_STEP_NUM_TASKS="4", SLURM_STEP_TASKS_PER_NODE="2,1(x2)",
                SLURM_NODEID="0", SLURM_LOCALID="1")
    out = slurm_environment(env)
    assert (out["LOCAL_RANK"], out["LOCAL_WORLD_SIZE"], out["GROUP_RANK"]) == ("1", "2", "0")


def test_inconsistent_layout_is_refused_naming_the_variables():
    with pytest.raises(ValueError, match=r"SLURM_STEP_TASKS_PER_NODE '2,1' adds up to 3 tasks but the job step has 4"):
        slurm_environment(_step(SLURM_STEP_NUM_TASKS="4", SLURM_PROCID="0", SLURM_STEP_TASKS_PER_NODE="2,1"))
    with pytest.raises(ValueError, match=r"SLURM_PROCID 4 is outside the 4 tasks"):
        slurm_environment(_step(SLURM_STEP_NUM_TASKS="4", SLURM_PROCID="4", SLURM_STEP_TASKS_PER_NODE="2,2"))
    with pytest.raises(ValueError, match=r"SLURM_LOCALID 1 of task 2 is outside the 1 tasks of its node 1"):
        slurm_environment(_step(SLURM_STEP_NUM_TASKS="4", SLURM_PROCID="2", SLURM_NODEID="1",
                                SLURM_LOCALID="1", SLURM_STEP_TASKS_PER_NODE="2,1(x2)"))
    with pytest.raises(ValueError, match=r"SLURM_NODEID 3 is not among the 3 nodes"):
        slurm_environment(_step(SLURM_STEP_NUM_TASKS="4", SLURM_PROCID="3", SLURM_NODEID="3",
                                SLURM_LOCALID="0", SLURM_STEP_TASKS_PER_NODE="2,1(x2)"))


def _uneven_task(i, port, queue):
    """One srun task of the 2,1(x2) layout on this machine (Gloo): launch() as train_net calls it."""
    import os

    rank, node, local = _UNEVEN[i][:3]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR"):
        os.environ.pop(k, None)
    os.environ.update(SLURM_PROCID=str(rank), SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="4",
                      SLURM_STEP_TASKS_PER_NODE="2,1(x2)", SLURM_NODEID=str(node),
                      SLURM_LOCALID=str(local), SLURM_STEP_NODELIST="localhost",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    from bcd.engine import launch
    from bcd.utils import comm

    def report():
        import torch.distributed as dist

        group_size = dist.get_world_size(group=comm._LOCAL_PROCESS_GROUP)
        return comm.get_rank(), comm.get_local_rank(), comm.get_local_size(), group_size

    queue.put(launch(report, 1))


def test_uneven_layout_local_groups_in_real_processes():
    """Four srun-like processes, tasks per node 2,1(x2): the lone task on node 1 and on node 2
    has local rank 0 and local world size 1 (it was 1 and 2 before issue 22)."""
    import torch.multiprocessing as mp

    from bcd.engine.launch import find_free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = find_free_port()
    procs = [ctx.Process(target=_uneven_task, args=(i, port, queue)) for i in range(4)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [(0, 0, 2, 2), (1, 1, 2, 2), (2, 0, 1, 1), (3, 0, 1, 1)]
