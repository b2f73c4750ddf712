"""The SR model zoo through spandrel: every architecture spandrel knows, asked after sr-shrink's own detectors.

spandrel (PyPI, MIT, the ``zoo`` extra) recognises ESRGAN/Real-ESRGAN RRDBNet, Real-ESRGAN Compact, SwinIR,
HAT, DAT, SPAN, OmniSR, RCAN and many more from their state_dict keys and shapes and rebuilds them.
:func:`load_zoo` hands it a state_dict and returns a :class:`ZooModel` for x2/x3/x4 RGB (or grayscale)
super-resolution networks; everything else it knows (x1 restoration, face restoration, inpainting, other
scales) ends with one :class:`SRShrinkError` line. The non-commercial ``spandrel_extra_arches`` package is
never required, but its architectures are added when it is installed.

spandrel's call convention is RGB in [0, 1] -> RGB in [0, 1]; its descriptor's size requirements are kept
so the :class:`~sr_shrink.teachers.wrapper.Teacher` can pad inputs to them.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SRShrinkError, first_line
from .formats import ZOO_INSTALL
from .probe import SizeRequirements

SCALES = (2, 3, 4)
_STAND_IN = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_spandrel: Any = None


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """Return a minimal torchvision / torchvision.transforms / .functional module tree for importing spandrel.

    spandrel imports ``InterpolationMode``, ``rotate`` and ``normalize`` from torchvision at import time, for two
    architectures only (LaMa inpainting, RestoreFormer face restoration; sr-shrink refuses both). The functions
    here raise a clear error if they are ever called.
    """

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        NEAREST_EXACT = "nearest-exact"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"
        BOX = "box"
        HAMMING = "hamming"
        LANCZOS = "lanczos"

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise SRShrinkError("this model needs torchvision, which does not import in this environment; "
                            "install a torchvision build that matches your torch.")

    tv, tr, fn = (types.ModuleType(name) for name in _STAND_IN)
    tv.__path__, tr.__path__ = [], []  # packages, so the submodule imports resolve from sys.modules
    tv.transforms, tr.functional = tr, fn
    fn.InterpolationMode, fn.rotate, fn.normalize = InterpolationMode, unavailable, unavailable
    return dict(zip(_STAND_IN, (tv, tr, fn)))


def import_spandrel() -> Any:
    """Return the spandrel module (with ``spandrel_extra_arches`` registered if installed), or None if absent.

    spandrel imports torchvision at import time, and torchvision wheels that do not match the installed torch
    fail to import (e.g. "operator torchvision::nms does not exist" beside a CPU-only torch). When
    ``import torchvision`` fails for any reason, its half-imported modules are dropped and a stand-in
    (:func:`_torchvision_stand_in`) is registered just long enough to import spandrel, then removed again,
    so other code sees torchvision exactly as before. Imported once, on first use.
    """
    global _spandrel
    if _spandrel is None:
        if "spandrel" not in sys.modules:
            if importlib.util.find_spec("spandrel") is None:
                return None
            _import_with_stand_in()
        else:  # imported by the caller already
            try:
                import spandrel_extra_arches  # noqa: F401
            except Exception:
                pass
        import spandrel

        extra = sys.modules.get("spandrel_extra_arches")  # non-commercial licences: used only if the user has it
        if extra is not None and hasattr(extra, "EXTRA_REGISTRY"):
            spandrel.MAIN_REGISTRY.add(*extra.EXTRA_REGISTRY, ignore_duplicates=True)
        _spandrel = spandrel
    return _spandrel


def _drop_modules(root: str) -> None:
    """Remove ``root`` and its submodules from ``sys.modules`` (what a failed import left behind)."""
    for name in [n for n in sys.modules if n == root or n.startswith(root + ".")]:
        del sys.modules[name]


def _import_with_stand_in() -> None:
    """Import spandrel (and spandrel_extra_arches when installed), with the torchvision stand-in in place
    when the real torchvision does not import; raise a one-line error when spandrel itself cannot import."""
    try:
        import torchvision  # noqa: F401
        stand_in = False
    except Exception:
        _drop_modules("torchvision")
        sys.modules.update(_torchvision_stand_in())
        stand_in = True
    try:
        import spandrel  # noqa: F401
    except Exception as exc:
        _drop_modules("spandrel")
        missing = f"{exc.name} is missing" if isinstance(exc, ModuleNotFoundError) else f"it fails: {first_line(exc)}"
        raise SRShrinkError(f"spandrel is installed but does not import ({missing}); {ZOO_INSTALL}.") from None
    else:
        try:
            import spandrel_extra_arches  # noqa: F401
        except Exception:
            _drop_modules("spandrel_extra_arches")
    finally:
        if stand_in:
            for name in _STAND_IN:
                sys.modules.pop(name, None)


class ZooNet(nn.Module):
    """spandrel's network with its call function (a few architectures return a tuple or need extra steps)."""

    def __init__(self, model: nn.Module, call: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(self.model, x) if self.call is not None else self.model(x)


@dataclass
class ZooModel:
    """A super-resolution network loaded by spandrel.

    ``arch`` is spandrel's architecture id (e.g. ESRGAN), ``arch_name`` its display name (e.g. RealESRGAN
    Compact), ``tags`` spandrel's size tags (e.g. 64nf, 23nb), ``size`` the input sizes it accepts,
    ``config`` the constructor arguments spandrel inferred (those that are plain JSON values).
    """

    net: ZooNet
    arch: str
    arch_name: str
    scale: int
    channels: int
    tags: list[str] = field(default_factory=list)
    size: SizeRequirements = field(default_factory=SizeRequirements)
    tiling: str = "supported"  # spandrel's ModelTiling: supported, discouraged (global context) or internal
    config: dict[str, Any] = field(default_factory=dict)
    version: str = ""


def load_zoo(sd: dict, path: Path) -> ZooModel | None:
    """Return the :class:`ZooModel` spandrel builds from the state_dict ``sd``; None if spandrel is not installed.

    Raises a one-line :class:`SRShrinkError` when spandrel does not know the architecture, cannot build it,
    or knows it as something other than an x2/x3/x4 super-resolution network.
    """
    spandrel = import_spandrel()
    if spandrel is None:
        return None
    try:
        with warnings.catch_warnings():  # e.g. torch.meshgrid's indexing notice from Swin-type code: not the user's
            warnings.simplefilter("ignore", UserWarning)
            desc = spandrel.ModelLoader().load_from_state_dict(dict(sd))
    except spandrel.UnsupportedModelError:
        keys = ", ".join(map(str, list(sd)[:4]))
        raise SRShrinkError(
            f"{path}: state_dict of an unknown architecture (keys {keys}, ...): neither sr-shrink nor spandrel "
            f"{spandrel.__version__} knows it; pass a TorchScript or torch.export file of the network."
        ) from None
    except Exception as exc:
        raise SRShrinkError(f"{path}: spandrel recognised the keys but could not build the network "
                            f"({type(exc).__name__}: {first_line(exc)}); the file may be damaged.") from None
    name, scale, purpose = desc.architecture.name, int(desc.scale), str(desc.purpose)
    what = f"{path}: a {name} model"
    if purpose == "Inpainting" or not isinstance(desc, spandrel.ImageModelDescriptor):
        raise SRShrinkError(f"{what} for inpainting (image + mask); sr-shrink distills x2/x3/x4 super-resolution "
                            "teachers, pass one of those.")
    if purpose == "FaceSR":
        raise SRShrinkError(f"{what} for face restoration (aligned face crops, x{scale}); sr-shrink distills "
                            "general x2/x3/x4 super-resolution teachers, pass one of those.")
    if scale == 1 or purpose == "Restoration":
        raise SRShrinkError(f"{what} for x1 restoration (denoising, deblurring, JPEG artefacts: it keeps the image "
                            "size); sr-shrink distills x2/x3/x4 super-resolution teachers, pass one of those.")
    if scale not in SCALES:
        raise SRShrinkError(f"{what} that upscales x{scale}; sr-shrink distills x2, x3 and x4 teachers, "
                            "pass one of those.")
    cin, cout = int(desc.input_channels), int(desc.output_channels)
    if cin != cout or cin not in (1, 3):
        raise SRShrinkError(f"{what} with {cin} input and {cout} output channels; sr-shrink needs an RGB (3 -> 3) "
                            "or grayscale (1 -> 1) network.")
    req = desc.size_requirements
    # spandrel keeps an architecture's own call steps (e.g. taking the first of a tuple) in a private field.
    net = ZooNet(desc.model, getattr(desc, "_call_fn", None))
    return ZooModel(net=net, arch=str(desc.architecture.id), arch_name=name, scale=scale, channels=cin,
                    tags=[str(t) for t in desc.tags],
                    size=SizeRequirements(int(req.minimum), int(req.multiple_of), bool(req.square)),
                    config=_plain(getattr(desc.model, "hyperparameters", {})), version=str(spandrel.__version__),
                    tiling=str(getattr(getattr(desc, "tiling", None), "name", "SUPPORTED")).lower())


def _plain(hyper: dict) -> dict[str, Any]:
    """Return the entries of ``hyper`` whose values are JSON scalars or lists of them (tuples as lists)."""
    scalar = (bool, int, float, str, type(None))
    out: dict[str, Any] = {}
    for k, v in hyper.items():
        if isinstance(v, scalar):
            out[str(k)] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(e, scalar) for e in v):
            out[str(k)] = list(v)
    return out
