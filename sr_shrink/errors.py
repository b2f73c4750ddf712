"""One exception type for every user-facing failure, and the rules for the one line the CLI prints of it.

An error line is whole sentences: another library's message is quoted by its first line (:func:`first_line`),
and where that is too long it is cut after a sentence, or else at a word with "...", never inside a word.
"""

from __future__ import annotations

FIRST_LINE_MAX = 200  # characters of another library's message that an error line quotes


class SRShrinkError(Exception):
    """A bad input or a failed step, with a message that says what was wrong and what to do."""


class OtherRankError(SRShrinkError):
    """Rank 0's SRShrinkError, raised on the other ranks of a distributed run so that they stop with it (the CLI
    prints it on rank 0 alone and exits 2 on every rank)."""


def shorten(text: str, limit: int = FIRST_LINE_MAX) -> str:
    """Return ``text`` unchanged when it has at most ``limit`` characters; else its longest run of whole
    sentences that fits (when that keeps at least a third of the room), else its longest run of whole words
    that fits followed by "...". A single word longer than the room is the one case cut inside a word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    room = max(1, limit - 3)
    ends = [i + 1 for i, ch in enumerate(text[:limit]) if ch in ".;:!?" and (i + 1 == len(text) or text[i + 1] == " ")]
    if ends and ends[-1] >= limit // 3:
        return text[: ends[-1]]
    cut = text.rfind(" ", 0, room + 1)
    if cut <= 0:
        return text[:room] + "..."
    return text[:cut].rstrip(" ,;:-(") + "..."


def first_line(exc: BaseException | None, limit: int = FIRST_LINE_MAX) -> str:
    """Return the first non-empty line of ``exc``'s message, shortened by :func:`shorten` to ``limit``
    characters; the exception's type name when it has no message; "no error" for None.

    A first line that only announces what follows (it ends with ":", as torch's "Error(s) in loading
    state_dict for X:") is returned with the next non-empty line, which holds the actual reason."""
    if exc is None:
        return "no error"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return shorten(line, limit)


def one_line(message: str) -> str:
    """Return ``message`` on one line: line breaks and runs of blanks become single spaces."""
    return " ".join(str(message).split())
