"""Data for Detectron2 runs: the generated demo detection datasets and a resumable sampler.

* ``demo_det_train`` / ``demo_det_val`` in Detectron2's ``DatasetCatalog``: the GENERATED
  COCO-format shapes data of ``bcd`` (``bcd.data.datasets.demo_coco``: squares, discs, triangles
  on textured backgrounds, polygon and RLE masks; 96 / 24 images of 128-160 px), written on
  first use under ``$BCD_DATASETS`` (default ``./datasets``) and read by Detectron2's own
  ``load_coco_json``. Registered when ``bcd_d2`` is imported (also in every process ``launch``
  starts).
* :class:`ResumableSampler`: a training sampler that starts its index stream at a given
  iteration, so that a resumed run reads the batches an uninterrupted run would have read.
"""
from __future__ import annotations

import itertools
import os
from typing import Iterator

from detectron2.data import DatasetCatalog, MetadataCatalog
from torch.utils.data import Sampler

__all__ = ["DEMO_DATASETS", "ResumableSampler", "register_demo_datasets"]

DEMO_DATASETS = ("demo_det_train", "demo_det_val")


def _load_demo(split: str):
    from detectron2.data.datasets import load_coco_json

    from bcd.data.datasets.demo_coco import build_demo_coco

    root = build_demo_coco()
    return load_coco_json(os.path.join(root, "annotations", f"{split}.json"), os.path.join(root, split),
                          f"demo_det_{split}")


def register_demo_datasets() -> None:
    """Register :data:`DEMO_DATASETS` in Detectron2's catalog (no files are written until a
    dataset is loaded). COCOEvaluator converts the loaded dicts to its json itself."""
    from bcd.data.datasets.demo_coco import DEMO_DET_CLASSES

    for name in DEMO_DATASETS:
        if name in DatasetCatalog.list():
            continue
        split = name.rsplit("_", 1)[1]
        DatasetCatalog.register(name, lambda s=split: _load_demo(s))
        MetadataCatalog.get(name).set(evaluator_type="coco", thing_classes=list(DEMO_DET_CLASSES))


class ResumableSampler(Sampler):
    """Wraps a Detectron2 training sampler (an infinite per-process index stream) and skips
    the indices of the first ``start_iter`` iterations (``start_iter × images_per_process``).

    Set ``start_iter`` before the loader's iterator is created (the trainer does it in
    ``resume_or_load``). The continued stream is the uninterrupted run's when batches are
    consecutive indices: ``DATALOADER.ASPECT_RATIO_GROUPING: False``, or every image of one
    orientation (the grouping buckets of the interrupted run are not saved).
    """

    def __init__(self, sampler: Sampler, images_per_iter: int) -> None:
        self.sampler = sampler
        self.images_per_iter = int(images_per_iter)
        self.start_iter = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start_iter * self.images_per_iter, None)
