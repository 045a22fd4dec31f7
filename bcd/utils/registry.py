"""``lookup``: the one way ``bcd`` takes a name out of an fvcore ``Registry`` (or a dict of
builders), so that every unknown name fails the same way: naming the config key that gave it and
listing the registered names."""
from __future__ import annotations

from typing import Any, Mapping, Union

from fvcore.common.registry import Registry

__all__ = ["lookup", "registered_names"]


def registered_names(registry: Union[Registry, Mapping[str, Any]]) -> str:
    """The registered names, sorted and comma-separated (for error messages)."""
    if isinstance(registry, Registry):
        return ", ".join(sorted(k for k, _ in registry))
    return ", ".join(sorted(registry))


def lookup(registry: Union[Registry, Mapping[str, Any]], name: str, key: str) -> Any:
    """``registry[name]``, or ``KeyError("<key> '<name>' is not registered ...; known: ...")``.

    Args:
        registry: an fvcore ``Registry`` or a plain ``{name: builder}`` dict.
        name: the name asked for.
        key: where the name came from, for the message (e.g. ``"MODEL.BACKBONE.NAME"``).
    """
    where = f" in {registry._name}" if isinstance(registry, Registry) else ""
    try:
        if isinstance(registry, Registry):
            return registry.get(name)
        return registry[name]
    except KeyError:
        raise KeyError(
            f"{key} '{name}' is not registered{where}; known: {registered_names(registry)}"
        ) from None
