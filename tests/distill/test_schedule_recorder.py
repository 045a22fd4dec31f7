"""Weight schedules, the temperature controller, the feature recorder and connectors."""
import pytest
import torch
from torch import nn

from bcd.config import get_cfg
from bcd.distill.connectors import Connector, align_spatial
from bcd.distill.recorder import FeatureRecorder, parse_feature_name
from bcd.distill.schedule import TemperatureController, WeightSchedule, build_weight_schedule


def test_linear_decay_first_and_last_iteration():
    s = WeightSchedule("linear_decay", 10.0, max_iter=100)
    assert s(0) == pytest.approx(10.0)
    assert s(99) == pytest.approx(10.0 / 100)
    assert s(50) == pytest.approx(5.0)


def test_constant_warmup_and_stop():
    s = WeightSchedule("constant", 2.0, max_iter=100, warmup_iters=4, stop_iter=90)
    assert [s(i) for i in range(5)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    assert s(89) == 2.0 and s(90) == 0.0 and s(99) == 0.0
    with pytest.raises(ValueError, match="Unknown KD schedule"):
        WeightSchedule("cosine", 1.0, 10)


def test_schedule_from_config_defaults():
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER = 10
    assert build_weight_schedule(cfg.KD.BOUNDARY, cfg.KD.SCHEDULE, 10).name == "linear_decay"
    assert build_weight_schedule(cfg.KD.PIXEL_KD, cfg.KD.SCHEDULE, 10).name == "constant"
    cfg.KD.SCHEDULE.STOP_ITER = 5
    assert build_weight_schedule(cfg.KD.PIXEL_KD, cfg.KD.SCHEDULE, 10)(5) == 0.0


def test_temperature_controller_maxprob_rule_and_state():
    c = TemperatureController(1.0, 1.05, "maxprob", 0.5)
    peaky = torch.tensor([[10.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    flat = torch.zeros(2, 3)
    taus = []
    for logits in (peaky, peaky, flat, peaky):
        c.observe(logits, dim=1)
        c.step()
        taus.append(c.value)
    assert taus == pytest.approx([1.05, 1.05 ** 2, 1.05 ** 2, 1.05 ** 3])
    assert all(b >= a for a, b in zip(taus, taus[1:]))  # never decreases
    d = TemperatureController()
    d.load_state_dict(c.state_dict())
    assert d.value == pytest.approx(1.05 ** 3) and int(d.num_updates) == 3
    # nothing observed -> no change
    assert not d.step() and d.value == pytest.approx(1.05 ** 3)


def test_temperature_controller_range_rule_and_masks():
    c = TemperatureController(1.0, 2.0, "range", threshold=3.0)
    x = torch.tensor([[0.0, 1.0, float("-inf")], [0.0, 100.0, 0.0]])
    c.observe(x, valid=torch.tensor([True, False]), dim=1)  # second row masked: range 1
    assert not c.step() and c.value == 1.0
    c.observe(x, dim=1)
    assert c.step() and c.value == 2.0


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 1)
        self.head = nn.Identity()

    def forward(self, x):
        y = self.body(x)
        return self.head({"p3": y, "lv": (y * 2, [y * 3])})


def test_recorder_dict_tuple_list_selection_and_release():
    net = _Net()
    rec = FeatureRecorder(net, ["body", "head[p3]", "head[lv][0]", "head[lv][1][0]"], "student")
    x = torch.randn(1, 3, 2, 2)
    net(x)
    y = net.body(x)
    got = rec.collect()
    assert torch.allclose(got["body"], y) and torch.allclose(got["head[p3]"], y)
    assert torch.allclose(got["head[lv][0]"], 2 * y) and torch.allclose(got["head[lv][1][0]"], 3 * y)
    rec.clear()
    with pytest.raises(RuntimeError, match="did not run"):
        rec.get("body")
    rec.remove()
    net(x)
    assert rec._outputs == {}
    assert parse_feature_name("backbone.bottom_up[p3]") == ("backbone.bottom_up", ["p3"])
    assert parse_feature_name("head[0]") == ("head", [0])


def test_recorder_wrong_names_list_closest():
    net = _Net()
    with pytest.raises(KeyError, match=r"closest valid names: \['body'\]"):
        FeatureRecorder(net, ["bodi"], "teacher")
    rec = FeatureRecorder(net, ["head[p4]"], "teacher")
    net(torch.randn(1, 3, 2, 2))
    with pytest.raises(KeyError, match=r"valid keys: \['p3', 'lv'\]"):
        rec.get("head[p4]")
    with pytest.raises(ValueError, match="Malformed"):
        parse_feature_name("head[p3")


def test_recorder_detaches_teacher_outputs():
    net = _Net()
    rec = FeatureRecorder(net, ["body"], "teacher", detach=True)
    net(torch.randn(1, 3, 2, 2))
    assert not rec.get("body").requires_grad


def test_connector_channels_and_spatial():
    c = Connector(4, 8, norm="BN")
    assert c(torch.randn(2, 4, 16, 16), (8, 8)).shape == (2, 8, 8, 8)
    same = Connector(4, 4)
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(same(x, (3, 3)), x) and not list(same.parameters())
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.allclose(align_spatial(x, (2, 2), "pool"), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
