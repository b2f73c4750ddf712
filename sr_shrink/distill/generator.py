"""Data-free generators: G(z) -> LR RGB patches in [0, 1]. Two kinds share one interface
(``draw_latent(n, g)``, ``forward(z)``, ``sample(n, g)``):

* ``latent`` (the paper's, DAFL-style): z ~ N(0, I) -> Linear -> (128, p/4, p/4) -> BN -> 2 x [nearest x2
  upsampling, 3x3 conv, BN, LeakyReLU] -> 3x3 conv -> sigmoid.
* ``refine``: z = a synthetic image (dead leaves by default) plus noise maps; G adds a bounded learned
  perturbation (``eps * tanh``) to the image, so the adversarial game searches for hard examples near
  natural-looking images instead of drifting to stripes or flat colour.

Saved as a plain dict ``{"kind", "config", "state_dict"}`` (no pickled classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import SRShrinkError, first_line
from ..io import atomic_torch_save, load_problem
from .render import synthetic


@dataclass
class GeneratorConfig:
    """Shape of the generator: latent size, output LR patch size (divisible by 4) and width."""

    z_dim: int = 256
    patch: int = 24
    width: int = 128


class Generator(nn.Module):
    """Maps z ~ N(0, I) of shape (N, z_dim) to LR patches (N, 3, patch, patch) in [0, 1]."""

    def __init__(self, z_dim: int = 256, patch: int = 24, width: int = 128):
        super().__init__()
        if patch % 4:
            raise ValueError(f"generator patch size must be divisible by 4, got {patch}")
        self.config = GeneratorConfig(z_dim, patch, width)
        self.init = patch // 4
        self.fc = nn.Linear(z_dim, width * self.init * self.init)
        self.bn0 = nn.BatchNorm2d(width)
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, 3, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, self.init, self.init)
        return torch.sigmoid(self.up(self.bn0(h)))

    def draw_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``n`` latent vectors z ~ N(0, I) on the generator's device."""
        return torch.randn(n, self.config.z_dim, generator=generator).to(self.fc.weight.device)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``n`` patches from fresh latents (no gradient), drawn with ``generator`` on CPU."""
        with torch.no_grad():
            return self(self.draw_latent(n, generator))


@dataclass
class RefineConfig:
    """Shape of the refining generator: patch size, width, perturbation bound, base source, noise maps."""

    patch: int = 24
    width: int = 32
    eps: float = 0.15
    base: str = "deadleaves"
    noise_ch: int = 4


class RefineGenerator(nn.Module):
    """x = clamp(base + eps * tanh(net([base, noise])), 0, 1), with base a synthetic image."""

    def __init__(self, patch: int = 24, width: int = 32, eps: float = 0.15, base: str = "deadleaves",
                 noise_ch: int = 4):
        super().__init__()
        self.config = RefineConfig(patch, width, eps, base, noise_ch)
        self.net = nn.Sequential(
            nn.Conv2d(3 + noise_ch, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    any_size = True  # fully convolutional: samples of any size, e.g. for int8 calibration at the export size

    def draw_latent(self, n: int, generator: torch.Generator | None = None, size: int | None = None,
                    base: torch.Tensor | None = None) -> torch.Tensor:
        """Return z = [base image, noise maps] of shape (n, 3 + noise_ch, size, size) (default size: patch).

        ``base``: the (n, 3, size, size) base images to refine (e.g. crops of a pre-rendered pool); default:
        freshly rendered images of the configured source.
        """
        c = self.config
        size = size or (base.shape[-1] if base is not None else c.patch)
        if base is None:
            base = synthetic(c.base, n, size, generator)
        noise = torch.randn((n, c.noise_ch, size, size), generator=generator)
        return torch.cat([base, noise.to(base.device)], dim=1).to(self.net[0].weight.device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        base = z[:, :3]
        return (base + self.config.eps * torch.tanh(self.net(z))).clamp(0, 1)

    def sample(self, n: int, generator: torch.Generator | None = None, size: int | None = None,
               base: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``n`` refined synthetic patches of ``size`` px (default: the training patch), no gradient,
        refining ``base`` when given (see :meth:`draw_latent`)."""
        with torch.no_grad():
            return self(self.draw_latent(n, generator, size, base))


KINDS = {"latent": Generator, "refine": RefineGenerator}


def make_generator(kind: str, patch: int, z_dim: int = 256, base: str = "deadleaves") -> nn.Module:
    """Return a new generator of ``kind`` ('latent' or 'refine') producing ``patch`` px LR patches."""
    if kind == "latent":
        return Generator(z_dim, patch)
    if kind == "refine":
        return RefineGenerator(patch, base=base)
    raise SRShrinkError(f"unknown generator kind {kind!r}; use latent or refine.")


def save_generator(gen: nn.Module, path: str | Path) -> Path:
    """Atomically save ``gen`` as ``{"kind", "config", "state_dict"}``; return the path."""
    kind = "refine" if isinstance(gen, RefineGenerator) else "latent"
    return atomic_torch_save({"kind": kind, "config": asdict(gen.config),
                              "state_dict": {k: v.detach().cpu() for k, v in gen.state_dict().items()}}, path)


def load_generator(path: str | Path) -> nn.Module:
    """Return the generator saved at ``path`` (eval mode, CPU); a clear error if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise SRShrinkError(f"{path}: no generator checkpoint; run 'sr-shrink distill' in datafree mode first.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SRShrinkError(f"{path}: damaged generator checkpoint ({load_problem(exc)}).") from None
    try:
        gen = KINDS[ckpt.get("kind", "latent")](**ckpt["config"])
        gen.load_state_dict(ckpt["state_dict"])
    except Exception as exc:
        raise SRShrinkError(f"{path}: damaged generator checkpoint ({first_line(exc)}).") from None
    return gen.eval()
