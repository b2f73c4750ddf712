"""Images in and out: reading, writing, the bundled eval split and LR/HR pairs made by bicubic downscaling.

One reader for every image sr-shrink takes (photos for distill and calibration, eval folders, upscale's inputs):
:func:`read_picture` turns an image upright by its EXIF orientation (as viewers show a phone photo), and reads
8-bit samples as /255, 16-bit grey as /65535 and float grey (32-bit TIFF) as [0, 1] itself; samples outside the
range a mode holds are one error line, not clipped in silence. 16-bit colour is read with 8 bits (PIL has no 16-bit
colour mode; :func:`probe_picture` says so), RGBA's alpha is kept apart, an RGB or grey ICC profile is kept for the
result. :func:`read_image` is its RGB part."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SRShrinkError, first_line
from .metrics import quantize
from .resize import downscale

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_KINDS = "PNG, JPEG, WebP, TIFF or BMP"  # what IMAGE_SUFFIXES name, for messages
EVAL_DIR = Path(__file__).parent / "assets" / "eval"
GREY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image(path: str | Path) -> torch.Tensor:
    """Return the image at ``path`` as an RGB float tensor (3, H, W) in [0, 1], upright by its EXIF orientation
    (:func:`read_picture`'s colours; grey as RGB, alpha left out); a one-line SRShrinkError if it cannot be read."""
    return read_picture(path).rgb


def write_image(img: torch.Tensor, path: str | Path) -> Path:
    """Write an RGB tensor (3, H, W) in [0, 1] as an 8-bit image file; return the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (img.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    Image.fromarray(arr).save(path)
    return path


@dataclass
class Picture:
    """An image split for SR: ``rgb`` (3,H,W) in [0,1], optional ``alpha`` (1,H,W), whether it was grey, and the
    bits per sample it is written back with (16 for 16-bit and float grey, else 8)."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    grey: bool
    bits: int = 8
    icc: bytes | None = None  # the file's ICC colour profile, when it describes the colours as read (RGB or grey)


def icc_profile(im: Image.Image, grey: bool) -> bytes | None:
    """Return the ICC profile of the open image ``im`` when it describes its colours as a :class:`Picture` holds
    them (an RGB profile for colour, a grey one for grey; not a CMYK JPEG's, whose colours are converted), else
    None. An iPhone photo's Display P3 profile, dropped, would show the result in sRGB's duller colours."""
    icc = im.info.get("icc_profile")
    if not isinstance(icc, bytes) or len(icc) < 20:
        return None
    return icc if icc[16:20] == (b"GRAY" if grey else b"RGB ") else None


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def _deep_grey(im: Image.Image) -> bool:
    """Return whether the open image ``im`` is grey with more than 8 bits (16-bit, 32-bit integer or float), which a
    :class:`Picture` keeps and writes back with 16."""
    return im.mode.startswith("I;16") or im.mode in ("I", "F")


def _split(im: Image.Image, path: Path) -> Picture:
    """Return the Picture of an open PIL image, normalising its mode (``path`` names the file in errors)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if _deep_grey(im):
        grey = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" else 65535.0  # float samples are [0, 1]; integer ones 16-bit
        lo, hi = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
        if not np.isfinite(grey).all() or lo < -1e-6 * top or hi > top * (1 + 1e-6):
            kind = "float" if im.mode == "F" else "32-bit integer"
            raise SRShrinkError(f"{path}: a {kind} grey image with samples in [{lo:g}, {hi:g}], outside "
                                f"[0, {top:g}]; sr-shrink reads {kind} samples as [0, {top:g}]: rescale it, or "
                                "save it as an 8- or 16-bit PNG.")
        return Picture(_to_tensor(np.clip(grey / top, 0, 1)).repeat(3, 1, 1), None, True, 16)
    if im.mode in GREY_MODES or im.mode == "LA":
        arr = np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
        alpha = _to_tensor(arr[..., 1]) if im.mode == "LA" else None
        return Picture(_to_tensor(arr[..., 0]).repeat(3, 1, 1), alpha, True)
    alpha = _has_alpha(im)
    arr = np.asarray(im.convert("RGBA" if alpha else "RGB"), dtype=np.float32) / 255.0
    return Picture(_to_tensor(arr[..., :3]), _to_tensor(arr[..., 3]) if alpha else None, False)


def _has_alpha(im: Image.Image) -> bool:
    """Return whether the open image ``im`` has an alpha channel (RGBA, LA, a palette with transparency, ...)."""
    return (im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "A" in im.getbands()
            or (im.mode == "P" and "transparency" in im.info))


def _left_out(im: Image.Image, eight_bit_out: bool = False) -> str | None:
    """Return what reading the opened (not yet loaded) ``im`` as a :class:`Picture` leaves out: 16-bit colour
    samples (PIL has no 16-bit colour mode and reads them with 8 bits; 16-bit grey is kept), deep grey written to
    an 8-bit format (``eight_bit_out``: JPEG, WebP), frames after the first; None when nothing."""
    rawmodes = [t.args[0] if isinstance(t.args, tuple) else t.args for t in im.tile]
    deep = any(isinstance(r, str) and ";16" in r for r in rawmodes) and im.mode not in GREY_MODES
    frames = getattr(im, "n_frames", 1)
    parts = (["its 16-bit samples are read and written with 8 bits (PIL keeps 16 bits for grey without alpha "
              "only)"] if deep
             else []) + (["its grey samples have more than 8 bits and are written with 8, all JPEG and WebP hold "
                          "(--ext png keeps 16)"] if eight_bit_out and _deep_grey(im)
                         else []) + ([f"it has {frames} frames; only the first is upscaled"] if frames > 1 else [])
    return "; ".join(parts) or None


def probe_picture(path: str | Path, eight_bit_out: bool = False) -> tuple[tuple[int, int], str | None]:
    """Return ((h, w) as the image will be upscaled, upright by its EXIF orientation; :func:`_left_out`'s note,
    ``eight_bit_out`` when it is written as JPEG or WebP) of the image file at ``path`` from its header, without
    decoding its pixels (a folder of photos is checked before any work, then read one at a time), or raise
    :func:`read_picture`'s one-line SRShrinkError."""
    path = Path(path)
    with _read_errors(path):
        with Image.open(path) as im:
            im.verify()  # a damaged PNG fails here; a JPEG's pixels are checked only when read
        with Image.open(path) as im:  # verify() leaves the image unusable
            w, h = im.size
            # A PNG's getexif() decodes the whole image to look for an eXIf chunk after the pixels unless one came
            # before them: only that one is read here (read_picture turns the image by either; only the tile count
            # of the progress would be off).
            exif = im.getexif() if im.format != "PNG" or "exif" in im.info else {}
            turned = exif.get(0x0112) in (5, 6, 7, 8)  # EXIF Orientation: rotated by 90 or 270 degrees
            return ((w, h) if turned else (h, w)), _left_out(im, eight_bit_out)


def has_alpha(path: str | Path) -> bool:
    """Return whether the image file at ``path`` has an alpha channel (RGBA, LA, a palette with transparency), from
    its header (a file :func:`probe_picture` has checked)."""
    with _read_errors(Path(path)), Image.open(path) as im:
        return _has_alpha(im)


def read_picture(path: str | Path) -> Picture:
    """Return the :class:`Picture` of the image file at ``path``, turned upright by its EXIF orientation (as
    viewers show it; the PNG written has no EXIF to turn it), or raise a one-line SRShrinkError."""
    path = Path(path)
    with _read_errors(path), Image.open(path) as im:
        im.load()
        pic = _split(ImageOps.exif_transpose(im), path)
        pic.icc = icc_profile(im, pic.grey)
        return pic


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Turn what reading the image file ``path`` raises (missing, not an image, damaged) into one-line
    SRShrinkErrors (yields nothing)."""
    try:
        yield
    except FileNotFoundError:
        raise SRShrinkError(f"{path}: no such image file; check the path.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise SRShrinkError(f"{path}: cannot read this image ({first_line(exc)}); pass a {IMAGE_KINDS} file.") from None


def list_images(folder: str | Path) -> list[Path]:
    """Return the image files directly inside ``folder``, sorted by name (an error if there are none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SRShrinkError(f"{folder}: not a folder of images; pass a folder holding {IMAGE_KINDS} files.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SRShrinkError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images.")
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
    """Return ``n`` random float HR crops (n, 3, hr_size, hr_size) in [0, 1] from ``images`` (float in [0, 1], or
    uint8 for 0..255) with random flips/rotations."""
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = img.shape[-2:]
        y = int(torch.randint(h - hr_size + 1, (1,), generator=generator))
        x = int(torch.randint(w - hr_size + 1, (1,), generator=generator))
        patch = img[:, y : y + hr_size, x : x + hr_size]
        if patch.dtype == torch.uint8:
            patch = patch.float() / 255  # as read_picture divides an 8-bit sample: the same float32
        k = int(torch.randint(4, (1,), generator=generator))
        patch = torch.rot90(patch, k, dims=(1, 2))
        if int(torch.randint(2, (1,), generator=generator)):
            patch = patch.flip(-1)
        out.append(patch)
    return torch.stack(out)
