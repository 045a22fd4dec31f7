"""The project's config: Detectron2's defaults plus ``bcd``'s ``KD`` node.

* :func:`add_bcd_config` adds the ``KD`` node of ``bcd`` (the very keys and defaults of the
  standalone toolkit, declared once in ``bcd/config/kd_defaults.py``) and this project's own
  ``KD.D2`` node to a Detectron2 ``CfgNode``, as PointRend's ``add_pointrend_config`` does.
* :class:`CfgNode` resolves ``model_zoo://<path>`` (a config of Detectron2's model zoo, e.g.
  ``model_zoo://COCO-Detection/retinanet_R_50_FPN_1x.yaml``) wherever a config file is named: in
  ``_BASE_``, in ``--config-file`` and in ``KD.TEACHER.CONFIG_FILE``. Detectron2 joins a relative
  ``_BASE_`` to the folder of the file naming it, so a project outside Detectron2's source tree
  cannot reach the model zoo with a relative path.
* :func:`teacher_config` builds the teacher's config from ``KD.TEACHER``.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from detectron2.config import CfgNode as _D2CfgNode
from detectron2.config import get_cfg as _d2_get_cfg

from bcd.config.kd_defaults import add_kd_config

__all__ = ["CfgNode", "MODEL_ZOO_PREFIX", "add_bcd_config", "get_cfg", "resolve_config_file",
           "teacher_config"]

MODEL_ZOO_PREFIX = "model_zoo://"

# The repository holding projects/bcd: config paths in the project's configs (the teachers') are
# relative to it, so they resolve from any working directory.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def resolve_config_file(path: str, key: str = "config file") -> str:
    """The file a config name refers to.

    ``model_zoo://<path>`` is Detectron2's ``model_zoo.get_config_file(<path>)``; the prefix may
    also follow a folder (Detectron2 prepends the folder of the including file to a relative
    ``_BASE_``). Another name is a path: as given, else relative to the repository root.

    Raises:
        FileNotFoundError: naming ``key`` and the path, when no such file exists.
        ImportError: Detectron2's model zoo cannot be imported (``setuptools`` 81 or later).
    """
    i = path.find(MODEL_ZOO_PREFIX)
    if i >= 0:
        try:
            from detectron2 import model_zoo
        except ImportError as e:  # its pkg_resources left setuptools in version 81
            raise ImportError(f"{key} '{path}': Detectron2's model zoo cannot be imported ({e}); "
                              "install the project's extras: pip install -e \".[detectron2]\" (setuptools<81)") from e

        name = path[i + len(MODEL_ZOO_PREFIX):]
        try:
            return model_zoo.get_config_file(name)
        except RuntimeError as e:  # Detectron2: "<name> not available in Model Zoo!"
            raise FileNotFoundError(f"{key} '{path}': {e}") from None
    if os.path.isfile(path):
        return path
    in_repo = os.path.join(_REPO_ROOT, path)
    if not os.path.isabs(path) and os.path.isfile(in_repo):
        return in_repo
    raise FileNotFoundError(f"{key} '{path}' does not exist (nor under {_REPO_ROOT})")


class CfgNode(_D2CfgNode):
    """Detectron2's ``CfgNode`` that also reads ``model_zoo://`` config names (module docstring)."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        # Called again for every _BASE_ (with the including file's folder prepended).
        return super().load_yaml_with_base(resolve_config_file(filename, "config file"), allow_unsafe)

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True) -> None:
        super().merge_from_file(resolve_config_file(cfg_filename, "config file"), allow_unsafe)


def add_bcd_config(cfg: _D2CfgNode) -> None:
    """Add ``bcd``'s ``KD`` node and the project's ``KD.D2`` keys to a Detectron2 config (in place).

    ``KD`` comes from ``bcd.config.kd_defaults.add_kd_config``: every key, default and comment
    is that of the standalone toolkit (docs/internals.md "Config", projects/bcd/README.md).
    Keys of the toolkit that this project does not read: ``KD.REPORT``, ``KD.EVAL_TEACHER``,
    ``KD.BASELINE_OUTPUT_DIR``, ``KD.TEACHER_OUTPUT_DIR`` (no ``kd_report`` is written here).

    ``KD.D2`` (this project only):

    * ``TEACHER_LOGITS``: a teacher feature name (recorder syntax, e.g.
      ``sem_seg_head.predictor``) whose output, dense class scores ``B×K×h×w``, the teacher
      publishes as ``teacher_outputs["logits"]``; ``KDContext.pseudo_labels`` takes its argmax
      (the pseudo-affinity fit of BCD's teacher boundary head). ``""``: none, and the ground-truth
      boxes of the batch give the pseudo labels (detectors).
    * ``TEACHER_EARLY_EXIT``: stop the teacher's forward once every module a loss records has
      run, so heads and post-processing no loss reads are skipped. A module that runs several
      times in one forward then keeps its first output (the recorder's rule is "the last"): set
      False for such features.
    """
    add_kd_config(cfg)
    cfg.KD.D2 = type(cfg)()
    cfg.KD.D2.TEACHER_LOGITS = ""
    cfg.KD.D2.TEACHER_EARLY_EXIT = True
    # One node class throughout (add_kd_config builds bcd's own CfgNode class).
    cfg.KD = type(cfg)(cfg.KD)


def get_cfg() -> CfgNode:
    """Detectron2's default config with :func:`add_bcd_config`, as a :class:`CfgNode`."""
    cfg = CfgNode(_d2_get_cfg())
    add_bcd_config(cfg)
    return cfg


def teacher_config(cfg: _D2CfgNode) -> CfgNode:
    """The teacher's config: :func:`get_cfg` + ``KD.TEACHER.CONFIG_FILE`` (a Detectron2 config;
    ``model_zoo://`` names and ``_BASE_`` allowed) + ``KD.TEACHER.OPTS``.

    ``MODEL.DEVICE`` follows the student; ``KD.LOSSES`` is emptied (the teacher is a plain
    model); ``MODEL.WEIGHTS`` is cleared: every teacher weight comes from ``KD.TEACHER.WEIGHTS``.

    Raises:
        ValueError: ``KD.TEACHER.CONFIG_FILE`` is empty.
        FileNotFoundError: it names no file.
    """
    path = cfg.KD.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError("KD.TEACHER.CONFIG_FILE is empty: a distillation run needs the teacher's config")
    tcfg = get_cfg()
    tcfg.merge_from_file(resolve_config_file(path, "KD.TEACHER.CONFIG_FILE"))
    tcfg.merge_from_list(list(cfg.KD.TEACHER.OPTS))
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    tcfg.MODEL.WEIGHTS = ""
    tcfg.KD.LOSSES = []
    return tcfg
