"""Images in and out: reading, writing, the bundled eval split and LR/HR pairs made by bicubic downscaling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import SRShrinkError, first_line
from .metrics import quantize
from .resize import downscale

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
EVAL_DIR = Path(__file__).parent / "assets" / "eval"


def read_image(path: str | Path) -> torch.Tensor:
    """Return the image at ``path`` as an RGB float tensor (3, H, W) in [0, 1] (grey and RGBA converted)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise SRShrinkError(f"{path}: no such image file; check the path.") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SRShrinkError(f"{path}: cannot read this image ({first_line(exc)}); pass a PNG or JPEG file.") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def write_image(img: torch.Tensor, path: str | Path) -> Path:
    """Write an RGB tensor (3, H, W) in [0, 1] as an 8-bit image file; return the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (img.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    Image.fromarray(arr).save(path)
    return path


def list_images(folder: str | Path) -> list[Path]:
    """Return the image files directly inside ``folder``, sorted by name (an error if there are none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SRShrinkError(f"{folder}: not a folder of images; pass a folder holding PNG/JPEG files.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SRShrinkError(f"{folder}: holds no PNG/JPEG images; pass a folder of images.")
    return files


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Return ``img`` cropped at the bottom/right so its height and width are divisible by ``scale``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


@dataclass
class EvalPair:
    """One evaluation image: its name, the HR ground truth and the bicubic LR input (8-bit quantised)."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Return the LR image of ``hr`` (already mod-cropped): MATLAB bicubic downscale, then 8-bit rounding."""
    return quantize(downscale(hr, scale))


def load_eval_set(scale: int, folder: str | Path | None = None, max_images: int | None = None) -> list[EvalPair]:
    """Return the HR/LR pairs of ``folder`` (default: the bundled eval split) for ``scale``."""
    files = list_images(folder or EVAL_DIR)
    if max_images:
        files = files[:max_images]
    pairs = []
    for f in files:
        hr = mod_crop(read_image(f), scale)
        if min(hr.shape[-2:]) < 4 * scale:
            raise SRShrinkError(f"{f}: image too small for x{scale} evaluation; use images of at least 64 px.")
        pairs.append(EvalPair(f.stem, hr, make_lr(hr, scale)))
    return pairs


def random_patches(images: list[torch.Tensor], n: int, hr_size: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``n`` random HR crops (n, 3, hr_size, hr_size) from ``images`` with random flips/rotations."""
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = img.shape[-2:]
        y = int(torch.randint(h - hr_size + 1, (1,), generator=generator))
        x = int(torch.randint(w - hr_size + 1, (1,), generator=generator))
        patch = img[:, y : y + hr_size, x : x + hr_size]
        k = int(torch.randint(4, (1,), generator=generator))
        patch = torch.rot90(patch, k, dims=(1, 2))
        if int(torch.randint(2, (1,), generator=generator)):
            patch = patch.flip(-1)
        out.append(patch)
    return torch.stack(out)
