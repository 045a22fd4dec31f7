"""The layers of docs/internals.md import strictly downward (issue 10, item 1).

utils / structures / config  <-  data, modeling, evaluation, solver  <-  distill  <-  engine
<-  checkpoint (a re-export of the engine's checkpointer)

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
    # a façade: re-exports bcd.engine's checkpointer under Detectron2's package name
    "checkpoint": 4,
}
# Evaluators read the dataset catalog's metadata (Detectron2 does the same).
ALLOWED_SIDEWAYS = {("evaluation", "data")}
# utils / structures / config are the bottom layer but must not lean on each other in a cycle;
# config imports nothing of bcd (it is checked stricter below).
BOTTOM_PRIVATE = {"config"}


def _package_of(path: str) -> str:
    rel = os.path.relpath(path, PKG)
    return rel.split(os.sep)[0] if os.sep in rel else ""


def _from_module(node: ast.ImportFrom, path: str, root: str) -> str:
    """The absolute module a ``from ... import`` statement of the file ``path`` reads from."""
    if not node.level:
        return node.module or ""
    parts = os.path.relpath(path, root)[:-3].split(os.sep)
    base = parts[:-1]  # the package of a module, or the package itself for an __init__
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: str):
    """``(line, top-level bcd package)`` of every import of ``bcd`` in ``path``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _from_module(node, path, ROOT)
            names = [f"{mod}.{a.name}" for a in node.names] if node.level and not node.module else [mod]
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


# ----------------------------------------------------------------------- cycles inside packages
def _is_module(name: str, root: str) -> bool:
    p = os.path.join(root, *name.split("."))
    return os.path.isfile(p + ".py") or os.path.isfile(os.path.join(p, "__init__.py"))


def _module_level_edges(path: str, root: str):
    """``(line, bcd module)`` imported at module level by ``path`` (statements run on import:
    top level, and inside top-level ``if`` / ``try``; not in functions or classes).
    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    stmts, out = list(tree.body), []
    while stmts:
        node = stmts.pop(0)
        if isinstance(node, (ast.If, ast.Try)):
            stmts[:0] = list(node.body) + list(getattr(node, "orelse", [])) + [
                s for h in getattr(node, "handlers", []) for s in h.body] + list(getattr(node, "finalbody", []))
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _from_module(node, path, root)
            targets = [f"{mod}.{a.name}" if _is_module(f"{mod}.{a.name}", root) else mod for a in node.names]
        else:
            continue
        out += [(node.lineno, t) for t in targets if t.split(".")[0] == "bcd" and _is_module(t, root)]
    return out


def _import_cycles(root: str):
    """Strongly connected components (more than one module, or a module importing itself) of
    the module-level import graph of ``root``/bcd (Tarjan)."""
    graph = {}
    for d, _, files in os.walk(os.path.join(root, "bcd")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                mod = ".".join(os.path.relpath(path, root)[:-3].split(os.sep))
                mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
                graph[mod] = {t for _, t in _module_level_edges(path, root)}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_level_import_cycle_inside_packages():
    """A cycle of module-level imports (e.g. a package ``__init__`` defining registries and
    importing submodules that import them back) works only in one import order."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    cycles = _import_cycles(ROOT)
    assert cycles == [], "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_scanner_sees_a_package_that_imports_back(tmp_path):
    pkg = tmp_path / "bcd" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "bcd" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("REG = {}\nfrom . import a\n")
    (pkg / "a.py").write_text("from . import REG\n\ndef f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    assert _import_cycles(str(tmp_path)) == [["bcd.data", "bcd.data.a"]]
    (pkg / "a.py").write_text("from .reg import REG\n")
    (pkg / "reg.py").write_text("REG = {}\n")
    (pkg / "__init__.py").write_text("from .reg import REG\nfrom . import a\n")
    assert _import_cycles(str(tmp_path)) == []
