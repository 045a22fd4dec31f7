"""Atomic checkpoints, strict loading with clear errors, deploy-model loading."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from bcd.engine import Checkpointer, atomic_torch_save


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


class Wrapper(nn.Module):
    """Like the Distiller: a student plus training-only modules; deploys the student."""

    def __init__(self):
        super().__init__()
        self.student = Student()
        self.connector = nn.Conv2d(4, 8, 1)

    def deploy_model(self):
        return self.student


def test_save_is_atomic_and_tags_last_checkpoint(tmp_path, monkeypatch):
    model = Student()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ck = Checkpointer(model, str(tmp_path), optimizer=opt)
    ck.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    good = (tmp_path / "model_0000009.pth").read_bytes()

    # A crash in the middle of writing the next checkpoint (disk full, kill...).
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        ck.save("model_0000019", iteration=19)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert (tmp_path / "model_0000009.pth").read_bytes() == good

    # Overwriting an existing file also goes through a temporary file.
    with pytest.raises(OSError):
        monkeypatch.setattr(torch, "save", failing_save)
        ck.save("model_0000009", iteration=9)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "model_0000009.pth").read_bytes() == good


def test_round_trip_restores_model_and_optimizer(tmp_path):
    model = Student()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    Checkpointer(model, str(tmp_path), optimizer=opt).save("model_0000000", iteration=0, hooks={"A": {"n": 1}})

    model2 = Student()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    extra = Checkpointer(model2, str(tmp_path), optimizer=opt2).resume_or_load("", resume=True)
    assert extra["iteration"] == 0 and extra["hooks"] == {"A": {"n": 1}}
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    m1 = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(m1, opt2.state_dict()["state"][0]["momentum_buffer"])


def test_loading_mismatched_weights_names_file_and_keys(tmp_path):
    state = Student().state_dict()
    state["conv.weight"] = torch.zeros(5, 3, 3, 3)
    del state["bn.running_mean"]
    state["head.weight"] = torch.zeros(1)
    path = tmp_path / "other.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError) as e:
        Checkpointer(Student()).load(str(path))
    msg = str(e.value)
    assert str(path) in msg
    assert "conv.weight (checkpoint (5, 3, 3, 3), model (4, 3, 3, 3))" in msg
    assert "missing keys (first: bn.running_mean)" in msg
    assert "unexpected keys (first: head.weight)" in msg
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        Checkpointer(Student()).load(str(tmp_path / "nothere.pth"))


def test_student_only_file_loads_into_deploy_model_and_ddp_prefix(tmp_path):
    student = Student()
    atomic_torch_save({"model": student.state_dict()}, str(tmp_path / "final.pth"))
    wrapper = Wrapper()
    Checkpointer(wrapper).load(str(tmp_path / "final.pth"))
    for k, v in student.state_dict().items():
        assert torch.equal(wrapper.student.state_dict()[k], v), k

    # The full wrapper state (as in model_XXXXXXX.pth) loads into the wrapper itself.
    Checkpointer(wrapper, str(tmp_path)).save("full")
    wrapper2 = Wrapper()
    Checkpointer(wrapper2).load(str(tmp_path / "full.pth"))
    assert torch.equal(wrapper2.connector.weight, wrapper.connector.weight)

    # ... and into the plain student (a full distillation checkpoint into a student config).
    s3 = Student()
    Checkpointer(s3).load(str(tmp_path / "full.pth"))
    assert torch.equal(s3.conv.weight, wrapper.student.conv.weight)

    # Weights saved from a DDP model ("module." prefix) and bare state dicts load too.
    torch.save({"model": {f"module.{k}": v for k, v in student.state_dict().items()}},
               tmp_path / "ddp.pth")
    torch.save(student.state_dict(), tmp_path / "bare.pth")
    for name in ["ddp.pth", "bare.pth"]:
        s2 = Student()
        Checkpointer(s2).load(str(tmp_path / name))
        assert torch.equal(s2.conv.weight, student.conv.weight)
