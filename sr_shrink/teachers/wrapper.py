"""The :class:`Teacher` wrapper: one calling convention for every loaded network, and what was found about it.

A Teacher maps RGB in [0, 1], (N,3,h,w), to RGB in [0, 1], (N,3,s*h,s*w), whatever the network's own
conventions: value range (inputs scaled to [0, 255] and back), Y-only networks (Y through the network,
CbCr bicubic), pre-upsampling networks (bicubic first), and input-size requirements (inputs padded to the
accepted size, outputs cropped back), so distillation patches, evaluation, tiling and comparisons need not
know about any of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..resize import upscale
from .probe import SizeRequirements

_RGB2YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255


def rgb_to_ycbcr(img: torch.Tensor) -> torch.Tensor:
    """Return BT.601 YCbCr in [0, 1] (Y in [16/255, 235/255]) of an RGB (N,3,H,W) image in [0, 1]."""
    m = _RGB2YCBCR.to(img)
    return torch.einsum("ij,njhw->nihw", m, img) + _YCBCR_OFFSET.to(img).view(1, 3, 1, 1)


def ycbcr_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Return RGB in [0, 1] of a BT.601 YCbCr (N,3,H,W) image in [0, 1] (inverse of ``rgb_to_ycbcr``)."""
    m = torch.linalg.inv(_RGB2YCBCR.double()).to(img)
    return torch.einsum("ij,njhw->nihw", m, img - _YCBCR_OFFSET.to(img).view(1, 3, 1, 1))


@dataclass
class TeacherInfo:
    """What ``load_teacher`` found: file format, architecture, scale and the conventions it adapted.

    ``arch`` is the architecture id (sr-shrink's registry name, spandrel's architecture id, or the class name
    of an opaque module), ``arch_name`` its display name, ``tags`` size tags such as ``64nf``/``23nb``.
    ``value_range_guessed`` is True when the value range came from an ambiguous probe (pass ``value_range``
    to settle it). ``detected_by`` says who recognised the network: ``sr-shrink``, ``spandrel <version>``,
    or ``probe`` (an opaque TorchScript/torch.export/pickled module, conventions found by running it).
    ``tiling`` is spandrel's word on running the network in tiles: ``supported``, ``discouraged`` (it relies on
    global image information, e.g. SwinIR) or ``internal`` (it tiles itself); ``supported`` for the others.
    """

    path: str
    format: str
    arch: str
    scale: int
    value_range: float
    y_only: bool = False
    pre_upsample: bool = False
    params: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    arch_name: str = ""
    tags: list[str] = field(default_factory=list)
    size_requirements: SizeRequirements = field(default_factory=SizeRequirements)
    value_range_guessed: bool = False
    detected_by: str = ""
    tiling: str = "supported"

    def to_dict(self) -> dict[str, Any]:
        """Return the info as a JSON-ready dict (``size_requirements`` as a dict)."""
        return asdict(self)


class Teacher(nn.Module):
    """Wraps a loaded network so it maps RGB [0,1] (N,3,h,w) to RGB [0,1] (N,3,s*h,s*w), frozen and in eval.

    Inputs whose size the network does not accept (``size_requirements``) are padded at the bottom and
    right (reflect, then replicate) and the output is cropped back, so any input size works. Callers that
    want to avoid padding pick sizes with :meth:`fit_size` (or from ``size_requirements``).
    """

    def __init__(self, net: nn.Module, info: TeacherInfo):
        super().__init__()
        self.net, self.info, self.scale = net, info, info.scale
        self.size_requirements: SizeRequirements = info.size_requirements
        eval_mode(self.net)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def fit_size(self, size: int) -> int:
        """Return the smallest LR side length >= ``size`` that the network takes without padding."""
        return self.size_requirements.fit(size)

    def train(self, mode: bool = True) -> Teacher:
        """Keep the teacher in eval mode whatever is asked (it is never trained)."""
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info = self.info
        inp = upscale(x, self.scale) if info.pre_upsample else x
        ratio = 1 if info.pre_upsample else self.scale
        if info.y_only:
            ycc = rgb_to_ycbcr(inp)
            y = self._net(ycc[:, :1] * info.value_range, ratio) / info.value_range
            cbcr = ycc[:, 1:] if info.pre_upsample else upscale(ycc[:, 1:], self.scale)
            return ycbcr_to_rgb(torch.cat([y, cbcr], dim=1))
        return self._net(inp * info.value_range, ratio) / info.value_range

    def _net(self, t: torch.Tensor, ratio: int) -> torch.Tensor:
        """Return the network's output for ``t``, padding ``t`` to an accepted size and cropping the output."""
        h, w = t.shape[-2:]
        padded = self.size_requirements.pad(t)
        if padded is t:
            return self.net(t)
        return self.net(padded)[..., : h * ratio, : w * ratio]


def eval_mode(net: nn.Module) -> None:
    """Put ``net`` in eval mode (returns nothing); torch.export modules refuse the call and are fixed graphs."""
    try:
        net.eval()
    except NotImplementedError:
        pass
