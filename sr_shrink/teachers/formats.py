"""One place per teacher file format: sniff the bytes, load safely, unwrap the state_dict.

Formats, told apart by content (the suffix only breaks ties):

* TorchScript archive (zip with ``code/``): ``torch.jit.load``;
* ``torch.export`` archive (zip with ``archive_format``, or ``.pt2``): ``torch.export.load(...).module()``;
* ``.safetensors`` (8-byte header length, then a JSON header): the ``safetensors`` package, tensors only;
* anything else: ``torch.load(weights_only=True)``, i.e. tensors, dicts and lists only. A file holding other
  pickled objects (a whole ``nn.Module``) is read only with ``trust_pickle=True``, because unpickling it
  runs code from the file.

:func:`read` returns a :class:`Loaded` (the format and the object); :func:`unwrap` digs the state_dict out
of the training-framework dicts that wrap it (``params_ema``, ``params``, ``state_dict``, ...).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SRShrinkError, first_line
from ..io import load_problem

ZOO_INSTALL = "pip install 'sr-shrink[zoo]'"
# Keys under which training code stores the weights, in the order they are preferred (EMA weights first).
WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net", "network",
                "generator")
# Prefixes some trainers put on every key (DataParallel / DistributedDataParallel, ESRGAN-style GAN code).
COMMON_PREFIXES = ("module.", "netG.")


@dataclass
class Loaded:
    """What :func:`read` found: ``format`` (torchscript, torch.export, safetensors, state_dict, pickled
    nn.Module) and ``obj`` (an ``nn.Module`` for the first two and for trusted pickles, else a dict)."""

    format: str
    obj: Any


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_kind(path: str | Path) -> str | None:
    """Return the image format the first bytes of ``path`` announce (PNG, JPEG, GIF, WebP, BMP, TIFF, AVIF,
    HEIC), or None when they do not look like an image (or the file cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    # BMP: "BM", four reserved zero bytes at 6..9 and a known DIB header size at 14 (the two letters alone are
    # too weak: a safetensors header length could start with them)
    if head[:2] == b"BM" and len(head) >= 18 and head[6:10] == b"\0\0\0\0" and \
            struct.unpack("<I", head[14:18])[0] in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
        return "AVIF" if head[8:11] == b"avi" else "HEIC"
    return None


EXPORTED = {".onnx": "ONNX", ".tflite": "TFLite", ".mlpackage": "Core ML", ".mlmodel": "Core ML"}


def exported_kind(path: str | Path) -> str | None:
    """Return the format of an exported model at ``path`` (ONNX, TFLite, Core ML), told by its suffix or a
    TFLite flatbuffer's identifier, or None."""
    path = Path(path)
    if path.suffix.lower() in EXPORTED:
        return EXPORTED[path.suffix.lower()]
    try:
        with open(path, "rb") as f:
            return "TFLite" if f.read(8)[4:8] == b"TFL3" else None
    except OSError:
        return None


TEACHER_FILES = ".pt/.pth/.safetensors state_dict, TorchScript or torch.export .pt2"  # what load_teacher reads


def refuse_non_teacher(path: Path) -> None:
    """Raise a one-line SRShrinkError when ``path`` is an exported model (:func:`exported_kind`) or an image
    (:func:`image_kind`) rather than a teacher checkpoint, naming it and the command that takes it (never a hint
    to trust pickles); return None otherwise."""
    kind = exported_kind(path)
    if kind is not None:
        raise SRShrinkError(f"{path}: this is an exported {kind} model, not a teacher checkpoint; 'sr-shrink upscale "
                            f"{path} IMAGE' runs it. Pass the teacher network's weights ({TEACHER_FILES}).")
    kind = image_kind(path)
    if kind is not None:
        raise SRShrinkError(f"{path}: this is a {kind} image, not a teacher checkpoint. Pass the teacher network's "
                            f"weights ({TEACHER_FILES}); images go to 'sr-shrink upscale MODEL IMAGE'.")


def sniff(path: Path) -> str:
    """Return the format the bytes of ``path`` announce: torchscript, torch.export, safetensors or torch.load."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("archive_format") for n in names) or path.suffix == ".pt2":
            return "torch.export"
        return "torch.load"
    if path.suffix == ".pt2":
        return "torch.export"
    if _is_safetensors(path):
        return "safetensors"
    return "torch.load"


def _is_safetensors(path: Path) -> bool:
    """Return True if ``path`` starts like a safetensors file (u64 header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def _starts_like_torch_save(path: Path) -> bool:
    """Return True if ``path`` is a zip archive (torch.save's format) or starts with a pickle protocol marker
    (its legacy format, protocol 2 or later): files that could hold pickled objects."""
    with open(path, "rb") as f:
        if f.read(1) == b"\x80":
            return True
    return zipfile.is_zipfile(path)


def read(path: Path, trust_pickle: bool = False) -> Loaded:
    """Return the :class:`Loaded` contents of ``path``, never running pickled code unless ``trust_pickle``
    (:func:`refuse_non_teacher` has turned away images and exported models before)."""
    kind = sniff(path)
    if kind in ("torchscript", "torch.export"):
        try:
            if kind == "torchscript":
                return Loaded(kind, torch.jit.load(str(path), map_location="cpu"))
            return Loaded(kind, torch.export.load(str(path)).module())
        except Exception as exc:  # a damaged archive
            raise SRShrinkError(f"{path}: cannot load this archive ({first_line(exc)}); re-export the teacher.") \
                from None
    if kind == "safetensors":
        return Loaded(kind, _read_safetensors(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if not _starts_like_torch_save(path):  # text, junk: the weights-only unpickler refuses its first byte
            raise SRShrinkError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip archive nor its "
                                "pickle); check the file or download it again.") from None
        if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            raise SRShrinkError(
                f"{path}: holds pickled Python objects (e.g. a whole nn.Module); loading it would run code from "
                "the file. Pass --trust-pickle only if you trust its source, or save model.state_dict() instead."
            ) from None
        raise SRShrinkError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)}).") from None
    except Exception as exc:  # torch's own words for text are a bare "KeyError: 101" (io.load_problem)
        raise SRShrinkError(f"{path}: {load_problem(exc)}; check the file or download it again.") from None
    return Loaded("pickled nn.Module" if isinstance(obj, nn.Module) else "state_dict", obj)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a .safetensors file (the format holds nothing else, so it is always safe)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise SRShrinkError(f"{path}: reading .safetensors needs the safetensors package; {ZOO_INSTALL}.") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise SRShrinkError(
            f"{path}: truncated or not a safetensors file ({first_line(exc)}); check the file or download it again."
        ) from None


def unwrap(obj: dict) -> dict:
    """Return the state_dict inside ``obj``: wrapper dicts opened, DataParallel/GAN key prefixes removed.

    Opens up to three levels of ``WRAPPER_KEYS`` (preferring EMA weights) and dicts with a single dict value,
    and strips ``COMMON_PREFIXES`` from the keys.
    """
    for _ in range(3):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            key = next(iter(obj))
        if key is None:
            break
        obj = obj[key]
    return {_strip(k): v for k, v in obj.items()}


def _strip(key: Any) -> Any:
    for prefix in COMMON_PREFIXES:
        if isinstance(key, str) and key.startswith(prefix):
            return key[len(prefix):]
    return key


def describe(obj: Any) -> str:
    """Return a short description of ``obj`` for error messages (type, or a dict's first keys)."""
    if isinstance(obj, dict):
        return "dict with keys " + ", ".join(map(str, list(obj)[:4]))
    return type(obj).__name__

