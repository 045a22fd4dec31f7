"""Data structures shared by models, losses and evaluators."""
from .image_batch import ImageBatch, pad_to_divisible
from .instances import Instances

__all__ = ["ImageBatch", "Instances", "pad_to_divisible"]
