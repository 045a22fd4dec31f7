"""Utilities: distributed communication, event storage and writers, logging, environment."""
from . import comm
from .env import collect_env_info, seed_all_rng
from .events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)
from .logger import setup_logger

__all__ = [
    "comm",
    "collect_env_info",
    "seed_all_rng",
    "CommonMetricPrinter",
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "TensorboardXWriter",
    "get_event_storage",
    "setup_logger",
]
