"""Run an SR function tile by tile with overlap, so memory stays bounded and the seams are invisible.

An output pixel of a convolutional network depends only on the input within its receptive field radius
``r`` (in input pixels). A tile is run with ``overlap >= r`` extra input pixels on every inner side, and only
its core (the part at least ``overlap`` pixels from an inner edge) is kept, so the stitched output equals
the untiled one up to float rounding. Tiles that would cross the image border are shifted back inside, so
the network's own zero padding sees the real image border, exactly as in one untiled call.

Networks with a fixed input size (static TFLite graphs) get tiles of exactly that size. Along an axis
shorter than that, the image is padded once after and once before, and each run keeps the half of the
output next to the real border it saw, so the padding never reaches a kept pixel either (exact while the
axis is at least twice the overlap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import SRShrinkError

SRFn = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Return the start offsets of tiles of size ``tile`` covering ``[0, length)`` whose cores tile it.

    Consecutive tiles advance by ``tile - 2 * overlap``; the last one ends exactly at ``length``.
    """
    if length <= tile:
        return [0]
    step = tile - 2 * overlap
    if step <= 0:
        raise SRShrinkError(f"tile {tile} is too small for overlap {overlap}; use a tile larger than "
                            f"{2 * overlap} pixels or a smaller --overlap.")
    return list(range(0, length - tile, step)) + [length - tile]


def _core(start: int, size: int, length: int, overlap: int) -> tuple[int, int]:
    """Return the [lo, hi) input range a tile at ``start`` contributes: all but its inner ``overlap`` rims."""
    lo = start + (overlap if start > 0 else 0)
    hi = start + size - (overlap if start + size < length else 0)
    return lo, hi


@dataclass(frozen=True)
class Span:
    """One tile along one axis: input ``[start, stop)`` padded by ``pad_before``/``pad_after`` to the tile
    size; the result is kept for input positions ``[lo, hi)``."""

    start: int
    stop: int
    pad_before: int
    pad_after: int
    lo: int
    hi: int


def axis_spans(length: int, tile: int, overlap: int, fixed: bool = False) -> list[Span]:
    """Return the tiles along an axis of ``length`` input pixels.

    An axis shorter than a ``fixed`` tile is run twice, padded after and padded before, and each run keeps
    the half next to the real border it saw: exact as long as ``length >= 2 * overlap``.
    """
    if length == tile or (length < tile and not fixed):
        return [Span(0, length, 0, 0, 0, length)]
    if length < tile:
        pad, mid = tile - length, length // 2
        return [Span(0, length, 0, pad, 0, mid), Span(0, length, pad, 0, mid, length)]
    return [Span(s, s + tile, 0, 0, *_core(s, tile, length, overlap)) for s in tile_starts(length, tile, overlap)]


def _tiles(h: int, w: int, tile: int | tuple[int, int], overlap: int, fixed: bool) -> list[tuple[Span, Span]]:
    """Return the (row span, column span) of every tile :func:`tiled_apply` runs on an (h, w) input (the spans
    whose kept core is empty are left out)."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    ys, xs = axis_spans(h, th, overlap, fixed), axis_spans(w, tw, overlap, fixed)
    return [(sy, sx) for sy in ys for sx in xs if sy.lo < sy.hi and sx.lo < sx.hi]


def tile_calls(size: tuple[int, int], tile: int | tuple[int, int] | None = 256, overlap: int = 16,
               fixed: bool = False) -> int:
    """Return how many times :func:`tiled_apply` calls its function on an LR image of ``size`` (h, w) with these
    tiling arguments (1 for ``tile`` None or 0, or an image that fits one tile)."""
    return len(_tiles(*size, tile, overlap, fixed)) if tile else 1


def tile_work(size: tuple[int, int], tile: int | tuple[int, int] | None = 256, overlap: int = 16,
              fixed: bool = False) -> int:
    """Return how many input pixels :func:`tiled_apply`'s calls run on an LR image of ``size`` (h, w), padding
    included: the image's own pixel count when it runs untiled, more the more the tiles overlap."""
    if not tile:
        return size[0] * size[1]
    return sum((sy.stop - sy.start + sy.pad_before + sy.pad_after) * (sx.stop - sx.start + sx.pad_before + sx.pad_after)
               for sy, sx in _tiles(*size, tile, overlap, fixed))


def tiled_apply(fn: SRFn, x: torch.Tensor, scale: int, tile: int | tuple[int, int] | None = 256,
                overlap: int = 16, fixed: bool = False) -> torch.Tensor:
    """Return ``fn(x)`` for an LR batch ``x`` (N,C,H,W), computed in tiles of ``tile`` input pixels.

    ``tile=None`` (or 0) runs one call. ``fixed=True`` means ``fn`` only accepts inputs of exactly
    ``tile`` = (h, w); see :func:`axis_spans` for images smaller than that.
    """
    if not tile:
        return fn(x)
    tiles = _tiles(x.shape[-2], x.shape[-1], tile, overlap, fixed)
    if len(tiles) == 1 and all(sp.start == sp.pad_before == sp.pad_after == 0 and sp.stop == n
                               for sp, n in zip(tiles[0], x.shape[-2:])):  # one unpadded tile: the whole image
        return fn(x)
    out: torch.Tensor | None = None
    for sy, sx in tiles:
        piece = x[..., sy.start : sy.stop, sx.start : sx.stop]
        if sy.pad_before + sy.pad_after + sx.pad_before + sx.pad_after:
            piece = F.pad(piece, (sx.pad_before, sx.pad_after, sy.pad_before, sy.pad_after), mode="replicate")
        res = fn(piece)
        if out is None:
            out = res.new_zeros(*res.shape[:2], x.shape[-2] * scale, x.shape[-1] * scale)
        oy, ox = sy.pad_before - sy.start, sx.pad_before - sx.start  # input index -> piece index
        out[..., sy.lo * scale : sy.hi * scale, sx.lo * scale : sx.hi * scale] = res[
            ..., (sy.lo + oy) * scale : (sy.hi + oy) * scale, (sx.lo + ox) * scale : (sx.hi + ox) * scale]
    return out
