"""``Instances``: per-image ground truth or predictions, as in Detectron2.

A set of named fields of equal length (boxes, classes, scores, masks...) attached to one image
size. Indexing selects instances in every field at once.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import Tensor


class Instances:
    """The instances of one image.

    Attributes:
        image_size: ``(height, width)`` of the image the fields refer to, in pixels.

    Fields are set as attributes (``inst.gt_boxes = boxes``) or with ``set``; every field must
    have the same length (``len(field)``). Fields may be tensors (indexed along dim 0), lists or
    any object supporting ``__len__`` and ``__getitem__`` with the same index kinds.
    """

    def __init__(self, image_size: Tuple[int, int], **kwargs: Any) -> None:
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: Dict[str, Any] = {}
        for k, v in kwargs.items():
            self.set(k, v)

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(height, width)``."""
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: look in the fields.
        if name == "_fields" or name not in self._fields:
            raise AttributeError(
                f"Instances has no field '{name}'; fields: {list(self.__dict__.get('_fields', {}))}"
            )
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set field ``name``; its length must match the existing fields."""
        n = len(value)
        if len(self._fields) and n != len(self):
            raise ValueError(
                f"Adding field '{name}' of length {n} to Instances of length {len(self)}"
            )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> Dict[str, Any]:
        """The fields as a dict (the object itself, not a copy)."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        """A copy with every tensor field (or field with ``.to``) moved / cast."""
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            if hasattr(v, "to"):
                v = v.to(*args, **kwargs)
            ret.set(k, v)
        return ret

    def __getitem__(self, item: Union[int, slice, Tensor, List[int]]) -> "Instances":
        """Select instances by an int, a slice, a bool mask or an index tensor."""
        if isinstance(item, int):
            if item >= len(self) or item < -len(self):
                raise IndexError(f"Instances index {item} out of range for length {len(self)}")
            item = item % len(self)
            item = slice(item, item + 1)
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            if isinstance(v, list):
                if isinstance(item, slice):
                    ret.set(k, v[item])
                else:
                    idx = torch.as_tensor(item)
                    if idx.dtype == torch.bool:
                        idx = idx.nonzero().flatten()
                    ret.set(k, [v[i] for i in idx.tolist()])
            else:
                ret.set(k, v[item])
        return ret

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        """Concatenate instances of the same image size (tensors by ``torch.cat``, lists by +)."""
        if len(instance_lists) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        size = instance_lists[0].image_size
        for i in instance_lists[1:]:
            if i.image_size != size:
                raise ValueError(f"Instances.cat: image sizes differ ({size} vs {i.image_size})")
        ret = Instances(size)
        for k in instance_lists[0]._fields.keys():
            values = [i.get(k) for i in instance_lists]
            v0 = values[0]
            if isinstance(v0, Tensor):
                ret.set(k, torch.cat(values, dim=0))
            elif isinstance(v0, list):
                ret.set(k, list(itertools.chain(*values)))
            elif hasattr(type(v0), "cat"):
                ret.set(k, type(v0).cat(values))
            else:
                raise ValueError(f"Instances.cat does not know how to concatenate field '{k}'")
        return ret

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}: {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}"
            for k, v in self._fields.items()
        )
        return (
            f"Instances(num_instances={len(self)}, image_height={self._image_size[0]}, "
            f"image_width={self._image_size[1]}, fields=[{fields}])"
        )
