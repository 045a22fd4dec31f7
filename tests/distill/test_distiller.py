"""The Distiller with two tiny SemanticSegmentors: teacher isolation, gradients, errors,
state, deployment."""
import os

import pytest
import torch

from bcd.distill import build_model

from .conftest import make_inputs, tiny_cfg

ALL = ["BoundaryDistillation", "ContextDistillation", "PixelKD", "ChannelWiseDistillation",
       "StructuredKD", "CIRKD", "FitNet"]


def kd_cfg(teacher_files, losses=ALL):
    c = tiny_cfg(0.25)
    c.KD.LOSSES = list(losses)
    c.KD.TEACHER.CONFIG_FILE, c.KD.TEACHER.WEIGHTS = teacher_files
    c.KD.FITNET.STUDENT_FEATURES = ["backbone.res4"]
    c.KD.FITNET.TEACHER_FEATURES = ["backbone.res4"]
    return c


@pytest.fixture(scope="module")
def distiller(teacher_files):
    torch.manual_seed(1)
    return build_model(kd_cfg(teacher_files))


def test_teacher_is_frozen_hidden_and_loaded(distiller, teacher_files):
    m = distiller
    assert not any(k.startswith("teacher") or "._teacher" in k for k in m.state_dict())
    t_params = {id(p) for p in m.teacher.parameters()}
    assert not t_params & {id(p) for p in m.parameters()}
    assert all(not p.requires_grad for p in m.teacher.parameters())
    m.train()
    assert m.student.training and not m.teacher.training
    sd = torch.load(teacher_files[1])["model"]
    assert all(torch.equal(v, sd[k]) for k, v in m.teacher.state_dict().items())
    assert m.lr_multipliers == {"kd_modules": 10.0}
    # connectors / HFA / heads live under kd_modules; the student HFA is shared by both BCD losses
    shared = [n for n, _ in m.named_parameters() if n.startswith("kd_modules.shared")]
    assert shared and m.kd_modules["boundary"].hfa_s is m.kd_modules["context"].hfa_s


def test_training_step_losses_and_gradients(distiller):
    m = distiller
    m.train()
    m.zero_grad(set_to_none=True)
    losses = m(make_inputs())
    expected = {"loss_sem_seg", "loss_kd_boundary", "loss_kd_boundary_teacher_head", "loss_kd_context",
                "loss_kd_pixel", "loss_kd_cwd", "loss_kd_structured", "loss_kd_cirkd", "loss_kd_fitnet"}
    assert expected <= set(losses)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    no_grad = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    fit = m.kd_modules["fitnet"].connectors[0].proj[0].weight
    assert fit.grad.abs().sum() > 0
    # recorded tensors are released after the step
    assert m.student_recorder._outputs == {} and m.teacher_recorder._outputs == {}
    # the weights applied are the schedules' (BCD decays, others constant)
    assert float(losses["kd/boundary/weight"]) == pytest.approx(10.0) and float(losses["kd/pixel/weight"]) == 1.0


def test_scheduled_weight_multiplies_entries(distiller):
    m = distiller
    m.train()
    torch.manual_seed(0)
    m.set_iteration(0)
    with torch.no_grad():
        a = m(make_inputs())
    m.set_iteration(10)  # max_iter 20 -> BCD weights halved
    torch.manual_seed(0)  # same dropout masks
    with torch.no_grad():
        b = m(make_inputs())
    m.set_iteration(0)
    # teacher-head aux loss is not scheduled
    assert float(b["loss_kd_boundary_teacher_head"]) == pytest.approx(float(a["loss_kd_boundary_teacher_head"]), rel=1e-4)
    assert float(b["kd/context/weight"]) == pytest.approx(25.0)
    assert float(b["loss_kd_pixel"]) == pytest.approx(float(a["loss_kd_pixel"]), rel=1e-3)


def test_eval_returns_student_outputs(distiller):
    m = distiller
    m.eval()
    inp = make_inputs(1)
    with torch.no_grad():
        out = m(inp)
        ref = m.student(inp)
    assert torch.allclose(out[0]["sem_seg"], ref[0]["sem_seg"])
    m.train()


def test_state_has_iteration_and_temperatures(distiller):
    sd = distiller.state_dict()
    assert "kd_iteration" in sd
    assert "kd_modules.boundary.temperature.tau" in sd and "kd_modules.context.temperature.tau" in sd


def test_deploy_model_loads_into_plain_student(distiller, tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": distiller.deploy_model().state_dict()}, path)
    plain = build_model(tiny_cfg(0.25))
    plain.load_state_dict(torch.load(path)["model"], strict=True)
    assert not any(k.startswith("kd_modules") for k in torch.load(path)["model"])


def test_teacher_weights_that_do_not_fit_are_a_clear_error(teacher_files, tmp_path):
    bad = tmp_path / "wrong.pth"
    torch.save({"model": build_model(tiny_cfg(0.25)).state_dict()}, bad)
    c = kd_cfg(teacher_files, ["PixelKD"])
    c.KD.TEACHER.WEIGHTS = str(bad)
    with pytest.raises(ValueError, match=r"wrong\.pth.*does not fit.*shape mismatches \(first: backbone"):
        build_model(c)
    c.KD.TEACHER.WEIGHTS = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(c)
    sd = torch.load(teacher_files[1])["model"]
    sd.pop(next(iter(sd)))
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, bad)  # a bare state dict is accepted as a format
    c.KD.TEACHER.WEIGHTS = str(bad)
    with pytest.raises(ValueError, match=r"missing keys .*unexpected keys \(first: extra\.weight"):
        build_model(c)


