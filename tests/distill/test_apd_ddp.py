"""APD's teacher adapter with two CPU processes (Gloo) through ``create_ddp_model`` and the
trainer's step: rank 0's ``Tr_T`` is broadcast (by DDP, as every parameter), and its Adam step
(the trainer's extra optimizer) uses the gradient of ``L_soft`` averaged over the processes by
DDP, as the authors' code (``Tr_T`` wrapped in its own DDP) does."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
IGN = 255


def _cfg():
    from bcd.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.KD.APD.ADAPT_DIM = 8
    cfg.KD.APD.STUDENT_FEATURES, cfg.KD.APD.TEACHER_FEATURES = ["f"], ["f"]
    cfg.KD.APD.TEACHER_ADAPTER_LR = 1e-2
    cfg.SOLVER.BASE_LR = 0.1
    return cfg


class _Toy(nn.Module):
    """A 1x1-conv 'student' and the APD loss, as a Distiller would hold them."""

    def __init__(self, cfg):
        super().__init__()
        from bcd.distill.losses import FeatureShape
        from bcd.distill.losses.apd import APD

        self.student = nn.Conv2d(3, 6, 1)
        shape = lambda c: FeatureShape(c, 4, 4, (8, 8))  # noqa: E731
        self.apd = APD(cfg, {"f": shape(6)}, {"f": shape(10)})

    def forward(self, data):
        from bcd.distill.losses import KDContext
        from bcd.structures.image_batch import ImageBatch

        x, xt, lab_full = data
        batch = ImageBatch(torch.zeros(x.shape[0], 3, 8, 8), [(8, 8)] * x.shape[0], sem_seg=lab_full)
        ctx = KDContext(batch, batch, None, None, {}, 0, 10, ignore_value=IGN, mask=False)
        out = self.apd({"f": self.student(x)}, {"f": xt}, ctx)
        return {"loss": out["loss_kd_apd"] + out["loss_kd_apd_pa"], "apd_soft": out["apd_soft"]}

    def extra_optimizers(self):
        return {f"apd.{k}": v for k, v in self.apd.extra_optimizers().items()}


def _data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(2, 3, 4, 4, generator=g)
    xt = torch.randn(2, 10, 4, 4, generator=g)
    lab = torch.randint(0, 4, (2, 8, 8), generator=g)
    lab[:, :2] = IGN
    return x, xt, lab


def _worker(out_dir):
    from bcd.engine.defaults import create_ddp_model
    from bcd.engine.train_loop import SimpleTrainer
    from bcd.solver import build_extra_optimizers, build_optimizer
    from bcd.utils import comm
    from bcd.utils.events import EventStorage

    rank = comm.get_rank()
    torch.manual_seed(rank)  # different initial weights per rank: DDP's broadcast equalises them
    model = _Toy(_cfg())
    opt = build_optimizer(_cfg(), model)
    extra = build_extra_optimizers(_cfg(), model)
    ddp = create_ddp_model(model)
    init_tr_t = copy.deepcopy(model.apd.teacher_adapter.state_dict())
    trainer = SimpleTrainer(ddp, iter([_data(rank)]), opt, extra_optimizers=extra)
    with EventStorage(0):
        trainer.run_step()
    torch.save({"init": init_tr_t, "tr_t": model.apd.teacher_adapter.state_dict(),
                "student": model.student.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow  # two spawned processes: about a minute on an idle 2-core machine
def test_teacher_adapter_with_two_processes(tmp_path):
    sys.path.insert(0, HERE)
    try:
        import test_apd_ddp as W  # importable by name in the spawned processes

        from bcd.engine import launch

        launch(W._worker, 2, dist_url="auto", args=(str(tmp_path),))
    finally:
        sys.path.remove(HERE)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    for k in r[0]["tr_t"]:
        assert torch.equal(r[0]["init"][k], r[1]["init"][k])  # broadcast from rank 0
        assert torch.equal(r[0]["tr_t"][k], r[1]["tr_t"][k])
    for k in r[0]["student"]:
        assert torch.equal(r[0]["student"][k], r[1]["student"][k])
    # one process: Adam on the mean of both ranks' L_soft gradients from rank 0's initial Tr_T
    from bcd.distill.losses.apd import TeacherAdapter, apd_terms

    torch.manual_seed(0)
    ref = _Toy(_cfg())
    tr_t = ref.apd.teacher_adapter
    tr_t.load_state_dict(r[0]["init"])
    grads = []
    for rank in range(2):
        x, xt, lab_full = _data(rank)
        f_s = ref.apd.student_adapter(ref.student(x)).detach()
        lab = F.interpolate(lab_full[:, None].float(), size=(4, 4), mode="nearest")[:, 0].long()
        soft = apd_terms(f_s, tr_t(xt), lab, lab_full, 5)["soft"]
        grads.append(torch.autograd.grad(soft, list(tr_t.parameters())))
    opt = torch.optim.Adam(tr_t.parameters(), lr=1e-2, betas=(0.9, 0.99))
    for p, g0, g1 in zip(tr_t.parameters(), *grads):
        p.grad = (g0 + g1) / 2
    opt.step()
    assert isinstance(tr_t, TeacherAdapter)
    for k, v in tr_t.state_dict().items():
        torch.testing.assert_close(r[0]["tr_t"][k], v, rtol=0, atol=1e-6)
    # the step is far above the tolerance
    assert max((r[0]["tr_t"][k] - r[0]["init"][k]).abs().max().item() for k in r[0]["init"]) > 1e-3
