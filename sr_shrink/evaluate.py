"""Evaluate an SR model (RGB [0,1] in and out) or bicubic on LR/HR pairs with Y-PSNR/SSIM, and a student's
fidelity to its teacher.

Fidelity uses the same conventions as ``psnr_y``/``ssim_y`` with the teacher's 8-bit output in place of the
ground truth (``scale`` px border cropped, BT.601 Y): ``reference_pairs(teacher, pairs)`` makes those pairs once,
``evaluate_fn`` on them gives ``fidelity_psnr_y``/``fidelity_ssim_y``. It is the yardstick for perceptual (GAN)
teachers, whose outputs are not meant to be close to the ground truth.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .data import EvalPair
from .metrics import psnr_y, quantize, ssim_y
from .progress import task
from .resize import upscale
from .tiling import tile_calls, tile_work, tiled_apply

SRFn = Callable[[torch.Tensor], torch.Tensor]
# The teacher runs on an eval image longer than TEACHER_TILE LR pixels on a side (a phone photo at x2) in tiles of
# at most that size, as even along each axis as they go, each with TEACHER_OVERLAP LR pixels of context on its
# inner sides (Real-ESRGAN's and chaiNNer's tiled inference, with a wider margin): memory stays bounded (a 6-block
# RRDB x4 teacher took 13.4 GB on one 1058x1058 LR image in one pass) and progress advances per tile. A teacher
# with global context (Real-CUGAN's squeeze-excitation) answers a tile a little differently from the whole image
# (BENCHMARKS.md section 44); one spandrel marks so (tiling discouraged or internal, e.g. SwinIR) runs whole. The
# bundled split and the usual test sets (Set5 to DIV2K at x2, 1020 LR px at most) run in one pass.
TEACHER_TILE, TEACHER_OVERLAP = 1024, 48
# A teacher scoring less than this Y-PSNR above bicubic on photos is perceptual (GAN-trained): bench judges its
# students by fidelity, and distill's --synthetic auto feeds its students teacher-grown images (distill.perceptual).
PERCEPTUAL_MARGIN_DB = 0.5


def under_bicubic(psnr: float | None, teacher_psnr: float | None, bicubic_psnr: float | None) -> bool:
    """Return True when a student's Y-PSNR ``psnr`` is no better than bicubic's on the same images while its
    teacher is PSNR-trained (at least ``PERCEPTUAL_MARGIN_DB`` above bicubic): bicubic upscaling would then serve
    as well. False when any figure is missing or the teacher is perceptual (judged by fidelity instead)."""
    if None in (psnr, teacher_psnr, bicubic_psnr):
        return False
    return teacher_psnr - bicubic_psnr >= PERCEPTUAL_MARGIN_DB and psnr <= bicubic_psnr


@torch.no_grad()
def model_outputs(fn: SRFn, pairs: list[EvalPair],
                  advance: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Return ``{name: 8-bit-rounded output (3, sH, sW)}`` of ``fn`` on the LR image of each pair, calling
    ``advance()`` (a progress callback) after each image."""
    out = {}
    for p in pairs:
        out[p.name] = quantize(fn(p.lr.unsqueeze(0)).float().cpu())[0]
        if advance is not None:
            advance()
    return out


def score_outputs(outputs: dict[str, torch.Tensor], pairs: list[EvalPair], scale: int) -> dict:
    """Return mean ``psnr_y``/``ssim_y`` (and Y-PSNR per image) of ``outputs`` against each pair's HR image."""
    per_image = {}
    for p in pairs:
        sr = outputs[p.name]
        if sr.shape != p.hr.shape:
            raise ValueError(f"{p.name}: model output {tuple(sr.shape)} does not match HR {tuple(p.hr.shape)}")
        per_image[p.name] = (psnr_y(sr, p.hr, scale), ssim_y(sr, p.hr, scale))
    n = len(per_image)
    return {"psnr_y": round(sum(v[0] for v in per_image.values()) / n, 4),
            "ssim_y": round(sum(v[1] for v in per_image.values()) / n, 5),
            "per_image": {k: round(v[0], 3) for k, v in per_image.items()}}


def evaluate_fn(fn: SRFn, pairs: list[EvalPair], scale: int, advance: Callable[[], None] | None = None) -> dict:
    """Return mean ``psnr_y``/``ssim_y`` (and per image) of ``fn`` (LR (1,3,h,w) -> SR) over ``pairs``, calling
    ``advance()`` (a progress callback) after each image."""
    return score_outputs(model_outputs(fn, pairs, advance), pairs, scale)


def _on_device(model: torch.nn.Module) -> SRFn:
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return lambda x: model(x.to(device))


