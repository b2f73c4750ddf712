"""Runners: one calling convention for a PyTorch module, an .onnx file (ONNX Runtime) and a .tflite file (LiteRT).

A runner maps a float32 NCHW numpy batch in [0, 1] to the float32 NCHW upscaled batch, with its thread
count fixed at construction. ``input_hw`` is the fixed input size a static graph demands (None when any
size works). Runners cast to the model's input dtype (float16 graphs), quantise/dequantise integer I/O
with the graph's own scale and zero point, and transpose for NHWC graphs, so every file "just runs".
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import SRShrinkError

RUNTIMES = ("torch", "onnxruntime", "litert")
PRECISIONS = ("fp32", "fp16", "int8")
EXTRAS = {"onnxruntime": "onnx", "litert": "tflite"}
MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "litert": "ai_edge_litert"}
SUFFIXES = {".onnx": "onnxruntime", ".tflite": "litert"}


def runtime_available(name: str) -> bool:
    """Return True if the Python package behind runtime ``name`` can be imported."""
    try:
        return importlib.util.find_spec(MODULES[name]) is not None
    except (KeyError, ValueError, ImportError):
        return False


def missing_runtime_message(name: str) -> str:
    """Return the one-line note that says runtime ``name`` is not installed and how to add it."""
    return f"{name} is not installed; pip install 'sr-shrink[{EXTRAS.get(name, 'all')}]' to use it."


def require_runtime(name: str) -> None:
    """Raise SRShrinkError naming the pip extra when runtime ``name`` is unknown or not installed."""
    if name not in MODULES:
        raise SRShrinkError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}.")
    if not runtime_available(name):
        raise SRShrinkError(missing_runtime_message(name))


def runtime_version(name: str) -> str | None:
    """Return the installed version of runtime ``name``'s package, or None if it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    dist = {"torch": "torch", "onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}[name]
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class Runner:
    """Base runner: ``runner(x)`` maps float32 NCHW in [0, 1] to float32 NCHW; see the module docstring."""

    runtime = "?"
    precision = "fp32"
    device = "cpu"
    input_hw: tuple[int, int] | None = None

    def __init__(self, path: str | Path | None, threads: int):
        self.path = Path(path) if path else None
        self.threads = int(threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def torch_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Return a function tensor (N,3,h,w) -> tensor (N,3,sh,sw) that calls this runner on the CPU."""
        def fn(x: torch.Tensor) -> torch.Tensor:
            arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
            return torch.from_numpy(np.ascontiguousarray(self(arr), dtype=np.float32))
        return fn


class TorchRunner(Runner):
    """Eager PyTorch: runs ``model`` with ``torch.set_num_threads(threads)`` on ``device``."""

    runtime = "torch"

    def __init__(self, model: torch.nn.Module, threads: int, device: str = "cpu", path=None):
        super().__init__(path, threads)
        self.device = str(device)
        self.model = model.eval().to(self.device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x).to(self.device))
        return y.float().cpu().numpy()


def _np_dtype(ort_type: str) -> type:
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(uint8)": np.uint8,
            "tensor(int8)": np.int8}.get(ort_type, np.float32)


class OrtRunner(Runner):
    """ONNX Runtime session with ``intra_op_num_threads=threads``, one inter-op thread and no spin-waiting.

    Spinning is off so that idle worker threads do not steal cores from the rows timed next to it.
    ``device="cuda"`` uses the CUDA provider when this onnxruntime build has it, else the CPU.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int, device: str = "cpu"):
        super().__init__(path, threads)
        require_runtime("onnxruntime")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
            self.device = "cuda"
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception directly
            raise SRShrinkError(f"{self.path}: onnxruntime cannot load it ({_first_line(exc)}).") from None
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_dtype = inp.name, _np_dtype(inp.type)
        dims = inp.shape[-2:]
        self.input_hw = tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
        return y.astype(np.float32, copy=False)


class LiteRTRunner(Runner):
    """LiteRT (``ai_edge_litert``) interpreter with ``num_threads=threads`` and its default XNNPACK delegate."""

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int, device: str = "cpu"):
        super().__init__(path, threads)
        require_runtime("litert")
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interp = Interpreter(model_path=str(self.path), num_threads=self.threads)
            self.interp.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError, RuntimeError or its own types
            raise SRShrinkError(f"{self.path}: LiteRT cannot load it ({_first_line(exc)}).") from None
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        shape = tuple(int(d) for d in self.inp["shape"])
        self.nhwc = shape[-1] == 3 and shape[1] != 3
        self.input_hw = shape[1:3] if self.nhwc else shape[2:4]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        self.interp.set_tensor(self.inp["index"], _quantize(x, self.inp))
        self.interp.invoke()
        y = _dequantize(self.interp.get_tensor(self.out["index"]), self.out)
        if y.shape[-1] == 3 and y.shape[1] != 3:
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y, dtype=np.float32)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Return ``x`` in the tensor's dtype, applying its (scale, zero_point) for integer tensors."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / (scale or 1.0) + zero), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    """Return float32 values of an output tensor, undoing integer quantisation."""
    if np.issubdtype(y.dtype, np.integer):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * (scale or 1.0)
    return y.astype(np.float32, copy=False)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def open_runner(path: str | Path, threads: int = 1, device: str = "cpu") -> Runner:
    """Return the runner for an exported model file (.onnx or .tflite), chosen by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise SRShrinkError(f"{path}: no such model file.")
    runtime = SUFFIXES.get(path.suffix.lower())
    if runtime is None:
        raise SRShrinkError(f"{path}: unknown model type {path.suffix!r}; pass a .pt, .onnx or .tflite file.")
    require_runtime(runtime)
    cls = OrtRunner if runtime == "onnxruntime" else LiteRTRunner
    return cls(path, threads, device)
