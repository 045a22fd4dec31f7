"""The standalone toolkit needs no Detectron2: nothing under ``bcd/`` imports it at module level
(read with ``ast``; an import inside a function is allowed), and (slow) the packages import in a
fresh interpreter in which ``import detectron2`` fails. The Detectron2 project (projects/bcd/bcd_d2)
is the only code that imports it."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module_level_imports(tree):
    """Top-level modules imported by statements that run at import time (module body, class
    bodies, ``if`` / ``try`` blocks), not inside functions."""
    out = []
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
        stack.extend(ast.iter_child_nodes(node))
    return out


def test_no_module_level_detectron2_import_in_bcd():
    found = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "bcd")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                tree = ast.parse(open(path, encoding="utf-8").read(), path)
                found += [f"{os.path.relpath(path, ROOT)}:{line}" for line, mod in _module_level_imports(tree)
                          if mod == "detectron2"]
    assert not found, found


@pytest.mark.slow  # a fresh interpreter importing every package: ~7 s on an idle core
def test_bcd_imports_with_detectron2_unimportable():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'detectron2' or name.startswith('detectron2.'):\n"
        "            raise ImportError('detectron2 blocked by the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import bcd, bcd.config, bcd.structures, bcd.data, bcd.modeling, bcd.evaluation, bcd.solver\n"
        "import bcd.distill, bcd.engine, bcd.modeling.d2_convert\n"
        "from bcd.config import get_cfg\n"
        "assert 'BOUNDARY' in get_cfg().KD\n"
        "assert not any(m.split('.')[0] == 'detectron2' for m in sys.modules)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
