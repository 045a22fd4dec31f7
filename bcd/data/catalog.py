"""``DatasetCatalog`` (name -> function returning a list of dataset dicts) and ``MetadataCatalog``.

As in Detectron2: registering is cheap (a function), loading happens on ``DatasetCatalog.get``.
"""
from __future__ import annotations

import difflib
from types import SimpleNamespace
from typing import Any, Callable, Dict, List


class _DatasetCatalog(dict):
    """Global map ``name -> callable() -> List[dict]``."""

    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', ...) needs a callable")
        if name in self:
            raise KeyError(f"Dataset '{name}' is already registered")
        self[name] = func

    def get(self, name: str) -> List[dict]:  # type: ignore[override]
        if name not in self:
            close = difflib.get_close_matches(name, list(self.keys()), n=3)
            hint = f"; closest registered names: {', '.join(close)}" if close else ""
            raise KeyError(
                f"Dataset '{name}' is not registered{hint}. Register it in code with "
                f"DatasetCatalog.register, or from the config with DATASETS.CUSTOM "
                f"(see datasets/README.md)"
            )
        return self[name]()

    def list(self) -> List[str]:  # noqa: A003
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


class Metadata(SimpleNamespace):
    """Attributes of one dataset: ``thing_classes`` / ``stuff_classes``, ``stuff_colors``,
    ``ignore_label``, ``evaluator_type`` ("sem_seg", "cityscapes_sem_seg", "coco"...), roots."""

    name: str = "N/A"

    def set(self, **kwargs: Any) -> "Metadata":
        for k, v in kwargs.items():
            if hasattr(self, k) and getattr(self, k) != v:
                raise AssertionError(
                    f"Metadata '{k}' of dataset '{self.name}' is already {getattr(self, k)!r}; "
                    f"cannot set it to {v!r}"
                )
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


class _MetadataCatalog(dict):
    def get(self, name: str) -> Metadata:  # type: ignore[override]
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> List[str]:  # noqa: A003
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
