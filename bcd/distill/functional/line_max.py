"""BCD pair boundary by line-max (IRNet's rule) over the disk of displacements, two formulations.

For every displacement ``δ`` of the disk ``0 < |δ|² < r²`` (IRNet's half plane, then the
opposites, as ``bcd_boundary.disk_directions``)::

    B(i, i+δ) = max_{k ∈ Ω(δ)} e(i+k)

``Ω(δ)`` = the integer offsets in the bounding box of the segment ``0→δ`` at squared
perpendicular distance < 1 from its line (endpoints included). The reference
(``bcd_boundary.line_max``) takes a padded shifted copy of ``e`` per offset, a chain of
``torch.maximum`` per half-plane direction, and obtains each opposite direction by shifting
``B_δ`` by ``−δ`` (``B(i, i−δ) = B_δ(i−δ)``; targets outside the map take the pad value).

* :func:`line_max_views` (``"views"``): views of **one** padded copy (no per-offset copies; the
  opposite directions are views of one padded stack), and each line is the max of the longest
  other line it contains and its remaining offsets: 76 ``torch.maximum`` at r = 5 instead of 208.
  Equal values (max is exact in any order); gradients equal up to how ties are split.
* :func:`line_max_gather` (``"gather"``, unfold-style): all offsets of the ``(2r−1)²`` window as
  one stacked tensor, one ``gather`` of the ``|N_r|×max|Ω|`` line indices and one ``max`` over
  the line. The opposite direction uses ``Ω(−δ) = −Ω(δ)`` directly (Ω is symmetric under
  ``k ↦ δ−k``); targets outside the map are set to the pad value, as in the reference. Equal
  values; the gradient goes to the arg-max (the reference splits ties).

Both take ``e`` ``B×1×h×w`` and return ``B×|N_r|×h×w``. ``tools/benchmark.py --relation``
times them; ``bcd_boundary`` uses the one measured faster (``docs`` in
``projects/bcd/benchmarks/``).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LINE_MAX_IMPLS", "disk_directions", "half_plane_directions", "line_max_gather",
           "line_max_views", "line_offsets"]


@lru_cache(maxsize=None)
def half_plane_directions(radius: int) -> Tuple[Tuple[int, int], ...]:
    """IRNet's half-plane displacements ``(dy, dx)``: ``(0, x>0)`` and ``(y>0, any x)`` in the disk."""
    out = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        for x in range(-radius + 1, radius):
            if x * x + y * y < radius * radius:
                out.append((y, x))
    return tuple(out)


@lru_cache(maxsize=None)
def disk_directions(radius: int) -> Tuple[Tuple[int, int], ...]:
    """All displacements ``0 < dy²+dx² < r²``: the half plane, then its opposites (same order)."""
    half = half_plane_directions(radius)
    return half + tuple((-dy, -dx) for dy, dx in half)


@lru_cache(maxsize=None)
def line_offsets(dy: int, dx: int) -> Tuple[Tuple[int, int], ...]:
    """``Ω(δ)``: integer offsets in the bounding box of ``0→δ`` with squared perpendicular
    distance < 1 to the line through 0 and δ (endpoints included)."""
    n2 = dy * dy + dx * dx
    out = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            cross = y * dx - x * dy
            if cross * cross < n2:
                out.append((y, x))
    return tuple(out)


def _check(e: Tensor, radius: int) -> None:
    if e.dim() != 4 or e.shape[1] != 1:
        raise ValueError(f"line_max: e must be B×1×h×w, got {tuple(e.shape)}")
    if radius < 2:
        raise ValueError(f"line_max: radius must be >= 2 (a non-empty disk), got {radius}")


@lru_cache(maxsize=None)
def _views_plan(radius: int) -> Tuple[Tuple[Tuple[int, int], Tuple[int, int], Tuple[Tuple[int, int], ...]], ...]:
    """Per half-plane direction, shortest lines first: ``(δ, base, extra)``: ``B_δ`` is the max of
    ``B_base`` (the longest other line contained in ``Ω(δ)``; ``(0, 0)`` = none) and the offsets
    ``extra``. Sharing sub-lines takes 76 maxima at r = 5 instead of 208."""
    half = half_plane_directions(radius)
    sets = {d: frozenset(line_offsets(*d)) for d in half}
    plan = []
    done = []
    for d in sorted(half, key=lambda d: (len(sets[d]), half.index(d))):
        subs = [b for b in done if sets[b] < sets[d]]
        if subs:
            base = max(subs, key=lambda b: (len(sets[b]), -half.index(b)))
            extra = tuple(sorted(sets[d] - sets[base]))
        else:
            base = (0, 0)
            extra = tuple(sorted(sets[d]))
        plan.append((d, base, extra))
        done.append(d)
    return tuple(plan)


