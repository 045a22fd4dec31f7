"""Record the outputs of named modules with forward hooks.

A feature name is ``module.path`` (the output of ``model.get_submodule("module.path")``) or
``module.path[key]`` (one entry of a dict / tuple / list output; an integer key indexes a
sequence, anything else a dict; keys chain: ``head[0][1]``). Every name is checked when the
recorder is built: a wrong module path fails with the closest valid names. The ``Distiller``
records only inside ``with recorder.recording():`` around its training forward (hooks attached
on entry, removed and tensors released on exit); a stand-alone recorder (``persistent=True``)
keeps its hooks until :meth:`FeatureRecorder.remove`.

When a module runs several times in one forward, the last output wins.
"""
from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Tuple, Union

from torch import nn

__all__ = ["FeatureRecorder", "parse_feature_name", "select"]

_KEY_RE = re.compile(r"\[([^\[\]]+)\]")


def parse_feature_name(name: str) -> Tuple[str, List[Union[int, str]]]:
    """Split ``"backbone[p3]"`` into ``("backbone", ["p3"])``; integer keys become ints."""
    base = name.split("[", 1)[0]
    rest = name[len(base):]
    keys: List[Union[int, str]] = []
    pos = 0
    for m in _KEY_RE.finditer(rest):
        if m.start() != pos:
            break
        k = m.group(1).strip().strip("'\"")
        keys.append(int(k) if re.fullmatch(r"-?\d+", k) else k)
        pos = m.end()
    if pos != len(rest):
        raise ValueError(f"Malformed feature name '{name}': expected 'module.path' or 'path[key]'")
    return base, keys


def select(value: Any, keys: List[Union[int, str]], name: str) -> Any:
    """Apply the ``[key]`` selectors of feature ``name`` to a recorded output."""
    for k in keys:
        try:
            if isinstance(value, dict):
                value = value[k if k in value else str(k)]
            elif isinstance(value, (list, tuple)):
                value = value[int(k)]
            else:
                raise TypeError(f"output of type {type(value).__name__} cannot be indexed")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            valid = list(value.keys()) if isinstance(value, dict) else (
                list(range(len(value))) if isinstance(value, (list, tuple)) else []
            )
            raise KeyError(
                f"Feature '{name}': key [{k}] not found in the module output ({e}); "
                f"valid keys: {valid}"
            ) from None
    return value


class FeatureRecorder:
    """Forward hooks recording the outputs of named submodules of ``model``.

    Args:
        model: the model whose modules are hooked.
        names: feature names (see the module docstring).
        owner: a word for error messages ("student", "teacher").
        detach: store ``.detach()``-ed tensors (teacher side).
        persistent: attach the hooks now and keep them until :meth:`remove` (stand-alone use);
            with False (the ``Distiller``) they exist only inside :meth:`recording`.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        owner: str = "model",
        detach: bool = False,
        persistent: bool = True,
    ) -> None:
        self.owner = owner
        self.detach = detach
        self.names = list(dict.fromkeys(names))
        self._parsed = {n: parse_feature_name(n) for n in self.names}
        modules = dict(model.named_modules())
        self._outputs: Dict[str, Any] = {}
        self._handles: List[Any] = []
        self._modules: Dict[str, nn.Module] = {}
        for path in dict.fromkeys(p for p, _ in self._parsed.values()):
            if path not in modules:
                close = difflib.get_close_matches(path, [m for m in modules if m], n=5, cutoff=0.5)
                raise KeyError(
                    f"{owner} has no module '{path}' (from a KD feature name); "
                    f"closest valid names: {close if close else sorted(modules)[:10]}"
                )
            self._modules[path] = modules[path]
        self.persistent = persistent
        if persistent:
            self._attach()

    def _attach(self) -> None:
        for path, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(path)))

    @contextmanager
    def recording(self) -> Iterator["FeatureRecorder"]:
        """Record only inside this block: the hooks are attached on entry (unless the recorder
        is ``persistent``) and removed on exit, and the recorded tensors are released on exit
        (also on an error). The ``Distiller`` wraps its training forward in it, so evaluation,
        export and the model outside distillation carry no hooks."""
        attached = not self._handles
        if attached:
            self._attach()
        self.clear()
        try:
            yield self
        finally:
            self.clear()
            if attached:
                for h in self._handles:
                    h.remove()
                self._handles.clear()

    def _make_hook(self, path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._outputs[path] = _detach(output) if self.detach else output

        return hook

    def get(self, name: str) -> Any:
        """The recorded value of feature ``name`` (raises if its module did not run)."""
        path, keys = self._parsed[name]
        if path not in self._outputs:
            raise RuntimeError(
                f"{self.owner} module '{path}' did not run in this forward; it cannot feed "
                f"feature '{name}'"
            )
        return select(self._outputs[path], keys, name)

    def collect(self, names: Iterable[str] = ()) -> Dict[str, Any]:
        """``{name: value}`` for ``names`` (all recorded names by default)."""
        return {n: self.get(n) for n in (list(names) or self.names)}

    def clear(self) -> None:
        """Release the recorded tensors (called every step)."""
        self._outputs.clear()

    def remove(self) -> None:
        """Remove the hooks and release the tensors."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def __len__(self) -> int:
        """Number of distinct modules recorded."""
        return len(self._modules)


def _detach(x: Any) -> Any:
    if hasattr(x, "detach") and callable(x.detach):
        return x.detach()
    if isinstance(x, dict):
        return type(x)((k, _detach(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(_detach(v) for v in x) if not hasattr(x, "_fields") else type(x)(
            *[_detach(v) for v in x]
        )
    return x
