"""Losses that live with the models (no external teacher): object segmentation and its
self-distillation (``object_seg``)."""
