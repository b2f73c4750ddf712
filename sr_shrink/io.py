"""Atomic file writes (a killed run never leaves a half-written checkpoint or JSON file behind) and the
exclusive lock of a folder a writer fills."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import SRShrinkError, first_line


def load_problem(exc: BaseException) -> str:
    """Return a short reason for ``torch.load(..., weights_only=True)`` failing on a file sr-shrink writes (a stage,
    state.pt, generator.pt): "truncated or damaged" for a broken zip archive, "its bytes are not a PyTorch
    checkpoint" for text or junk (whose own messages talk about ``weights_only`` defaults or a bare ``KeyError``),
    else the exception's first line."""
    import errno
    import pickle

    text = str(exc)
    if ("PytorchStreamReader" in text or "zip archive" in text or isinstance(exc, EOFError)
            or (isinstance(exc, OSError) and exc.errno == errno.EINVAL)):  # a zip cut short: "[Errno 22] Invalid ..."
        return "truncated or damaged"
    if isinstance(exc, (pickle.UnpicklingError, KeyError, UnicodeDecodeError)) or "Weights only load failed" in text:
        return "its bytes are not a PyTorch checkpoint"
    return first_line(exc)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temp file name beside ``path``; on success fsync it, rename it over ``path`` and fsync the folder;
    on failure remove it.

    The fsyncs make the rename durable: after a power cut the file is either the old one or the complete new one,
    never an empty or partial file. The temp file gets the permissions a plain ``open`` would give (mkstemp's 0600
    is masked away).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(file: str | Path) -> None:
    """Flush ``file``'s data to the disk."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to the disk, where the OS allows opening folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """Save ``obj`` with torch.save to a temp file beside ``path``, then rename it; return ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON via a temp file and rename; return ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    return Path(path)


def read_json_object(path: Path, what: str) -> dict:
    """Return the JSON object in ``path`` ({} if the file is absent); an SRShrinkError naming ``what`` if it cannot
    be read or is not one."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SRShrinkError(f"{path}: unreadable {what} ({first_line(exc)}).") from None
    if not isinstance(data, dict):
        raise SRShrinkError(f"{path}: {what} does not hold a JSON object.")
    return data


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[str | None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, this process's pid written in it) for the
    ``with`` block and yield None; when another process holds it, yield at once what that one wrote there (its
    pid, "" if nothing) without locking, so the caller can refuse. The kernel drops the lock when the process ends,
    however it ends (SIGKILL too). Where ``fcntl`` is missing (Windows) nothing is locked (None is yielded)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks
        yield None
        return
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            yield f.read().strip()
            return
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield None
    finally:
        f.close()
