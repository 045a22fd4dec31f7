"""Configuration: ``get_cfg()`` returns a copy of the defaults (see ``defaults.py``)."""
from .config import CfgNode
from .defaults import _C


def get_cfg() -> CfgNode:
    """A fresh copy of the default config, with every key ``bcd`` knows.

    The per-loss nodes ``KD.<LOSS>`` are declared by the loss files themselves (each module of
    ``bcd.distill.losses`` may define ``add_config(cfg)``) and collected here.
    """
    cfg = _C.clone()
    # Imported here, not at module level: the losses import the config package.
    from bcd.distill.losses import add_loss_configs

    add_loss_configs(cfg)
    return cfg


__all__ = ["CfgNode", "get_cfg"]
