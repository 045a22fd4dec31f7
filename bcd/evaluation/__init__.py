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
    results_table,
)

# Task evaluators register themselves in EVALUATOR_TYPES on import.
from . import sem_seg_evaluation, cityscapes_evaluation, coco_evaluation  # noqa: E402,F401
from . import object_seg_evaluation  # noqa: E402,F401

__all__ = [
    "EVALUATOR_TYPES",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "build_evaluator",
    "flatten_results_dict",
    "inference_context",
    "inference_on_dataset",
    "print_csv_format",
    "results_table",
]
