"""Fixtures of the Detectron2 project's tests (projects/bcd/bcd_d2).

The test modules skip (with the reason) where Detectron2 cannot be imported; this file imports
nothing of Detectron2 itself. ``projects/bcd`` goes on ``sys.path`` so that ``import bcd_d2`` and
``projects/bcd/train_net.py`` work as they do for a user.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT = os.path.join(REPO, "projects", "bcd")
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)


@pytest.fixture(scope="session")
def train_net():
    """``run(argv)``: ``main()`` of ``projects/bcd/train_net.py`` in this process."""
    return run_train_net


def load_train_net():
    """``projects/bcd/train_net.py`` as a module (its ``main(args)`` runs in this process)."""
    spec = importlib.util.spec_from_file_location("bcd_d2_train_net", os.path.join(PROJECT, "train_net.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_train_net(argv):
    """``main()`` of ``projects/bcd/train_net.py`` with Detectron2's argument parser."""
    from detectron2.engine import default_argument_parser

    return load_train_net().main(default_argument_parser().parse_args(list(argv)))


@pytest.fixture(scope="session")
def demo_datasets(tmp_path_factory):
    """``$BCD_DATASETS`` for the session (the generated demo COCO data is written there once)."""
    root = os.environ.get("BCD_DATASETS") or str(tmp_path_factory.mktemp("datasets"))
    old = os.environ.get("BCD_DATASETS")
    os.environ["BCD_DATASETS"] = root
    yield root
    if old is None:
        os.environ.pop("BCD_DATASETS", None)
    else:
        os.environ["BCD_DATASETS"] = old
