"""Every documented command runs as printed, on the folders the demo writes (issue 21).

The commands are read from the documentation itself: every fenced ``bash`` block of README.md,
docs/*.md and projects/*/README.md preceded by ``<!-- doc-test: demo -->`` (run after
``python tools/demo.py``) or ``<!-- doc-test: detectron2 -->`` (run beside a ``d2/`` folder
holding a Detectron2 ``model_final.pth`` and ``config.yaml``). They run in a scratch folder laid
out like a clone (``configs/``, ``tools/``, ``bcd/`` linked in) with cwd there, so relative paths
(``configs/...``, ``output/demo_run/...``, and the demo configs' own ``./output/demo_run/...``)
mean what they mean for a user.

* Fast (default suite): ``output/demo_run`` is laid out by the demo's own plan
  (``tools/demo.py``'s spec -> ``tools/evidence.py``'s ``plan``: every run folder of the default
  command) with the files train_net writes in each (``Checkpointer``: a full checkpoint
  ``model_<MAX_ITER-1>.pth`` + ``last_checkpoint``, ``model_final.pth``; random weights of the
  right models); each documented command then runs in-process (``runpy``) and must exit 0.
  Every ``output/demo_run/...`` path named anywhere in the documentation or a tool's docstring
  must exist in that layout.
* Slow: the real ``tools/demo.py`` (tiny iteration counts) in the scratch folder, every file of the
  fast layout must exist in what it wrote, and every documented command runs as a subprocess.
"""
from __future__ import annotations

import glob
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest
import torch

from .conftest import REPO

DOC_FILES = ["README.md", *sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))),
             *sorted(glob.glob(os.path.join(REPO, "projects", "*", "README.md")))]
BLOCK = re.compile(r"<!-- doc-test: (\w+) -->\s*\n```(?:bash|sh)?\n(.*?)```", re.S)
# a path under the demo's output folder; <name> placeholders and {a,b} alternatives allowed
DEMO_PATH = re.compile(r"(?:\./)?output/demo_run(?:/[\w.<>{},*-]+)*/?")
FIXTURES = os.environ.get("BCD_D2_FIXTURES") or os.path.join(os.path.dirname(REPO), "shared", "fixtures",
                                                           "detectron2")


def documented_commands() -> List[Tuple[str, str, List[str]]]:
    """``(file, kind, argv)`` of every command in a marked block, continuation lines joined,
    comments dropped."""
    out = []
    for f in DOC_FILES:
        path = f if os.path.isabs(f) else os.path.join(REPO, f)
        text = open(path, encoding="utf-8").read()
        for kind, body in BLOCK.findall(text):
            joined = re.sub(r"\\\n\s*", " ", body)
            for line in joined.splitlines():
                line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
                if line:
                    out.append((os.path.relpath(path, REPO), kind, shlex.split(line)))
    return out


COMMANDS = documented_commands()


def test_documentation_marks_the_tool_commands():
    """The marked blocks hold the commands the issue names: visualize (with --kd), analyze
    (with --teacher), export, --eval-only and the Detectron2 conversion."""
    assert COMMANDS, "no <!-- doc-test: ... --> block found"
    seen = {(argv[1], tuple(a for a in argv if a in ("--kd", "--teacher", "--eval-only", "--dynamic")))
            for _, _, argv in COMMANDS}
    tools = {t for t, _ in seen}
    assert {"tools/visualize.py", "tools/analyze_model.py", "tools/export.py", "tools/train_net.py",
            "tools/convert_detectron2.py"} <= tools, tools
    assert ("tools/visualize.py", ("--kd",)) in seen and ("tools/analyze_model.py", ("--teacher",)) in seen
    assert ("tools/train_net.py", ("--eval-only",)) in seen
    for f, _, argv in COMMANDS:
        assert argv[0] == "python" and argv[1].startswith(("tools/", "projects/")), (f, argv)


