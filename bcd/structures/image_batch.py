"""The padded batch every meta-architecture works on (Detectron2's ``ImageList``, plus targets)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ImageBatch:
    """Images normalised and padded to one size, with their targets padded the same way.

    Attributes:
        tensor: ``B×3×H×W`` float images, normalised, zero-padded at the bottom / right to a
            multiple of the model's size divisibility.
        image_sizes: ``(h, w)`` of each image before padding, in pixels of ``tensor``.
        sem_seg: ``B×H×W`` int64 labels padded with the ignore value, or None.
        instances: per-image ground truth (detection; ``bcd.structures.Instances``), or None.
        inputs: the dataset dicts this batch was made from (for ``height`` / ``width``,
            ``file_name`` ...).
    """

    tensor: Tensor
    image_sizes: List[Tuple[int, int]]
    sem_seg: Optional[Tensor] = None
    instances: Optional[List[Any]] = None
    inputs: List[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @classmethod
    def from_inputs(
        cls,
        batched_inputs: Sequence[dict],
        pixel_mean: Tensor,
        pixel_std: Tensor,
        size_divisibility: int = 0,
        ignore_value: int = 255,
        strict_labels: bool = False,
    ) -> "ImageBatch":
        """The batch of mapper dicts every meta-architecture's ``preprocess`` returns: the one
        place that normalises, pads and batches (Detectron2's ``preprocess_image`` +
        ``ImageList.from_tensors``).

        * ``image`` (``3×h×w``, any dtype): ``(x − pixel_mean) / pixel_std`` in float on the
          device of ``pixel_mean``, zero-padded bottom / right to a common size that is a multiple
          of ``size_divisibility``;
        * ``sem_seg`` (``h×w``), when every input has one and each is the size of its image:
          padded with ``ignore_value`` the same way, int64. A label of another size than its image
          is an error with ``strict_labels`` (training), else left out (the test mappers keep
          labels at the original size while the image may be resized);
        * ``instances``, when every input has them: moved to that device.

        Args:
            pixel_mean, pixel_std: ``3×1×1`` (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``).

        Raises:
            ValueError: with ``strict_labels``, naming the input (``file_name``) and both sizes.
        """
        device = pixel_mean.device
        images = [(x["image"].to(device, non_blocking=True).float() - pixel_mean) / pixel_std
                  for x in batched_inputs]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        tensor = pad_to_divisible(images, size_divisibility, 0.0)
        sem_seg = None
        if batched_inputs and all("sem_seg" in x for x in batched_inputs):
            mismatch = [(x.get("file_name", i), tuple(x["sem_seg"].shape[-2:]), sizes[i])
                        for i, x in enumerate(batched_inputs) if tuple(x["sem_seg"].shape[-2:]) != sizes[i]]
            if not mismatch:
                labels = [x["sem_seg"].to(device, non_blocking=True).long() for x in batched_inputs]
                sem_seg = pad_to_divisible(labels, size_divisibility, ignore_value)
            elif strict_labels:
                name, label_size, image_size = mismatch[0]
                raise ValueError(
                    f"Training input '{name}': sem_seg of size {label_size} does not match its "
                    f"image {image_size}"
                )
        instances = None
        if batched_inputs and all("instances" in x for x in batched_inputs):
            instances = [x["instances"].to(device) for x in batched_inputs]
        return cls(tensor=tensor, image_sizes=sizes, sem_seg=sem_seg, instances=instances,
                   inputs=list(batched_inputs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def valid_mask(
        self, size: Optional[Tuple[int, int]] = None, ignore_value: Optional[int] = None
    ) -> Tensor:
        """``B×h×w`` bool: True where a pixel lies inside its image (not padding) and, when
        ``ignore_value`` is given and the batch has ``sem_seg``, its label is not ignored.

        With ``size`` the mask is given on an ``h×w`` grid covering the padded tensor (a feature
        map of stride ``H/h``): a cell is inside when its top-left pixel is inside the image, and
        its label is the nearest-downsampled one. This is the one validity mask of ``bcd``
        (docs/methods.md §1.2); the distillation context caches it per step.
        """
        B, _, H, W = self.tensor.shape
        h, w = size if size is not None else (H, W)
        ys = torch.arange(h, device=self.device) * (H / h)
        xs = torch.arange(w, device=self.device) * (W / w)
        sizes = torch.tensor(self.image_sizes, device=self.device, dtype=torch.float32)
        valid_y = ys[None, :] < sizes[:, 0:1]  # B×h
        valid_x = xs[None, :] < sizes[:, 1:2]  # B×w
        valid = valid_y[:, :, None] & valid_x[:, None, :]
        if ignore_value is not None and self.sem_seg is not None:
            lab = F.interpolate(self.sem_seg[:, None].float(), size=(h, w), mode="nearest")[:, 0]
            valid = valid & (lab != ignore_value)
        return valid

    def box_label_map(self, size: Tuple[int, int]) -> Tensor:
        """``B×h×w`` long: on an ``h×w`` grid covering the padded tensor, ``gt_classes + 1`` of the
        smallest ground-truth box containing each cell's centre, 0 where no box does
        (:func:`box_index_map`).

        Boxes are ``instances[i].gt_boxes`` (``M×4`` XYXY in input pixels, a tensor or an object
        with ``.tensor``); overlapping boxes: the smaller one wins. An image without instances
        (or a batch without ``instances``) is all 0.
        """
        B, _, H, W = self.tensor.shape
        out = torch.zeros(B, *size, dtype=torch.long, device=self.device)
        for n, inst in enumerate(self.instances or []):
            boxes = inst.gt_boxes.tensor if hasattr(inst.gt_boxes, "tensor") else inst.gt_boxes
            idx = box_index_map(boxes, size, (H, W))
            inside = idx >= 0
            out[n][inside] = inst.gt_classes.to(self.device)[idx[inside]].long() + 1
        return out


def box_index_map(boxes: Tensor, grid: Tuple[int, int], padded: Tuple[int, int]) -> Tensor:
    """Rasterise boxes on a feature grid: the one box-painting rule of ``bcd``.

    A cell ``(y, x)`` of an ``h×w`` grid covering a padded ``H×W`` input has its centre at
    ``((x + 0.5)·W/w, (y + 0.5)·H/h)`` input pixels; it takes the index of the smallest box
    (by area) whose half-open extent ``[x0, x1) × [y0, y1)`` contains the centre.

    Args:
        boxes: ``N×4`` XYXY in input pixels.
        grid: ``(h, w)``; padded: ``(H, W)``.

    Returns:
        ``h×w`` int64: box index, ``-1`` where no box contains the centre. Used by
        :meth:`ImageBatch.box_label_map` and APD's FPN-level labels.
    """
    h, w = grid
    H, W = padded
    ys = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) * (H / h)
    xs = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) * (W / w)
    out = torch.full((h, w), -1, dtype=torch.long, device=boxes.device)
    b = boxes.float()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for i in torch.argsort(area, descending=True).tolist():  # small boxes painted last: they win
        x0, y0, x1, y1 = b[i].tolist()
        out[(ys[:, None] >= y0) & (ys[:, None] < y1) & (xs[None, :] >= x0) & (xs[None, :] < x1)] = i
    return out


def pad_to_divisible(
    tensors: Sequence[Tensor], size_divisibility: int = 0, pad_value: float = 0.0
) -> Tensor:
    """Stack ``[..., h_i, w_i]`` tensors into one, padding bottom / right.

    Args:
        tensors: tensors of equal leading shape and any ``h_i×w_i``.
        size_divisibility: pad the common ``H×W`` up to a multiple of this (0 or 1: no rounding).
        pad_value: value of the padded cells (0 for images, the ignore label for labels).

    Returns:
        ``B×...×H×W`` with ``H = max h_i`` (rounded up) and ``W = max w_i`` (rounded up).
    """
    if len(tensors) == 0:
        raise ValueError("pad_to_divisible() needs at least one tensor")
    H = max(t.shape[-2] for t in tensors)
    W = max(t.shape[-1] for t in tensors)
    if size_divisibility > 1:
        H = int(math.ceil(H / size_divisibility) * size_divisibility)
        W = int(math.ceil(W / size_divisibility) * size_divisibility)
    padded = [
        F.pad(t, (0, W - t.shape[-1], 0, H - t.shape[-2]), value=pad_value) for t in tensors
    ]
    return torch.stack(padded, dim=0)
