"""Start-of-run checks of the config against the datasets: one owner for "bad input before
training".

``validate_run(cfg, splits)`` is called by ``tools/train_net.py`` before ``default_setup``
writes anything to ``OUTPUT_DIR`` and again by ``DefaultTrainer.__init__`` (for code that builds
a trainer directly). It

1. registers ``DATASETS.CUSTOM`` and runs every dataset's own check (``register_from_config``:
   folders exist, COCO json files are valid and complete for evaluation);
2. checks the model's class count against the class list in each dataset's metadata
   (``stuff_classes`` / ``thing_classes``), through the meta-architecture's ``CLASS_COUNT``
   (``bcd.modeling.meta_arch.ClassCountKey``: the config key of its class count, declared once
   on the class);
3. for models with an ignore value, checks it against each dataset's ``ignore_label``;
4. reads the first image of each custom dataset with ``INPUT.INTENSITY_SCALING`` (a
   high-bit-depth dataset without a scaling rule is refused, naming the file and its mode);
5. checks object-segmentation masks (``bcd.data.datasets.object_seg.check_object_seg_masks``:
   sizes against the images, masks stored as 0 / 1);
6. when training, checks ``TEST.BEST_CHECKPOINT_METRIC`` against the names the evaluators of
   ``DATASETS.TEST`` can return (``check_best_checkpoint_metric``).
7. for a training run of a distillation config (``"TRAIN"`` in ``splits``), the teacher's config
   and weights exist (``bcd.distill.check_teacher``: the error gives the command that trains
   the teacher). ``--eval-only`` evaluates the student alone and needs no teacher.

Every failure is a ``ValueError`` naming the config key, the dataset and both values, raised
before any model is built. A meta-architecture without ``CLASS_COUNT`` is not checked (a
warning says so); a new meta-architecture declares it as a class attribute.
"""
from __future__ import annotations

import logging
from typing import Iterable, List, Sequence

from ..data.catalog import MetadataCatalog
from ..modeling.meta_arch import ClassCountKey, class_count_key

logger = logging.getLogger(__name__)

__all__ = ["check_class_counts", "validate_run"]


def _custom_entry_key(cfg, dataset: str, key: str) -> str:
    """``DATASETS.CUSTOM['name'].KEY`` when ``dataset`` comes from the config, else the metadata
    field it is read from (builtin datasets)."""
    for entry in cfg.DATASETS.CUSTOM:
        if dict(entry).get("NAME") == dataset:
            return f"DATASETS.CUSTOM['{dataset}'].{key}"
    return f"the metadata '{key.lower()}' of builtin dataset '{dataset}'"


def check_class_counts(cfg, dataset_names: Sequence[str]) -> None:
    """Raise ``ValueError`` when the model's class count (or ignore value) disagrees with the
    metadata of one of ``dataset_names``.

    The model is ``MODEL.META_ARCHITECTURE`` (the student when ``KD.LOSSES`` is set). Datasets
    whose metadata holds no class list yet (a builtin COCO split before it is loaded) are
    skipped with a note in the log.
    """
    arch = cfg.MODEL.META_ARCHITECTURE
    spec = class_count_key(arch)
    if spec is None:
        logger.warning(
            f"MODEL.META_ARCHITECTURE '{arch}' declares no CLASS_COUNT (a "
            f"bcd.modeling.meta_arch.ClassCountKey class attribute): its class count is not "
            f"checked against the datasets"
        )
        return
    if not spec.num_classes_key:
        return
    num_classes = spec.num_classes(cfg)
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        classes = getattr(meta, spec.metadata_field, None)
        if classes is None:
            logger.info(
                f"Dataset '{name}' has no '{spec.metadata_field}' in its metadata before loading; "
                f"{spec.num_classes_key} is not checked against it"
            )
        elif len(classes) != num_classes:
            raise ValueError(
                f"{spec.num_classes_key} is {num_classes} but dataset '{name}' has "
                f"{len(classes)} classes ({spec.metadata_field}: {list(classes)[:10]}"
                f"{' ...' if len(classes) > 10 else ''}); set {spec.num_classes_key} "
                f"{len(classes)} (a smaller count trains the other classes as background)"
            )
        if spec.ignore_value_key:
            ignore_label = getattr(meta, "ignore_label", None)
            ignore_value = int(ClassCountKey.read(cfg, spec.ignore_value_key))
            if ignore_label is not None and int(ignore_label) != ignore_value:
                raise ValueError(
                    f"Dataset '{name}' marks ignored pixels with {int(ignore_label)} "
                    f"({_custom_entry_key(cfg, name, 'IGNORE_LABEL')}) but "
                    f"{spec.ignore_value_key} is {ignore_value}: training would learn the "
                    f"ignored pixels as a class while evaluation skips them. Set "
                    f"{spec.ignore_value_key} {int(ignore_label)} (or relabel the dataset)"
                )