# ------------------------------------------------------------------------------ the layout
def _demo_jobs(output_dir: str):
    """The runs of the default ``python tools/demo.py`` into ``output_dir``: the demo's own
    argument parser and spec (``evidence.run`` replaced by a function returning the spec),
    planned by ``evidence.plan``."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import demo

    run = demo.evidence.run
    demo.evidence.run = lambda spec: spec
    try:
        spec = demo.main(["--output-dir", output_dir])
    finally:
        demo.evidence.run = run
    return demo.evidence.plan(spec)


# files every train_net run writes, files of distillation runs, and the demo's own
RUN_FILES = ("config.yaml", "log.txt", "metrics.json", "last_checkpoint", "model_final.pth", "evidence_job.json")
KD_FILES = ("kd_report.md", "kd_report.json", "kd_curves.png", "kd_predictions.png", "kd_signals.png")
DEMO_FILES = ("demo_report.md", "demo_report.json", "logs")


def make_demo_layout(work: str, weights_for=("teacher", "warm_start", "seed0")) -> List[str]:
    """``work/output/demo_run`` as the default demo leaves it: every run folder of its plan with
    the files train_net writes; real checkpoints (random weights) for the runs named in
    ``weights_for`` (a job name containing one of them), empty files elsewhere. Returns the
    paths written, relative to ``work``."""
    from bcd.config import get_cfg
    from bcd.distill import build_model
    from bcd.engine import Checkpointer

    out_dir = os.path.join(work, "output", "demo_run")
    written = []
    for job in _demo_jobs(out_dir):
        os.makedirs(job.out_dir, exist_ok=True)
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(REPO, job.config))
        cfg.merge_from_list(job.opts + ["OUTPUT_DIR", job.out_dir, "MODEL.BACKBONE.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
        full = f"model_{cfg.SOLVER.MAX_ITER - 1:07d}"
        real = any(w in job.name for w in weights_for)
        if real:
            torch.manual_seed(0)
            cwd = os.getcwd()
            os.chdir(work)  # KD.TEACHER.CONFIG_FILE and weights are relative to the clone
            try:
                model = build_model(cfg)
            finally:
                os.chdir(cwd)
            ck = Checkpointer(model, job.out_dir)
            ck.save(full, iteration=cfg.SOLVER.MAX_ITER - 1)
            ck.save_model_only("model_final")
        kd = list(KD_FILES) if len(cfg.KD.LOSSES) else []
        if not {"BoundaryDistillation", "ContextDistillation"} & set(cfg.KD.LOSSES):
            kd = [n for n in kd if n != "kd_signals.png"]  # the BCD signals picture only
        names = list(RUN_FILES) + [full + ".pth"] + kd
        for n in names:
            p = os.path.join(job.out_dir, n)
            if not os.path.exists(p):
                if n == "last_checkpoint":
                    with open(p, "w") as f:
                        f.write(full + ".pth")
                else:
                    open(p, "w").close()
        os.makedirs(os.path.join(job.out_dir, "inference"), exist_ok=True)  # evaluated at the end
        written += [os.path.relpath(os.path.join(job.out_dir, n), work) for n in names + ["inference"]]
    for n in DEMO_FILES:
        p = os.path.join(out_dir, n)
        os.makedirs(p, exist_ok=True) if n == "logs" else open(p, "w").close()
        written.append(os.path.relpath(p, work))
    return written


def scratch_clone(path: str) -> str:
    """A folder laid out like a clone: configs/, tools/, bcd/ linked to the repository's."""
    os.makedirs(path, exist_ok=True)
    for name in ("configs", "tools", "bcd", "projects"):
        link = os.path.join(path, name)
        if not os.path.exists(link):
            os.symlink(os.path.join(REPO, name), link)
    return path


def _env() -> Dict[str, str]:
    # the demo data where the rest of the suite builds it (generated once)
    return {"BCD_DATASETS": os.environ.get("BCD_DATASETS") or os.path.join(REPO, "datasets"),
            "BCD_PROGRESS": "0"}


