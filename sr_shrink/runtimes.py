"""One runner per runtime, shared by export verification, ``sr-shrink bench`` and ``sr-shrink upscale``.

A runner maps a float32 NCHW numpy batch in [0, 1] to the float32 NCHW upscaled batch, whatever the model
file expects. Each runner reads from the model itself:

- its layout: the ``layout`` entry of the model's metadata (``nchw``/``nhwc``, written by ``sr-shrink
  export``), else the input shape (a last axis of 3 and a second axis that is not 3 means NHWC);
- its I/O precision: float16 inputs are cast, int8/uint8 tensors are quantised and dequantised with the
  tensor's own scale and zero point;
- its input size: ``input_hw`` is the (h, w) a static graph demands, ``None`` when any size works.

Runtimes: ``torch`` (:class:`TorchRunner`, a module), ``onnxruntime`` (.onnx), ``litert`` (.tflite, LiteRT
with XNNPACK) and ``mil`` (.mlpackage, through sr-shrink's numpy ML Program evaluator, since Core ML does not
run off Apple hardware). :func:`open_runner` picks by file suffix.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .deps import quiet, require
from .errors import SRShrinkError, first_line


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
LAYOUTS = ("nchw", "nhwc")


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


def _layout(declared: str | None, shape) -> str:
    """Return the layout the metadata declares, else the one the input shape implies."""
    if declared in LAYOUTS:
        return declared
    return "nhwc" if len(shape) == 4 and shape[-1] == 3 and shape[1] != 3 else "nchw"


def _fixed_hw(shape, layout: str) -> tuple[int, int] | None:
    """Return the (h, w) an input shape fixes, or None when either is free (a name, None, or <= 0)."""
    if len(shape) != 4:
        return None
    dims = [shape[a] for a in ((1, 2) if layout == "nhwc" else (2, 3))]
    if all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims):
        return int(dims[0]), int(dims[1])
    return None


def _encode(x: np.ndarray, dtype, quant: tuple[float, int] | None) -> np.ndarray:
    """Return ``x`` in the input tensor's dtype, quantised with its (scale, zero_point) if it is an integer."""
    if np.issubdtype(dtype, np.integer):
        scale, zero = quant or (1.0, 0)
        info = np.iinfo(dtype)
        return np.clip(np.round(x / (scale or 1.0) + zero), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def _decode(y: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    """Return float32 values of an output tensor, dequantised with its (scale, zero_point) if integer."""
    if np.issubdtype(y.dtype, np.integer):
        scale, zero = quant or (1.0, 0)
        return (y.astype(np.float32) - zero) * (scale or 1.0)
    return y.astype(np.float32, copy=False)


class Runner:
    """``runner(x)`` maps float32 NCHW (N,3,h,w) in [0, 1] to float32 NCHW (N,3,s*h,s*w); see the module.

    Attributes: ``runtime`` (a key of RUNTIMES), ``path``, ``threads``, ``device``, ``layout`` (of the
    model's I/O), ``io_dtype`` (its input dtype name), ``input_hw`` (None when free) and ``precision``
    (a label callers may set, e.g. bench's row precision).
    """

    runtime = "?"

    def __init__(self, path: str | Path | None, threads: int, device: str = "cpu"):
        self.path = Path(path) if path is not None else None
        self.threads = max(1, int(threads))
        self.device = "cpu"
        self.layout = "nchw"
        self.input_hw: tuple[int, int] | None = None
        self.in_dtype: type = np.float32
        self.in_quant: tuple[float, int] | None = None
        self.out_quant: tuple[float, int] | None = None
        self.precision: str | None = None

    @property
    def io_dtype(self) -> str:
        """Return the name of the dtype the model's input takes (float32, float16, int8, ...)."""
        return np.dtype(self.in_dtype).name

    @property
    def label(self) -> str:
        """Return the runtime and its version, as verification and bench records name it."""
        return runtime_label(self.runtime)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise SRShrinkError(f"{self.path}: runners take float32 (N, 3, h, w) arrays, got {x.shape}.")
        if self.input_hw is not None and tuple(x.shape[-2:]) != self.input_hw:
            raise SRShrinkError(f"{self.path}: the model takes {self.input_hw[0]}x{self.input_hw[1]} inputs "
                                f"only (a fixed-size graph), got {x.shape[2]}x{x.shape[3]}; tile the image.")
        if x.shape[0] != 1:  # exported graphs take batch 1
            return np.concatenate([self(x[i : i + 1]) for i in range(x.shape[0])])
        nhwc = self.layout == "nhwc"
        y = _decode(self._run(_encode(x.transpose(0, 2, 3, 1) if nhwc else x, self.in_dtype, self.in_quant)),
                    self.out_quant)
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2) if nhwc else y, dtype=np.float32)

    def _run(self, feed: np.ndarray) -> np.ndarray:
        """Return the model's raw output for ``feed``, already in the model's layout and input dtype."""
        raise NotImplementedError

    def torch_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Return a function tensor (N,3,h,w) -> tensor (N,3,sh,sw) that calls this runner on the CPU."""
        def fn(x: torch.Tensor) -> torch.Tensor:
            arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
            return torch.from_numpy(np.ascontiguousarray(self(arr), dtype=np.float32))
        return fn


class TorchRunner(Runner):
    """Eager PyTorch: runs ``model`` (NCHW, float) with ``torch.set_num_threads(threads)`` on ``device``."""

    runtime = "torch"

    def __init__(self, model: torch.nn.Module, threads: int, device: str = "cpu", path=None):
        super().__init__(path, threads)
        self.device = str(device)
        self.model = model.eval().to(self.device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return y.float().cpu().numpy()


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
        meta = self.session.get_modelmeta().custom_metadata_map
        self.layout = _layout(meta.get("layout"), inp.shape)
        self.input_hw = _fixed_hw(inp.shape, self.layout)

    def _run(self, feed: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: feed})[0]


def tflite_metadata(path: str | Path) -> dict:
    """Return the JSON object in the ``sr_shrink`` metadata entry of a .tflite file ({} if there is none)."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"sr_shrink":
            try:
                data = json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
            except (ValueError, AttributeError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


class LiteRTRunner(Runner):
    """LiteRT (``ai_edge_litert``) interpreter with ``num_threads=threads`` and its default XNNPACK delegate.

    A graph whose input signature leaves height/width free (-1) is resized to each new input size.
    """

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int = 1, device: str = "cpu"):
        super().__init__(path, threads)
        from ai_edge_litert.interpreter import Interpreter

        try:
            with quiet():
                self.interp = Interpreter(model_path=str(self.path), num_threads=self.threads)
                self.interp.allocate_tensors()
            meta = tflite_metadata(self.path)
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError, RuntimeError or its own types
            raise SRShrinkError(f"{self.path}: LiteRT cannot load it ({first_line(exc)}).") from None
        inp, out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.in_index, self.out_index = inp["index"], out["index"]
        sig = [int(d) for d in inp.get("shape_signature", inp["shape"])]
        self.layout = _layout(meta.get("layout"), [d if d > 0 else None for d in sig])
        self.input_hw = _fixed_hw(sig, self.layout)
        self._shape = tuple(int(d) for d in inp["shape"])
        self.in_dtype = inp["dtype"]
        if np.issubdtype(inp["dtype"], np.integer):
            self.in_quant = tuple(inp["quantization"])
        if np.issubdtype(out["dtype"], np.integer):
            self.out_quant = tuple(out["quantization"])

    def _run(self, feed: np.ndarray) -> np.ndarray:
        if feed.shape != self._shape:  # only free-size graphs get here (fixed sizes are checked by __call__)
            self.interp.resize_tensor_input(self.in_index, list(feed.shape), strict=True)
            self.interp.allocate_tensors()
            self._shape = feed.shape
        self.interp.set_tensor(self.in_index, feed)
        self.interp.invoke()
        return self.interp.get_tensor(self.out_index)


