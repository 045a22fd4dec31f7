"""``DenseDetector``: what every one-stage detector here shares.

The FPN backbone, pixel normalisation and padding (``preprocess``), anchors on the FPN grid
(torchvision's ``AnchorGenerator`` with the backbone's true strides), per-image top-k + batched
NMS inference and the rescaling of boxes to the original image size. Subclasses (``RetinaNet``,
``GFL``) add the head, the anchor assignment and the losses.

Training goes through :meth:`DenseDetector.forward_train`, which returns the losses *and* the
outputs it computed them from: ``extract``'s raw outputs plus the ``"assignment"`` of anchors to
ground truth. The ``Distiller`` hands these outputs to the KD losses (``KDContext
.student_outputs``), so a loss such as LD reads the student's assignment instead of running it
again.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import batched_nms

from ...structures import ImageBatch, Instances
from ..backbone import build_backbone

__all__ = ["DenseDetector", "flatten_levels", "permute_to_N_HWA_K"]


def permute_to_N_HWA_K(x: Tensor, K: int) -> Tensor:
    """``B×(A·K)×H×W`` -> ``B×(H·W·A)×K`` (the anchor order of ``AnchorGenerator``)."""
    B, _, H, W = x.shape
    return x.view(B, -1, K, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, K)


def flatten_levels(levels: Sequence[Tensor], K: int) -> Tensor:
    """A list over levels of ``B×(A·K)×h_l×w_l`` -> ``B×M×K`` in the order of
    ``torch.cat(anchors)`` (levels, then (y, x, anchor))."""
    return torch.cat([permute_to_N_HWA_K(x, K) for x in levels], 1)


class DenseDetector(nn.Module):
    """Base of the one-stage detectors: backbone, ``preprocess``, anchors, inference.

    Subclasses set ``self.head`` and implement ``assignment(anchors, instances) -> Dict[str, Tensor]``
    (per-anchor ground truth), ``losses(batch, outputs)`` (``outputs`` holds ``"assignment"``)
    and ``predict_level(cls, reg, anchors, stride)`` (per image and level: boxes / scores /
    classes).
    """

    in_features: List[str]

    def __init__(self, cfg, in_features: Sequence[str], num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise KeyError(
                f"Detector IN_FEATURES {missing} are not produced by backbone "
                f"'{cfg.MODEL.BACKBONE.NAME}' (outputs: {list(shapes)}); check MODEL.FPN.*"
            )
        self.in_features = list(in_features)
        self.strides = [int(shapes[f].stride) for f in self.in_features]
        self.in_channels = [int(shapes[f].channels) for f in self.in_features]
        if len(set(self.in_channels)) != 1:
            raise ValueError(f"The shared head needs equal channels on {in_features}: {self.in_channels}")
        self.num_classes = int(num_classes)
        # Pad to the bottom-up backbone's largest stride (32), as Detectron2: P6 / P7 come from
        # strided convs that accept any size, and anchors use the declared strides.
        self.size_divisibility = max(
            int(cfg.INPUT.SIZE_DIVISIBILITY), int(getattr(self.backbone, "size_divisibility", 1))
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.d2_input_format = cfg.MODEL.D2_INPUT_FORMAT  # for Detectron2 checkpoints (d2_convert.py)
        self.max_detections_per_image = int(cfg.TEST.DETECTIONS_PER_IMAGE)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ protocol
    def preprocess(self, batched_inputs: List[Dict[str, Any]]) -> ImageBatch:
        """Normalise (``MODEL.PIXEL_MEAN/STD``), pad bottom / right to ``size_divisibility``,
        move images and ``instances`` to the model's device (``ImageBatch.from_inputs``).

        Returns:
            ``ImageBatch`` with ``tensor`` ``B×3×H×W`` float and ``image_sizes`` the unpadded
            ``(h, w)`` of each input image.
        """
        return ImageBatch.from_inputs(batched_inputs, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        return self.forward_batch(self.preprocess(batched_inputs))

    def forward_batch(self, batch: ImageBatch):
        """Training: ``Dict[str, Tensor]`` of scalar losses (needs ``batch.instances``).
        Evaluation: ``[{"instances": Instances(pred_boxes N×4 XYXY original pixels, scores,
        pred_classes)}]`` per image."""
        if self.training:
            return self.forward_train(batch)[0]
        return self.inference(batch, self.extract(batch))

    def forward_train(self, batch: ImageBatch) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
        """The training losses and the outputs they were computed from.

        Returns:
            ``(losses, outputs)``: ``outputs`` is ``extract(batch)`` plus ``"assignment"``
            (``self.assignment(anchors, instances)``: per-anchor ``"labels"`` ``B×M`` and matched
            ``"boxes"`` ``B×M×4``, ...), computed once and used by both the detector's losses
            and the distillation losses (``KDContext.student_outputs``).
        """
        if batch.instances is None:
            raise ValueError(
                f"{type(self).__name__} in training mode needs 'instances' in every input "
                f"dict (use DetectionDatasetMapper with is_train=True)"
            )
        outputs = self.extract(batch)
        outputs["assignment"] = self.assignment(outputs["anchors"], batch.instances)
        return self.losses(batch, outputs), outputs

    def extract(self, batch: ImageBatch) -> Dict[str, Any]:
        """Raw outputs, no loss, no post-processing.

        Returns:
            ``{"features": {p3..p7: B×C×h_l×w_l}, "cls_logits": [B×(A·K)×h_l×w_l per level],
            <box key>: [per level], "anchors": [(h_l·w_l·A)×4 XYXY per level, shared by all
            images], "strides": [int per level]}``; the box key is ``"bbox_reg"`` (RetinaNet,
            ``B×(A·4)×h×w`` deltas) or ``"bbox_dist"`` (GFL, ``B×(4·(n+1))×h×w`` logits).
        """
        feats = self.backbone(batch.tensor)
        features = [feats[f] for f in self.in_features]
        cls_logits, box_out = self.head(features)
        return {
            "features": {f: feats[f] for f in self.in_features},
            "cls_logits": cls_logits,
            self.box_key: box_out,
            "anchors": self.anchors(features),
            "strides": list(self.strides),
        }

    # ------------------------------------------------------------------ anchors
    def anchors(self, features: List[Tensor]) -> List[Tensor]:
        """Anchors per level, ``(h·w·A)×4`` XYXY input pixels, ordered (y, x, anchor).

        Built with torchvision's ``AnchorGenerator.grid_anchors`` from the backbone's declared
        strides (its ``forward`` infers strides by integer division, wrong for P6 / P7 when the
        input is not a multiple of 128).
        """
        ag: AnchorGenerator = self.anchor_generator
        dtype, device = features[0].dtype, features[0].device
        ag.set_cell_anchors(dtype, device)
        grid_sizes = [list(f.shape[-2:]) for f in features]
        strides = [
            [torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides
        ]
        return [a.to(dtype) for a in ag.grid_anchors(grid_sizes, strides)]

    # ------------------------------------------------------------------ inference
    def inference(self, batch: ImageBatch, outputs: Dict[str, Any]) -> List[Dict[str, Instances]]:
        results = []
        B = len(batch)
        for i in range(B):
            boxes_all, scores_all, classes_all = [], [], []
            for lvl, anchors in enumerate(outputs["anchors"]):
                cls_i = outputs["cls_logits"][lvl][i : i + 1]
                box_i = outputs[self.box_key][lvl][i : i + 1]
                b, s, c = self.predict_level(cls_i, box_i, anchors, self.strides[lvl])
                boxes_all.append(b)
                scores_all.append(s)
                classes_all.append(c)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            classes = torch.cat(classes_all)
            keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.max_detections_per_image]
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            h, w = batch.image_sizes[i]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            # boxes clipped to nothing are dropped (Detectron2's detector_postprocess)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
            inp = batch.inputs[i] if i < len(batch.inputs) else {}
            out_h, out_w = inp.get("height", h), inp.get("width", w)
            scale = boxes.new_tensor([out_w / w, out_h / h, out_w / w, out_h / h])
            inst = Instances((out_h, out_w))
            inst.pred_boxes = boxes * scale
            inst.scores = scores
            inst.pred_classes = classes
            results.append({"instances": inst})
        return results

    def _topk_candidates(self, scores: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Of ``M×K`` scores keep those > ``score_thresh``, at most ``topk_candidates``.

        Returns ``(scores, location index, class)`` of the kept candidates.
        """
        flat = scores.flatten()
        keep = flat > self.score_thresh
        flat = flat[keep]
        idx = keep.nonzero().flatten()
        num = min(self.topk_candidates, idx.numel())
        flat, order = flat.sort(descending=True)
        flat, idx = flat[:num], idx[order[:num]]
        return flat, idx // self.num_classes, idx % self.num_classes
