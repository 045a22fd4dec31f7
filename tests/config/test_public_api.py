"""The public names of each package (docs/internals.md, "Public API"; issue 21): every name the
table lists imports from its package, and the list is the package's ``__all__`` (no more, no
fewer), so the documentation and the code cannot drift apart."""
from __future__ import annotations

import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = re.compile(r"^\| `(bcd\.\w+)` \| (.+) \|$")


def _table():
    text = open(os.path.join(ROOT, "docs", "internals.md"), encoding="utf-8").read()
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line.strip())
        if m:
            rows[m.group(1)] = re.findall(r"`([A-Za-z_][\w]*)`", m.group(2))
    return rows


TABLE = _table()


def test_table_lists_the_packages_a_detectron2_user_imports():
    assert {"bcd.config", "bcd.data", "bcd.modeling", "bcd.evaluation", "bcd.engine", "bcd.distill",
            "bcd.checkpoint"} <= set(TABLE)


@pytest.mark.parametrize("package", sorted(TABLE))
def test_every_listed_name_imports_and_equals_all(package):
    mod = importlib.import_module(package)
    missing = [n for n in TABLE[package] if not hasattr(mod, n)]
    assert not missing, f"{package} lacks {missing}"
    assert sorted(TABLE[package]) == sorted(mod.__all__), (
        f"docs/internals.md lists for {package} {sorted(TABLE[package])}, its __all__ is {sorted(mod.__all__)}")


def test_detectron2_style_imports():
    from bcd.checkpoint import Checkpointer
    from bcd.engine import Checkpointer as EngineCheckpointer
    from bcd.evaluation import COCOEvaluator, DatasetEvaluator, SemSegEvaluator

    assert Checkpointer is EngineCheckpointer  # one class, two import paths
    assert issubclass(COCOEvaluator, DatasetEvaluator) and issubclass(SemSegEvaluator, DatasetEvaluator)
