"""Tensor-only kernels of the distillation losses (no modules, no config).

* :mod:`.relation`: row-softmax relation KL in ``O(N·C)`` memory (context distillation, CIRKD).
* :mod:`.line_max`: BCD's pair boundary by line-max over a disk of displacements.
"""
from .relation import relation_kl_rows, self_relation_kl_rows

__all__ = ["relation_kl_rows", "self_relation_kl_rows"]
