"""Optional packages and their noise: ``require`` imports an extra's modules or names the pip extra to
install; ``quiet`` silences what converters and runtimes print while they work."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from typing import Any

from .errors import SRShrinkError, first_line


def require(extra: str, *modules: str, purpose: str | None = None) -> list[Any]:
    """Return the imported ``modules``; one clear SRShrinkError naming the pip extra if any is missing.

    ``purpose`` says what needs them (default: "the <extra> export").
    """
    loaded = []
    for name in modules:
        try:
            with quiet():
                loaded.append(importlib.import_module(name))
        except ImportError as exc:
            raise SRShrinkError(f"{purpose or f'the {extra} export'} needs the Python package "
                                f"'{name.split('.')[0]}', which is not importable "
                                f"({first_line(exc)}); pip install 'sr-shrink[{extra}]'") from None
    return loaded


@contextlib.contextmanager
def quiet():
    """Silence library chatter inside the block: warnings, logging, prints and C-level stdout/stderr.

    Set ``SR_SHRINK_VERBOSE=1`` to see it all. Exceptions still propagate.
    """
    if os.environ.get("SR_SHRINK_VERBOSE"):
        yield
        return
    prev_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), _fd_silenced(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(prev_disable)


@contextlib.contextmanager
def _fd_silenced():
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no real file descriptors (embedded interpreter)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
