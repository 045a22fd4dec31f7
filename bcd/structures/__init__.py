"""Data structures shared by models, losses and evaluators."""
from .image_batch import ImageBatch, pad_to_divisible

__all__ = ["ImageBatch", "pad_to_divisible"]
