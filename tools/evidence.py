#!/usr/bin/env python
"""Does a distillation arm help? Replicates x paired seeds, for any configs, through train_net.py.

    python tools/evidence.py --teacher T.yaml --plain S.yaml \\
        --arm pixel_kd=KD.yaml --arm "bcd=BCD.yaml KD.BOUNDARY.WEIGHT 5.0" \\
        --replicates 8 --seeds 1 --jobs 2 --output-dir output/evidence
    python tools/evidence.py ... --warm-start W.yaml       # arms continue from a warm start
    python tools/evidence.py ... --reuse                   # keep finished runs (resumable)
    python tools/evidence.py ... --cpu-isa avx2            # the same evidence as an AVX2 machine

The design (``docs/evidence.md``). For replicate ``r = 0..R-1``:

1. the teacher (``--teacher``, ``SEED`` = base + r) is trained into ``OUT/rep<r>/teacher`` (with
   ``--teachers K < R`` only replicates ``0..K-1`` train one and replicate ``r`` uses teacher
   ``r mod K``);
2. the warm start (``--warm-start``, optional, ``SEED`` = base + r) into ``OUT/rep<r>/warm_start``;
3. for each of its paired seeds ``s`` (``SEED`` = base + 1000 r + k, k = 0..S-1) every arm -- the
   plain student (``--plain``) and each ``--arm NAME=CONFIG [KEY VALUE ...]`` -- into
   ``OUT/rep<r>/<arm>_seed<s>``: the arms of one seed share the initialisation (the warm start's
   weights, or the config's own seeded initialisation), the data order and the augmentation draws,
   and differ only in their loss. KD arms (``KD.LOSSES`` not empty) get the replicate's teacher:
   ``KD.TEACHER.CONFIG_FILE`` (the ``--teacher`` config, with the ``MODEL.*`` keys of
   ``--teacher-opts`` as ``KD.TEACHER.OPTS``) and ``KD.TEACHER.WEIGHTS``.

Every run is one ``tools/train_net.py`` process (``--jobs`` at a time, one thread each when more
than one), evaluated at its end. The unit of evidence is the replicate: for arms A and B,
``d_r = mean_s [m(A, r, s) - m(B, r, s)]``, and the report gives the mean of ``d_r`` over the
replicates with its 95% Student-t interval (with one replicate, the interval is over its seeds and
holds only for that teacher and warm start: the report says so). Default comparisons: every arm
against ``plain``; ``--compare A-B`` adds others. The report (``OUT/<--report-name>.{md,json}``)
also has each model's mean +- sd, the plain arm's spread between and within replicates, the
per-class figures of every model, the seeds of every run and the machine (CPU, kernel ISA).

``--reuse`` keeps a run whose folder has ``model_final.pth``, final metrics and an
``evidence_job.json`` recording the same config, overrides and CPU-ISA setting; any other run is
(re-)trained from scratch. ``--cpu-isa avx2`` runs every process with ``ONEDNN_MAX_CPU_ISA=AVX2``
and ``ATEN_CPU_CAPABILITY=avx2``: other floating-point rounding, as on a CPU without AVX-512, so a
table can be checked the way another machine would check it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bcd.utils.stats import (  # noqa: E402
    mean_sd,
    paired_summary,
    replicate_differences,
    variance_components,
    verdict,
)

# metric sets by task (first = the primary metric); lower-is-better metrics
TASK_METRICS = {
    "sem_seg": ("sem_seg/mIoU", "sem_seg/mBIoU", "sem_seg/mConn"),
    "bbox": ("bbox/AP", "bbox/AP50", "bbox/AP75"),
    "segm": ("segm/AP", "segm/AP50", "segm/AP75"),
    "object_seg": ("object_seg/Sm", "object_seg/maxF", "object_seg/wF", "object_seg/maxE", "object_seg/MAE"),
}
LOWER_IS_BETTER = {"object_seg/MAE"}
# per-class figures: task -> key prefix inside the task (``sem_seg/IoU-<class>``, ``bbox/AP-<class>``)
PER_CLASS = {"sem_seg": "IoU-", "bbox": "AP-", "segm": "AP-"}
CPU_ISA_ENV = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
               "default": {}}
SEED_STRIDE = 1000  # arm seeds of replicate r: base + SEED_STRIDE * r + k


@dataclass
class Arm:
    """One arm: a config and overrides; ``kd`` arms get the replicate's teacher."""

    name: str
    config: str
    opts: List[str] = field(default_factory=list)
    label: str = ""
    kd: bool = False


