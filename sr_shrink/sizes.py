"""Image sizes written on the command line: one parser for every ``--input-size`` (bench, export, demo).

Accepted forms: ``"HxW"`` (also ``X`` or ``*`` between, blanks allowed), a single number ``"N"`` for an N x N
square, or an (h, w) pair. Heights and widths are whole numbers from ``lo`` to ``hi``.
"""

from __future__ import annotations

import re

from .errors import SRShrinkError

MIN_SIDE, MAX_SIDE = 4, 8192
_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*")


def parse_size(size: str | tuple[int, int] | list[int], option: str = "--input-size", lo: int = MIN_SIDE,
               hi: int = MAX_SIDE) -> tuple[int, int]:
    """Return (h, w) from ``size`` (see the module docstring); a one-line SRShrinkError naming ``option``
    for anything else or for a side outside [lo, hi]."""
    if isinstance(size, str):
        m = _SIZE.fullmatch(size)
        if not m:
            raise SRShrinkError(f"{option} {size!r}: expected HxW or one number for a square, e.g. 256x256 or 256.")
        h = int(m.group(1))
        w = int(m.group(2) or h)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise SRShrinkError(f"{option} {size!r}: expected HxW or a (height, width) pair.") from None
    if min(h, w) < lo or max(h, w) > hi:
        raise SRShrinkError(f"{option} {h}x{w}: height and width must be between {lo} and {hi}.")
    return h, w
