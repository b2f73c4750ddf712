"""The ``mil`` runtime (.mlpackage): :class:`MILRunner`, sr-shrink's numpy ML Program evaluator (Core ML does not
run off Apple hardware)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SRShrinkError, first_line
from .base import Runner, fixed_hw


class MILRunner(Runner):
    """A Core ML .mlpackage evaluated op by op (:mod:`sr_shrink.mil_eval`: numpy, with torch's CPU kernels and
    threads for the convolutions and elementwise ops).

    Ops the evaluator does not implement raise :class:`sr_shrink.mil_eval.UnsupportedOp` when run. A package
    with image I/O (metadata ``io: image``, ``sr-shrink export --io image``) is fed the 8-bit pixel values an
    image buffer holds (the input times 255, rounded) and its output, pixel values, is rounded to 8 bits and
    scaled back to [0, 1], as Core ML's image output would be.
    """

    runtime = "mil"

    def __init__(self, path: str | Path, threads: int = 1, device: str = "cpu"):
        super().__init__(path, threads)
        from ..mil_eval import load_program

        try:
            self.program = load_program(self.path)
        except Exception as exc:  # noqa: BLE001 - coremltools raises many types for a damaged package
            raise SRShrinkError(f"{self.path}: coremltools cannot read it ({first_line(exc)}).") from None
        self.input_name, self.output_name = self.program.inputs[0], self.program.outputs[0]
        dtype, shape = self.program.input_specs[self.input_name]
        self.in_dtype = dtype
        self.metadata = dict(self.program.metadata)
        self._take_input(shape, self.program.metadata.get("layout"))
        enumerated = self.program.input_shapes.get(self.input_name, ())
        self.input_sizes = tuple(fixed_hw(s, self.layout) for s in enumerated) or None
        self.image_io = self.program.metadata.get("io") == "image"

    def _run(self, feed: np.ndarray) -> np.ndarray:
        from ..mil_eval import run_program

        if self.image_io:
            feed = np.clip(np.round(feed * 255.0), 0, 255).astype(feed.dtype)
        out = run_program(self.program, {self.input_name: feed})[self.output_name]
        return np.clip(np.round(out.astype(np.float32)), 0, 255) / 255.0 if self.image_io else out