@dataclass
class Job:
    """One ``tools/train_net.py`` run of the plan."""

    name: str
    kind: str  # "teacher" | "warm_start" | "arm"
    replicate: int
    config: str
    out_dir: str
    opts: List[str]
    seed: int
    deps: List[str] = field(default_factory=list)
    arm: Optional[str] = None


@dataclass
class Spec:
    """What to run (see the module docstring); ``tools/demo.py`` builds one for the demo configs."""

    plain: Arm
    arms: List[Arm]
    output_dir: str
    teacher: Optional[str] = None
    teacher_opts: List[str] = field(default_factory=list)
    warm_start: Optional[str] = None
    warm_opts: List[str] = field(default_factory=list)
    student_opts: List[str] = field(default_factory=list)
    kd_opts: List[str] = field(default_factory=list)
    replicates: int = 1
    seeds: int = 1
    teachers: int = 0  # 0: one per replicate
    base_seed: int = 0
    jobs: int = 1
    reuse: bool = False
    cpu_isa: str = "default"
    compare: List[Tuple[str, str]] = field(default_factory=list)
    metrics: List[str] = field(default_factory=list)  # empty: by task, from the runs
    report_name: str = "evidence_report"
    title: str = "Paired evidence"
    command: str = ""
    labels: Dict[str, str] = field(default_factory=dict)  # teacher / warm_start row labels
    notes: List[str] = field(default_factory=list)  # extra report lines (e.g. params / FLOPs)


def _rel(path: str) -> str:
    p = os.path.abspath(path)
    return os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else p


def is_kd_config(config: str, opts: Sequence[str]) -> bool:
    """Whether ``config`` + ``opts`` distils (``KD.LOSSES`` not empty). Raises ``FileNotFoundError``
    naming a missing config."""
    from bcd.config import get_cfg

    path = config if os.path.isabs(config) else os.path.join(ROOT, config)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file not found: {config}")
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return len(cfg.KD.LOSSES) > 0


def seeds_of(spec: Spec, r: int) -> List[int]:
    """The paired seeds (``SEED`` values) of replicate ``r``."""
    return [spec.base_seed + SEED_STRIDE * r + k for k in range(spec.seeds)]


def teacher_model_opts(opts: Sequence[str]) -> List[str]:
    """The ``MODEL.*`` pairs of the teacher's overrides: what the KD arms must build the same
    teacher with (``KD.TEACHER.OPTS``); schedule keys only concern the teacher's own training."""
    pairs = list(zip(opts[0::2], opts[1::2]))
    return [x for k, v in pairs if k.startswith("MODEL.") for x in (k, v)]


