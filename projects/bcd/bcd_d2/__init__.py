"""``bcd_d2``: ``bcd``'s distillation (BCD and the KD baselines) as a Detectron2 project.

Import it (``import bcd_d2``, with ``projects/bcd`` on ``sys.path``, as ``train_net.py`` does) to
register the ``Distiller`` in Detectron2's ``META_ARCH_REGISTRY`` and the generated demo datasets
in Detectron2's ``DatasetCatalog``. See projects/bcd/README.md, "Detectron2 project".
"""
from .checkpoint import ModelCheckpointer, load_weights
from .config import CfgNode, add_bcd_config, get_cfg, resolve_config_file, teacher_config
from .data import DEMO_DATASETS, ResumableSampler, register_demo_datasets
from .distiller import Distiller, build_model, build_student, image_batch
from .trainer import KDTrainerLoop, Trainer, build_evaluator
from .validation import validate_run

register_demo_datasets()

__all__ = [
    "CfgNode",
    "DEMO_DATASETS",
    "Distiller",
    "KDTrainerLoop",
    "ModelCheckpointer",
    "ResumableSampler",
    "Trainer",
    "add_bcd_config",
    "build_evaluator",
    "build_model",
    "build_student",
    "get_cfg",
    "image_batch",
    "load_weights",
    "register_demo_datasets",
    "resolve_config_file",
    "teacher_config",
    "validate_run",
]
