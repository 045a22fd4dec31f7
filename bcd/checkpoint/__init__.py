"""Checkpoints, under the name a Detectron2 user imports them from (``detectron2.checkpoint``).

The implementation is ``bcd/engine/checkpoint.py`` (atomic writes, strict and explained loading,
Detectron2 checkpoints converted on load, ``model_final.pth`` = the deployable model). This
package only re-exports it, so it sits above ``bcd.engine`` in the layer order and nothing inside
``bcd`` imports it.
"""
from ..engine.checkpoint import (
    Checkpointer,
    ConfigRecord,
    atomic_torch_save,
    deploy_model,
    nonfinite_tensors,
)

__all__ = ["Checkpointer", "ConfigRecord", "atomic_torch_save", "deploy_model", "nonfinite_tensors"]
