"""Configuration: ``get_cfg()`` returns a copy of the defaults (``defaults.py``, with the per-loss
``KD.<LOSS>`` nodes of ``kd_defaults.py``). Torch-free: importing it loads no model code."""
from .config import CfgNode
from .defaults import _C


def get_cfg() -> CfgNode:
    """A fresh copy of the default config, with every key ``bcd`` knows."""
    return _C.clone()


__all__ = ["CfgNode", "get_cfg"]