def plan(spec: Spec) -> List[Job]:
    """Every run of ``spec`` in dependency order (teacher, warm start, then the arms of each
    replicate). Raises ``ValueError`` for an impossible design."""
    if spec.replicates < 1 or spec.seeds < 1:
        raise ValueError(f"--replicates and --seeds must be >= 1 (got {spec.replicates}, {spec.seeds})")
    if spec.seeds >= SEED_STRIDE:
        raise ValueError(f"--seeds must be below {SEED_STRIDE}")
    names = [spec.plain.name] + [a.name for a in spec.arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"arm names must be unique; repeated: {dup}")
    for a, b in spec.compare:
        for n in (a, b):
            if n not in names:
                raise ValueError(f"--compare {a}-{b}: no arm named '{n}' (arms: {names})")
    n_teachers = spec.teachers or spec.replicates
    if spec.teacher is None and any(a.kd for a in spec.arms):
        n_teachers = 0  # KD arms keep their config's KD.TEACHER.WEIGHTS: one teacher for all
    if spec.teacher is not None and not 1 <= n_teachers <= spec.replicates:
        raise ValueError(f"--teachers must be between 1 and --replicates ({spec.replicates}), got {n_teachers}")
    out = os.path.abspath(spec.output_dir)
    jobs: List[Job] = []
    for r in range(spec.replicates):
        rep = os.path.join(out, f"rep{r}")
        t_name = None
        if spec.teacher is not None:
            t_rep = r % n_teachers
            t_name = f"rep{t_rep}/teacher"
            if t_rep == r:
                jobs.append(Job(t_name, "teacher", r, spec.teacher, os.path.join(rep, "teacher"),
                                ["SEED", str(spec.base_seed + r), *spec.teacher_opts], spec.base_seed + r))
        w_name = None
        if spec.warm_start is not None:
            w_name = f"rep{r}/warm_start"
            jobs.append(Job(w_name, "warm_start", r, spec.warm_start, os.path.join(rep, "warm_start"),
                            ["SEED", str(spec.base_seed + r), *spec.warm_opts], spec.base_seed + r))
        for seed in seeds_of(spec, r):
            plain_dir = os.path.join(rep, f"{spec.plain.name}_seed{seed}")
            for arm in [spec.plain, *spec.arms]:
                deps, opts = [], ["SEED", str(seed)]
                if w_name:
                    deps.append(w_name)
                    opts += ["MODEL.WEIGHTS", os.path.join(rep, "warm_start", "model_final.pth")]
                opts += [*spec.student_opts, *arm.opts]
                if arm.kd:
                    opts += ["KD.BASELINE_OUTPUT_DIR", plain_dir, *spec.kd_opts]
                    if t_name:
                        deps.append(t_name)
                        t_dir = os.path.join(out, t_name)
                        opts += ["KD.TEACHER.CONFIG_FILE", spec.teacher,
                                 "KD.TEACHER.WEIGHTS", os.path.join(t_dir, "model_final.pth"),
                                 "KD.TEACHER_OUTPUT_DIR", t_dir]
                        model_opts = teacher_model_opts(spec.teacher_opts)
                        if model_opts:
                            opts += ["KD.TEACHER.OPTS", repr(model_opts)]
                jobs.append(Job(f"rep{r}/{arm.name}_seed{seed}", "arm", r, arm.config,
                                os.path.join(rep, f"{arm.name}_seed{seed}"), opts, seed, deps, arm.name))
    return jobs


def _isa_env(cpu_isa: str) -> Dict[str, str]:
    if cpu_isa not in CPU_ISA_ENV:
        raise ValueError(f"--cpu-isa must be one of {sorted(CPU_ISA_ENV)}, got '{cpu_isa}'")
    return dict(CPU_ISA_ENV[cpu_isa])


def fingerprint(job: Job, cpu_isa: str) -> Dict[str, Any]:
    """What makes a finished run reusable: its config, overrides and CPU-ISA setting."""
    return {"config": _rel(job.config), "opts": list(job.opts), "cpu_isa": cpu_isa}


def finished(job: Job, cpu_isa: str) -> Optional[Dict[str, Any]]:
    """The record of a finished, reusable run of ``job`` (``evidence_job.json`` + its final
    metrics), else None."""
    from bcd.distill.report import read_metrics

    rec_path = os.path.join(job.out_dir, "evidence_job.json")
    if not (os.path.isfile(rec_path) and os.path.isfile(os.path.join(job.out_dir, "model_final.pth"))):
        return None
    with open(rec_path) as f:
        rec = json.load(f)
    if rec.get("fingerprint") != fingerprint(job, cpu_isa):
        return None
    met = read_metrics(job.out_dir)
    if not met:
        return None
    rec["metrics"] = met
    return rec


class _Process:
    """A running ``tools/train_net.py`` whose ``log.txt`` is followed for progress lines."""

    def __init__(self, job: Job, env: Dict[str, str], log_path: str) -> None:
        self.job, self.log_path = job, log_path
        cfg = job.config if os.path.isabs(job.config) else os.path.join(ROOT, job.config)
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", cfg,
               *job.opts, "OUTPUT_DIR", job.out_dir]
        print(f"[evidence] {job.name}: train_net.py --config-file {_rel(cfg)} {' '.join(job.opts)}",
              flush=True)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self._f = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._f, stderr=subprocess.STDOUT, env=env)
        self.t0 = time.time()
        self._seen = 0

    def progress(self) -> None:
        path = os.path.join(self.job.out_dir, "log.txt")
        if not os.path.isfile(path):
            return
        with open(path, errors="replace") as f:
            lines = f.readlines()
        for line in lines[self._seen:]:
            if " eta: " in line and " iter: " in line:
                parts = line.split(" eta: ", 1)[1].split("  ")
                keep = [p for p in parts if p.startswith(("iter:", "total_loss:"))]
                print(f"[evidence]   {self.job.name}: eta {parts[0]}  " + "  ".join(keep), flush=True)
        self._seen = len(lines)