def link_detectron2(work: str) -> bool:
    """``work/d2/{model_final.pth, config.yaml}``: the shared RetinaNet fixture, when present."""
    src = os.path.join(FIXTURES, "retinanet_r18_fpn")
    if not os.path.isdir(src):
        return False
    os.makedirs(os.path.join(work, "d2"), exist_ok=True)
    for n in ("model_final.pth", "config.yaml"):
        if not os.path.exists(os.path.join(work, "d2", n)):
            os.symlink(os.path.join(src, n), os.path.join(work, "d2", n))
    return True


@pytest.fixture(scope="module")
def demo_layout(tmp_path_factory):
    work = scratch_clone(str(tmp_path_factory.mktemp("clone")))
    return work, make_demo_layout(work)


def _expand(token: str) -> List[str]:
    """``demo_report.{md,json}`` -> both names; ``<r>`` / ``<arm>`` placeholders -> glob ``*``."""
    m = re.search(r"\{([^{}]*)\}", token)
    if m:
        return [x for alt in m.group(1).split(",") for x in _expand(token[:m.start()] + alt + token[m.end():])]
    return [re.sub(r"<[^<>]*>", "*", token)]


def mentioned_demo_paths() -> List[Tuple[str, str]]:
    """``(file, path)`` of every ``output/demo_run/...`` path in the documentation and in the
    tools' and projects' Python files (their docstrings print commands)."""
    files = DOC_FILES + sorted(glob.glob(os.path.join(REPO, "tools", "*.py"))) \
        + sorted(glob.glob(os.path.join(REPO, "projects", "*", "*.py")))
    out = []
    for f in files:
        path = f if os.path.isabs(f) else os.path.join(REPO, f)
        for tok in DEMO_PATH.findall(open(path, encoding="utf-8").read()):
            out.append((os.path.relpath(path, REPO), tok.rstrip(".,")))
    return out


def test_every_documented_demo_path_exists(demo_layout):
    work, _ = demo_layout
    mentioned = mentioned_demo_paths()
    assert len(mentioned) > 10
    missing = []
    for f, tok in mentioned:
        for p in _expand(tok):
            if not glob.glob(os.path.join(work, os.path.normpath(p))):
                missing.append(f"{f}: {tok}")
    assert not missing, "paths the demo does not write:\n" + "\n".join(sorted(set(missing)))


def test_kd_teachers_are_where_their_configs_write_them():
    """For every distillation config: KD.TEACHER.WEIGHTS is the model_final.pth of the teacher
    config's OUTPUT_DIR (what `train_net.py --config-file <teacher config>` writes), or a
    published transformers checkpoint (``hf://``)."""
    from bcd.config import get_cfg
    from bcd.distill import teacher_config

    bad, n = [], 0
    for f in sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)):
        if os.path.basename(f).startswith("Base"):
            continue
        cfg = get_cfg()
        cfg.merge_from_file(f)
        if not len(cfg.KD.LOSSES):
            continue
        n += 1
        if cfg.KD.TEACHER.WEIGHTS.startswith("hf://"):
            continue
        out = os.path.normpath(teacher_config(cfg).OUTPUT_DIR)
        if os.path.normpath(cfg.KD.TEACHER.WEIGHTS) != os.path.join(out, "model_final.pth"):
            bad.append(f"{os.path.relpath(f, REPO)}: {cfg.KD.TEACHER.WEIGHTS} (teacher writes {out}/model_final.pth)")
    assert n > 50 and not bad, "\n".join(bad)


