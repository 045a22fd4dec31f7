"""Trainer loop, hooks protocol, loss checks, events, evaluator dispatch, setup helpers."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import engine_toy as T
from bcd.engine import (
    DefaultTrainer,
    EvalHook,
    HookBase,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
)
from bcd.evaluation import DatasetEvaluator, DatasetEvaluators, build_evaluator, flatten_results_dict
from bcd.utils.events import EventStorage, JSONWriter, get_event_storage


class LossModel(nn.Module):
    """Returns the loss entries given by ``make(w, iteration)``."""

    def __init__(self, make):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.make = make

    def forward(self, batch):
        return self.make(self.w, get_event_storage().iter)


class Recorder(HookBase):
    def __init__(self, log):
        self.log = log

    def before_train(self):
        self.log.append("before_train")

    def after_train(self):
        self.log.append(f"after_train@{self.trainer.iter}")

    def before_step(self):
        self.log.append(f"before_step@{self.trainer.iter}")

    def after_step(self):
        self.log.append(f"after_step@{self.trainer.iter}")


def _trainer(make, lr=0.1):
    model = LossModel(make)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return SimpleTrainer(model, itertools_repeat(), opt), model


def itertools_repeat():
    while True:
        yield [{}]


def test_sum_of_loss_entries_is_optimised_and_others_only_logged():
    # d(loss_a + loss_b)/dw = 2w + 1; "accuracy" is not a loss and must not be summed.
    make = lambda w, it: {"loss_a": (w ** 2).sum(), "loss_b": w.sum(), "accuracy": torch.tensor(7.0)}
    trainer, model = _trainer(make)
    log = []
    trainer.register_hooks([Recorder(log)])
    trainer.train(0, 2)
    w0 = torch.tensor([1.0, 2.0])
    w1 = w0 - 0.1 * (2 * w0 + 1)
    w2 = w1 - 0.1 * (2 * w1 + 1)
    assert torch.allclose(model.w.detach(), w2)
    assert log == ["before_train", "before_step@0", "after_step@0", "before_step@1",
                   "after_step@1", "after_train@2"]
    latest = trainer.storage.latest()
    assert latest["total_loss"][0] == pytest.approx((w1 ** 2).sum().item() + w1.sum().item())
    assert latest["accuracy"][0] == 7.0


class TwoOptimizerModel(nn.Module):
    """``w`` trains on ``loss`` (the main SGD); ``v`` declares an Adam of its own on ``fit``."""

    def __init__(self, make):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.v = nn.Parameter(torch.tensor([0.5, -1.0]))
        self.make = make

    def forward(self, batch):
        return self.make(self.w, self.v, get_event_storage().iter)

    def extra_optimizers(self):
        from bcd.solver import OptimizerSpec

        return {"side": OptimizerSpec(params=(self.v,), objective=("fit",), optimizer="Adam", lr=0.1,
                                      betas=(0.9, 0.99))}


def _two_optimizer_trainer(make):
    from bcd.solver import build_extra_optimizers, build_optimizer

    model = TwoOptimizerModel(make)
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 0.1, 0.0, 0.0
    main = build_optimizer(cfg, model)
    return SimpleTrainer(model, itertools_repeat(), main, extra_optimizers=build_extra_optimizers(cfg, model)), model


def test_extra_optimizer_steps_its_parameters_on_its_objective_only():
    # loss = |w|^2 (main SGD, lr 0.1); fit = |v - 3|^2 (Adam lr 0.1, betas 0.9/0.99), skipped at
    # iteration 1 where it is 0
    make = lambda w, v, it: {"loss": (w ** 2).sum(), "fit": ((v - 3) ** 2).sum() * (0.0 if it == 1 else 1.0)}
    trainer, model = _two_optimizer_trainer(make)
    assert [id(p) for g in trainer.optimizer.param_groups for p in g["params"]] == [id(model.w)]
    trainer.train(0, 3)
    w = torch.tensor([1.0, 2.0])
    for _ in range(3):
        w = w - 0.1 * 2 * w
    assert torch.allclose(model.w.detach(), w)
    v = nn.Parameter(torch.tensor([0.5, -1.0]))
    ref = torch.optim.Adam([v], lr=0.1, betas=(0.9, 0.99))
    for it in range(3):
        if it == 1:
            continue  # objective 0 everywhere: no step (Adam would move v by its moments)
        ref.zero_grad()
        ((v - 3) ** 2).sum().backward()
        ref.step()
    torch.testing.assert_close(model.v.detach(), v.detach(), rtol=0, atol=1e-7)
    state = trainer.extra_optimizers["side"].optimizer.state_dict()
    assert int(state["state"][0]["step"]) == 2
    assert set(trainer.state_dict()) == {"optimizer", "optimizer.side"}


def test_objectives_that_reach_each_others_parameters_are_refused():
    # the side objective reaches w (a main parameter)
    trainer, _ = _two_optimizer_trainer(lambda w, v, it: {"loss": (w ** 2).sum(), "fit": (v * w).sum()})
    with pytest.raises(RuntimeError, match=r"objective of optimizer 'side' \(\['fit'\]\) reaches 1 parameters of the main optimizer \(w\)"):
        trainer.train(0, 1)
    # the main objective reaches v (the side optimizer's)
    trainer, model = _two_optimizer_trainer(lambda w, v, it: {"loss": (w * v).sum(), "fit": (v ** 2).sum()})
    with pytest.raises(RuntimeError, match=r"main objective .* reaches 1 parameters of optimizer 'side' \(v\)"):
        trainer.train(0, 1)
    assert torch.equal(model.w.detach(), torch.tensor([1.0, 2.0]))  # refused before any update
    # a missing objective entry names the optimizer
    trainer, _ = _two_optimizer_trainer(lambda w, v, it: {"loss": (w ** 2).sum()})
    with pytest.raises(KeyError, match="Optimizer 'side' minimises the loss entries \\['fit'\\]"):
        trainer.train(0, 1)


def test_extra_optimizer_declarations_are_checked():
    from bcd.solver import OptimizerSpec, extra_optimizer_specs

    m = TwoOptimizerModel(None)
    m.extra_optimizers = lambda: {"a": OptimizerSpec(params=(m.v,), objective=("loss_fit",))}
    with pytest.raises(ValueError, match="start with 'loss'"):
        extra_optimizer_specs(m)
    m.extra_optimizers = lambda: {"a": OptimizerSpec(params=(m.v,), objective=("x",)),
                                  "b": OptimizerSpec(params=(m.v,), objective=("y",))}
    with pytest.raises(ValueError, match="both optimizers 'a' and 'b'"):
        extra_optimizer_specs(m)
    m.extra_optimizers = lambda: {"a": OptimizerSpec(params=(nn.Parameter(torch.zeros(1)),), objective=("x",))}
    with pytest.raises(ValueError, match="not a trainable parameter"):
        extra_optimizer_specs(m)


def test_non_finite_entry_raises_before_the_update():
    def make(w, it):
        bad = torch.tensor(float("inf")) if it == 1 else torch.tensor(0.0)
        return {"loss_a": w.sum(), "loss_kd_boundary": w.sum() * 0 + bad}

    trainer, model = _trainer(make)
    log = []
    trainer.register_hooks([Recorder(log)])
    with pytest.raises(FloatingPointError, match=r"iteration=1: loss_kd_boundary=inf"):
        trainer.train(0, 5)
    # Only iteration 0 updated the weights; after_train still ran (writers flush).
    assert torch.allclose(model.w.detach(), torch.tensor([0.9, 1.9]))
    assert log[-1] == "after_train@1"


def test_loss_dict_without_loss_entry_is_an_error():
    trainer, _ = _trainer(lambda w, it: {"total": w.sum()})
    with pytest.raises(KeyError, match="starts with 'loss'"):
        trainer.train(0, 1)


def test_default_trainer_hook_order_and_model_hooks(cfg, tmp_path):
    cfg.merge_from_list(T.base_opts(str(tmp_path)))
    trainer = DefaultTrainer(cfg)
    types = [type(h) for h in trainer._hooks]
    assert types == [IterationTimer, LRScheduler, T.StepCounter, PeriodicCheckpointer, EvalHook,
                     PeriodicWriter]


def test_auto_scale_workers(cfg):
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 16, 0.02, 1000
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.TEST.EVAL_PERIOD = (600, 800), 100, 200
    cfg.SOLVER.CHECKPOINT_PERIOD = 500
    new = DefaultTrainer.auto_scale_workers(cfg, 2)
    assert (new.SOLVER.IMS_PER_BATCH, new.SOLVER.MAX_ITER, new.SOLVER.WARMUP_ITERS) == (4, 4000, 400)
    assert new.SOLVER.BASE_LR == pytest.approx(0.005)
    assert tuple(new.SOLVER.STEPS) == (2400, 3200)
    assert (new.TEST.EVAL_PERIOD, new.SOLVER.CHECKPOINT_PERIOD) == (800, 2000)
    assert cfg.SOLVER.MAX_ITER == 1000  # the input is not modified
    assert DefaultTrainer.auto_scale_workers(cfg, 8) is cfg


def test_argument_parser_flags():
    args = default_argument_parser().parse_args(
        ["--config-file", "a.yaml", "--resume", "--eval-only", "--num-gpus", "4",
         "--num-machines", "2", "--machine-rank", "1", "--dist-url", "tcp://h:1234",
         "SOLVER.IMS_PER_BATCH", "8", "KD.LOSSES", "['A']"]
    )
    assert (args.config_file, args.resume, args.eval_only, args.num_gpus) == ("a.yaml", True, True, 4)
    assert (args.num_machines, args.machine_rank, args.dist_url) == (2, 1, "tcp://h:1234")
    assert args.opts == ["SOLVER.IMS_PER_BATCH", "8", "KD.LOSSES", "['A']"]
    defaults = default_argument_parser().parse_args([])
    assert (defaults.num_gpus, defaults.resume, defaults.opts) == (1, False, [])


def test_default_setup_seeds_per_rank_and_writes_config(cfg, tmp_path):
    cfg.OUTPUT_DIR, cfg.SEED = str(tmp_path), 11
    default_setup(cfg, None)
    assert torch.initial_seed() == 11  # SEED + rank 0
    assert (tmp_path / "config.yaml").read_text() == cfg.dump()
    assert (tmp_path / "log.txt").exists()


def test_event_storage_and_json_writer(tmp_path):
    with pytest.raises(RuntimeError, match="EventStorage"):
        get_event_storage()
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path), window_size=3)
    with EventStorage(0) as storage:
        for it, v in enumerate([5.0, 1.0, 3.0, 100.0]):
            storage.iter = it
            storage.put_scalar("loss", v)
            if it == 2:
                storage.put_scalar("eval/AP", 40.0, smoothing_hint=False)
                writer.write()
        writer.write()
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    # iteration 2: median of (5, 1, 3); iteration 3: median of (1, 3, 100).
    assert rows == [{"iteration": 2, "loss": 3.0, "eval/AP": 40.0}, {"iteration": 3, "loss": 3.0}]


class Fixed(DatasetEvaluator):
    def __init__(self, task, value):
        self.task, self.value = task, value

    def evaluate(self):
        return OrderedDict({self.task: {"m": self.value}})


def test_evaluators_merge_flatten_and_dispatch(cfg):
    merged = DatasetEvaluators([Fixed("a", 1.0), Fixed("b", 2.0)]).evaluate()
    assert flatten_results_dict(merged) == {"a/m": 1.0, "b/m": 2.0}
    with pytest.raises(KeyError, match="'a'"):
        DatasetEvaluators([Fixed("a", 1.0), Fixed("a", 2.0)]).evaluate()
    assert type(build_evaluator(cfg, "toy_val")).__name__ == "ToyEvaluator"
    from bcd.data import MetadataCatalog

    MetadataCatalog.get("toy_unknown_type").set(evaluator_type="nope")
    with pytest.raises(KeyError, match="toy_unknown_type.*nope"):
        build_evaluator(cfg, "toy_unknown_type")
    with pytest.raises(KeyError, match="no evaluator_type"):
        build_evaluator(cfg, "toy_train")


def test_fresh_run_starts_from_the_seeds_random_state(cfg, tmp_path):
    """Paired runs (tools/evidence.py): whatever a model draws while it is built (a Distiller's
    teacher and KD modules), a fresh run with the same SEED starts iteration 0 from the same random
    state, so its dropout masks and random augmentations are those of the plain run."""
    states = []
    for extra_draws in (0, 1000):
        cfg_i = cfg.clone()
        cfg_i.merge_from_list(T.base_opts(str(tmp_path / f"run{extra_draws}")))
        cfg_i.SEED = 7
        trainer = DefaultTrainer(cfg_i)
        torch.rand(extra_draws)  # what building KD modules would draw
        trainer.resume_or_load(resume=False)
        states.append((torch.get_rng_state(), torch.rand(3)))
    assert torch.equal(states[0][0], states[1][0]) and torch.equal(states[0][1], states[1][1])
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), states[0][1])
