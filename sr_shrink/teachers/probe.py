"""What running a network tells: its scale and channels, its value range, its input-size needs, its cost.

* :class:`SizeRequirements`: the input sizes a network accepts (minimum side, multiple of, square), with
  ``pad`` to meet them (reflect, then replicate beyond what reflection can reach; bottom and right only, so
  cropping the output back to ``scale * (h, w)`` removes exactly what the padding added).
* :func:`probe`: run the network on a smooth test image of a size it accepts; return channels and ratio.
* :func:`guess_value_range`: for opaque networks, whether inputs in [0, 1] or [0, 255] make the network act
  like an upscaler of the test image, and whether that choice was clear-cut.
* :func:`count_macs`: multiply-accumulates of one forward, counted on fake tensors (no arithmetic is done,
  so a 16.7 M-parameter RRDBNet costs a second or two, not minutes).
* :func:`count_inference_params`: the parameters the output depends on in eval mode (re-parameterised networks
  such as SPAN keep training-only branches that an eval forward never reads).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SRShrinkError, first_line
from ..resize import upscale

PROBE_SIZES = (32, 48, 64, 24)
# The value-range probe is clear-cut when the better candidate's error is below this share of the worse one's.
VALUE_RANGE_MARGIN = 0.5
# count_macs falls back to a real forward on at most this many input pixels, scaled by area.
MACS_FALLBACK_PIXELS = 64 * 64


@dataclass(frozen=True)
class SizeRequirements:
    """Input sizes a network accepts: each side >= ``minimum`` and a multiple of ``multiple_of``; square if asked."""

    minimum: int = 0
    multiple_of: int = 1
    square: bool = False

    @property
    def none(self) -> bool:
        """Return True when every input size is accepted."""
        return self.minimum <= 1 and self.multiple_of == 1 and not self.square

    def fit(self, size: int) -> int:
        """Return the smallest accepted side length >= ``size``."""
        size = max(size, self.minimum, 1)
        return -(-size // self.multiple_of) * self.multiple_of

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """Return the (height, width) an (h, w) input is padded to."""
        ph, pw = self.fit(h), self.fit(w)
        if self.square:
            ph = pw = max(ph, pw)
        return ph, pw

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` (N,C,h,w) padded at the bottom and right to an accepted size (``x`` itself if it fits).

        Reflection where the image is large enough to mirror, replication for the rest.
        """
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) == (h, w):
            return x
        dh, dw = ph - h, pw - w
        rh, rw = min(dh, h - 1), min(dw, w - 1)
        if rh or rw:
            x = F.pad(x, (0, rw, 0, rh), mode="reflect")
        if dh - rh or dw - rw:
            x = F.pad(x, (0, dw - rw, 0, dh - rh), mode="replicate")
        return x

    def describe(self) -> str:
        """Return a short human-readable summary, e.g. 'multiple of 8, at least 16 px'."""
        parts = []
        if self.multiple_of > 1:
            parts.append(f"multiple of {self.multiple_of}")
        if self.minimum > 1:
            parts.append(f"at least {self.minimum} px")
        if self.square:
            parts.append("square")
        return ", ".join(parts) or "any size"

    def to_dict(self) -> dict[str, Any]:
        """Return the requirements as a JSON-ready dict."""
        return asdict(self)


@dataclass
class Probe:
    """One probe run: input channels, integer upscaling ratio (1: same size), the input and the output."""

    channels: int
    ratio: int
    x: torch.Tensor
    y: torch.Tensor


