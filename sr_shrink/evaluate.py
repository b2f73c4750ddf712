"""Evaluate an SR model (RGB [0,1] in and out) or bicubic on LR/HR pairs with Y-PSNR/SSIM."""

from __future__ import annotations

from typing import Callable

import torch

from .data import EvalPair
from .metrics import psnr_y, quantize, ssim_y
from .resize import upscale


@torch.no_grad()
def evaluate_fn(fn: Callable[[torch.Tensor], torch.Tensor], pairs: list[EvalPair], scale: int) -> dict:
    """Return mean ``psnr_y``/``ssim_y`` (and per image) of ``fn`` (LR (1,3,h,w) -> SR) over ``pairs``."""
    per_image = {}
    for p in pairs:
        sr = quantize(fn(p.lr.unsqueeze(0)).float().cpu())[0]
        if sr.shape != p.hr.shape:
            raise ValueError(f"{p.name}: model output {tuple(sr.shape)} does not match HR {tuple(p.hr.shape)}")
        per_image[p.name] = (psnr_y(sr, p.hr, scale), ssim_y(sr, p.hr, scale))
    n = len(per_image)
    return {"psnr_y": round(sum(v[0] for v in per_image.values()) / n, 4),
            "ssim_y": round(sum(v[1] for v in per_image.values()) / n, 5),
            "per_image": {k: round(v[0], 3) for k, v in per_image.items()}}


def evaluate_model(model: torch.nn.Module, pairs: list[EvalPair], scale: int) -> dict:
    """Return the Y-PSNR/SSIM of ``model`` (put in eval mode) on ``pairs``; see ``evaluate_fn``."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return evaluate_fn(lambda x: model(x.to(device)), pairs, scale)


def evaluate_bicubic(pairs: list[EvalPair], scale: int) -> dict:
    """Return the Y-PSNR/SSIM of MATLAB bicubic upscaling on ``pairs``."""
    return evaluate_fn(lambda x: upscale(x, scale), pairs, scale)
