"""APD (bcd/distill/losses/apd.py) against a brute-force numpy reference of the authors' code,
and its teacher adapter: its own optimizer (declared by the loss, built and stepped by the
trainer), gradient isolation, exclusion from the main optimizer, checkpoint state."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bcd.config import get_cfg
from bcd.distill.losses import KD_LOSS_REGISTRY, FeatureShape, KDContext
from bcd.distill.losses.apd import APD, TeacherAdapter, apd_terms
from bcd.engine.checkpoint import Checkpointer
from bcd.engine.train_loop import SimpleTrainer
from bcd.solver.build import build_extra_optimizers, build_optimizer, extra_optimizer_specs
from bcd.structures.image_batch import ImageBatch
from bcd.utils.events import EventStorage

IGN = 255


# ------------------------------------------------------------------ numpy reference
def _np_normalize(x, axis):
    n = np.sqrt((x * x).sum(axis=axis, keepdims=True))
    return x / np.maximum(n, 1e-12)


def _np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _np_upsample_ac(x, H, W):
    """Bilinear, align_corners=True, of a C×h×w array, one output pixel at a time."""
    C, h, w = x.shape
    out = np.zeros((C, H, W))
    for i in range(H):
        sy = i * (h - 1) / (H - 1) if H > 1 else 0.0
        y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for j in range(W):
            sx = j * (w - 1) / (W - 1) if W > 1 else 0.0
            x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                            + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
    return out


def reference(fs, ft, lab, lab_full, K, kappa=10.0, scope="gpu_batch"):
    """The code's CriterionKmeansInterWhole, pixel by pixel, in float64."""
    fs = _np_normalize(fs.astype(np.float64), 1)
    ft = _np_normalize(ft.astype(np.float64), 1)
    groups = [list(range(fs.shape[0]))] if scope == "gpu_batch" else [[i] for i in range(fs.shape[0])]
    ap, pa, soft = [], [], []
    for g in groups:
        classes = sorted({int(v) for n in g for v in lab[n].ravel() if v != IGN})
        if not classes:
            continue
        mu_s, mu_t = [], []
        for c in classes:
            vs = [fs[n, :, y, x] for n in g for y in range(lab.shape[1]) for x in range(lab.shape[2]) if lab[n, y, x] == c]
            vt = [ft[n, :, y, x] for n in g for y in range(lab.shape[1]) for x in range(lab.shape[2]) if lab[n, y, x] == c]
            mu_s.append(_np_normalize(np.mean(vs, 0), 0))
            mu_t.append(_np_normalize(np.mean(vt, 0), 0))
        mu_s, mu_t = np.stack(mu_s), np.stack(mu_t)
        kl_sum, count = 0.0, 0
        ce_sum, ce_n = 0.0, 0
        for n in g:
            a_s = kappa * np.einsum("chw,mc->mhw", fs[n], mu_s)
            a_t = kappa * np.einsum("chw,mc->mhw", ft[n], mu_t)
            lp_t, lp_s = _np_log_softmax(a_t, 0), _np_log_softmax(a_s, 0)
            kl_sum += (np.exp(lp_t) * (lp_t - lp_s)).sum()
            count += a_s.size
            full = np.zeros((K,) + a_t.shape[1:])  # absent classes: logit 0
            for m, c in enumerate(classes):
                full[c] = a_t[m]
            up = _np_upsample_ac(full, *lab_full.shape[1:])
            lsm = _np_log_softmax(up, 0)
            for y in range(up.shape[1]):
                for x in range(up.shape[2]):
                    if lab_full[n, y, x] != IGN:
                        ce_sum -= lsm[lab_full[n, y, x], y, x]
                        ce_n += 1
        ap.append(kl_sum / count)
        pa.append(0.5 * np.mean(1 - (mu_s * mu_t).sum(1)))
        soft.append(ce_sum / ce_n)
    if not ap:
        return 0.0, 0.0, 0.0
    return float(np.mean(ap)), float(np.mean(pa)), float(np.mean(soft))


