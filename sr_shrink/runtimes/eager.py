"""The ``torch`` runtime: :class:`TorchRunner`, an eager PyTorch module (bench's reference row, upscale of a
stage_XX.pt)."""

from __future__ import annotations

import numpy as np
import torch

from .base import Runner


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