def validate_run(cfg, splits: Iterable[str] = ("TRAIN", "TEST")) -> None:
    """Every start-of-run check of ``cfg`` against the datasets of ``DATASETS.<split>``.

    Registers the custom datasets and runs their checks (``register_from_config``), then
    ``check_class_counts``, ``check_custom_images``, ``check_object_seg_masks`` and, when
    training (``"TRAIN"`` in ``splits``), ``check_best_checkpoint_metric`` and ``check_teacher``
    (a distillation config's teacher files). Call it before anything is written to
    ``OUTPUT_DIR``.

    Raises:
        ValueError / FileNotFoundError / KeyError: naming the key, the dataset or the file.
    """
    from ..data.datasets import register_from_config
    from ..distill import check_teacher

    splits = tuple(splits)
    register_from_config(cfg, splits=splits)
    names: List[str] = []
    for split in splits:
        for name in cfg.DATASETS[split]:
            if name not in names:
                names.append(name)
    check_class_counts(cfg, names)
    check_custom_images(cfg, names)
    from ..data.datasets.object_seg import check_object_seg_masks

    check_object_seg_masks(cfg, names)  # mask sizes, 0 / 1 masks (issue 22)
    if "TRAIN" in splits:
        check_best_checkpoint_metric(cfg)
        # a distillation run needs its teacher; evaluating (TEST only) the student does not
        check_teacher(cfg)


def check_custom_images(cfg, dataset_names: Sequence[str]) -> None:
    """Read the first image of each dataset of ``DATASETS.CUSTOM`` among ``dataset_names`` with
    the configured ``INPUT.INTENSITY_SCALING``, so a high-bit-depth dataset without a scaling
    rule (or with an invalid ``INPUT.INTENSITY_RANGE``) is refused before training, naming the
    file and its mode. Builtin datasets are 8-bit and not read here; a later image of another
    kind fails when the loader reads it, naming the file.
    """
    from ..data.catalog import DatasetCatalog
    from ..data.io import IntensityScaling, read_image

    scaling = IntensityScaling.from_config(cfg)
    custom = {dict(e).get("NAME") for e in cfg.DATASETS.CUSTOM}
    for name in dataset_names:
        if name not in custom:
            continue
        dicts = DatasetCatalog.get(name)
        if dicts:
            read_image(dicts[0]["file_name"], scaling=scaling)



def check_best_checkpoint_metric(cfg) -> None:
    """Raise ``ValueError`` when ``TEST.BEST_CHECKPOINT_METRIC`` is set but no evaluation of the
    run can produce it, so that no run trains to the end without ever writing ``model_best.pth``
    (detectron2#1482). Without test datasets (evaluation off) it is a warning.

    The valid names are the flattened results of ``DefaultTrainer.test``: ``task/metric`` with
    one test dataset, ``dataset/task/metric`` with several, as each dataset's evaluator
    (``bcd.evaluation.build_evaluator``, built here without an output folder) lists them in
    ``metric_names()``. An evaluator that does not list its names (None) leaves the metric
    unchecked, with a note in the log. A name that is valid but undefined at an evaluation
    (NaN, e.g. ``bbox/APl`` without large objects) is the ``BestCheckpointer``'s warning.
    """
    import difflib

    from ..evaluation import build_evaluator

    metric = cfg.TEST.BEST_CHECKPOINT_METRIC
    if not metric:
        return
    key = "TEST.BEST_CHECKPOINT_METRIC"
    tests = list(cfg.DATASETS.TEST)
    if not tests:  # evaluation switched off on purpose (the configs' bases set a metric)
        logger.warning(
            f"{key} is '{metric}' but DATASETS.TEST is empty: no evaluation runs, so no "
            f"model_best.pth will be written"
        )
        return
    valid: List[str] = []
    for name in tests:
        names = build_evaluator(cfg, name, None).metric_names()
        if names is None:
            logger.info(
                f"The evaluator of '{name}' does not list its metric names: {key} '{metric}' is "
                f"not checked at start-up"
            )
            return
        valid += names if len(tests) == 1 else [f"{name}/{n}" for n in names]
    if metric not in valid:
        # with several test datasets the names start with the dataset's
        close = [v for v in valid if v.endswith("/" + metric)] or difflib.get_close_matches(
            metric, valid, n=3, cutoff=0.5)
        shown = valid if len(valid) <= 40 else valid[:40] + [f"... ({len(valid)} in all)"]
        raise ValueError(
            f"{key} is '{metric}', which the evaluators of DATASETS.TEST {tests} do not produce"
            f"{f' (closest: {close})' if close else ''}; valid names: {', '.join(shown)}"
        )
