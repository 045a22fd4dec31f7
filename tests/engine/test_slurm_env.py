"""SLURM job steps: torchrun's variables derived from SLURM's (bcd/engine/launch.py)."""
import pytest

from bcd.engine.launch import first_slurm_host, slurm_environment


def _step(**kw):
    env = {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
           "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_JOB_ID": "123456"}
    env.update(kw)
    return {k: v for k, v in env.items() if v is not None}


def test_two_nodes_four_tasks_each():
    assert slurm_environment(_step()) == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07", "MASTER_PORT": str(29500 + 123456 % 10000),
    }


def test_explicit_master_and_step_values_win():
    env = _step(MASTER_ADDR="10.0.0.2", MASTER_PORT="40000", SLURM_STEP_TASKS_PER_NODE="2,2",
                SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="a1,a2")
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

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in _step().items():
        monkeypatch.setenv(k, v)
    seen = {}

    def fake(main_func, args, timeout):  # what torchrun-started processes run
        seen.update({k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")})
        return main_func(*args)

    monkeypatch.setattr(L, "_run_under_torchrun", fake)
    assert L.launch(lambda x: x * 2, 1, args=(21,)) == 42
    assert seen == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07"}
