"""The dataset registries every task module fills, and the config's custom datasets.

``CUSTOM_DATASET_TYPES`` (``TYPE`` -> registering function) and ``DATASET_CHECKS`` (name ->
start-up check) are filled by the task modules of ``bcd.data.datasets`` when they are imported;
``register_from_config(cfg)`` registers every entry of ``cfg.DATASETS.CUSTOM`` through the
function its ``TYPE`` names. Kept apart from the package's ``__init__`` so that the task modules
import it, not the package that imports them (no import cycle).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable

from ..catalog import DatasetCatalog

# TYPE -> function(entry: dict) registering one custom dataset. Filled by the task modules.
CUSTOM_DATASET_TYPES: Dict[str, Callable[[dict], None]] = {}

# name -> function() raising a clear error (naming the missing folder / bad file) when the
# dataset cannot be used. Cheap for builtin datasets (folders exist); the task modules fill it.
DATASET_CHECKS: Dict[str, Callable[[], None]] = {}


def check_datasets(names: Iterable[str]) -> None:
    """Run the ``DATASET_CHECKS`` entry of each name (datasets without one are skipped), so a
    missing folder fails before a model is built."""
    for name in names:
        fn = DATASET_CHECKS.get(name)
        if fn is not None:
            fn()


def get_datasets_root() -> str:
    """Root of the builtin datasets: ``$BCD_DATASETS``, default ``./datasets``."""
    return os.path.expanduser(os.environ.get("BCD_DATASETS", "datasets"))


def register_from_config(cfg, splits: Iterable[str] = ("TRAIN", "TEST")) -> None:
    """Register the datasets of ``cfg.DATASETS.CUSTOM`` (a list of dicts, see datasets/README.md).

    An entry already registered under the same name is left as it is, so calling this twice
    (trainer and evaluator) is harmless. Then ``check_datasets`` runs on the datasets of
    ``cfg.DATASETS.<split>`` for each of ``splits`` (``("TEST",)`` for ``--eval-only``, so a
    machine holding only the validation data can evaluate).
    """
    for i, entry in enumerate(cfg.DATASETS.CUSTOM):
        entry = dict(entry)
        name, kind = entry.get("NAME"), entry.get("TYPE")
        if not name or not kind:
            raise ValueError(f"DATASETS.CUSTOM[{i}] needs NAME and TYPE; got {entry}")
        if kind not in CUSTOM_DATASET_TYPES:
            raise ValueError(
                f"DATASETS.CUSTOM[{i}] ('{name}'): unknown TYPE '{kind}'; known: "
                f"{', '.join(sorted(CUSTOM_DATASET_TYPES))}"
            )
        if name in DatasetCatalog:
            continue
        CUSTOM_DATASET_TYPES[kind](entry)
    check_datasets([name for split in splits for name in cfg.DATASETS[split]])
