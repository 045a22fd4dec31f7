"""``META_ARCH_REGISTRY`` and ``build_model``."""
from __future__ import annotations

import torch
from fvcore.common.registry import Registry
from torch import nn

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Registry of meta-architectures: the whole model, built by ``build_model(cfg)``.

A registered class is called as ``cls(cfg)`` and must accept Detectron2's input (a list of dataset
dicts). In training it returns a dict of scalar losses; in evaluation a list of per-image result
dicts. Meta-architectures also implement the distillation protocol:

* ``preprocess(batched_inputs) -> ImageBatch``: normalise, pad, move to the model's device;
* ``forward_batch(batch)``: the training losses (train mode) or results (eval mode);
* ``extract(batch)``: raw outputs with no loss and no post-processing (teacher side of KD).
"""


def build_model(cfg) -> nn.Module:
    """Build the model named by ``cfg.MODEL.META_ARCHITECTURE`` and move it to ``MODEL.DEVICE``.

    When ``cfg.KD.LOSSES`` is not empty the result is the ``Distiller`` wrapping the student (the
    model of this config) and the teacher of ``cfg.KD.TEACHER``.
    """
    name = "Distiller" if len(cfg.KD.LOSSES) > 0 else cfg.MODEL.META_ARCHITECTURE
    if name == "Distiller":
        import bcd.distill  # noqa: F401  (registers the Distiller)
    try:
        cls = META_ARCH_REGISTRY.get(name)
    except KeyError as e:
        known = ", ".join(sorted(k for k, _ in META_ARCH_REGISTRY))
        raise KeyError(
            f"MODEL.META_ARCHITECTURE '{name}' is not registered; known: {known}"
        ) from e
    model = cls(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