def _inputs(seed=0, B=2, C=6, h=4, w=5, K=7):
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(B, C, h, w, generator=g, dtype=torch.float64)
    ft = torch.randn(B, C, h, w, generator=g, dtype=torch.float64)
    # classes 0..3 only (4..6 absent), image 1 lacks class 3, some ignore cells
    lab_full = torch.randint(0, 3, (B, 2 * h, 2 * w), generator=g)
    lab_full[0, :4, :4] = 3
    lab_full[0, -2:] = IGN
    lab_full[1, :, :3] = IGN
    lab = F.interpolate(lab_full[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    return fs, ft, lab, lab_full, K


@pytest.mark.parametrize("scope", ["gpu_batch", "per_image"])
def test_terms_match_brute_force_reference(scope):
    fs, ft, lab, lab_full, K = _inputs()
    out = apd_terms(fs, ft, lab, lab_full, K, 10.0, IGN, True, scope)
    ref = reference(fs.numpy(), ft.numpy(), lab.numpy(), lab_full.numpy(), K, 10.0, scope)
    assert out["ap"].item() == pytest.approx(ref[0], rel=1e-9, abs=1e-12)
    assert out["pa"].item() == pytest.approx(ref[1], rel=1e-9)
    assert out["soft"].item() == pytest.approx(ref[2], rel=1e-9)
    assert out["present"] == (4 if scope == "gpu_batch" else 4 + 3)


def test_absent_classes_compete_with_logit_zero():
    # One class present: L_ap is 0 (softmax over one channel), but L_soft is not, because the
    # K-1 absent classes keep logit 0 in the teacher's K-class layout.
    fs, ft, _, _, K = _inputs(seed=1)
    lab = torch.full((2, 4, 5), 2)
    out = apd_terms(fs, ft, lab, None, K, 10.0, IGN, True, "gpu_batch")
    assert out["ap"].item() == pytest.approx(0.0, abs=1e-12)
    a_t = 10.0 * torch.einsum("bchw,c->bhw", F.normalize(ft, dim=1),
                              F.normalize(F.normalize(ft, dim=1).mean((0, 2, 3)), dim=0))
    expected = (-(a_t - torch.logsumexp(torch.stack([a_t] + [torch.zeros_like(a_t)] * (K - 1)), 0))).mean()
    assert out["soft"].item() == pytest.approx(expected.item(), rel=1e-9)


def test_no_valid_label_gives_zero_and_no_nan():
    fs, ft, _, _, K = _inputs()
    fs.requires_grad_(True)
    lab = torch.full((2, 4, 5), IGN)
    out = apd_terms(fs, ft, lab, None, K, 10.0, IGN, True, "gpu_batch")
    for k in ("ap", "pa", "soft"):
        assert torch.isfinite(out[k]) and out[k].item() == 0.0
    (out["ap"] + out["pa"]).backward()
    assert torch.isfinite(fs.grad).all() and fs.grad.abs().sum() == 0


def test_identical_features_give_zero_ap_and_pa():
    fs, _, lab, lab_full, K = _inputs()
    out = apd_terms(fs, fs.clone(), lab, lab_full, K, 10.0, IGN, True, "gpu_batch")
    assert out["ap"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["pa"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["soft"].item() > 0


def test_bad_label_and_scope_raise():
    fs, ft, lab, _, K = _inputs()
    with pytest.raises(ValueError, match="SCOPE"):
        apd_terms(fs, ft, lab, None, K, scope="image")
    lab[0, 0, 0] = K
    with pytest.raises(ValueError, match="outside"):
        apd_terms(fs, ft, lab, None, K)


# ------------------------------------------------------------------ the loss module
def _cfg(**node):
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    cfg.KD.APD.ADAPT_DIM = 8
    for k, v in node.items():
        cfg.KD.APD[k] = v
    return cfg


def _module(cfg, c_s=6, c_t=10):
    torch.manual_seed(0)
    shape = lambda c: FeatureShape(c, 4, 5, (32, 40))  # noqa: E731
    return APD(cfg, {"sem_seg_head.feature": shape(c_s)}, {"sem_seg_head.feature": shape(c_t)})


def _ctx(lab_full):
    B, H, W = lab_full.shape
    batch = ImageBatch(torch.zeros(B, 3, H, W), [(H, W)] * B, sem_seg=lab_full)
    return KDContext(batch, batch, None, None, {}, 0, 10, ignore_value=IGN, **_mask_kw())


def _mask_kw():
    # KDContext names its mask switch `mask` (newer) or `use_label_mask`.
    import dataclasses

    names = {f.name for f in dataclasses.fields(KDContext)}
    return {"mask": False} if "mask" in names else {"use_label_mask": False}


def _feats(seed=0, c_s=6, c_t=10):
    g = torch.Generator().manual_seed(seed)
    _, _, _, lab_full, _ = _inputs(seed)
    xs = torch.randn(2, c_s, 4, 5, generator=g, requires_grad=True)
    xt = torch.randn(2, c_t, 4, 5, generator=g)
    return xs, xt, lab_full


class _Holder(torch.nn.Module):
    """The APD module as a Distiller holds it: forward returns the loss's entries, and
    ``extra_optimizers()`` publishes its declaration under ``apd.<name>``."""

    def __init__(self, m):
        super().__init__()
        self.apd = m

    def forward(self, batch):
        xs, xt, lab_full = batch
        out = self.apd({"sem_seg_head.feature": xs}, {"sem_seg_head.feature": xt}, _ctx(lab_full))
        return dict(out, loss_zero=out["loss_kd_apd"] * 0)  # a main objective the trainer can sum

    def extra_optimizers(self):
        return {f"apd.{k}": v for k, v in self.apd.extra_optimizers().items()}


def _trainer(m, batches):
    """One process's trainer over ``m``: the main SGD (lr 0) and the optimizers ``m`` declares."""
    holder = _Holder(m)
    main = torch.optim.SGD([p for p in holder.parameters()
                            if not any(p is q for q in m.teacher_adapter.parameters())], lr=0.0)
    return SimpleTrainer(holder, iter(batches), main, extra_optimizers=build_extra_optimizers(get_cfg(), holder))


def _run(trainer, steps):
    with EventStorage(0):
        for i in range(steps):
            trainer.iter = i
            trainer.run_step()


def test_registered_and_built_from_config():
    assert KD_LOSS_REGISTRY.get("APD") is APD
    m = _module(_cfg())
    assert isinstance(m.teacher_adapter, TeacherAdapter)
    assert m.student_adapter[0].in_channels == 6 and m.student_adapter[2].out_channels == 10
    spec = m.extra_optimizers()["teacher_adapter"]
    assert spec.objective == ("apd_soft",)
    assert [id(p) for p in spec.params] == [id(p) for p in m.teacher_adapter.parameters()]
    opt = build_extra_optimizers(get_cfg(), _Holder(m))["apd.teacher_adapter"].optimizer
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert g["lr"] == 1e-5 and tuple(g["betas"]) == (0.9, 0.99) and g["weight_decay"] == 0.0
    assert _module(_cfg(TEACHER_ADAPTER=False)).extra_optimizers() == {}
    with pytest.raises(ValueError, match="KD.APD.SCOPE"):
        _module(_cfg(SCOPE="batch"))


def test_forward_matches_terms_and_the_trainer_steps_teacher_adapter_like_adam():
    m = _module(_cfg())
    m.train()
    xs, xt, lab_full = _feats()
    before = copy.deepcopy(m.teacher_adapter)
    # expected: the code's order (Tr_T forward, L_soft, Adam step on Tr_T only)
    ref_opt = torch.optim.Adam(before.parameters(), lr=1e-5, betas=(0.9, 0.99))
    lab = F.interpolate(lab_full[:, None].float(), size=(4, 5), mode="nearest")[:, 0].long()
    with torch.no_grad():
        f_s = m.student_adapter(xs)
    f_t = before(xt)
    ref = apd_terms(f_s, f_t, lab, lab_full, 7, 10.0, IGN, True, "gpu_batch")
    ref["soft"].backward()
    ref_opt.step()

    out = m({"sem_seg_head.feature": xs}, {"sem_seg_head.feature": xt}, _ctx(lab_full))
    assert set(out) == {"loss_kd_apd", "loss_kd_apd_pa", "apd_soft"}
    assert m.aux_loss_keys == ["apd_soft"]
    assert out["loss_kd_apd"].item() == pytest.approx(10.0 * ref["ap"].item(), rel=1e-5)
    assert out["loss_kd_apd_pa"].item() == pytest.approx(10.0 * ref["pa"].item(), rel=1e-5)
    assert out["apd_soft"].item() == pytest.approx(ref["soft"].item(), rel=1e-5)
    assert out["apd_soft"].requires_grad  # the objective of Tr_T's optimizer, with its graph
    # the forward alone changes nothing; one trainer step gives the reference Adam step
    for p, q in zip(m.teacher_adapter.parameters(), _module(_cfg()).teacher_adapter.parameters()):
        assert torch.equal(p, q)
    trainer = _trainer(m, [(xs, xt, lab_full)])
    _run(trainer, 1)
    for p, q in zip(m.teacher_adapter.parameters(), before.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    moved = max((p - q).abs().max().item() for p, q in
                zip(m.teacher_adapter.parameters(), _module(_cfg()).teacher_adapter.parameters()))
    assert moved > 1e-6  # the step did happen (Adam moves each weight by about lr)
    state = trainer.extra_optimizers["apd.teacher_adapter"].optimizer.state_dict()["state"]
    assert int(state[0]["step"]) == 1


def test_student_losses_do_not_reach_teacher_adapter_and_soft_reaches_only_it():
    m = _module(_cfg())
    m.train()
    xs, xt, lab_full = _feats()
    out = m({"sem_seg_head.feature": xs}, {"sem_seg_head.feature": xt}, _ctx(lab_full))
    (out["loss_kd_apd"] + out["loss_kd_apd_pa"]).backward()
    assert all(p.grad is None for p in m.teacher_adapter.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.student_adapter.parameters())
    assert xs.grad.abs().sum() > 0
    # L_soft's graph: Tr_T only, nothing of the student side
    f_s = m.student_adapter(xs)
    f_t = m.teacher_adapter(xt)
    lab = F.interpolate(lab_full[:, None].float(), size=(4, 5), mode="nearest")[:, 0].long()
    soft = apd_terms(f_s, f_t, lab, lab_full, 7)["soft"]
    student = [xs] + list(m.student_adapter.parameters())
    grads = torch.autograd.grad(soft, student + list(m.teacher_adapter.parameters()), allow_unused=True)
    assert all(g is None for g in grads[:len(student)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(student):])


def test_no_step_without_labels_and_none_outside_the_trainer():
    m = _module(_cfg())
    xs, xt, lab_full = _feats()
    m.train()
    init = copy.deepcopy(m.teacher_adapter.state_dict())
    trainer = _trainer(m, [(xs, xt, torch.full_like(lab_full, IGN))])
    with EventStorage(0):
        trainer.run_step()
    opt = trainer.extra_optimizers["apd.teacher_adapter"].optimizer
    assert opt.state_dict()["state"] == {}  # L_soft = 0 on every process: no Adam step
    for k, v in m.teacher_adapter.state_dict().items():
        assert torch.equal(v, init[k])
    with torch.no_grad():
        m({"sem_seg_head.feature": xs}, {"sem_seg_head.feature": xt}, _ctx(lab_full))
    m.eval()
    m({"sem_seg_head.feature": xs}, {"sem_seg_head.feature": xt}, _ctx(lab_full))
    for k, v in m.teacher_adapter.state_dict().items():
        assert torch.equal(v, init[k])


def test_teacher_adapter_optimiser_state_round_trips_through_a_checkpoint(tmp_path, caplog):
    m = _module(_cfg())
    m.train()
    xs, xt, lab_full = _feats()
    trainer = _trainer(m, [(xs, xt, lab_full)] * 3)
    _run(trainer, 2)
    opts = {"optimizer": trainer.optimizer,
            "optimizer.apd.teacher_adapter": trainer.extra_optimizers["apd.teacher_adapter"].optimizer}
    Checkpointer(trainer.model, str(tmp_path), save_to_disk=True, **opts).save("ckpt")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=False)
    assert saved["optimizer.apd.teacher_adapter"]["state"]
    assert not any("extra_state" in k for k in saved["model"])

    fresh = _module(_cfg())
    fresh.train()
    trainer2 = _trainer(fresh, [(xs, xt, lab_full)])
    opts2 = {"optimizer": trainer2.optimizer,
             "optimizer.apd.teacher_adapter": trainer2.extra_optimizers["apd.teacher_adapter"].optimizer}
    Checkpointer(trainer2.model, str(tmp_path), **opts2).load(str(tmp_path / "ckpt.pth"))
    a = opts["optimizer.apd.teacher_adapter"].state_dict()
    b = opts2["optimizer.apd.teacher_adapter"].state_dict()
    for i in a["state"]:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][i][k], b["state"][i][k])
    # the next step is identical
    _run(trainer, 1)
    _run(trainer2, 1)
    for p, q in zip(m.teacher_adapter.parameters(), fresh.teacher_adapter.parameters()):
        assert torch.equal(p, q)
    # a checkpoint without the adapter's optimizer: said, and the optimizer starts afresh
    del saved["optimizer.apd.teacher_adapter"]
    torch.save(saved, tmp_path / "old.pth")
    with caplog.at_level("WARNING"):
        Checkpointer(trainer2.model, str(tmp_path), **opts2).load(str(tmp_path / "old.pth"))
    assert "holds no state for 'optimizer.apd.teacher_adapter'" in caplog.text


def test_main_optimizer_leaves_out_the_teacher_adapter():
    m = _module(_cfg())
    wrapper = _Holder(m)
    specs = extra_optimizer_specs(wrapper)
    assert list(specs) == ["apd.teacher_adapter"]
    cfg = get_cfg()
    opt = build_optimizer(cfg, wrapper)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in m.teacher_adapter.parameters()}
    assert {id(p) for p in m.student_adapter.parameters()} <= in_opt


def test_scope_per_image_and_mask_switches_reach_the_terms():
    xs, xt, lab_full = _feats()
    lab = F.interpolate(lab_full[:, None].float(), size=(4, 5), mode="nearest")[:, 0].long()
    res = {}
    for scope in ("gpu_batch", "per_image"):
        m = _module(_cfg(SCOPE=scope))
        m.train()
        with torch.no_grad():
            ref = apd_terms(m.student_adapter(xs), m.teacher_adapter(xt), lab, lab_full, 7, scope=scope)
        out = m({"sem_seg_head.feature": xs}, {"sem_seg_head.feature": xt}, _ctx(lab_full))
        assert out["loss_kd_apd"].item() == pytest.approx(10 * ref["ap"].item(), rel=1e-5)
        res[scope] = out["loss_kd_apd"].item()
    assert res["gpu_batch"] != pytest.approx(res["per_image"])
