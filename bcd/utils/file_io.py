"""Small file-system helpers shared by the data builders."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

__all__ = ["build_dir_atomically"]


def build_dir_atomically(final: str, write: Callable[[str], None]) -> str:
    """Create the folder ``final`` by calling ``write(path)`` on a temporary sibling, then renaming.

    A concurrent process (data-loader workers, other ranks) sees either no folder or a complete
    one. When another process wins the rename race, its folder is kept and ours is discarded.

    Args:
        final: the folder to create (it must not exist; remove a stale one first).
        write: fills the given (not yet existing) folder path.
    Returns:
        ``final``.
    Raises:
        OSError: the rename failed and ``final`` does not exist.
    """
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.normpath(final))
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        content = os.path.join(tmp, name)
        write(content)
        try:
            os.rename(content, final)
        except OSError:
            if not os.path.isdir(final):  # a real failure, not a lost race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
