"""inference_on_dataset shows progress: a tqdm bar on the main process (BCD_PROGRESS) and the
log line with the batch count."""
from __future__ import annotations

import logging

from torch import nn

from bcd.evaluation import inference_on_dataset
from bcd.evaluation.evaluator import DatasetEvaluator


class Count(DatasetEvaluator):
    def reset(self):
        self.n = 0

    def process(self, inputs, outputs):
        self.n += len(outputs)

    def evaluate(self):
        return {"count": {"images": float(self.n)}}


class Echo(nn.Module):
    def forward(self, inputs):
        return [{"x": i} for i in inputs]


def test_progress_bar_and_log(monkeypatch, capsys, caplog):
    monkeypatch.setenv("BCD_PROGRESS", "1")
    loader = [[1, 2], [3], [4]]
    with caplog.at_level(logging.INFO, logger="bcd.evaluation.evaluator"):
        res = inference_on_dataset(Echo(), loader, Count())
    assert res["count"]["images"] == 4.0
    err = capsys.readouterr().err
    assert "inference" in err and "3/3" in err  # tqdm: desc and count
    assert any("Inference done 3/3" in r.getMessage() for r in caplog.records)

    monkeypatch.setenv("BCD_PROGRESS", "0")
    inference_on_dataset(Echo(), loader, Count())
    assert "3/3" not in capsys.readouterr().err
