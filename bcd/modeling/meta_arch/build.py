"""``META_ARCH_REGISTRY`` and ``build_model``."""
from __future__ import annotations

import torch
from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import lookup

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Registry of meta-architectures: the whole model, built by ``build_model(cfg)``.

A registered class is called as ``cls(cfg)`` and must accept Detectron2's input (a list of dataset
dicts). In training it returns a dict of scalar losses; in evaluation a list of per-image result
dicts. Meta-architectures also implement the distillation protocol:

* ``preprocess(batched_inputs) -> ImageBatch``: normalise, pad, move to the model's device;
* ``forward_batch(batch)``: the training losses (train mode) or results (eval mode);
* ``extract(batch)``: raw outputs with no loss and no post-processing (teacher side of KD).

The ``Distiller`` (``bcd.distill``) registers itself here too, but ``bcd.modeling`` never imports
``bcd.distill`` (the layers import downward only): a distillation config is built by
``bcd.distill.build_model``.
"""


def build_model(cfg) -> nn.Module:
    """Build the model named by ``cfg.MODEL.META_ARCHITECTURE`` and move it to ``MODEL.DEVICE``.

    Raises:
        ValueError: when ``cfg.KD.LOSSES`` is set: the ``Distiller`` (teacher + student) is
            built by ``bcd.distill.build_model``, the layer above this one.
        KeyError: an unregistered ``MODEL.META_ARCHITECTURE``, listing the registered names.
    """
    if len(cfg.KD.LOSSES) > 0:
        raise ValueError(
            f"KD.LOSSES is set ({list(cfg.KD.LOSSES)}): build the Distiller with "
            "bcd.distill.build_model(cfg); bcd.modeling.build_model builds plain models only"
        )
    cls = lookup(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE, "MODEL.META_ARCHITECTURE")
    model = cls(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
