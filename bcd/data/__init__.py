"""Data: catalogs, dataset registrations, transforms, mappers and loaders."""
from .catalog import DatasetCatalog, Metadata, MetadataCatalog

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]
