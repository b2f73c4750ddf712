"""Range equalization for int8 exports: the same function, with per-tensor activation ranges that fit every channel.

int8 activations have one range per tensor. In the student's residual stream (the head conv's output and each
block's residual sum) and in each block's hidden conv-ReLU output a few channels span most of that range, so the
others get few of its 256 levels. Both are linear in the channel scaling, so the student can be rewritten
exactly (in real arithmetic) with every channel scaled towards the same range (cross-layer equalization, Nagel et
al. 2019, applied to the stream as a whole):

* stream channel c scaled by ``t_c``: the head conv's and every block's second conv's output channel c (weights
  and bias) times ``t_c``; every conv reading the stream (each block's first conv, the tail) gets input channel c
  divided by ``t_c``. The skip additions stay exact because every writer of the stream is scaled alike;
* hidden channel i of a block scaled by ``u_i`` > 0 (ReLU commutes with a positive scale): the first conv's
  output channel i times ``u_i``, the second conv's input channel i divided by it.

``t_c = (R / r_c) ** alpha`` with ``r_c`` the channel's ``percentile`` of |x| over the calibration inputs (the
largest over all stream points), ``R`` the largest ``r_c``, and ``r_c`` held at >= ``R * floor`` (a near-dead
channel is not blown up). Per-output-channel weight quantization is unchanged by an output scale; input scales
move the weights' per-channel ranges, which is the price.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.student import SRStudent
from .calib import calib_batches


@dataclass(frozen=True)
class EqualizeConfig:
    """How :func:`equalize` scales: exponent ``alpha`` (1: equal ranges; 0: nothing), ``floor`` (smallest range
    kept, relative to the largest), ``percentile`` of |x| per channel, ``max_values`` sampled per point."""

    alpha: float = 1.0
    floor: float = 1 / 32
    percentile: float = 99.99
    max_values: int = 200_000


def _channel_range(parts: list[torch.Tensor], percentile: float, max_values: int) -> torch.Tensor:
    """Return (C,): the ``percentile`` of |x| per channel over the (N, C, H, W) tensors ``parts``."""
    v = torch.cat([p.abs().transpose(0, 1).reshape(p.shape[1], -1) for p in parts], dim=1)
    if v.shape[1] > max_values:
        v = v[:, torch.linspace(0, v.shape[1] - 1, max_values).long()]
    return torch.quantile(v.double(), percentile / 100, dim=1).float()


@torch.no_grad()
def channel_ranges(student: SRStudent, calib: list[torch.Tensor], cfg: EqualizeConfig = EqualizeConfig()
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Return (the stream's per-channel range (C,), each block's hidden per-channel range) of the plain
    ``student`` over the NCHW inputs ``calib``."""
    stream: list[torch.Tensor] = []
    hidden: list[list[torch.Tensor]] = [[] for _ in student.body]
    for x in calib_batches(calib):
        feat = student.head(x)
        stream.append(_sub(feat))
        for i, blk in enumerate(student.body):
            mid = F.relu(blk.conv1(feat))
            hidden[i].append(_sub(mid))
            feat = feat + blk.conv2(mid)
            stream.append(_sub(feat))
    r = _channel_range(stream, cfg.percentile, cfg.max_values)
    return r, [_channel_range(h, cfg.percentile, cfg.max_values) for h in hidden]


def _sub(x: torch.Tensor, step: int = 3) -> torch.Tensor:
    """Return every ``step``-th pixel of ``x`` in each direction (the statistics need a sample, not all)."""
    return x[:, :, ::step, ::step].contiguous()


def _gains(r: torch.Tensor, cfg: EqualizeConfig) -> torch.Tensor:
    top = float(r.max())
    if top <= 0:
        return torch.ones_like(r)
    return (top / r.clamp_min(top * cfg.floor)) ** cfg.alpha


def _scale_out(conv, g: torch.Tensor) -> None:
    conv.weight.mul_(g.view(-1, 1, 1, 1))
    conv.bias.mul_(g)


def _scale_in(conv, g: torch.Tensor) -> None:
    conv.weight.div_(g.view(1, -1, 1, 1))


@torch.no_grad()
def equalize(student: SRStudent, calib: list[torch.Tensor], cfg: EqualizeConfig = EqualizeConfig()
             ) -> tuple[SRStudent, dict]:
    """Return (a plain student computing the same function as the plain ``student`` with its stream and
    hidden channels scaled towards equal ranges over ``calib`` (NCHW inputs), its export.json record). The
    student itself is untouched."""
    if student.block != "plain":
        raise ValueError("equalize takes a collapsed (plain) student")
    out = copy.deepcopy(student).float().eval()
    r, hidden = channel_ranges(out, calib, cfg)
    t = _gains(r, cfg)
    _scale_out(out.head, t)
    _scale_in(out.tail, t)
    spreads = []
    for blk, h in zip(out.body, hidden):
        u = _gains(h, cfg)
        _scale_out(blk.conv1, u)
        _scale_in(blk.conv2, u)
        _scale_in(blk.conv1, t)
        _scale_out(blk.conv2, t)
        spreads.append(round(float(u.max() / u.min()), 2))
    rec = {"method": "range equalization of the residual stream and block hidden channels", "alpha": cfg.alpha,
           "floor": cfg.floor, "percentile": cfg.percentile, "stream_gain_spread": round(float(t.max() / t.min()), 2),
           "hidden_gain_spread": spreads}
    return out, rec
