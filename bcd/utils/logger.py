"""``setup_logger``: console on the main process, ``log.txt`` in ``OUTPUT_DIR`` (Detectron2 style)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"
_MARK = "_bcd_setup_logger"  # attribute on the handlers this module installs


def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    name: str = "bcd",
    level: int = logging.DEBUG,
) -> logging.Logger:
    """Configure the logger ``name``: INFO to stdout on rank 0, DEBUG to a file.

    Calling it again (e.g. a second run in the same process with another ``OUTPUT_DIR``)
    replaces the handlers it installed before, so a run never writes into another run's log.

    Args:
        output: a file name ending in ``.txt`` / ``.log``, or a directory (the file is then
            ``output/log.txt``). Ranks other than 0 write ``log.txt.rank{r}``. None: no file.
        distributed_rank: this process's global rank.
        name: the logger's name (``"bcd"``, ``"fvcore"``, ...).
        level: level of the logger itself.

    Returns:
        The configured logger.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, _MARK, False):
            logger.removeHandler(h)
            h.close()
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)

    if distributed_rank == 0:
        ch = logging.StreamHandler(stream=sys.stdout)
        ch.setLevel(logging.INFO)
        ch.setFormatter(formatter)
        setattr(ch, _MARK, True)
        logger.addHandler(ch)

    if output:
        if output.endswith(".txt") or output.endswith(".log"):
            filename = output
        else:
            filename = os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        fh = logging.FileHandler(filename, mode="a", encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(formatter)
        setattr(fh, _MARK, True)
        logger.addHandler(fh)
    return logger
