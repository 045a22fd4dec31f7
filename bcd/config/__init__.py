"""Configuration: ``get_cfg()`` returns a copy of the defaults (see ``defaults.py``)."""
from .config import CfgNode
from .defaults import _C


def get_cfg() -> CfgNode:
    """A fresh copy of the default config, with every key ``bcd`` knows."""
    return _C.clone()


__all__ = ["CfgNode", "get_cfg"]
