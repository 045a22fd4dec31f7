"""Two CPU processes (Gloo) through launch(): same weights as one process with twice the batch,
distributed evaluation, and torch.distributed helpers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import engine_toy as T
from bcd.engine import launch

# Two processes average their gradients (all-reduce in float32): the weights differ from one
# process's only by rounding, accumulated over the iterations.
ATOL = 1e-5


def _final(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]


def _evals(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(l)["toy/mse"] for l in f if "toy/mse" in l]


def test_two_gloo_processes_match_one_process_with_double_batch(tmp_path):
    opts = {"SOLVER.MAX_ITER": 12, "SOLVER.CHECKPOINT_PERIOD": 0, "TEST.EVAL_PERIOD": 0,
            "SOLVER.WARMUP_ITERS": 2}
    one = str(tmp_path / "one")
    T.train_main(T.parse_args(["--num-gpus", "0"] + T.base_opts(
        one, **opts, **{"SOLVER.IMS_PER_BATCH": 8})))
    two = str(tmp_path / "two")
    # No CUDA here: --num-gpus 2 runs two CPU processes with Gloo.
    args = T.parse_args(["--num-gpus", "2"] + T.base_opts(
        two, **opts, **{"SOLVER.IMS_PER_BATCH": 8}))
    launch(T.train_main, 2, dist_url="auto", args=(args,))

    a, b = _final(one), _final(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=ATOL)
    torch.manual_seed(7)  # SEED + rank 0: the initial weights of both runs
    init = T.ToyRegressor(None).state_dict()  # the weights really moved: the test can fail
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 100 * ATOL

    # Distributed evaluation (4 images per rank, gathered) equals the single-process one.
    assert _evals(two)[-1] == pytest.approx(_evals(one)[-1], rel=1e-4)
    log = open(os.path.join(two, "log.txt")).read()
    assert "World size: 2" in log
    assert os.path.isfile(os.path.join(two, "log.txt.rank1"))


def _comm_worker(out_dir):
    from bcd.data.build import InferenceSampler, TrainingSampler
    from bcd.utils import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    gathered = comm.all_gather({"rank": rank})
    reduced = comm.reduce_dict({"a": torch.tensor(float(rank + 1)), "b": torch.tensor(2.0 * rank)})
    to_main = comm.gather(rank * 10)
    seed = comm.shared_random_seed()
    local = list(InferenceSampler(7))
    stream = []
    it = iter(TrainingSampler(5, seed=3))
    for _ in range(6):
        stream.append(next(it))
    result = {
        "rank": rank, "world": world, "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(), "gathered": gathered,
        "reduced": {k: v.item() for k, v in reduced.items()}, "to_main": to_main,
        "seed": seed, "local": local, "stream": stream,
    }
    comm.synchronize()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_comm_helpers_and_sharded_samplers_on_two_processes(tmp_path):
    launch(_comm_worker, 2, dist_url="auto", args=(str(tmp_path),))
    r = [json.load(open(tmp_path / f"rank{i}.json")) for i in range(2)]
    for i in range(2):
        assert (r[i]["rank"], r[i]["world"], r[i]["local_rank"], r[i]["local_size"]) == (i, 2, i, 2)
        assert r[i]["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert r[0]["reduced"] == {"a": 1.5, "b": 1.0}  # averages of (1, 2) and (0, 2)
    assert r[0]["to_main"] == [0, 10] and r[1]["to_main"] == []
    assert r[0]["seed"] == r[1]["seed"]
    # Inference: each of the 7 indices exactly once, in contiguous shards.
    assert r[0]["local"] == [0, 1, 2, 3] and r[1]["local"] == [4, 5, 6]
    # Training: the ranks interleave the single-process stream.
    from bcd.data.build import TrainingSampler

    single = TrainingSampler(5, seed=3, rank=0, world_size=1)
    it = iter(single)
    ref = [list(next(it)) for _ in range(12)]
    assert [list(x) for x in r[0]["stream"]] == ref[0::2]
    assert [list(x) for x in r[1]["stream"]] == ref[1::2]


@pytest.mark.slow
def test_torchrun_entry_point(tmp_path):
    """``torchrun`` starts the processes; launch() joins them through env://."""
    out = str(tmp_path / "torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(os.path.dirname(__file__), "engine_toy.py"),
           "--num-gpus", "2"] + T.base_opts(out, **{"SOLVER.MAX_ITER": 6, "TEST.EVAL_PERIOD": 0})
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:  # never leave the launcher and its workers behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert "World size: 2" in open(os.path.join(out, "log.txt")).read()
    assert os.path.isfile(os.path.join(out, "log.txt.rank1"))
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000005.pth"


@pytest.mark.slow
def test_resume_is_exact_with_two_processes(tmp_path, monkeypatch):
    """Per-rank data shards, RNG states and sampler positions are restored on --resume."""
    opts = {"SOLVER.MAX_ITER": 12, "SOLVER.CHECKPOINT_PERIOD": 6, "TEST.EVAL_PERIOD": 0,
            "SOLVER.WARMUP_ITERS": 2}
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    launch(T.train_main, 2, dist_url="auto",
           args=(T.parse_args(["--num-gpus", "2"] + T.base_opts(straight, **opts)),))
    monkeypatch.setenv("TOY_STOP_AT_ITER", "8")  # dies after the checkpoint of iteration 5
    with pytest.raises(Exception, match="stopped at iteration 8"):
        launch(T.train_main, 2, dist_url="auto",
               args=(T.parse_args(["--num-gpus", "2"] + T.base_opts(resumed, **opts)),))
    assert open(os.path.join(resumed, "last_checkpoint")).read() == "model_0000005.pth"
    monkeypatch.delenv("TOY_STOP_AT_ITER")
    launch(T.train_main, 2, dist_url="auto",
           args=(T.parse_args(["--num-gpus", "2", "--resume"] + T.base_opts(resumed, **opts)),))
    a, b = _final(straight), _final(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