def probe_image(size: int, channels: int) -> torch.Tensor:
    """Return a smooth, deterministic test image (1, channels, size, size) in [0.2, 0.8]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    chans = [0.5 + 0.3 * torch.sin(2 * math.pi * (xx * (c + 1) * 0.7 + yy * 0.5)) for c in range(channels)]
    return torch.stack(chans).unsqueeze(0)


def probe(net: nn.Module, path: Path, req: SizeRequirements = SizeRequirements(), channels: tuple[int, ...] = (3, 1),
          sizes: tuple[int, ...] = PROBE_SIZES) -> Probe:
    """Run ``net`` on a test image of each accepted size in turn; return the first :class:`Probe` that works.

    Sizes are raised to what ``req`` accepts, so no padding is involved. Raises a one-line
    :class:`SRShrinkError` when the network does not map an image to an integer-upscaled image.
    """
    last_err: BaseException | None = None
    for c in channels:
        for size in sizes:
            side = req.fit(size)
            x = probe_image(side, c)
            try:
                with torch.no_grad():
                    y = net(x)
            except Exception as exc:
                last_err = exc
                continue
            if not torch.is_tensor(y) or y.dim() != 4 or y.shape[1] != c:
                shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
                raise SRShrinkError(f"{path}: does not look like an image SR network: a {tuple(x.shape)} input "
                                    f"gave {shape}; pass a network that maps images to larger images.")
            rh, rw = y.shape[2] / side, y.shape[3] / side
            if rh != rw or rh != int(rh) or rh < 1:
                raise SRShrinkError(f"{path}: output {tuple(y.shape)} for input {tuple(x.shape)} is not an integer "
                                    "upscaling; pass an SR network.")
            return Probe(c, int(rh), x, y)
    raise SRShrinkError(f"{path}: could not run the network on a test image ({first_line(last_err)}); "
                        "is it an image SR network taking (N,3,h,w) or (N,1,h,w)?")


def guess_value_range(net: nn.Module, pr: Probe) -> tuple[float, bool]:
    """Return (value_range, guessed): 1.0 or 255.0, whichever input scaling makes ``net`` act like an upscaler.

    Both candidates are run on the probe image and compared with its bicubic upscaling (mean absolute error
    in [0, 1] units). ``guessed`` is True when the choice is not clear-cut: the better error is not below
    ``VALUE_RANGE_MARGIN`` times the worse one (e.g. a network that is not trained yet, or one that clamps).
    When both scalings give the same output (a scale-invariant network, such as a student that still is
    nearest-neighbour upsampling), the range does not matter: 1.0, not guessed.
    """
    ref = upscale(pr.x, pr.ratio) if pr.ratio > 1 else pr.x
    with torch.no_grad():
        y255 = net(pr.x * 255.0) / 255.0
    err1 = (pr.y - ref).abs().mean().item()
    err255 = (y255 - ref).abs().mean().item()
    if (pr.y - y255).abs().max().item() < 1e-5:  # scale-invariant on the probe (e.g. bias-free): either is right
        return 1.0, False
    best, worst = min(err1, err255), max(err1, err255)
    guessed = not (math.isfinite(best) and best < VALUE_RANGE_MARGIN * worst)
    return (255.0 if err255 < err1 else 1.0), guessed


def count_macs(model: nn.Module, input_size: tuple[int, int] = (256, 256), channels: int = 3) -> int:
    """Return the multiply-accumulates of one forward pass of ``model`` on a (1, channels, h, w) input.

    Counted with torch's FLOP counter on fake tensors: shapes propagate but nothing is computed, so the
    count is exact and costs about the same for any input size. Modules that cannot run on fake tensors
    are counted on a real input of at most ``MACS_FALLBACK_PIXELS`` pixels (same aspect ratio) and the
    count is scaled by the area ratio, which is exact for convolutional networks (their MACs are
    proportional to the number of pixels) and an estimate for the rest.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    h, w = input_size
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), counter:
            model(torch.empty(1, channels, h, w, device=device))
        return counter.get_total_flops() // 2
    except Exception:
        pass
    f = min(1.0, math.sqrt(MACS_FALLBACK_PIXELS / (h * w)))
    sh, sw = max(1, round(h * f)), max(1, round(w * f))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(1, channels, sh, sw, device=device))
    return round(counter.get_total_flops() // 2 * (h * w) / (sh * sw))


def count_inference_params(model: nn.Module, size: int = 32, channels: int = 3) -> int:
    """Return how many of ``model``'s parameters its eval-mode output on a (1, channels, size, size) input
    depends on: those the autograd graph of that output reaches. Re-parameterised networks (SPAN's Conv3XC,
    RepVGG-style blocks) keep training-only branches their eval forward never reads, which
    ``sum(p.numel() for p in model.parameters())`` counts too. Returns the total parameter count when the graph
    cannot be followed (a network that runs under no_grad, a fixed torch.export graph, or a failing forward)."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = model(torch.rand(1, channels, size, size, device=params[0].device if params else None))
    except Exception:
        return total
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    by_id = {id(p): p.numel() for p in params}
    found: set[int] = set()
    seen: set = set()
    stack = [out.grad_fn] if isinstance(out, torch.Tensor) else []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        leaf = getattr(fn, "variable", None)  # AccumulateGrad: a parameter the output depends on
        if leaf is not None:
            found.add(id(leaf))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    used = sum(by_id[i] for i in found if i in by_id)
    return used if used else total
