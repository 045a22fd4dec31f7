"""``ObjectSegmentor``: binary object segmentation (salient / camouflaged objects) with SKD.

The lightweight *inference network* (backbone + ``ObjectSegDecoder``) is what is deployed; with
``MODEL.SKD.METHOD`` other than "none" a training-only auxiliary network
(``PyramidSelfDistillationNetwork``) is appended to the backbone and trained with the
self-distillation losses of ``bcd/modeling/losses/object_seg.py``. docs/methods.md §3.2; every
detail beyond the abstract and the authors' README is a reconstruction behind a ``MODEL.SKD`` /
``MODEL.OBJECT_SEG`` switch.

``deploy_model()`` returns the inference network alone (a view sharing the backbone and
decoder modules), so ``model_final.pth``, parameter and FLOP counts hold none of the auxiliary
branches; ``--eval-only`` loads that file into a model built from the training config through
the same view. At test time (eval mode) the auxiliary network is never run.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...structures.image_batch import ImageBatch, pad_to_divisible
from ..backbone import build_backbone
from ..heads.object_seg import ObjectSegDecoder, PyramidSelfDistillationNetwork
from ..losses.object_seg import SKD_METHODS, SelfDistillationLoss
from .build import META_ARCH_REGISTRY, ClassCountKey

__all__ = ["ObjectSegmentor"]

IGNORE_VALUE = 255  # padding of the masks in a batch


@META_ARCH_REGISTRY.register()
class ObjectSegmentor(nn.Module):
    """Backbone -> ``decoder`` (one logit at stride 4) (+ ``aux`` in training for SKD / BYOT / DKS).

    Training input: the ``ObjectSegDatasetMapper`` dicts (``image`` uint8 3×H×W, ``sem_seg``
    int64 H×W in {0, 1}); ``forward`` returns the weighted losses of ``SelfDistillationLoss``.
    Evaluation returns, per image, ``{"object_seg": height×width}`` foreground probabilities
    (sigmoid) at the original size.

    Named modules: ``backbone.stem``, ``backbone.res2`` .. ``res5``, ``decoder.lateral.<i>``,
    ``decoder.fuse``, ``decoder.predictor``; training only: ``aux.pyramids.<i>``,
    ``aux.fusions.<i>``, ``aux.scores.<i>``.
    """

    # one foreground class, nothing to configure
    CLASS_COUNT = ClassCountKey("", "thing_classes")

    def __init__(self, cfg) -> None:
        super().__init__()
        o, s = cfg.MODEL.OBJECT_SEG, cfg.MODEL.SKD
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        self.in_features = list(o.IN_FEATURES)
        missing = [f for f in self.in_features if f not in shapes]
        if missing or not self.in_features:
            raise KeyError(
                f"MODEL.OBJECT_SEG.IN_FEATURES {self.in_features}: {missing or 'empty'} not among the "
                f"backbone's outputs {sorted(shapes)}"
            )
        in_channels = [shapes[f].channels for f in self.in_features]
        self.decoder = ObjectSegDecoder(in_channels, int(o.CHANNELS), str(o.NORM))
        self.method = str(s.METHOD)
        if self.method not in SKD_METHODS:
            raise ValueError(f"MODEL.SKD.METHOD must be one of {SKD_METHODS}; got '{self.method}'")
        fusion = str(s.AUX_FUSION)
        if fusion not in ("auto", "top_down", "none"):
            raise ValueError(f"MODEL.SKD.AUX_FUSION must be 'auto', 'top_down' or 'none'; got '{fusion}'")
        top_down = (self.method == "skd") if fusion == "auto" else fusion == "top_down"
        self.aux: Optional[PyramidSelfDistillationNetwork] = None
        if self.method != "none":
            if s.CONSISTENCY == "feature" and self.method == "skd" and int(s.AUX_CHANNELS) != int(o.CHANNELS):
                raise ValueError(
                    f"MODEL.SKD.CONSISTENCY 'feature' compares U_l and Ã_l: MODEL.SKD.AUX_CHANNELS "
                    f"({s.AUX_CHANNELS}) must equal MODEL.OBJECT_SEG.CHANNELS ({o.CHANNELS})"
                )
            self.aux = PyramidSelfDistillationNetwork(
                in_channels,
                int(s.AUX_CHANNELS),
                pyramid=str(s.PYRAMID),
                aspp_dilations=list(s.ASPP_DILATIONS),
                denseaspp_dilations=list(s.DENSEASPP_DILATIONS),
                top_down=top_down,
                norm=str(o.NORM),
            )
        self.criterion = SelfDistillationLoss(cfg)
        self.size_divisibility = max(int(cfg.INPUT.SIZE_DIVISIBILITY), self.backbone.size_divisibility)
        mult = float(o.BACKBONE_LR_MULTIPLIER)
        # The solver reads this attribute (docs/internals.md "Engine").
        self.lr_multipliers: Dict[str, float] = {"backbone": mult} if mult != 1.0 else {}
        self.register_buffer(
            "pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD, dtype=torch.float32).view(-1, 1, 1), False
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------ deployment
    def deploy_model(self) -> nn.Module:
        """The inference network alone: ``self`` without auxiliary network, else a view sharing
        ``backbone``, ``decoder`` and the normalisation buffers (no copy: loading a state dict
        into the view loads this model's weights)."""
        if self.aux is None:
            return self
        view = ObjectSegmentor.__new__(ObjectSegmentor)
        nn.Module.__init__(view)
        view.backbone = self.backbone
        view.decoder = self.decoder
        view.aux = None
        view.criterion = self.criterion
        view.in_features = list(self.in_features)
        view.method = "none"
        view.size_divisibility = self.size_divisibility
        view.lr_multipliers = dict(self.lr_multipliers)
        view.register_buffer("pixel_mean", self.pixel_mean, False)
        view.register_buffer("pixel_std", self.pixel_std, False)
        view.train(self.training)
        return view

    # ------------------------------------------------------------------------------ protocol
    def preprocess(self, batched_inputs: List[Dict[str, Any]]) -> ImageBatch:
        """Normalise the ``image``s, pad them (zeros) and their ``sem_seg`` masks (255) to a
        multiple of ``self.size_divisibility``, on the model's device (``ImageBatch.from_inputs``).
        Masks of another size than their image (the test mapper keeps them at the original size)
        are left out; in training they are an error."""
        return ImageBatch.from_inputs(batched_inputs, self.pixel_mean, self.pixel_std,
                                      self.size_divisibility, IGNORE_VALUE, strict_labels=self.training)

    def _levels(self, features: Dict[str, Tensor]) -> List[Tensor]:
        return [features[f] for f in self.in_features]

    def extract(self, batch: ImageBatch) -> Dict[str, Any]:
        """Raw outputs of the inference network: ``{"logits": B×1×h×w}`` (finest stride) and
        ``"features"`` (the backbone's dict). The auxiliary network is not run."""
        features = self.backbone(batch.tensor)
        logits, _ = self.decoder(self._levels(features))
        return {"logits": logits, "features": features}

    def forward_batch(self, batch: ImageBatch):
        """Training: the weighted losses. Evaluation: ``[{"object_seg": height×width}]``."""
        if not self.training:
            return self.inference(batch)
        if batch.sem_seg is None:
            raise ValueError("ObjectSegmentor needs 'sem_seg' (the object mask) in every input dict for training")
        levels = self._levels(self.backbone(batch.tensor))
        p_inf, inf_feats = self.decoder(levels)
        aux_logits: List[Tensor] = []
        aux_feats: List[Tensor] = []
        if self.aux is not None:
            aux_logits, aux_feats = self.aux(levels)
        target = batch.sem_seg
        valid = target != IGNORE_VALUE
        return self.criterion(p_inf, aux_logits, inf_feats, aux_feats, target, valid)

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """``forward_batch(preprocess(batched_inputs))``."""
        return self.forward_batch(self.preprocess(batched_inputs))

    # ------------------------------------------------------------------------------ inference
    def whole_logits(self, image: Tensor) -> Tensor:
        """``1×3×h×w`` normalised image -> ``1×1×h×w`` logits of the inference network (padded
        for the backbone, upsampled to the padded size, padding cropped)."""
        h, w = image.shape[-2:]
        padded = pad_to_divisible([image[0]], self.size_divisibility, 0.0)
        logits, _ = self.decoder(self._levels(self.backbone(padded)))
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:, :, :h, :w]

    @torch.no_grad()
    def inference(self, batch: ImageBatch) -> List[Dict[str, Tensor]]:
        """Per image: sigmoid probabilities resized (bilinear) to the input dict's ``height`` ×
        ``width`` (the image size when the dict has none)."""
        results = []
        for i, (h, w) in enumerate(batch.image_sizes):
            inp = batch.inputs[i] if i < len(batch.inputs) else {}
            out_size: Tuple[int, int] = (int(inp.get("height", h)), int(inp.get("width", w)))
            logits = self.whole_logits(batch.tensor[i : i + 1, :, :h, :w])
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            results.append({"object_seg": torch.sigmoid(logits)[0, 0]})
        return results
