"""End to end (slow): the demo teacher trains with tools/train_net.py to a non-trivial mIoU,
and ``--eval-only MODEL.WEIGHTS model_final.pth`` reproduces the figure.

Run with ``pytest tests/modeling/test_demo_train.py -m slow``: minutes on 2 CPU cores.
"""
from __future__ import annotations

import importlib.util
import os
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_net():
    spec = importlib.util.spec_from_file_location(
        "bcd_tools_train_net", os.path.join(ROOT, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,min_miou",
    [("teacher_pspnet_r18.yaml", 60.0), ("student_pspnet_r18_w025.yaml", 35.0)],
)
def test_demo_train_then_eval_only(tmp_path, monkeypatch, config, min_miou):
    # the generated dataset is cached under $BCD_DATASETS; reuse a shared one when it is set
    monkeypatch.setenv("BCD_DATASETS", os.environ.get("BCD_DATASETS", str(tmp_path / "datasets")))
    tn = _train_net()
    parser = tn.default_argument_parser()
    cfg_file = os.path.join(ROOT, "configs", "demo", config)
    out = tmp_path / "out"

    t0 = time.time()
    trained = tn.main(parser.parse_args(["--config-file", cfg_file, "OUTPUT_DIR", str(out)]))
    minutes = (time.time() - t0) / 60
    assert trained is not None and "sem_seg/mIoU" in trained, trained
    miou = trained["sem_seg/mIoU"]
    print(f"{config}: mIoU {miou:.2f} after {minutes:.1f} min")
    assert miou >= min_miou
    assert os.path.isfile(out / "model_final.pth")

    evaluated = tn.main(
        parser.parse_args(
            [
                "--config-file", cfg_file, "--eval-only",
                "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"),
            ]
        )
    )
    assert evaluated["sem_seg/mIoU"] == pytest.approx(miou, abs=1e-6)
