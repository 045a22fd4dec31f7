"""The layers of docs/internals.md import strictly downward (issue 10, item 1).

utils / structures / config  <-  data, modeling, evaluation, solver  <-  distill  <-  engine

``bcd.config`` loads no model code at all (checked in a fresh interpreter), and every import
statement under ``bcd/`` (module level or inside a function) is checked against the layer order
by reading the source with ``ast``.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(ROOT, "bcd")

# Rank of each top-level package of bcd: a module may import only lower ranks (and its own
# package). Packages of one rank may import each other only where listed in ALLOWED_SIDEWAYS.
RANK = {
    "utils": 0, "structures": 0, "config": 0,
    "data": 1, "modeling": 1, "evaluation": 1, "solver": 1,
    "distill": 2,
    "engine": 3,
}
# Evaluators read the dataset catalog's metadata (Detectron2 does the same).
ALLOWED_SIDEWAYS = {("evaluation", "data")}
# utils / structures / config are the bottom layer but must not lean on each other in a cycle;
# config imports nothing of bcd (it is checked stricter below).
BOTTOM_PRIVATE = {"config"}


def _package_of(path: str) -> str:
    rel = os.path.relpath(path, PKG)
    return rel.split(os.sep)[0] if os.sep in rel else ""


def _imports(path: str):
    """``(line, top-level bcd package)`` of every import of ``bcd`` in ``path``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    rel_mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    parts = rel_mod.split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    is_pkg = path.endswith("__init__.py")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts if is_pkg else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for n in names:
            p = n.split(".")
            if p[0] == "bcd" and len(p) > 1:
                out.append((node.lineno, p[1]))
    return out


def _python_files():
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(d, f)


def test_importing_bcd_config_loads_no_model_code():
    code = (
        "import sys, bcd.config\n"
        "cfg = bcd.config.get_cfg()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('bcd'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out and all(m == "bcd" or m.startswith("bcd.config") for m in out), out
    for layer in ("bcd.engine", "bcd.modeling", "bcd.distill", "bcd.data"):
        assert not any(m == layer or m.startswith(layer + ".") for m in out), out


def test_every_import_points_down_the_layers():
    bad = []
    for path in _python_files():
        pkg = _package_of(path)
        if pkg not in RANK:
            continue
        for line, target in _imports(path):
            if target == pkg or target not in RANK:
                continue
            if pkg in BOTTOM_PRIVATE:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports bcd.{target}")
            elif RANK[target] > RANK[pkg] or (
                RANK[target] == RANK[pkg] and (pkg, target) not in ALLOWED_SIDEWAYS
            ):
                bad.append(f"{os.path.relpath(path, ROOT)}:{line} ({pkg}) imports bcd.{target}")
    assert bad == [], "imports against the layer order:\n" + "\n".join(bad)


def test_loss_files_declare_no_config():
    """``KD.<LOSS>`` nodes are declared in bcd/config/kd_defaults.py, not in loss files (a
    loss-file ``add_config`` would never be called)."""
    bad = []
    for path in _python_files():
        if _package_of(path) in ("distill", "modeling"):
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            bad += [f"{os.path.relpath(path, ROOT)}:{n.lineno}" for n in tree.body
                    if isinstance(n, ast.FunctionDef) and n.name == "add_config"]
    assert bad == [], f"add_config in loss / model files (move it to bcd/config/kd_defaults.py): {bad}"


@pytest.mark.parametrize("src,expected", [
    ("from ..engine import x", ["engine"]),
    ("from . import y", ["distill"]),
    ("import bcd.modeling.meta_arch", ["modeling"]),
    ("def f():\n    from bcd.utils.comm import get_rank", ["utils"]),
])
def test_import_scanner_resolves_relative_and_lazy_imports(tmp_path, src, expected, monkeypatch):
    d = tmp_path / "bcd" / "distill"
    d.mkdir(parents=True)
    f = d / "mod.py"
    f.write_text(src)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert [t for _, t in _imports(str(f))] == expected
