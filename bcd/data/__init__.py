"""Data: catalogs, dataset registrations, transforms, mappers and loaders.

The public names are those a Detectron2 user types from ``detectron2.data``: the catalogs, the
loaders and the mapper registry; ``bcd.data.datasets`` registers builtin and custom datasets.
"""
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .build import (
    MAPPER_REGISTRY,
    build_mapper,
    build_test_loader,
    build_train_loader,
    get_dataset_dicts,
)
from .datasets import get_datasets_root, register_from_config
from .io import read_image

__all__ = [
    "DatasetCatalog",
    "MAPPER_REGISTRY",
    "Metadata",
    "MetadataCatalog",
    "build_mapper",
    "build_test_loader",
    "build_train_loader",
    "get_dataset_dicts",
    "get_datasets_root",
    "read_image",
    "register_from_config",
]
