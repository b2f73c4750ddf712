"""What ``sr-shrink bench`` compares: its runtimes, precisions and the export target each runtime runs.

The runners themselves are :mod:`sr_shrink.runtimes`, shared with export verification and upscale; this
module only says which of them bench measures and settles the ``--runtimes`` request.
"""

from __future__ import annotations

from ..errors import SRShrinkError
from ..runtimes import missing_runtime_message, require_runtime, runtime_available

RUNTIMES = ("torch", "onnxruntime", "litert")  # the Core ML MIL evaluator checks exports, it is not timed
PRECISIONS = ("fp32", "fp16", "int8")  # the default set
ACCEPTED_PRECISIONS = PRECISIONS + ("w8a16",)  # w8a16 (int8 weights, 16-bit activations) when asked for
TARGETS = {"onnxruntime": "onnx", "litert": "tflite"}  # runtime -> export target whose files it runs
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}


def settle_runtimes(requested: tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """Return (runtimes to bench, notes): torch always; missing packages noted, or an error if asked for."""
    if requested:
        for name in requested:
            if name not in RUNTIMES:
                raise SRShrinkError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}.")
            require_runtime(name)
        return ["torch"] + [r for r in dict.fromkeys(requested) if r != "torch"], []
    ok = [r for r in RUNTIMES if runtime_available(r)]
    return ok, [f"skipped {r}: {missing_runtime_message(r)}" for r in RUNTIMES if r not in ok]
