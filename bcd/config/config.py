"""Config node: fvcore's ``CfgNode`` (Detectron2's base) with ``_BASE_`` chains and strict keys."""
from __future__ import annotations

import difflib
from typing import Any, List

from fvcore.common.config import CfgNode as _FvCfgNode


def _all_keys(node: _FvCfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, _FvCfgNode):
            keys.extend(_all_keys(v, full + "."))
    return keys


class CfgNode(_FvCfgNode):
    """fvcore ``CfgNode`` whose merges reject unknown keys with the closest valid names.

    ``merge_from_file`` follows ``_BASE_`` (relative to the including file, any depth) as
    Detectron2 does; ``merge_from_list`` takes ``["KEY", "VALUE", ...]`` overrides.
    """

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True) -> None:
        loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        loaded = type(self)(loaded)
        self._check_known(loaded, cfg_filename)
        self.merge_from_other_cfg(loaded)

    def merge_from_list(self, cfg_list: List[Any]) -> None:
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"Overrides must be KEY VALUE pairs; got an odd number of items: {cfg_list}"
            )
        for key in cfg_list[0::2]:
            self._check_key(str(key), "the command line")
        super().merge_from_list(cfg_list)

    # ------------------------------------------------------------------ checks
    def _check_known(self, other: _FvCfgNode, source: str) -> None:
        for key in _all_keys(other):
            self._check_key(key, source)

    def _check_key(self, full_key: str, source: str) -> None:
        node: Any = self
        parts = full_key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, _FvCfgNode):
                return  # a value (e.g. a dict inside a list): not checked further
            if part not in node:
                if node.is_new_allowed():
                    return
                prefix = ".".join(parts[:i])
                candidates = [k for k in _all_keys(self)]
                close = difflib.get_close_matches(full_key, candidates, n=3, cutoff=0.6)
                if not close:  # fall back to the keys of the parent node
                    close = [f"{prefix}.{k}" if prefix else k for k in
                             difflib.get_close_matches(part, list(node.keys()), n=3, cutoff=0.4)]
                hint = f"; closest valid keys: {', '.join(close)}" if close else ""
                raise KeyError(f"Unknown config key '{full_key}' in {source}{hint}")
            node = node[part]
