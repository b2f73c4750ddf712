"""The base of every runner (:class:`Runner`): float32 NCHW in [0, 1] in, float32 NCHW out, whatever layout, dtype
and size the model file takes (see :mod:`sr_shrink.runtimes`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import SRShrinkError

LAYOUTS = ("nchw", "nhwc")
UPSCALER_TIP = "pass a super-resolution model that upscales by a whole factor of 2 or more (x2, x3, x4)."


def io_layout(declared: str | None, shape) -> str:
    """Return the layout the metadata declares, else the one the input shape implies."""
    if declared in LAYOUTS:
        return declared
    return "nhwc" if len(shape) == 4 and shape[-1] == 3 and shape[1] != 3 else "nchw"


def fixed_hw(shape, layout: str) -> tuple[int, int] | None:
    """Return the (h, w) an input shape fixes, or None when either is free (a name, None, or <= 0)."""
    if len(shape) != 4:
        return None
    dims = [shape[a] for a in ((1, 2) if layout == "nhwc" else (2, 3))]
    if all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims):
        return int(dims[0]), int(dims[1])
    return None


def check_rgb_input(path, shape, layout: str) -> None:
    """Raise a one-line SRShrinkError when a model's input ``shape`` is not a batch of RGB images: rank 4 with
    3 channels on the axis ``layout`` puts them (a free channel axis passes)."""
    if len(shape) == 4:
        c = shape[3 if layout == "nhwc" else 1]
        if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c <= 0 or c == 3:
            return
    raise SRShrinkError(f"{path}: its input has shape {tuple(shape)}, not a batch of RGB images (N, 3, h, w) or "
                        "(N, h, w, 3); pass a 3-channel super-resolution model, such as 'sr-shrink export' writes.")


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
    model's I/O), ``io_dtype`` (its input dtype name), ``input_hw`` (None when free), ``metadata`` (the entries
    the file carries, as ``sr-shrink export`` writes them: scale, stage, precision, ...; {} for a file without)
    and ``precision`` (a label callers may set, e.g. bench's row precision).
    """

    runtime = "?"

    def __init__(self, path: str | Path | None, threads: int, device: str = "cpu"):
        self.path = Path(path) if path is not None else None
        self.threads = max(1, int(threads))
        self.device = "cpu"
        self.layout = "nchw"
        self.input_hw: tuple[int, int] | None = None
        self.input_sizes: tuple[tuple[int, int], ...] | None = None  # the sizes an enumerated input lists
        self.in_dtype: type = np.float32
        self.in_quant: tuple[float, int] | None = None
        self.out_quant: tuple[float, int] | None = None
        self.precision: str | None = None
        self.metadata: dict = {}

    def _take_input(self, shape, declared_layout: str | None) -> None:
        """Set ``layout`` (the declared one, else the one ``shape`` implies) and ``input_hw`` from the model's input
        ``shape`` (free dimensions None, a name, or <= 0); a one-line SRShrinkError when it is not RGB images."""
        self.layout = io_layout(declared_layout, shape)
        check_rgb_input(self.path, shape, self.layout)
        self.input_hw = fixed_hw(shape, self.layout)

    def takes(self, hw: tuple[int, int]) -> bool:
        """Return True if the model accepts (h, w) inputs: its fixed size, one it enumerates, or any size."""
        hw = tuple(int(v) for v in hw)
        if self.input_hw is not None:
            return hw == tuple(self.input_hw)
        return not self.input_sizes or hw in self.input_sizes

    @property
    def tile_hw(self) -> tuple[int, int] | None:
        """Return the input size to tile images at: the fixed size, else the first (default) enumerated one,
        else None (any size)."""
        return self.input_hw or (self.input_sizes[0] if self.input_sizes else None)

    @property
    def io_dtype(self) -> str:
        """Return the name of the dtype the model's input takes (float32, float16, int8, ...)."""
        return np.dtype(self.in_dtype).name

    @property
    def label(self) -> str:
        """Return the runtime and its version, as verification and bench records name it."""
        from . import runtime_label  # the registry, in the package

        return runtime_label(self.runtime)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise SRShrinkError(f"{self.path}: runners take float32 (N, 3, h, w) arrays, got {x.shape}.")
        if not self.takes(x.shape[-2:]):
            got = f"got {x.shape[2]}x{x.shape[3]}"
            if self.input_hw is not None:
                raise SRShrinkError(f"{self.path}: the model takes {self.input_hw[0]}x{self.input_hw[1]} inputs "
                                    f"only (a fixed-size graph), {got}; tile the image.")
            raise SRShrinkError(f"{self.path}: the model takes only the sizes it enumerates "
                                f"({', '.join(f'{h}x{w}' for h, w in self.input_sizes)}), {got}; tile the image "
                                "at one of them.")
        if x.shape[0] != 1:  # exported graphs take batch 1
            return np.concatenate([self(x[i : i + 1]) for i in range(x.shape[0])])
        nhwc = self.layout == "nhwc"
        y = _decode(self._run(_encode(x.transpose(0, 2, 3, 1) if nhwc else x, self.in_dtype, self.in_quant)),
                    self.out_quant)
        if y.ndim != 4 or y.shape[3 if nhwc else 1] != 3:
            raise SRShrinkError(f"{self.path}: its output has shape {y.shape} for a {x.shape} input, not a batch of "
                                "RGB images; pass a 3-channel super-resolution model, such as 'sr-shrink export' "
                                "writes.")
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2) if nhwc else y, dtype=np.float32)

    def _run(self, feed: np.ndarray) -> np.ndarray:
        """Return the model's raw output for ``feed``, already in the model's layout and input dtype."""
        raise NotImplementedError

    def probe_scale(self) -> tuple[int, tuple[int, int]]:
        """Return (the whole factor the model upscales by, the input size it was found at): one run of a mid-grey
        input at the model's own size (:attr:`tile_hw`; 64x64 when it takes any). A one-line SRShrinkError when the
        output is no whole-number upscaling of the input."""
        size = tuple(self.tile_hw) if self.tile_hw else (64, 64)
        out = self(np.full((1, 3, *size), 0.5, dtype=np.float32))
        scale = out.shape[-1] // size[1]
        if out.shape[-2:] != (size[0] * scale, size[1] * scale) or scale < 1:
            raise SRShrinkError(f"{self.path}: output {tuple(out.shape)} for a {size} input is not a whole-number "
                                f"upscaling; {UPSCALER_TIP}")
        return scale, size

    def torch_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Return a function tensor (N,3,h,w) -> tensor (N,3,sh,sw) that calls this runner on the CPU."""
        def fn(x: torch.Tensor) -> torch.Tensor:
            arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
            return torch.from_numpy(np.ascontiguousarray(self(arr), dtype=np.float32))
        return fn
