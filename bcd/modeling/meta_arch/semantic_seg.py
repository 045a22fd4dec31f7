"""``SemanticSegmentor``: backbone + decode head (+ FCN auxiliary head in training)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...structures.image_batch import ImageBatch, pad_to_divisible
from ...utils.registry import lookup
from ..backbone import build_backbone
from ..heads import SEM_SEG_HEAD_REGISTRY
from ..heads.aux_head import FCNAuxHead
from .build import META_ARCH_REGISTRY, ClassCountKey

__all__ = ["SemanticSegmentor", "semantic_cross_entropy"]


def semantic_cross_entropy(logits: Tensor, target: Tensor, ignore_value: int) -> Tensor:
    """Mean pixel cross-entropy over the pixels whose label is not ``ignore_value``.

    Args:
        logits: ``B×K×H×W`` class scores at the label resolution.
        target: ``B×H×W`` int64 labels in ``[0, K)`` or ``ignore_value``.

    Returns:
        A scalar; 0 (with a gradient path) when every pixel is ignored, where
        ``F.cross_entropy(reduction="mean")`` would return NaN.
    """
    total = F.cross_entropy(logits, target, ignore_index=ignore_value, reduction="sum")
    n_valid = (target != ignore_value).sum().clamp(min=1)
    return total / n_valid


@META_ARCH_REGISTRY.register()
class SemanticSegmentor(nn.Module):
    """Semantic segmentation network: ``backbone`` -> ``sem_seg_head`` (+ ``aux_head``).

    Training input: the mapper's dicts (``image`` uint8 3×H×W RGB, ``sem_seg`` int64 H×W);
    ``forward`` returns ``{"loss_sem_seg", "loss_aux"}`` (the aux loss when
    ``MODEL.AUX_HEAD.ENABLED``), already multiplied by their weights. Evaluation returns, per
    image, ``{"sem_seg": K×height×width}`` class probabilities (softmax, averaged over the
    test-time scales / flips of ``TEST.SEM_SEG``) at the original size ``height×width``.

    Named modules for hooks: ``backbone.stem``, ``backbone.res2`` .. ``backbone.res5``,
    ``sem_seg_head.feature``, ``sem_seg_head.predictor``, ``aux_head``.
    """

    CLASS_COUNT = ClassCountKey(
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff_classes", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE")

    def __init__(self, cfg) -> None:
        super().__init__()
        self.build_networks(cfg)
        self.num_classes = self.CLASS_COUNT.num_classes(cfg)
        self.ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        self.loss_weight = cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT
        self.aux_loss_weight = cfg.MODEL.AUX_HEAD.LOSS_WEIGHT
        # Pad to the backbone's largest stride at least (8 for a dilated ResNet at output stride
        # 8); INPUT.SIZE_DIVISIBILITY can ask for more (32 by default).
        self.size_divisibility = max(int(cfg.INPUT.SIZE_DIVISIBILITY), self.backbone.size_divisibility)

        t = cfg.TEST.SEM_SEG
        if t.MODE not in ("whole", "slide"):
            raise ValueError(f"TEST.SEM_SEG.MODE must be 'whole' or 'slide'; got '{t.MODE}'")
        self.test_mode = t.MODE
        self.test_crop_size: Tuple[int, int] = tuple(t.CROP_SIZE)  # type: ignore[assignment]
        self.test_stride: Tuple[int, int] = tuple(t.STRIDE)  # type: ignore[assignment]
        self.test_flip = bool(t.FLIP)
        self.test_scales = [float(s) for s in t.SCALES]

        self.register_buffer(
            "pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD, dtype=torch.float32).view(-1, 1, 1), False
        )

    def build_networks(self, cfg) -> None:
        """Set ``backbone``, ``sem_seg_head`` and ``aux_head`` (None when disabled) from the
        registries. A meta-architecture with other networks and this one's preprocessing,
        inference and output contract overrides this (``Mask2FormerSegmentor``)."""
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        head_cls = lookup(SEM_SEG_HEAD_REGISTRY, cfg.MODEL.SEM_SEG_HEAD.NAME, "MODEL.SEM_SEG_HEAD.NAME")
        self.sem_seg_head = head_cls(cfg, shapes)
        self.aux_head: Optional[FCNAuxHead] = (
            FCNAuxHead(cfg, shapes) if cfg.MODEL.AUX_HEAD.ENABLED else None
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------ protocol
    def preprocess(self, batched_inputs: List[Dict[str, Any]]) -> ImageBatch:
        """Normalise the ``image``s, pad them (zeros) and their ``sem_seg`` (ignore value) to a
        multiple of ``self.size_divisibility``, on the model's device (``ImageBatch.from_inputs``;
        in training a label of another size than its image is an error)."""
        return ImageBatch.from_inputs(batched_inputs, self.pixel_mean, self.pixel_std,
                                      self.size_divisibility, self.ignore_value, strict_labels=self.training)

    def extract(self, batch: ImageBatch) -> Dict[str, Any]:
        """Raw outputs: ``{"logits": B×K×h×w}`` at the head's stride, and ``"features"``, the
        backbone's dict (``res2`` .. ``res5``)."""
        features = self.backbone(batch.tensor)
        return {"logits": self.sem_seg_head(features), "features": features}

    def forward_batch(self, batch: ImageBatch):
        """Training: ``{"loss_sem_seg", "loss_aux"}`` scalars. Evaluation: a list of
        ``{"sem_seg": K×height×width}`` probability maps."""
        if self.training:
            if batch.sem_seg is None:
                raise ValueError("SemanticSegmentor needs 'sem_seg' in every input dict for training")
            features = self.backbone(batch.tensor)
            logits = self.sem_seg_head(features)
            losses = {"loss_sem_seg": self.loss_weight * self._loss(logits, batch.sem_seg)}
            if self.aux_head is not None:
                aux = self.aux_head(features)
                losses["loss_aux"] = self.aux_loss_weight * self._loss(aux, batch.sem_seg)
            return losses
        return self.inference(batch)

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """``forward_batch(preprocess(batched_inputs))``."""
        return self.forward_batch(self.preprocess(batched_inputs))

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """CE of ``logits`` (``B×K×h×w``, upsampled bilinearly to ``target``'s ``H×W``)."""
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return semantic_cross_entropy(logits, target, self.ignore_value)

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, batch: ImageBatch) -> List[Dict[str, Tensor]]:
        """Per image: softmax probabilities averaged over ``TEST.SEM_SEG.SCALES`` and (with
        ``FLIP``) horizontal flips, each computed in ``whole`` or ``slide`` mode, resized to the
        input dict's ``height`` × ``width`` (the image size when the dict has none)."""
        results = []
        for i, (h, w) in enumerate(batch.image_sizes):
            image = batch.tensor[i : i + 1, :, :h, :w]
            inp = batch.inputs[i] if i < len(batch.inputs) else {}
            out_size = (int(inp.get("height", h)), int(inp.get("width", w)))
            probs = image.new_zeros((1, self.num_classes) + out_size)
            n = 0
            for scale in self.test_scales:
                if scale == 1.0:
                    scaled = image
                else:
                    size = (max(int(round(h * scale)), 1), max(int(round(w * scale)), 1))
                    scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
                flips = (False, True) if self.test_flip else (False,)
                for flip in flips:
                    x = scaled.flip(-1) if flip else scaled
                    logits = self.slide_logits(x) if self.test_mode == "slide" else self.whole_logits(x)
                    if flip:
                        logits = logits.flip(-1)
                    logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
                    probs += logits.softmax(dim=1)
                    n += 1
            results.append({"sem_seg": probs[0] / n})
        return results

    def whole_logits(self, image: Tensor) -> Tensor:
        """``1×3×h×w`` normalised image -> ``1×K×h×w`` logits (padded for the backbone, run once,
        upsampled to the padded size, padding cropped away)."""
        h, w = image.shape[-2:]
        padded = pad_to_divisible([image[0]], self.size_divisibility, 0.0)
        logits = self.sem_seg_head(self.backbone(padded))
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:, :, :h, :w]

    def slide_logits(self, image: Tensor) -> Tensor:
        """``1×3×h×w`` -> ``1×K×h×w`` logits averaged over ``TEST.SEM_SEG.CROP_SIZE`` windows
        placed every ``TEST.SEM_SEG.STRIDE`` pixels (the last window of a row / column is moved
        back to end at the border, as in mmseg); a window larger than the image is the image."""
        h, w = image.shape[-2:]
        ch, cw = self.test_crop_size
        sh, sw = self.test_stride
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        logits = image.new_zeros((1, self.num_classes, h, w))
        count = image.new_zeros((1, 1, h, w))
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                logits[:, :, y1:y2, x1:x2] += self.whole_logits(image[:, :, y1:y2, x1:x2])
                count[:, :, y1:y2, x1:x2] += 1
        return logits / count