def test_wrong_feature_name_lists_closest(teacher_files):
    c = kd_cfg(teacher_files, ["PixelKD"])
    c.KD.PIXEL_KD.STUDENT_FEATURES = ["sem_seg_head.predicter"]
    with pytest.raises(KeyError, match=r"student has no module 'sem_seg_head.predicter'.*sem_seg_head.predictor"):
        build_model(c)
    c = kd_cfg(teacher_files, ["PixelKD", "NoSuchLoss"])
    with pytest.raises(KeyError, match="unknown loss 'NoSuchLoss'"):
        build_model(c)


def test_distiller_moves_teacher_with_to(distiller):
    distiller.to(torch.float64)
    try:
        assert next(distiller.teacher.parameters()).dtype == torch.float64
    finally:
        distiller.to(torch.float32)


def _steps(model, opt, batches, start):
    for i, inp in enumerate(batches):
        model.set_iteration(start + i)
        torch.manual_seed(100 + start + i)  # dropout masks depend on the step only
        losses = model(inp)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        for ctrl in model.temperatures().values():
            ctrl.step()


def test_state_dict_resume_is_exact(teacher_files):
    """Two steps, save model + optimizer state, two more steps == load into fresh objects and run
    the same two steps: the Distiller's state (KD modules, BN statistics, iteration, temperatures)
    is complete."""
    c = kd_cfg(teacher_files, ["BoundaryDistillation", "ContextDistillation", "FitNet"])
    c.KD.CONTEXT.TEMPERATURE.THRESHOLD = 0.0  # fires every step
    batches = [make_inputs(seed=s) for s in range(4)]
    torch.manual_seed(0)
    a = build_model(c)
    a.train()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9)
    _steps(a, opt_a, batches[:2], 0)
    state = {"model": {k: v.clone() for k, v in a.state_dict().items()},
             "opt": __import__("copy").deepcopy(opt_a.state_dict())}
    _steps(a, opt_a, batches[2:], 2)

    torch.manual_seed(123)  # different init: everything must come from the state
    b = build_model(c)
    b.train()
    b.load_state_dict(state["model"])
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9)
    opt_b.load_state_dict(state["opt"])
    _steps(b, opt_b, batches[2:], 2)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.kd_modules["context"].temperature.value == pytest.approx(1.05 ** 4)


def test_optimizer_gives_kd_modules_their_lr_multiplier(distiller):
    from bcd.solver import build_optimizer

    cfg = distiller.cfg.clone()
    cfg.defrost()
    cfg.SOLVER.BASE_LR = 0.01
    opt = build_optimizer(cfg, distiller)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    kd = distiller.kd_modules["fitnet"].connectors[0].proj[0].weight
    stem = next(distiller.student.parameters())
    assert lr_of[id(kd)] == pytest.approx(0.1) and lr_of[id(stem)] == pytest.approx(0.01)
    assert not {id(p) for p in distiller.teacher.parameters()} & set(lr_of)


def test_object_segmentor_student_keeps_its_backbone_multiplier_and_config_rules_need_no_prefix(tmp_path):
    """The Distiller merges its student's own LR multipliers (an ObjectSegmentor's backbone x0.1)
    with the KD modules' (prefixing them itself), and SOLVER.LR_MULTIPLIERS name the student's
    parameters as in a plain config."""
    from bcd.config import get_cfg
    from bcd.modeling import build_model as build_plain
    from bcd.solver import build_optimizer

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    base = os.path.join(root, "configs/demo/skd_demo_sod_inference.yaml")
    tcfg = get_cfg()
    tcfg.merge_from_file(base)
    torch.manual_seed(0)
    teacher_w = tmp_path / "teacher.pth"
    torch.save({"model": build_plain(tcfg).state_dict()}, teacher_w)
    cfg = get_cfg()
    cfg.merge_from_file(base)
    cfg.MODEL.OBJECT_SEG.BACKBONE_LR_MULTIPLIER = 0.1
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.LR_MULTIPLIERS = [["decoder.predictor", 3.0]]  # the student's name, no "student."
    cfg.KD.LOSSES = ["FitNet"]
    cfg.KD.LR_MULTIPLIER = 2.0
    cfg.KD.FITNET.STUDENT_FEATURES = cfg.KD.FITNET.TEACHER_FEATURES = ["backbone.res5"]
    cfg.KD.TEACHER.CONFIG_FILE, cfg.KD.TEACHER.WEIGHTS = base, str(teacher_w)
    cfg.KD.SHAPE_PROBE_SIZE = [48, 48]
    model = build_model(cfg)
    assert model.lr_multipliers == {"kd_modules": 2.0, "student.backbone": 0.1}
    opt = build_optimizer(cfg, model)
    lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr[id(named["student.backbone.res2.0.conv1.weight"])] == pytest.approx(0.005)  # x0.1 kept
    assert lr[id(named["student.decoder.predictor.weight"])] == pytest.approx(0.15)  # config rule
    assert lr[id(named["student.decoder.fuse.0.weight"])] == pytest.approx(0.05)
    kd = [p for n, p in named.items() if n.startswith("kd_modules.")]
    assert kd and all(lr[id(p)] == pytest.approx(0.1) for p in kd)
    # the same plain config: the same student rates
    plain = build_plain(_without_kd(cfg))
    lr_p = {n: g["lr"] for g in build_optimizer(cfg, plain).param_groups for p in g["params"]
            for n, q in plain.named_parameters() if q is p}
    for n, v in lr_p.items():
        assert lr[id(named["student." + n])] == pytest.approx(v), n
    # an old-style "student."-prefixed rule is refused with the way to write it
    cfg.SOLVER.LR_MULTIPLIERS = [["student.decoder", 3.0]]
    with pytest.raises(ValueError, match="write 'decoder', without 'student.'"):
        build_optimizer(cfg, model)


def _without_kd(cfg):
    c = cfg.clone()
    c.KD.LOSSES = []
    return c