def evaluate_model(model: torch.nn.Module, pairs: list[EvalPair], scale: int,
                   advance: Callable[[], None] | None = None) -> dict:
    """Return the Y-PSNR/SSIM of ``model`` (put in eval mode) on ``pairs``, calling ``advance()`` (a progress
    callback) after each image; see ``evaluate_fn``."""
    return evaluate_fn(_on_device(model), pairs, scale, advance)


def evaluate_bicubic(pairs: list[EvalPair], scale: int) -> dict:
    """Return the Y-PSNR/SSIM of MATLAB bicubic upscaling on ``pairs``."""
    return evaluate_fn(lambda x: upscale(x, scale), pairs, scale)


def reference_pairs(outputs: dict[str, torch.Tensor], pairs: list[EvalPair]) -> list[EvalPair]:
    """Return ``pairs`` with each HR image replaced by ``outputs[name]`` (a teacher's 8-bit output): scoring a
    student on them gives its fidelity to that teacher."""
    return [EvalPair(p.name, outputs[p.name], p.lr) for p in pairs]


def teacher_tile(lr_hw: tuple[int, int]) -> tuple[int, int]:
    """Return the (h, w) of the tiles the teacher runs on for an eval image of LR size ``lr_hw``: a whole axis up to
    :data:`TEACHER_TILE`, else the fewest tiles of at most that size, cut evenly (tiles of a fixed size would
    overlap the most on an image just above it)."""
    def axis(length: int) -> int:
        if length <= TEACHER_TILE:
            return length
        n = math.ceil((length - 2 * TEACHER_OVERLAP) / (TEACHER_TILE - 2 * TEACHER_OVERLAP))
        return math.ceil((length + 2 * TEACHER_OVERLAP * (n - 1)) / n)
    return axis(lr_hw[0]), axis(lr_hw[1])


def teacher_pixels(lr_hw: tuple[int, int]) -> int:
    """Return the LR pixels the teacher runs on for an eval image of LR size ``lr_hw``: its own, or with
    :func:`teacher_tile`'s tiling the tiles' (overlaps included)."""
    return tile_work(lr_hw, teacher_tile(lr_hw), TEACHER_OVERLAP)


def teacher_references(teacher: torch.nn.Module, pairs: list[EvalPair], scale: int) -> tuple[dict, list[EvalPair]]:
    """Return (the teacher's Y-PSNR/SSIM on ``pairs``, the fidelity reference pairs), from one pass of the
    teacher over the eval images (large ones in tiles: :func:`teacher_tile`, unless spandrel discourages tiling
    the teacher, ``teacher.info.tiling``), with progress per image or tile."""
    whole = getattr(getattr(teacher, "info", None), "tiling", "supported") != "supported"  # spandrel's word

    def tile(lr_hw: tuple[int, int]) -> tuple[int, int]:
        return lr_hw if whole else teacher_tile(lr_hw)

    tiles = sum(tile_calls(tuple(p.lr.shape[-2:]), tile(tuple(p.lr.shape[-2:])), TEACHER_OVERLAP) for p in pairs)
    what = f"teacher references on {len(pairs)} eval images" + (f" ({tiles} tiles)" if tiles > len(pairs) else "")
    with task(what, total=tiles, unit="tiles" if tiles > len(pairs) else "items") as advance:
        run = _on_device(teacher)

        def one_call(x: torch.Tensor) -> torch.Tensor:
            y = run(x)
            advance()
            return y

        outputs = model_outputs(lambda x: tiled_apply(one_call, x, scale, tile(tuple(x.shape[-2:])), TEACHER_OVERLAP),
                                pairs)
    return score_outputs(outputs, pairs, scale), reference_pairs(outputs, pairs)


def fidelity(scores: dict) -> dict:
    """Return ``evaluate_fn`` scores on reference pairs renamed ``fidelity_psnr_y``/``fidelity_ssim_y``."""
    return {"fidelity_psnr_y": scores["psnr_y"], "fidelity_ssim_y": scores["ssim_y"]}


def evaluate_with_fidelity(model: torch.nn.Module, pairs: list[EvalPair], references: list[EvalPair], scale: int,
                           advance: Callable[[], None] | None = None) -> tuple[dict, dict]:
    """Return (the Y-PSNR/SSIM of ``model`` on ``pairs``, its :func:`fidelity` scores on ``references``, the
    :func:`reference_pairs` of the same LR images; {} without them) from one pass of ``model`` over the LR
    images, calling ``advance()`` after each."""
    outputs = model_outputs(_on_device(model), pairs, advance)
    fid = fidelity(score_outputs(outputs, references, scale)) if references else {}
    return score_outputs(outputs, pairs, scale), fid
