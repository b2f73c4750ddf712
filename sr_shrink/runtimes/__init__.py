"""One runner per runtime, shared by export verification, ``sr-shrink bench`` and ``sr-shrink upscale``.

A runner maps a float32 NCHW numpy batch in [0, 1] to the float32 NCHW upscaled batch, whatever the model
file expects. Each runner reads from the model itself:

- its layout: the ``layout`` entry of the model's metadata (``nchw``/``nhwc``, written by ``sr-shrink
  export``), else the input shape (a last axis of 3 and a second axis that is not 3 means NHWC);
- its I/O precision: float16 inputs are cast, int8/uint8 tensors are quantised and dequantised with the
  tensor's own scale and zero point;
- its input size: ``input_hw`` is the (h, w) a static graph demands, ``None`` when any size works;
  ``input_sizes`` the sizes an enumerated input takes (a Core ML ``EnumeratedShapes`` package), the only
  ones it runs, as Core ML would (``tile_hw``: the size to tile at).

Runtimes: ``torch`` (:class:`TorchRunner`, a module), ``onnxruntime`` (.onnx), ``litert`` (.tflite, LiteRT
with XNNPACK) and ``mil`` (.mlpackage, through sr-shrink's numpy ML Program evaluator, since Core ML does not
run off Apple hardware). :func:`open_runner` picks by file suffix.

The package: this module holds the registry (:data:`RUNTIMES`, availability, labels) and :func:`open_runner`;
``base`` the :class:`Runner` every runner derives from (I/O layout, dtype and size rules), then one module per
runtime: ``eager`` (torch), ``ort`` (onnxruntime), ``litert`` and ``mil``. Every name is importable from
``sr_shrink.runtimes``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..deps import require
from ..errors import SRShrinkError
from .base import LAYOUTS, Runner
from .eager import TorchRunner
from .litert import LiteRTRunner, tflite_metadata
from .mil import MILRunner
from .ort import ORT_LEVELS, OrtRunner, ort_session_options

__all__ = ["LAYOUTS", "ORT_LEVELS", "RUNNERS", "RUNTIMES", "SUFFIXES", "LiteRTRunner", "MILRunner", "OrtRunner",
           "Runner", "Runtime", "TorchRunner", "missing_runtime_message", "open_runner", "ort_session_options",
           "require_runtime", "runtime_available", "runtime_label", "runtime_version", "tflite_metadata"]


@dataclass(frozen=True)
class Runtime:
    """A runtime: the module that provides it, its pip distribution and sr-shrink extra, its file suffix."""

    name: str
    module: str
    dist: str
    extra: str
    suffix: str | None
    label: str


RUNTIMES = {
    "torch": Runtime("torch", "torch", "torch", "all", None, "torch {v}"),
    "onnxruntime": Runtime("onnxruntime", "onnxruntime", "onnxruntime", "onnx", ".onnx", "onnxruntime {v}"),
    "litert": Runtime("litert", "ai_edge_litert", "ai-edge-litert", "tflite", ".tflite",
                      "ai-edge-litert {v} (XNNPACK)"),
    "mil": Runtime("mil", "coremltools", "coremltools", "coreml", ".mlpackage",
                   "numpy MIL evaluator (sr-shrink, coremltools {v})"),
}
SUFFIXES = {rt.suffix: name for name, rt in RUNTIMES.items() if rt.suffix}


def runtime_available(name: str) -> bool:
    """Return True if the Python package behind runtime ``name`` can be imported."""
    try:
        return importlib.util.find_spec(RUNTIMES[name].module) is not None
    except (KeyError, ValueError, ImportError):
        return False


def missing_runtime_message(name: str) -> str:
    """Return the one-line note that says runtime ``name`` is not installed and how to add it."""
    return f"{name} is not installed; pip install 'sr-shrink[{RUNTIMES[name].extra}]' to use it."


def require_runtime(name: str) -> None:
    """Raise SRShrinkError naming the pip extra when runtime ``name`` is unknown or not installed."""
    if name not in RUNTIMES:
        raise SRShrinkError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}.")
    if not runtime_available(name):
        raise SRShrinkError(missing_runtime_message(name))


def runtime_version(name: str) -> str | None:
    """Return the installed version of runtime ``name``'s package, or None if it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(RUNTIMES[name].dist)
    except PackageNotFoundError:
        return None


def runtime_label(name: str) -> str:
    """Return how records name runtime ``name``: e.g. ``onnxruntime 1.32.0``, ``ai-edge-litert 2.3.0 (XNNPACK)``."""
    return RUNTIMES[name].label.format(v=runtime_version(name) or "?")



RUNNERS: dict[str, type[Runner]] = {"onnxruntime": OrtRunner, "litert": LiteRTRunner, "mil": MILRunner}


def open_runner(path: str | Path, threads: int = 1, device: str = "cpu") -> Runner:
    """Return the runner for an exported model (.onnx, .tflite or .mlpackage), chosen by its suffix.

    Raises SRShrinkError (one line) for a missing file, an unknown suffix, a runtime that is not installed
    (naming the pip extra) or a file the runtime cannot load.
    """
    path = Path(path)
    name = SUFFIXES.get(path.suffix.lower())
    exists = path.is_dir() if name == "mil" else path.is_file()
    if not exists:
        raise SRShrinkError(f"{path}: no such model file.")
    if name is None:
        raise SRShrinkError(f"{path}: unknown model type {path.suffix!r}; pass an .onnx, .tflite or .mlpackage "
                            "file.")
    rt = RUNTIMES[name]
    require(rt.extra, rt.module if name != "litert" else "ai_edge_litert.interpreter",
            purpose=f"running {rt.suffix} files")
    return RUNNERS[name](path, threads, device)
