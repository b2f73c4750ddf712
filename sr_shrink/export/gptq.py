"""GPTQ weight rounding: each conv's int8 weights chosen against the calibration inputs, not rounded to nearest.

The exporters round a conv's weights per output channel to the symmetric grid ``max |w| / qmax`` (the scale is
the channel's largest weight). Round-to-nearest picks each weight's grid point alone; GPTQ (Frantar et al. 2022,
after Optimal Brain Quantization) picks them one input column at a time and spreads each column's rounding error
over the columns not yet rounded, weighted by the inverse of the inputs' second-moment matrix ``H = E[x xᵀ]`` (x:
the conv's input patches, ``Cin * kh * kw`` long), so that the channel's output on those inputs stays as close
as least squares allows. Convs are taken in network order, each seeing the inputs that the already rounded convs
before it give (as :mod:`~sr_shrink.export.biascorr` does). The grid is the exporter's own: every weight of the
result is a grid point and each channel keeps a weight at ``±qmax``, so the exporter's own rounding leaves the
weights as they are (a channel where the error feedback would move the largest weight off the top level keeps
round-to-nearest). The biases are not changed here; where bias correction is on (w8a16 by default), it then
takes out the mean error against the original weights (``correct_bias(..., reference=)``).

The calibration inputs are the export's own (the run's generator samples by default). The fp32 student is never
modified: :func:`gptq_round` returns a copy for the quantized file only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models.student import SRStudent
from .calib import calib_batches, visit_convs
from .qat import quantized_convs

DAMP = 0.01  # added to H's diagonal, as a share of its mean (GPTQ's default): H may be singular (flat inputs)
CHUNK = 8  # inputs unfolded at once when H is summed
# calibration inputs H is taken over: 32 of the default 96x96 crops are ~300k patches per conv; a TFLite file's 18
# inputs of 256x256 all go in (~1.2 M patches): ~300k of them were a third faster and no closer (BENCHMARKS.md 48)
MAX_INPUTS = 32


@torch.no_grad()
def input_moments(conv: torch.nn.Conv2d, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Return ``E[x xᵀ]`` (float64) over every input patch ``x`` that ``conv`` sees in ``inputs`` (its NCHW
    input batches), padding included, as the conv computes it."""
    k = conv.kernel_size
    total, count = None, 0
    for batch in inputs:
        for part in batch.split(CHUNK):
            cols = F.unfold(part, k, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)  # (N, K, L)
            part_sum = torch.bmm(cols, cols.transpose(1, 2)).sum(0).double()  # no (N*L, K) copy of the patches
            total = part_sum if total is None else total + part_sum
            count += cols.shape[0] * cols.shape[2]
    return total / max(count, 1)


@torch.no_grad()
def gptq_weights(weight: torch.Tensor, moments: torch.Tensor, qmax: int,
                 damp: float = DAMP) -> tuple[torch.Tensor, int, int]:
    """Return (``weight`` (O, I, kh, kw) rounded by GPTQ to the symmetric per-output-channel grid of ``qmax``
    levels given the inputs' second moments ``moments``, the number of channels whose levels differ from
    round-to-nearest's, the number left at round-to-nearest because the error feedback took their largest weight
    off the top level)."""
    w0 = weight.reshape(weight.shape[0], -1).double()
    scale = w0.abs().amax(dim=1).clamp_min(1e-8) / qmax
    h = moments + damp * moments.diagonal().mean().clamp_min(1e-12) * torch.eye(len(moments), dtype=moments.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    w, levels = w0.clone(), torch.empty_like(w0)
    for i in range(w.shape[1]):
        levels[:, i] = (w[:, i] / scale).round().clamp(-qmax, qmax)
        err = (w[:, i] - levels[:, i] * scale) / u[i, i]
        w[:, i + 1:] -= err[:, None] * u[i, i + 1:][None, :]
    nearest = (w0 / scale[:, None]).round().clamp(-qmax, qmax)
    off_top = levels.abs().amax(dim=1) < qmax
    levels[off_top] = nearest[off_top]
    changed = int((levels != nearest).any(dim=1).sum())
    return (levels * scale[:, None]).reshape(weight.shape).to(weight.dtype), changed, int(off_top.sum())


@torch.no_grad()
def gptq_round(student: SRStudent, calib: list[torch.Tensor], qmax: int = 127, ends: bool = True,
               first: bool = True, max_inputs: int = MAX_INPUTS, per_conv: bool = False) -> tuple[SRStudent, dict]:
    """Return (a copy of the plain ``student`` whose quantized convs' weights are rounded by GPTQ on the calibration
    inputs ``calib`` (NCHW, up to ``max_inputs`` used) to the per-channel grid of ``qmax``, its export.json
    record). ``ends``: whether the head and tail convs are quantized too, ``first``: whether the first body conv
    is (:func:`~sr_shrink.export.qat.quantized_convs`). Inputs of one size are taken in one forward pass, each conv
    rounded as the pass reaches it; ``per_conv`` runs the student once per conv instead (the same result;
    :func:`~sr_shrink.export.calib.visit_convs`)."""
    if student.block != "plain":
        raise ValueError("gptq_round takes a collapsed (plain) student")
    out = copy.deepcopy(student).float().eval()
    batches = calib_batches(calib[:max_inputs])
    convs = quantized_convs(out, ends, first)
    counts = [0, 0]

    def round_conv(conv: torch.nn.Conv2d, inputs: list[torch.Tensor]) -> None:
        q, changed, kept = gptq_weights(conv.weight, input_moments(conv, inputs), qmax)
        conv.weight.copy_(q)  # later convs see this conv as the file computes it
        counts[0] += changed
        counts[1] += kept

    visit_convs(out, convs, batches, round_conv, per_conv)
    rec = {"method": "GPTQ weight rounding (error feedback through the calibration inputs' second moments)",
           "weights": f"per channel, [-{qmax}, {qmax}]", "convs": len(convs),
           "channels": sum(c.weight.shape[0] for c in convs), "channels_changed": counts[0],
           "channels_nearest": counts[1], "inputs": sum(x.shape[0] for x in batches)}
    return out, rec
