"""What tools/analyze_model.py, export.py and visualize.py share: a config from a file and
``KEY VALUE`` overrides, and the deployable model of that config with its trained weights."""
from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional, Sequence

from torch import nn

# Run from a checkout without installing: make `import bcd` find the package beside tools/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bcd.config import CfgNode, get_cfg  # noqa: E402

logger = logging.getLogger("bcd.tools")


def load_config(config_file: str, opts: Sequence[str] = (), device: Optional[str] = None) -> CfgNode:
    """``get_cfg()`` + ``config_file`` + ``opts`` (``KEY VALUE`` pairs); ``device`` overrides
    ``MODEL.DEVICE``. Raises ``FileNotFoundError`` naming a missing config file."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file not found: {config_file}")
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if device:
        cfg.MODEL.DEVICE = device
    return cfg


def model_config(cfg: CfgNode, teacher: bool = False) -> CfgNode:
    """The config of the deployable network of ``cfg``: the teacher's
    (``KD.TEACHER.CONFIG_FILE`` + ``OPTS``) with ``teacher``, else ``cfg`` without ``KD.LOSSES``
    (a distillation config deploys its student). ``MODEL.BACKBONE.WEIGHTS`` is cleared: the
    ImageNet file only starts a training (tools load trained weights or need none)."""
    from bcd.distill import student_config, teacher_config
    from bcd.modeling.backbone import without_init_weights

    if teacher:
        return teacher_config(cfg)
    return student_config(without_init_weights(cfg))


def build_deployable(cfg: CfgNode, weights: str = "", teacher: bool = False,
                     missing_ok: bool = False) -> nn.Module:
    """The deployable model (``deploy_model()``) of ``cfg`` (see :func:`model_config`) in eval mode on
    ``MODEL.DEVICE``, with ``weights`` loaded strictly when given (a ``model_final.pth``, a full
    training checkpoint, or a distillation checkpoint whose ``student.*`` part fits); with
    ``teacher`` and no ``weights``, ``KD.TEACHER.WEIGHTS``. Random weights when none, or when
    ``missing_ok`` and the file does not exist (a warning names it: parameter and FLOP counts
    need no trained weights). A distillation config never builds its teacher unless ``teacher``.

    Raises:
        FileNotFoundError: naming a weights file that does not exist (unless ``missing_ok``).
    """
    from bcd.engine import Checkpointer
    from bcd.engine.checkpoint import deploy_model
    from bcd.modeling import build_model

    mcfg = model_config(cfg, teacher)
    key = "MODEL.WEIGHTS"
    if teacher and not weights:
        weights, key = cfg.KD.TEACHER.WEIGHTS, "KD.TEACHER.WEIGHTS"
    model = build_model(mcfg)
    if weights and missing_ok and not weights_available(weights):
        logger.warning(f"{key} '{weights}' does not exist: the model keeps its random initialisation")
        weights = ""
    if weights:
        Checkpointer(model).load(weights, checkpointables=[])
    else:
        logger.warning("No weights given: the model keeps its random initialisation")
    return deploy_model(model).eval()


def weights_available(path: str) -> bool:
    """A checkpoint file, or a transformers checkpoint (``hf://`` name, ``save_pretrained``
    folder) that the loader resolves itself."""
    from bcd.modeling.hf_checkpoint import is_hf_checkpoint

    return os.path.isfile(path) or is_hf_checkpoint(path)


def resolve_checkpoint(path: str, flag: str = "checkpoint") -> str:
    """A checkpoint file, or a run folder standing for its latest full checkpoint (the file its
    ``last_checkpoint`` names, as ``--resume`` reads it): the folder form stays right whatever
    the run's length. Raises ``FileNotFoundError`` naming ``flag`` and the path."""
    if os.path.isdir(path):
        last = os.path.join(path, "last_checkpoint")
        if not os.path.isfile(last):
            raise FileNotFoundError(f"{flag} {path}: a folder without last_checkpoint (not a training run's "
                                    "OUTPUT_DIR); give a checkpoint file model_XXXXXXX.pth")
        with open(last) as f:
            name = f.read().strip()
        path = os.path.join(path, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: checkpoint '{path}' does not exist")
    return path


def split_opts(argv_opts: List[str]) -> List[str]:
    """Trailing ``KEY VALUE`` overrides; an odd count is an error naming the last key."""
    if len(argv_opts) % 2:
        raise ValueError(f"Config overrides come in KEY VALUE pairs; '{argv_opts[-1]}' has no value")
    return list(argv_opts)