# ------------------------------------------------------------------------------ running them
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def run_in_process(argv: List[str], cwd: str, env: Dict[str, str]) -> None:
    """``python <script> args...`` in this process, with ``cwd`` and ``env``; a non-zero exit
    (or an exception) fails the test with the command."""
    # a user's shell: no process-group or SLURM variables (a test that leaves RANK / WORLD_SIZE
    # behind would make train_net's launch() wait for peers)
    clear = [k for k in os.environ if k in _DIST_ENV or k.startswith(("SLURM_", "TORCHELASTIC_"))]
    old_cwd, old_argv = os.getcwd(), sys.argv
    old_env = {k: os.environ.get(k) for k in [*env, *clear]}
    for k in clear:
        del os.environ[k]
    os.chdir(cwd)
    sys.argv = argv[1:]
    os.environ.update(env)
    try:
        runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), f"{' '.join(argv)} exited with {e.code}"
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_outputs(argv: List[str], work: str) -> None:
    """What each tool must have written, beyond exiting 0."""
    def flag(name):
        return argv[argv.index(name) + 1] if name in argv else None

    tool = argv[1]
    if tool == "tools/visualize.py":
        out = os.path.join(work, flag("--output"))
        assert os.path.isfile(os.path.join(out, "pred_0.png"))
        if "--kd" in argv:
            assert os.path.isfile(os.path.join(out, "kd_signals.png"))
    elif tool == "tools/export.py":
        rep = json.load(open(os.path.join(work, flag("--output"), "export_report.json")))
        assert rep["ok"] and rep["torchscript"]["shape_generic"]
        assert rep["onnx"]["input_shape"] == (["batch", 3, "height", "width"] if "--dynamic" in argv else
                                              [1, 3, *rep["size"]])
    elif tool == "tools/convert_detectron2.py":
        assert os.path.isfile(os.path.join(work, flag("--output")))
        assert os.path.isfile(os.path.join(work, os.path.dirname(flag("--output")), "config.yaml"))
    elif tool == "tools/analyze_model.py" and flag("--json"):
        assert json.load(open(os.path.join(work, flag("--json"))))["params"] > 0


@pytest.mark.parametrize("doc,kind,argv", [c for c in COMMANDS if c[1] in ("demo", "detectron2")],
                         ids=[f"{c[0]}:{c[2][1]}:{i}" for i, c in enumerate(COMMANDS)
                              if c[1] in ("demo", "detectron2")])
def test_documented_command_runs(demo_layout, doc, kind, argv):
    work, _ = demo_layout
    if kind == "detectron2" and not link_detectron2(work):
        pytest.skip(f"Detectron2 fixtures not found at {FIXTURES}")
    env = dict(_env(), OMP_NUM_THREADS="1")
    run_in_process(argv, work, env)
    _check_outputs(argv, work)


@pytest.mark.slow
def test_documented_commands_after_a_real_tiny_demo(tmp_path):
    """The real demo (2 iterations per stage) in a scratch clone, then every documented command
    as a subprocess, exactly as printed."""
    work = scratch_clone(str(tmp_path / "clone"))
    env = dict(os.environ, **_env(), OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the clone's own bcd/ (tools put their folder's parent first)
    demo = [sys.executable, "tools/demo.py", "--replicates", "1", "--seeds", "1", "--teacher-iters", "2",
            "--warm-iters", "2", "--student-iters", "2"]
    proc = subprocess.run(demo, cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every file the fast layout fakes is one the demo wrote (seed 0; full checkpoints by pattern)
    fake = scratch_clone(str(tmp_path / "fake"))
    for rel in make_demo_layout(fake, weights_for=()):
        if re.search(r"_seed[12]/", rel):
            continue  # --seeds 1 here
        pattern = re.sub(r"model_\d{7}\.pth$", "model_[0-9]*.pth", rel)
        assert glob.glob(os.path.join(work, pattern)), f"the demo did not write {rel}"
    link_detectron2(work)
    for doc, kind, argv in COMMANDS:
        if kind == "detectron2" and not os.path.isdir(os.path.join(work, "d2")):
            continue
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{doc}: {' '.join(argv)}\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
        _check_outputs(argv, work)
