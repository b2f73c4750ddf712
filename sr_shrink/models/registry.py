"""Architectures by name, and sr-shrink's own checkpoint format (weights + the config that rebuilds them).

An sr-shrink checkpoint is a plain dict (no pickled classes, loadable with ``weights_only=True``):
``{"sr_shrink": 1, "arch": str, "config": dict, "value_range": float, "state_dict": {...}, ...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..io import atomic_torch_save
from .classic import ESPCN, FSRCNN
from .edsr import EDSR
from .msrresnet import MSRResNet
from .student import SRStudent
from .vdsr import VDSR

ARCHS: dict[str, type[nn.Module]] = {"edsr": EDSR, "vdsr": VDSR, "msrresnet": MSRResNet, "student": SRStudent,
                                     "fsrcnn": FSRCNN, "espcn": ESPCN}
FORMAT_VERSION = 1


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """Return a freshly initialised model of architecture ``arch`` built from ``config``."""
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return ARCHS[arch](**config)


def save_model_checkpoint(model: nn.Module, arch: str, config: dict[str, Any], path: str | Path,
                          value_range: float = 1.0, extra: dict[str, Any] | None = None) -> Path:
    """Atomically save ``model`` in sr-shrink's checkpoint format; return the path written."""
    ckpt = {"sr_shrink": FORMAT_VERSION, "arch": arch, "config": dict(config), "value_range": float(value_range),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    ckpt.update(extra or {})
    return atomic_torch_save(ckpt, path)


def is_sr_shrink_checkpoint(obj: Any) -> bool:
    """Return True if ``obj`` is a dict in sr-shrink's checkpoint format."""
    return isinstance(obj, dict) and "sr_shrink" in obj and "arch" in obj and "state_dict" in obj