def line_max_views(e: Tensor, radius: int, pad_value: float = 0.0) -> Tensor:
    """Line-max on views of one padded copy, each line built on the longest line it contains.

    Equal values to ``bcd_boundary.line_max`` (max is exact in any order); gradients equal up to
    how ties are split.

    Args:
        e: ``B×1×h×w`` boundary map (logits or probabilities).
        radius: r of the disk.
        pad_value: value outside the map (callers mask such targets).

    Returns:
        ``B×|N_r|×h×w`` in the order of :func:`disk_directions`.
    """
    _check(e, radius)
    h, w = e.shape[-2:]
    p = radius - 1
    xp = F.pad(e, (p, p, p, p), value=pad_value)
    half = half_plane_directions(radius)
    views: Dict[Tuple[int, int], Tensor] = {}

    def view(k: Tuple[int, int]) -> Tensor:
        if k not in views:
            views[k] = e if k == (0, 0) else xp[..., p + k[0]: p + k[0] + h, p + k[1]: p + k[1] + w]
        return views[k]

    lines: Dict[Tuple[int, int], Tensor] = {}
    for d, base, extra in _views_plan(radius):
        if base == (0, 0):
            m, rest = view(extra[0]), extra[1:]
        else:
            m, rest = lines[base], extra
        for k in rest:
            m = torch.maximum(m, view(k))
        lines[d] = m
    f = torch.cat([lines[d] for d in half], dim=1)
    fp = F.pad(f, (p, p, p, p), value=pad_value)
    # B(i, i−δ) = B_δ(i−δ)
    bwd = [fp[:, c: c + 1, p - dy: p - dy + h, p - dx: p - dx + w] for c, (dy, dx) in enumerate(half)]
    return torch.cat([f] + bwd, dim=1)


@lru_cache(maxsize=None)
def _gather_plan(radius: int, h: int, w: int, device: str) -> Tuple[Tensor, Tensor]:
    """Index ``|N_r|×L`` into the ``(2r−1)²`` window offsets (short lines repeat their last
    offset: max is idempotent) and the ``|N_r|×h×w`` mask of targets inside the map."""
    p = radius - 1
    win = 2 * p + 1
    dirs = disk_directions(radius)
    lines = [line_offsets(dy, dx) for dy, dx in dirs]
    L = max(len(o) for o in lines)
    idx = torch.tensor([[(y + p) * win + (x + p) for y, x in o] + [(o[-1][0] + p) * win + (o[-1][1] + p)] * (L - len(o))
                        for o in lines], dtype=torch.long)
    ys = torch.arange(h)[:, None]
    xs = torch.arange(w)[None, :]
    # as the reference: forward directions keep their line max at any target, opposite ones
    # (shifted B_δ there) take the pad value where the target is outside the map
    n_half = len(half_plane_directions(radius))
    inside = torch.stack([
        torch.ones(h, w, dtype=torch.bool) if c < n_half
        else ((ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w))
        for c, (dy, dx) in enumerate(dirs)
    ])
    return idx.to(device), inside.to(device)


def line_max_gather(e: Tensor, radius: int, pad_value: float = 0.0) -> Tensor:
    """Unfold-style line-max: one stack of window offsets, one gather, one max (module doc).

    Args / returns: as :func:`line_max_views`. Memory ``O(B·|N_r|·max|Ω|·h·w)``.
    """
    _check(e, radius)
    B, _, h, w = e.shape
    p = radius - 1
    win = 2 * p + 1
    idx, inside = _gather_plan(radius, h, w, str(e.device))
    xp = F.pad(e, (p, p, p, p), value=pad_value)
    stack = F.unfold(xp, win).view(B, win * win, h, w)  # every offset of the window
    D, L = idx.shape
    g = stack.index_select(1, idx.flatten()).view(B, D, L, h, w)
    out = g.amax(dim=2)
    return torch.where(inside, out, out.new_full((), pad_value))


LINE_MAX_IMPLS: Dict[str, Callable[[Tensor, int, float], Tensor]] = {
    "views": line_max_views,
    "gather": line_max_gather,
}
