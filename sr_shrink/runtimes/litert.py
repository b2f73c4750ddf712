"""The ``litert`` runtime (.tflite, LiteRT with XNNPACK): :class:`LiteRTRunner` and :func:`tflite_metadata`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..deps import quiet
from ..errors import SRShrinkError, first_line
from .base import Runner


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
            self.metadata = meta = tflite_metadata(self.path)
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError, RuntimeError or its own types
            raise SRShrinkError(f"{self.path}: LiteRT cannot load it ({first_line(exc)}).") from None
        inp, out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.in_index, self.out_index = inp["index"], out["index"]
        sig = [int(d) for d in inp.get("shape_signature", inp["shape"])]
        self._take_input([d if d > 0 else None for d in sig], meta.get("layout"))
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
