"""Evaluation: the evaluator protocol, the inference loop, and the evaluators of each task.

``build_evaluator(cfg, dataset_name, output_dir)`` picks the evaluator by the dataset's
``evaluator_type`` from ``EVALUATOR_TYPES``; the task modules imported below add their entries.
"""
from .evaluator import (
    EVALUATOR_TYPES,
    DatasetEvaluator,
    DatasetEvaluators,
    build_evaluator,
    flatten_results_dict,
    inference_context,
    inference_on_dataset,
    print_csv_format,
)

# Task evaluators register themselves in EVALUATOR_TYPES on import; the classes are public, as
# in detectron2.evaluation (``from bcd.evaluation import COCOEvaluator, SemSegEvaluator``).
from .sem_seg_evaluation import SemSegEvaluator  # noqa: E402
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator  # noqa: E402
from .coco_evaluation import COCOEvaluator  # noqa: E402
from .object_seg_evaluation import ObjectSegEvaluator  # noqa: E402

__all__ = [
    "COCOEvaluator",
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "EVALUATOR_TYPES",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "ObjectSegEvaluator",
    "SemSegEvaluator",
    "build_evaluator",
    "flatten_results_dict",
    "inference_context",
    "inference_on_dataset",
    "print_csv_format",
]
