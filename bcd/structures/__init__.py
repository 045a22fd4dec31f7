"""Data structures shared by models, losses and evaluators."""
from .image_batch import ImageBatch, box_index_map, pad_to_divisible
from .instances import Instances

__all__ = ["ImageBatch", "Instances", "box_index_map", "pad_to_divisible"]