class MILRunner(Runner):
    """A Core ML .mlpackage evaluated op by op in numpy (:mod:`sr_shrink.mil_eval`); CPU, single thread.

    Ops the evaluator does not implement raise :class:`sr_shrink.mil_eval.UnsupportedOp` when run. A package
    with image I/O (metadata ``io: image``, ``sr-shrink export --io image``) is fed the 8-bit pixel values an
    image buffer holds (the input times 255, rounded) and its output, pixel values, is rounded to 8 bits and
    scaled back to [0, 1], as Core ML's image output would be.
    """

    runtime = "mil"

    def __init__(self, path: str | Path, threads: int = 1, device: str = "cpu"):
        super().__init__(path, threads)
        from .mil_eval import load_program

        try:
            self.program = load_program(self.path)
        except Exception as exc:  # noqa: BLE001 - coremltools raises many types for a damaged package
            raise SRShrinkError(f"{self.path}: coremltools cannot read it ({first_line(exc)}).") from None
        self.input_name, self.output_name = self.program.inputs[0], self.program.outputs[0]
        dtype, shape = self.program.input_specs[self.input_name]
        self.in_dtype = dtype
        self.layout = _layout(self.program.metadata.get("layout"), shape)
        self.input_hw = _fixed_hw(shape, self.layout)
        self.image_io = self.program.metadata.get("io") == "image"

    def _run(self, feed: np.ndarray) -> np.ndarray:
        from .mil_eval import run_program

        if self.image_io:
            feed = np.clip(np.round(feed * 255.0), 0, 255).astype(feed.dtype)
        out = run_program(self.program, {self.input_name: feed})[self.output_name]
        return np.clip(np.round(out.astype(np.float32)), 0, 255) / 255.0 if self.image_io else out


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
