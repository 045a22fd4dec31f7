"""kd_report: metrics from metrics.json files, gain, params and FLOPs (fvcore)."""
import json
import os

import pytest
import torch
from torch import nn

from bcd.config import get_cfg
from bcd.distill.report import build_report, count_flops, count_params, read_metrics, write_kd_report
from bcd.structures.image_batch import ImageBatch


class _Tiny(nn.Module):
    """A meta-architecture with the preprocess / extract protocol: one 1×1 conv 3→4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)

    def preprocess(self, inputs):
        x = torch.stack([d["image"].float() for d in inputs])
        return ImageBatch(x, [tuple(x.shape[-2:])] * len(inputs))

    def extract(self, batch):
        return {"logits": self.conv(batch.tensor)}

    def forward(self, inputs):
        return self.extract(self.preprocess(inputs))


def _write_metrics(d, lines):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        for rec in lines:
            f.write(json.dumps(rec) + "\n")


def test_read_metrics_takes_the_last_evaluation(tmp_path):
    _write_metrics(tmp_path, [{"iteration": 0, "total_loss": 1.0},
                              {"iteration": 9, "sem_seg/mIoU": 50.0, "sem_seg/mBIoU": 30.0},
                              {"iteration": 19, "sem_seg/mIoU": 60.0, "sem_seg/mBIoU": 40.0},
                              {"iteration": 20, "total_loss": 0.5}])
    assert read_metrics(str(tmp_path)) == {"sem_seg/mIoU": 60.0, "sem_seg/mBIoU": 40.0}
    assert read_metrics(str(tmp_path / "missing")) == {}


def test_params_and_flops_of_a_known_model():
    m = _Tiny()
    assert count_params(m) == 12
    assert count_flops(m, (8, 8)) == 2 * 3 * 4 * 64  # a multiply-add per weight and pixel, 2 FLOPs each


def test_report_gain_and_files(tmp_path):
    rep = build_report((_Tiny(), {"sem_seg/mIoU": 70.0}), (_Tiny(), {"sem_seg/mIoU": 60.0, "sem_seg/mBIoU": 30.0}),
                       (_Tiny(), {"sem_seg/mIoU": 63.5, "sem_seg/mBIoU": 33.0}), (8, 8), kd_params=5)
    assert [r["name"] for r in rep["rows"]] == ["teacher", "student (no KD)", "student (KD)"]
    assert rep["gain"] == pytest.approx({"sem_seg/mIoU": 3.5, "sem_seg/mBIoU": 3.0})
    assert rep["metrics"][:2] == ["sem_seg/mIoU", "sem_seg/mBIoU"]
    # write_kd_report: teacher metrics from the folder of KD.TEACHER.WEIGHTS, baseline by name
    cfg = get_cfg()
    cfg.KD.LOSSES = ["PixelKD"]
    cfg.KD.TEACHER.WEIGHTS = str(tmp_path / "teacher" / "model_final.pth")
    cfg.KD.BASELINE_OUTPUT_DIR = str(tmp_path / "plain")
    cfg.OUTPUT_DIR = str(tmp_path / "kd")
    cfg.INPUT.CROP.SIZE = [8, 8]
    _write_metrics(tmp_path / "teacher", [{"sem_seg/mIoU": 80.0}])
    _write_metrics(tmp_path / "plain", [{"sem_seg/mIoU": 61.0}])
    out = write_kd_report(cfg, None, student_results={"sem_seg": {"mIoU": 64.0}})
    assert out["gain"] == pytest.approx({"sem_seg/mIoU": 3.0})
    md = open(tmp_path / "kd" / "kd_report.md").read()
    assert "| teacher | 80.00 |" in md and "+3.00" in md
    assert json.load(open(tmp_path / "kd" / "kd_report.json"))["rows"][2]["metrics"]["sem_seg/mIoU"] == 64.0
