"""The data-free generator G(z): a DAFL-style decoder from a latent vector to an LR RGB patch in [0, 1].

Linear -> (128, p/4, p/4) feature map -> BN -> 2 x [nearest x2 upsampling, 3x3 conv, BN, LeakyReLU]
-> 3x3 conv -> sigmoid. Saved as a plain dict ``{"config": ..., "state_dict": ...}`` (no pickled classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import SRShrinkError
from ..io import atomic_torch_save


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

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return ``n`` patches from fresh latents (no gradient), drawn with ``generator`` on CPU."""
        z = torch.randn(n, self.config.z_dim, generator=generator).to(self.fc.weight.device)
        with torch.no_grad():
            return self(z)


def save_generator(gen: Generator, path: str | Path) -> Path:
    """Atomically save ``gen`` as ``{"config", "state_dict"}``; return the path."""
    return atomic_torch_save({"config": asdict(gen.config),
                              "state_dict": {k: v.detach().cpu() for k, v in gen.state_dict().items()}}, path)


def load_generator(path: str | Path) -> Generator:
    """Return the generator saved at ``path`` (eval mode, CPU); a clear error if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise SRShrinkError(f"{path}: no generator checkpoint; run 'sr-shrink distill' in datafree mode first.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        gen = Generator(**ckpt["config"])
        gen.load_state_dict(ckpt["state_dict"])
    except Exception as exc:
        raise SRShrinkError(f"{path}: damaged generator checkpoint ({str(exc).splitlines()[0][:120]}).") from None
    return gen.eval()
