"""Student-only jobs need no teacher file; jobs that need one refuse before writing (issue 21).

* ``--eval-only`` on a distillation config evaluates its student alone: with the teacher's
  weights absent it gives exactly the results of the student's own config on the same weights;
* training a distillation config whose teacher is missing fails before ``OUTPUT_DIR`` exists,
  naming ``KD.TEACHER.WEIGHTS`` and the train_net command of the teacher's config.
"""
from __future__ import annotations

import os

import pytest

from .test_bad_input import _run, sem_seg_custom, tiny_sem_seg_opts, write_sem_seg_folder


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A 2-iteration plain student on a generated 3-class dataset, and its options."""
    tmp = tmp_path_factory.mktemp("student_only")
    img, lbl = write_sem_seg_folder(str(tmp / "d"))
    entry = sem_seg_custom("t21_student_only", img, lbl, ["a", "b", "c"])
    opts = tiny_sem_seg_opts(tmp / "plain", [entry], ["t21_student_only"], ["t21_student_only"])
    _run(opts)
    teacher_cfg = tmp / "teacher.yaml"
    from bcd.config import get_cfg

    t = get_cfg()
    t.merge_from_list(tiny_sem_seg_opts(tmp / "teacher_run", [entry], ["t21_student_only"], []))
    teacher_cfg.write_text(t.dump())
    return {"tmp": tmp, "opts": opts, "weights": str(tmp / "plain" / "model_final.pth"),
            "teacher_cfg": str(teacher_cfg)}


def _with(opts, **kv):
    """``opts`` with keys replaced (``OUTPUT_DIR`` ...) or added."""
    out = list(opts)
    for k, v in kv.items():
        k = k.replace("__", ".")
        if k in out[0::2]:
            out[out.index(k) + 1] = v
        else:
            out += [k, v]
    return out


def _kd(run, out, weights):
    return _with(run["opts"], OUTPUT_DIR=str(out), KD__LOSSES="['PixelKD']",
                 KD__TEACHER__CONFIG_FILE=run["teacher_cfg"], KD__TEACHER__WEIGHTS=weights,
                 KD__SHAPE_PROBE_SIZE="[32, 32]")


def test_eval_only_of_a_kd_config_needs_no_teacher(plain_run):
    missing = str(plain_run["tmp"] / "no_teacher" / "model_final.pth")
    ref = _run(["--eval-only", *_with(plain_run["opts"], OUTPUT_DIR=str(plain_run["tmp"] / "eval_plain"),
                                      MODEL__WEIGHTS=plain_run["weights"])])
    got = _run(["--eval-only", *_with(_kd(plain_run, plain_run["tmp"] / "eval_kd", missing),
                                      MODEL__WEIGHTS=plain_run["weights"])])
    assert not os.path.exists(missing)
    assert got == ref and 0 <= got["sem_seg/mIoU"] <= 100


def test_training_without_the_teacher_refuses_before_writing(plain_run):
    out = plain_run["tmp"] / "kd_out"
    missing = str(plain_run["tmp"] / "teacher_run" / "model_final.pth")
    with pytest.raises(FileNotFoundError) as e:
        _run(_kd(plain_run, out, missing))
    msg = str(e.value)
    assert f"KD.TEACHER.WEIGHTS '{missing}' does not exist" in msg
    # the command that writes it: the teacher config's OUTPUT_DIR is that folder already
    assert f"python tools/train_net.py --config-file {plain_run['teacher_cfg']} (it writes {missing})" in msg
    assert not out.exists()
    # elsewhere: the command names OUTPUT_DIR
    other = str(plain_run["tmp"] / "elsewhere" / "model_final.pth")
    with pytest.raises(FileNotFoundError, match=f"OUTPUT_DIR {plain_run['tmp'] / 'elsewhere'}"):
        _run(_kd(plain_run, out, other))
    with pytest.raises(ValueError, match="KD.TEACHER.WEIGHTS is empty.*train_net.py --config-file"):
        _run(_kd(plain_run, out, ""))
    assert not out.exists()
