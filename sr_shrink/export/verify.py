"""Check an exported model against the PyTorch student on the eval images.

For each LR/HR pair the export's runtime and the student see the same input: the whole LR image for
exports with free input size; for fixed-size exports a centred crop of that size, replicate-padded where the
LR image is smaller (the pad is cut off the output before comparing with HR). Recorded: ``max_abs_err`` and
``psnr_vs_torch`` (dB, peak 1, RGB, unrounded outputs) between export and student, and the Y-PSNR against HR
of both (``psnr_y``, ``torch_psnr_y``; outputs rounded to 8 bits, ``crop_border = scale``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import EvalPair
from ..metrics import psnr_y, quantize

Runner = Callable[[np.ndarray], np.ndarray]  # float32 NCHW (1,3,h,w) in [0,1] -> float32 NCHW (1,3,sh,sw)

# The least psnr_vs_torch (dB) an export must reach to count as verified, by weight precision.
MIN_PSNR_VS_TORCH = {"fp32": 60.0, "fp16": 45.0, "int8": 30.0, "palettized": 25.0}


@dataclass
class Sample:
    """One verification input: the LR fed to both models, HR for the valid region, and that region."""

    name: str
    lr: torch.Tensor  # (1, 3, h, w)
    hr: torch.Tensor  # (3, s*vh, s*vw)
    valid: tuple[int, int, int, int]  # top, left, height, width of the real LR pixels inside ``lr``


def make_sample(pair: EvalPair, scale: int, size: tuple[int, int] | None) -> Sample:
    """Return the :class:`Sample` of ``pair`` for an export with input ``size`` (``None``: any size)."""
    if size is None:
        h, w = pair.lr.shape[-2:]
        return Sample(pair.name, pair.lr.unsqueeze(0), pair.hr, (0, 0, h, w))
    h, w = size
    lh, lw = pair.lr.shape[-2:]
    ch, cw = min(h, lh), min(w, lw)
    y, x = (lh - ch) // 2, (lw - cw) // 2
    lr = pair.lr[:, y:y + ch, x:x + cw].unsqueeze(0)
    hr = pair.hr[:, y * scale:(y + ch) * scale, x * scale:(x + cw) * scale]
    top, left = (h - ch) // 2, (w - cw) // 2
    lr = F.pad(lr, (left, w - cw - left, top, h - ch - top), mode="replicate")
    return Sample(pair.name, lr, hr, (top, left, ch, cw))


def _valid(out: torch.Tensor, valid: tuple[int, int, int, int], scale: int) -> torch.Tensor:
    top, left, h, w = (v * scale for v in valid)
    return out[0, :, top:top + h, left:left + w]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def verify(run: Runner, student: torch.nn.Module, pairs: list[EvalPair], scale: int,
           size: tuple[int, int] | None, floor_key: str, runtime: str) -> dict:
    """Return the verification record of ``run`` against ``student`` on ``pairs`` (see module docstring)."""
    max_err, psnrs, ys, ts = 0.0, [], [], []
    for pair in pairs:
        s = make_sample(pair, scale, size)
        with torch.no_grad():
            ref = student(s.lr).float()
        out = torch.from_numpy(np.ascontiguousarray(run(s.lr.numpy()), dtype=np.float32))
        if out.shape != ref.shape:
            raise ValueError(f"{pair.name}: exported model returned {tuple(out.shape)}, expected {tuple(ref.shape)}")
        max_err = max(max_err, float((out - ref).abs().max()))
        psnrs.append(_psnr(out.numpy(), ref.numpy()))
        ys.append(psnr_y(quantize(_valid(out, s.valid, scale)), s.hr, scale))
        ts.append(psnr_y(quantize(_valid(ref, s.valid, scale)), s.hr, scale))
    return _record(max_err, psnrs, ys, ts, floor_key, runtime, size)


def _record(max_err: float, psnrs: list[float], ys: list[float], ts: list[float], floor_key: str,
            runtime: str, size: tuple[int, int] | None) -> dict:
    psnr_t = sum(psnrs) / len(psnrs)
    y, t = sum(ys) / len(ys), sum(ts) / len(ts)
    floor = MIN_PSNR_VS_TORCH[floor_key]
    return {"verified": bool(psnr_t >= floor), "runtime": runtime, "images": len(psnrs),
            "inputs": "whole LR images" if size is None else f"{size[0]}x{size[1]} centred LR crops (padded)",
            "max_abs_err": round(max_err, 7), "psnr_vs_torch": round(min(psnr_t, 999.0), 3),
            "psnr_y": round(y, 4), "torch_psnr_y": round(t, 4), "delta_psnr_y": round(y - t, 4),
            "min_psnr_vs_torch": floor}


def not_verified(reason: str, runtime: str) -> dict:
    """Return the verification record of an export that could not be run, saying why."""
    return {"verified": False, "runtime": runtime, "reason": reason}
