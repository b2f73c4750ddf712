"""The ``onnxruntime`` runtime (.onnx): :class:`OrtRunner` and the session options every sr-shrink ONNX session
uses (:func:`ort_session_options`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SRShrinkError, first_line
from .base import Runner

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


ORT_LEVELS = ("disable", "basic", "extended", "all")


def ort_session_options(threads: int = 1, level: str = "all", profile_prefix: str | None = None,
                        optimized_to: str | Path | None = None):
    """Return the onnxruntime SessionOptions every sr-shrink ONNX session uses: ``threads`` intra-op threads,
    one inter-op thread, no spin-waiting, graph optimisation ``level`` (one of :data:`ORT_LEVELS`).

    ``level="all"`` (the default) is what makes int8 fast: the QDQ fusions into QLinearConv/QLinearAdd run at
    "extended", and the NHWC layout transform that keeps the whole integer body in NHWC runs only at "all".
    ``profile_prefix`` turns on ORT's node-level profiler; ``optimized_to`` writes the optimised graph there.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    names = dict(zip(ORT_LEVELS, ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")))
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, names[level])
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    if optimized_to:
        opts.optimized_model_filepath = str(optimized_to)
    return opts


class OrtRunner(Runner):
    """ONNX Runtime session with :func:`ort_session_options` (``intra_op_num_threads=threads``, one inter-op
    thread, no spin-waiting, all graph optimisations), or the ``options`` given.

    Spinning is off so that idle worker threads do not steal cores from the rows timed next to it.
    ``device="cuda"`` uses the CUDA provider when this onnxruntime build has it, else the CPU.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, device: str = "cpu", options=None):
        super().__init__(path, threads)
        import onnxruntime as ort

        opts = options if options is not None else ort_session_options(self.threads)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
            self.device = "cuda"
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception directly
            raise SRShrinkError(f"{self.path}: onnxruntime cannot load it ({first_line(exc)}).") from None
        inp = self.session.get_inputs()[0]
        if inp.type not in _ORT_DTYPES:
            raise SRShrinkError(f"{self.path}: input type {inp.type} is not supported (sr-shrink runs float32 "
                                "and float16 ONNX inputs; integer inputs carry no scale to quantise with).")
        self.input_name, self.in_dtype = inp.name, _ORT_DTYPES[inp.type]
        self.metadata = meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self._take_input(inp.shape, meta.get("layout"))

    def _run(self, feed: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: feed})[0]
