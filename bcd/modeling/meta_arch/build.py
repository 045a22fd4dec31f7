"""``META_ARCH_REGISTRY``, ``build_model`` and where a meta-architecture keeps its class count."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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

Each declares where its class count is configured: the class attribute ``CLASS_COUNT`` (a
:class:`ClassCountKey`), read by the start-of-run checks (``bcd/engine/validation.py``) and by
losses that need the count (``class_count_key``).

The ``Distiller`` (``bcd.distill``) registers itself here too, but ``bcd.modeling`` never imports
``bcd.distill`` (the layers import downward only): a distillation config is built by
``bcd.distill.build_model``.
"""


@dataclass(frozen=True)
class ClassCountKey:
    """How a meta-architecture's class count is configured (its ``CLASS_COUNT`` attribute).

    Attributes:
        num_classes_key: dotted config key of the class count (``"MODEL.RETINANET.NUM_CLASSES"``);
            ``""`` for a model whose class count is fixed (nothing to check).
        metadata_field: the metadata field listing the dataset's classes (``"stuff_classes"`` for
            semantic segmentation, ``"thing_classes"`` for detection / instances).
        ignore_value_key: dotted config key of the label value the model ignores, checked against
            the metadata's ``ignore_label``; ``""`` when the model has none.
    """

    num_classes_key: str
    metadata_field: str
    ignore_value_key: str = ""

    @staticmethod
    def read(cfg, dotted: str):
        """The value of the dotted key ``dotted`` in ``cfg``."""
        node = cfg
        for part in dotted.split("."):
            node = node[part]
        return node

    def num_classes(self, cfg) -> int:
        """The configured class count.

        Raises:
            ValueError: the model's class count is fixed (no key).
        """
        if not self.num_classes_key:
            raise ValueError("this meta-architecture has a fixed class count (no config key)")
        return int(self.read(cfg, self.num_classes_key))


def class_count_key(meta_arch: str) -> Optional[ClassCountKey]:
    """``CLASS_COUNT`` of the registered meta-architecture named ``meta_arch``; None when the name
    is not registered or the class declares none."""
    if meta_arch not in META_ARCH_REGISTRY:
        return None
    key = getattr(META_ARCH_REGISTRY.get(meta_arch), "CLASS_COUNT", None)
    return key if isinstance(key, ClassCountKey) else None


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
