"""Environment: seeding every random generator, and a summary of the software and hardware."""
from __future__ import annotations

import importlib
import logging
import os
import platform
import random
import sys
from datetime import datetime
from typing import List, Optional, Tuple

import numpy as np
import torch


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed python's ``random``, numpy and torch (all devices).

    Args:
        seed: the seed; None draws one from the time, the pid and os.urandom.

    Returns:
        The seed used (logged so that a run can be repeated).
    """
    if seed is None:
        seed = (
            os.getpid()
            + int(datetime.now().strftime("%S%f"))
            + int.from_bytes(os.urandom(2), "big")
        ) % (2**31)
        logging.getLogger(__name__).info(f"Using a generated random seed {seed}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # the summary must not fail because one library is broken
        return f"not importable ({type(e).__name__})"
    return str(getattr(mod, "__version__", "unknown"))


def collect_env_info() -> str:
    """A table of the platform, Python, library versions and accelerators, for ``log.txt``."""
    from tabulate import tabulate

    rows: List[Tuple[str, str]] = [
        ("sys.platform", sys.platform),
        ("Platform", platform.platform()),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", _version("numpy")),
        ("bcd", _version("bcd") + " @" + os.path.dirname(os.path.dirname(__file__))),
        ("PyTorch", torch.__version__ + " @" + os.path.dirname(torch.__file__)),
        ("torchvision", _version("torchvision")),
        ("fvcore", _version("fvcore")),
        ("iopath", _version("iopath")),
        ("pycocotools", _version("pycocotools")),
        ("cv2", _version("cv2")),
        ("PIL", _version("PIL")),
        ("timm", _version("timm")),
        ("torch CUDA build", str(torch.version.cuda)),
        ("CUDA available", str(torch.cuda.is_available())),
        ("distributed backends", ", ".join(
            b for b, ok in (("gloo", torch.distributed.is_gloo_available()),
                            ("nccl", torch.distributed.is_nccl_available())) if ok
        ) or "none"),
        ("CPU threads", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append((f"GPU {i}", f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"))
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))
    return tabulate(rows)