def run_jobs(jobs: List[Job], spec: Spec) -> Dict[str, Dict[str, Any]]:
    """Run (or reuse) every job, ``spec.jobs`` at a time, each when its dependencies are done.

    Returns ``{job name: {"metrics", "wall_s", "reused", "fingerprint"}}``. Raises
    ``RuntimeError`` with the end of its log when a run fails (the other runs are stopped)."""
    from bcd.distill.report import read_metrics

    env = dict(os.environ)
    env.update(_isa_env(spec.cpu_isa))
    if spec.jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    results: Dict[str, Dict[str, Any]] = {}
    pending = list(jobs)
    running: List[_Process] = []
    logs = os.path.join(os.path.abspath(spec.output_dir), "logs")
    # a SIGTERM (kill, a job scheduler) stops the runs too, as Ctrl-C does: no orphaned trainings
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= max(1, spec.jobs):
                    break
                if any(d not in results for d in job.deps):
                    continue
                pending.remove(job)
                rec = finished(job, spec.cpu_isa) if spec.reuse else None
                if rec is not None:
                    print(f"[evidence] {job.name}: reusing the finished run in {_rel(job.out_dir)}", flush=True)
                    rec["reused"] = True
                    results[job.name] = rec
                    continue
                if os.path.isdir(job.out_dir):  # stale or unfinished: train it again from scratch
                    shutil.rmtree(job.out_dir)
                running.append(_Process(job, env, os.path.join(logs, job.name.replace("/", "_") + ".log")))
            if not running:
                if pending:  # only reachable with a dependency that is not in the plan
                    raise RuntimeError(f"unmet dependencies: {[(j.name, j.deps) for j in pending]}")
                break
            time.sleep(2.0)
            for p in list(running):
                p.progress()
                if p.proc.poll() is None:
                    continue
                p._f.close()
                running.remove(p)
                if p.proc.returncode != 0:
                    with open(p.log_path, errors="replace") as f:
                        tail = f.read()[-4000:]
                    raise RuntimeError(f"training failed ({p.job.name}); end of {p.log_path}:\n{tail}")
                met = read_metrics(p.job.out_dir)
                rec = {"fingerprint": fingerprint(p.job, spec.cpu_isa), "wall_s": time.time() - p.t0,
                       "seed": p.job.seed}
                with open(os.path.join(p.job.out_dir, "evidence_job.json"), "w") as f:
                    json.dump(rec, f, indent=1)
                rec["metrics"], rec["reused"] = met, False
                results[p.job.name] = rec
                shown = [k for k in _metric_keys(met) if k in met]
                print(f"[evidence]   {p.job.name} done in {rec['wall_s']:.0f}s: "
                      + ", ".join(f"{k.split('/')[-1]} {met[k]:.2f}" for k in shown), flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in running:
            p.proc.kill()
            p.proc.wait()
            p._f.close()
    return results


def _metric_keys(met: Mapping[str, float]) -> List[str]:
    """The metric set of the task a run's metrics belong to (sem_seg before bbox / segm / object_seg)."""
    keys: List[str] = []
    for task, names in TASK_METRICS.items():
        if any(k.startswith(task + "/") for k in met):
            keys += [n for n in names if n in met]
    return keys


def _evaluation_order(out_dir: str) -> List[str]:
    """Metric names in the evaluator's own order (the dataset's class order), from the first
    ``inference/<dataset>/*_evaluation.json`` of a run; ``[]`` when there is none."""
    import glob

    for path in sorted(glob.glob(os.path.join(out_dir, "inference", "*", "*_evaluation.json"))):
        with open(path) as f:
            return list(json.load(f).get("metrics", {}))
    return []


def machine_info(cpu_isa: str) -> Dict[str, Any]:
    """CPU, core count, torch version and the kernel ISA the runs used."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = _isa_env(cpu_isa)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_isa": cpu_isa, "isa_env": env,
            "cpu_capability_default": torch.backends.cpu.get_cpu_capability(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "python": platform.python_version()}


def _fmt(v: Optional[float], d: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _fmt_ms(values: Sequence[float]) -> str:
    m, s = mean_sd(values)
    if math.isnan(m):
        return "–"
    return f"{m:.2f}" if math.isnan(s) else f"{m:.2f} ± {s:.2f}"


def _fmt_diff(s: Mapping[str, float]) -> str:
    if s["n"] == 0:
        return "–"
    if s["n"] < 2:
        return f"{s['mean']:+.2f}"
    return f"{s['mean']:+.2f} [{s['lo']:+.2f}, {s['hi']:+.2f}]"


def summarize(spec: Spec, jobs: List[Job], results: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """The report's numbers: per model, per comparison (replicate level), per class, seeds."""
    arm_names = [spec.plain.name] + [a.name for a in spec.arms]
    first = next((results[j.name]["metrics"] for j in jobs if j.kind == "arm"), {})
    metrics = list(spec.metrics) or _metric_keys(first)
    task = metrics[0].split("/")[0] if metrics else ""
    values: Dict[str, Dict[str, Dict[Tuple[int, int], float]]] = {a: {m: {} for m in metrics} for a in arm_names}
    walls: Dict[str, List[float]] = {}
    for j in jobs:
        rec = results[j.name]
        key = j.arm if j.kind == "arm" else j.kind
        if rec.get("wall_s") is not None:  # reused runs keep the wall time recorded when they ran
            walls.setdefault(key, []).append(float(rec["wall_s"]))
        if j.kind != "arm":
            continue
        for m in metrics:
            if m in rec["metrics"]:
                values[j.arm][m][(j.replicate, j.seed)] = rec["metrics"][m]
    comparisons = [(a.name, spec.plain.name) for a in spec.arms] + [c for c in spec.compare]
    comps: List[Dict[str, Any]] = []
    for a, b in comparisons:
        entry: Dict[str, Any] = {"a": a, "b": b, "metrics": {}}
        for m in metrics:
            # key by (replicate, seed index) so arms pair seed by seed
            d, pairs = replicate_differences(values[a][m], values[b][m])
            if spec.replicates >= 2:
                s = paired_summary(list(d.values()))
                s["unit"] = "replicate"
            else:  # one replicate: the interval is over its seeds, conditional on its teacher / warm start
                s = paired_summary(pairs.get(0, []))
                s["unit"] = "seed (one replicate)"
            s["replicate_diffs"] = d
            s["pair_diffs"] = pairs
            s["wins"] = sum(x > 0 for v in pairs.values() for x in v)
            s["pairs"] = sum(len(v) for v in pairs.values())
            s["verdict"] = verdict(s, m in LOWER_IS_BETTER)
            entry["metrics"][m] = s
        comps.append(entry)
    spread = {m: variance_components(values[spec.plain.name][m]) for m in metrics}
    # per-class figures of every model
    prefix = PER_CLASS.get(task)
    per_class: Dict[str, Dict[str, float]] = {}
    classes: List[str] = []
    if prefix:
        for j in jobs:
            for k in _evaluation_order(j.out_dir) + list(results[j.name]["metrics"]):
                name = k.split("/", 1)[-1]
                if k.startswith(f"{task}/{prefix}") or (k == name and name.startswith(prefix)):
                    if name[len(prefix):] not in classes:
                        classes.append(name[len(prefix):])
        rows: Dict[str, List[Mapping[str, float]]] = {}
        for j in jobs:
            rows.setdefault(j.arm if j.kind == "arm" else j.kind, []).append(results[j.name]["metrics"])
        for model, mets in rows.items():
            per_class[model] = {}
            for c in classes:
                vals = [mm[f"{task}/{prefix}{c}"] for mm in mets if f"{task}/{prefix}{c}" in mm]
                per_class[model][c] = mean_sd(vals)[0] if vals else float("nan")
    models: Dict[str, Dict[str, Any]] = {}
    for kind in ("teacher", "warm_start"):
        mets = [results[j.name]["metrics"] for j in jobs if j.kind == kind]
        if mets:
            models[kind] = {m: [x[m] for x in mets if m in x] for m in metrics}
    for a in arm_names:
        models[a] = {m: list(values[a][m].values()) for m in metrics}
    seeds_table = []
    for r in range(spec.replicates):
        row: Dict[str, Any] = {"replicate": r, "arm_seeds": seeds_of(spec, r)}
        for j in jobs:
            if j.replicate == r and j.kind in ("teacher", "warm_start"):
                row[j.kind] = {"seed": j.seed, "dir": _rel(j.out_dir)}
        if spec.teacher is not None and "teacher" not in row:
            t = r % (spec.teachers or spec.replicates)
            row["teacher"] = {"shared_with_replicate": t, "dir": _rel(os.path.join(spec.output_dir, f"rep{t}", "teacher"))}
        seeds_table.append(row)
    return {"metrics": metrics, "task": task, "models": models, "comparisons": comps, "plain_spread": spread,
            "per_class": per_class, "classes": classes, "wall_s": {k: mean_sd(v)[0] for k, v in walls.items()},
            "seeds": seeds_table}


def format_report(spec: Spec, summary: Mapping[str, Any], machine: Mapping[str, Any], elapsed: float) -> str:
    """Markdown of the report (see the module docstring)."""
    metrics = summary["metrics"]
    labels = {spec.plain.name: spec.plain.label or spec.plain.name, **{a.name: a.label or a.name for a in spec.arms},
              "teacher": spec.labels.get("teacher", "teacher"), "warm_start": spec.labels.get("warm_start", "warm start")}
    short = {m: m.split("/")[-1] for m in metrics}
    isa = ", ".join(f"{k}={v}" for k, v in machine["isa_env"].items()) or "default kernels"
    n_t = 0 if spec.teacher is None else (spec.teachers or spec.replicates)
    lines = [f"# {spec.title}", "",
             f"Command: `{spec.command}`" if spec.command else "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, CPU kernels: "
             f"{isa} (capability without override: {machine['cpu_capability_default']}); "
             f"{'one thread per run, ' + str(spec.jobs) + ' runs at a time' if spec.jobs > 1 else 'one run at a time'}; "
             f"{machine['date']}.",
             "",
             f"Design: {spec.replicates} replicate(s) × {spec.seeds} paired seed(s). Each replicate re-trains "
             + ("its warm start" if spec.warm_start else "nothing shared (no warm start)")
             + (f" and uses teacher {'its own' if n_t == spec.replicates else f'r mod {n_t} ({n_t} teachers trained)'}"
                if spec.teacher else (", with the teacher of the KD configs (not re-trained)" if any(a.kd for a in spec.arms) else ""))
             + "; inside a replicate the arms of one seed share the initialisation, the data order and the "
             "augmentation draws. Differences: the unit is the replicate (the mean over its seeds of A − B), "
             "95% Student-t interval over replicates"
             + (" (one replicate: the interval is over its seeds and holds for its teacher and warm start only)."
                if spec.replicates < 2 else "."), ""]
    head = ["model", "runs", *[short[m] for m in metrics], "wall (s)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, vals in summary["models"].items():
        n = max((len(v) for v in vals.values()), default=0)
        lines.append(f"| {labels.get(model, model)} | {n} | " + " | ".join(_fmt_ms(vals[m]) for m in metrics)
                     + f" | {_fmt(summary['wall_s'].get(model), 0)} |")
    lines += ["", "(mean ± sd over runs.)", ""]
    head = ["A − B", "N", *[short[m] for m in metrics], f"verdict ({short[metrics[0]]})" if metrics else "verdict",
            "pairs A > B"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in summary["comparisons"]:
        s0 = c["metrics"][metrics[0]] if metrics else {"n": 0, "verdict": "–", "wins": 0, "pairs": 0}
        lines.append(f"| {labels.get(c['a'], c['a'])} − {labels.get(c['b'], c['b'])} | {s0['n']} | "
                     + " | ".join(_fmt_diff(c["metrics"][m]) for m in metrics)
                     + f" | {s0['verdict']} | {s0['wins']} / {s0['pairs']} |")
    if metrics:
        m0 = metrics[0]
        sp = summary["plain_spread"][m0]
        lines += ["", f"Spread of the plain arm ({short[m0]}): sd {_fmt(sp['sd_all'])} over all runs, "
                  f"{_fmt(sp['sd_between'])} between replicate means, {_fmt(sp['sd_within'])} between seeds "
                  "inside a replicate."]
        rng = []
        for c in summary["comparisons"]:
            d = [x for v in c["metrics"][m0]["pair_diffs"].values() for x in v]
            if len(d) >= 2:
                rng.append(f"{labels.get(c['a'], c['a'])} − {labels.get(c['b'], c['b'])} from {min(d):+.2f} "
                           f"to {max(d):+.2f}")
        if rng:
            lines.append("Single pairs vary: " + "; ".join(rng) + ". Another machine rounds differently and "
                         "trains other teachers and warm starts (docs/evidence.md): expect one pair there to "
                         "land anywhere in such a range; read the interval, not one pair.")
    if summary["classes"]:
        cls = summary["classes"]
        lines += ["", f"Per-class {PER_CLASS[summary['task']].rstrip('-')} (mean over runs):", "",
                  "| model | " + " | ".join(cls) + " |", "|" + "---|" * (len(cls) + 1)]
        for model, vals in summary["per_class"].items():
            lines.append(f"| {labels.get(model, model)} | " + " | ".join(_fmt(vals[c]) for c in cls) + " |")
    lines += ["", "Seeds (`SEED`) of every run:", "", "| replicate | teacher | warm start | arm seeds |",
              "|---|---|---|---|"]
    for row in summary["seeds"]:
        t = row.get("teacher")
        t_txt = "–" if t is None else (f"seed {t['seed']}, re-trained" if "seed" in t
                                       else f"shared with replicate {t['shared_with_replicate']}")
        w = row.get("warm_start")
        lines.append(f"| {row['replicate']} | {t_txt} | {'–' if w is None else 'seed ' + str(w['seed']) + ', re-trained'} | "
                     + ", ".join(str(s) for s in row["arm_seeds"]) + " |")
    if spec.notes:
        lines += ["", *spec.notes]
    lines += ["", f"Wall time: {elapsed / 60:.1f} min (runs reused from earlier are not counted).", ""]
    return "\n".join(x for x in lines if x is not None)


def run(spec: Spec) -> Dict[str, Any]:
    """Plan, run (or reuse), summarise and write ``OUT/<report_name>.{md,json}``; the report."""
    t0 = time.time()
    jobs = plan(spec)
    machine = machine_info(spec.cpu_isa)
    out = os.path.abspath(spec.output_dir)
    os.makedirs(out, exist_ok=True)
    results = run_jobs(jobs, spec)
    summary = summarize(spec, jobs, results)
    elapsed = time.time() - t0
    text = format_report(spec, summary, machine, elapsed)
    print("\n" + text, flush=True)
    report = {"command": spec.command, "machine": machine, "design": {
        "replicates": spec.replicates, "seeds": spec.seeds, "teachers": spec.teachers or (spec.replicates if spec.teacher else 0),
        "base_seed": spec.base_seed, "seed_rule": f"teacher / warm start: base + r; arms: base + {SEED_STRIDE}·r + k"},
        "arms": {a.name: {"config": _rel(a.config), "opts": a.opts, "label": a.label, "kd": a.kd}
                 for a in [spec.plain, *spec.arms]},
        "runs": {j.name: {"kind": j.kind, "replicate": j.replicate, "seed": j.seed, "arm": j.arm,
                          "config": _rel(j.config), "opts": j.opts, "dir": _rel(j.out_dir),
                          "metrics": results[j.name]["metrics"], "wall_s": results[j.name].get("wall_s"),
                          "reused": results[j.name].get("reused", False)} for j in jobs},
        "summary": _jsonable(summary), "wall_time_s": elapsed}
    with open(os.path.join(out, f"{spec.report_name}.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, f"{spec.report_name}.md"), "w") as f:
        f.write(text)
    return report


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def parse_arm(text: str) -> Arm:
    """``NAME=CONFIG [KEY VALUE ...]`` (shell-quoted) -> :class:`Arm`. Raises ``ValueError`` on a
    malformed spec, ``FileNotFoundError`` naming a missing config."""
    parts = shlex.split(text)
    if not parts or "=" not in parts[0]:
        raise ValueError(f"--arm '{text}': expected NAME=CONFIG [KEY VALUE ...]")
    name, config = parts[0].split("=", 1)
    opts = parts[1:]
    if not name or not config:
        raise ValueError(f"--arm '{text}': expected NAME=CONFIG [KEY VALUE ...]")
    if len(opts) % 2:
        raise ValueError(f"--arm '{text}': overrides come in KEY VALUE pairs; '{opts[-1]}' has no value")
    return Arm(name, config, opts, name, is_kd_config(config, opts))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plain", required=True, help="config of the plain student (the arm every other is compared to)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=CONFIG [KEY VALUE ...]",
                    help="a compared arm (repeatable); KD arms get the replicate's teacher")
    ap.add_argument("--teacher", help="teacher config, re-trained per replicate (omit: the KD configs' own teacher)")
    ap.add_argument("--warm-start", help="config of a warm-start stage the students continue from (MODEL.WEIGHTS)")
    ap.add_argument("--replicates", type=int, default=1, help="replicates (re-trained teacher and warm start)")
    ap.add_argument("--seeds", type=int, default=1, help="paired seeds per replicate")
    ap.add_argument("--teachers", type=int, default=0, help="distinct teachers (default: one per replicate)")
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--compare", action="append", default=[], metavar="A-B", help="extra comparison A − B")
    ap.add_argument("--metrics", default="", help="comma-separated metric keys (default: by task)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each when > 1)")
    ap.add_argument("--output-dir", default="output/evidence")
    ap.add_argument("--report-name", default="evidence_report")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs with the same config and overrides")
    ap.add_argument("--cpu-isa", default="default", choices=sorted(CPU_ISA_ENV),
                    help="'avx2': AVX2 kernels (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), as another machine")
    for stage in ("teacher", "warm", "student", "kd"):
        ap.add_argument(f"--{stage}-opts", default="", metavar="'KEY VALUE ...'",
                        help=f"overrides for the {stage} runs" + (" (every student arm)" if stage == "student" else
                                                                   " (KD arms)" if stage == "kd" else ""))
    return ap


def _opts(text: str, flag: str) -> List[str]:
    opts = shlex.split(text)
    if len(opts) % 2:
        raise ValueError(f"{flag} '{text}': overrides come in KEY VALUE pairs")
    return opts


def parse_compare(items: Sequence[str], names: Sequence[str]) -> List[Tuple[str, str]]:
    """``A-B`` items -> pairs; arm names may contain '-' (split at the first '-' that gives two arm names)."""
    out = []
    for c in items:
        for i, ch in enumerate(c):
            if ch == "-" and c[:i] in names and c[i + 1:] in names:
                out.append((c[:i], c[i + 1:]))
                break
        else:
            raise ValueError(f"--compare '{c}': expected A-B with arm names among {list(names)}")
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = build_parser()
    args = ap.parse_args(argv)
    arms = [parse_arm(a) for a in args.arm]
    names = ["plain"] + [a.name for a in arms]
    spec = Spec(plain=Arm("plain", args.plain, [], "plain student", False), arms=arms,
                output_dir=args.output_dir, teacher=args.teacher, teacher_opts=_opts(args.teacher_opts, "--teacher-opts"),
                warm_start=args.warm_start, warm_opts=_opts(args.warm_opts, "--warm-opts"),
                student_opts=_opts(args.student_opts, "--student-opts"), kd_opts=_opts(args.kd_opts, "--kd-opts"),
                replicates=args.replicates, seeds=args.seeds, teachers=args.teachers, base_seed=args.base_seed,
                jobs=args.jobs, reuse=args.reuse, cpu_isa=args.cpu_isa, compare=parse_compare(args.compare, names),
                metrics=[m for m in args.metrics.split(",") if m], report_name=args.report_name,
                command="python tools/evidence.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
    for path in [spec.plain.config] + [p for p in (spec.teacher, spec.warm_start) if p]:
        if not os.path.isfile(path if os.path.isabs(path) else os.path.join(ROOT, path)):
            ap.error(f"config file not found: {path}")
    return run(spec)


if __name__ == "__main__":
    main()
