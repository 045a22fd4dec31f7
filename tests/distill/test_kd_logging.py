"""The one training-step path of distillation (issue 10 items 3-5, issue 8 "logging"):

* what metrics.json holds for a KD loss is honest: ``kd/<x>/raw`` equals the loss recomputed by
  hand from the same batch, ``kd/<loss>/weight`` is the scheduled weight of that iteration, and
  ``loss_kd_<x> = raw × weight`` on the same line (all three unsmoothed);
* ``KD.LOG_GRAD_RATIO``: ``‖∇KD‖ / ‖∇task‖`` on the student backbone equals the ratio of two
  separate backward passes, only every PERIOD iterations, without touching ``.grad``;
* feature recorders have hooks only inside the Distiller's training forward;
* ``KD.<LOSS>.MASK`` is decided by the Distiller alone; losses without it get no mask;
* ``bcd.modeling`` builds plain models only; ``bcd.distill.build_model`` the Distiller.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from bcd.distill import build_model
from bcd.distill.losses import KDContext
from bcd.engine.hooks import PeriodicWriter
from bcd.engine.train_loop import HookBase, SimpleTrainer
from bcd.structures import ImageBatch
from bcd.utils.events import EventStorage, JSONWriter

from .conftest import make_inputs, tiny_cfg


def _kd_cfg(teacher_files, losses=("PixelKD",)):
    c = tiny_cfg(0.25)
    c.KD.LOSSES = list(losses)
    c.KD.TEACHER.CONFIG_FILE, c.KD.TEACHER.WEIGHTS = teacher_files
    c.KD.PIXEL_KD.TEMPERATURE = 2.0
    c.KD.PIXEL_KD.WEIGHT = 3.0
    c.KD.PIXEL_KD.SCHEDULE.NAME = "linear_decay"  # a weight that changes every iteration
    return c


def _pixel_kd_by_hand(s, t, valid, tau):
    """τ² · mean over valid pixels of KL(softmax(t/τ) ‖ softmax(s/τ)) over classes, written with
    ``F.kl_div`` (not the code under test)."""
    kl = F.kl_div(F.log_softmax(s.double() / tau, 1), F.log_softmax(t.double() / tau, 1),
                  reduction="none", log_target=True).sum(1)
    return float((kl * valid).sum() / valid.sum() * tau * tau)


class _Loader:
    def __iter__(self):
        seed = 0
        while True:
            yield make_inputs(seed=seed)
            seed += 1


def test_logged_raw_value_is_the_loss_of_the_same_batch(teacher_files, tmp_path):
    torch.manual_seed(0)
    model = build_model(_kd_cfg(teacher_files))
    model.train()
    captured = {}
    model.student.sem_seg_head.predictor.register_forward_hook(
        lambda m, i, o: captured.__setitem__("s", o.detach().clone()))
    model.teacher.sem_seg_head.predictor.register_forward_hook(
        lambda m, i, o: captured.__setitem__("t", o.detach().clone()))
    expected = {}

    class Capture(HookBase):  # recompute the loss by hand after each step
        def after_step(self):
            batch = model.student.preprocess(make_inputs(seed=self.trainer.iter))
            valid = batch.valid_mask(tuple(captured["s"].shape[-2:]), 255)
            expected[self.trainer.iter] = _pixel_kd_by_hand(captured["s"], captured["t"], valid, 2.0)

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, _Loader(), opt)
    trainer.register_hooks([Capture(), PeriodicWriter([JSONWriter(str(tmp_path / "metrics.json"))], 1)])
    trainer.train(0, 3)

    records = [json.loads(l) for l in open(tmp_path / "metrics.json") if l.strip()]
    lines = {r["iteration"]: r for r in records}
    for it in range(3):
        line = lines[it]
        weight = 3.0 * (1 - it / 20)  # linear decay over SOLVER.MAX_ITER = 20
        assert line["kd/pixel/weight"] == pytest.approx(weight)
        # fp32 (code) vs float64 (by hand) on a small KL: agreement to 1e-4 relative
        assert line["kd/pixel/raw"] == pytest.approx(expected[it], rel=1e-4)
        # the three are written alike (value of the iteration), so the ratio is exact
        assert line["loss_kd_pixel"] == pytest.approx(line["kd/pixel/raw"] * weight, rel=1e-5)
    assert int(model.kd_iteration) == 2  # the iteration came from the trainer's storage


def test_grad_ratio_equals_two_separate_backward_passes(teacher_files):
    c = _kd_cfg(teacher_files)
    c.KD.LOG_GRAD_RATIO.ENABLED = True
    c.KD.LOG_GRAD_RATIO.PERIOD = 2
    torch.manual_seed(0)
    model = build_model(c)
    model.train()
    inputs = make_inputs()
    with EventStorage(0):
        torch.manual_seed(5)  # dropout masks
        out = model(inputs)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad, not .backward
    params = [p for p in model.student.backbone.parameters() if p.requires_grad]

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in params]).double()

    with EventStorage(0):
        torch.manual_seed(5)  # the same forward again
        again = model(inputs)
    g_task = grads(again["loss_sem_seg"])
    g_kd = grads(again["loss_kd_pixel"])
    assert float(out["kd/grad_ratio"]) == pytest.approx(float(g_kd.norm() / g_task.norm()), rel=1e-4)
    assert float(out["kd/grad_norm/task"]) == pytest.approx(float(g_task.norm()), rel=1e-4)
    cos = float(g_task @ g_kd / (g_task.norm() * g_kd.norm()))
    assert float(out["kd/grad_cosine"]) == pytest.approx(cos, rel=1e-3, abs=1e-6)
    with EventStorage(1):  # not a multiple of PERIOD: no extra backward, no key
        assert "kd/grad_ratio" not in model(inputs)


def test_recorders_hook_only_inside_the_training_forward(teacher_files):
    torch.manual_seed(0)
    model = build_model(_kd_cfg(teacher_files))
    s_mod = model.student.sem_seg_head.predictor
    t_mod = model.teacher.sem_seg_head.predictor
    seen = []
    # A loss observes the hooks while it runs (inside the Distiller's forward).
    loss = model.kd_losses["pixel"]
    orig = loss.forward
    loss.forward = lambda *a: (seen.append((len(s_mod._forward_hooks), len(t_mod._forward_hooks))), orig(*a))[1]
    assert len(s_mod._forward_hooks) == 0 and len(t_mod._forward_hooks) == 0
    model.train()
    model(make_inputs())
    assert seen == [(1, 1)]
    assert len(s_mod._forward_hooks) == 0 and len(t_mod._forward_hooks) == 0
    model.eval()
    with torch.no_grad():
        model(make_inputs(1))  # evaluation records nothing
    assert model.student_recorder._outputs == {} and len(s_mod._forward_hooks) == 0


def test_mask_is_decided_by_the_distiller_only(teacher_files):
    c = _kd_cfg(teacher_files, ("PixelKD", "ChannelWiseDistillation"))
    c.KD.CWD.MASK = False
    model = build_model(c)
    assert model.masks == {"pixel": True, "cwd": False}
    assert "MASK" not in c.KD.PKD and "MASK" not in c.KD.FGD and "MASK" not in c.KD.LD
    # the context's mask: padding and ignored labels when on, all True when off
    sem = torch.tensor([[[0, 255, 1, 1], [1, 1, 1, 1]], [[2, 2, 2, 255], [255, 255, 255, 255]]])
    batch = ImageBatch(tensor=torch.zeros(2, 3, 2, 4), image_sizes=[(2, 4), (1, 3)], sem_seg=sem)
    ctx = KDContext(batch, batch, None, None, {}, 0, 10, ignore_value=255)
    on = ctx.valid_mask((2, 4))
    assert on.tolist() == [[[True, False, True, True], [True, True, True, True]],
                           [[True, True, True, False], [False, False, False, False]]]
    ctx.mask = False
    assert ctx.valid_mask((2, 4)).all()
    # padding only (no labels)
    assert batch.valid_mask((2, 4)).tolist()[1] == [[True, True, True, False], [False] * 4]


def test_plain_builder_refuses_kd_configs(teacher_files):
    from bcd.distill import Distiller
    from bcd.modeling import build_model as build_plain

    c = _kd_cfg(teacher_files)
    with pytest.raises(ValueError, match=r"bcd\.distill\.build_model"):
        build_plain(c)
    assert isinstance(build_model(c), Distiller)
    c.KD.LOSSES = []
    assert not isinstance(build_model(c), Distiller)


def test_registry_lookup_names_the_key_and_the_known_names():
    from fvcore.common.registry import Registry

    from bcd.utils.registry import lookup

    reg = Registry("THING")
    reg.register(type("Alpha", (), {}))
    assert lookup(reg, "Alpha", "MODEL.THING").__name__ == "Alpha"
    with pytest.raises(KeyError, match=r"MODEL\.THING 'Beta' is not registered in THING; known: Alpha"):
        lookup(reg, "Beta", "MODEL.THING")
    with pytest.raises(KeyError, match=r"X 'b' is not registered; known: a"):
        lookup({"a": 1}, "b", "X")


def test_one_norm_factory():
    from torch import nn

    from bcd.distill.connectors import build_norm
    from bcd.modeling.backbone import get_norm

    assert build_norm is get_norm
    assert get_norm("GN", 32, min_group_channels=2).num_groups == 16  # GFL's narrow heads
    assert get_norm("GN", 48).num_groups == 16  # gcd(32, 48)
    assert get_norm("GN4", 12).num_groups == 4 and get_norm("GN4", 6).num_groups == 2
    assert isinstance(get_norm("", 4), nn.Identity)
    with pytest.raises(ValueError, match="GNx"):
        get_norm("GNx", 8)
