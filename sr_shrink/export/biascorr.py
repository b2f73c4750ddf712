"""Bias correction for int8 weights: the mean error each conv's weight rounding adds, taken out of its bias.

Rounding a conv's weights to per-channel int8 (symmetric, max |w| / qmax per output channel, as the exporters do)
adds an error ``conv(x, W_q - W)`` whose mean over the image is not zero per output channel; in an SR network a
mean shift reaches the output pixels directly. Empirical bias correction (Nagel et al. 2019, "Data-free
quantization", section 4.2; Finkelstein et al. 2019) measures it on calibration inputs and subtracts it from the
bias, conv by conv in network order, each conv seeing the inputs the already rounded and corrected convs before
it give. The weights themselves are not changed, so the exporter rounds them exactly as before (same per-channel
scales); only the float biases it then quantizes (int32) move. The calibration inputs are the export's own (the
run's data-free generator samples by default): no photos.

The fp32 student is never modified: :func:`correct_bias` returns a corrected copy for the int8 file only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models.student import SRStudent
from .calib import calib_batches, visit_convs
from .qat import fake_quant_weight, quantized_convs


@torch.no_grad()
def correct_bias(student: SRStudent, calib: list[torch.Tensor], qmax: int = 127, ends: bool = True,
                 first: bool = True, max_inputs: int = 256,
                 reference: SRStudent | None = None) -> tuple[SRStudent, dict]:
    """Return (a copy of the plain ``student`` whose quantized convs' biases are corrected for the mean error of
    rounding their weights to [-qmax, qmax] per channel, its export.json record). ``calib``: NCHW inputs (up to
    ``max_inputs`` used); ``ends``: whether the head and tail convs are quantized too, ``first``: whether the
    first body conv is (:func:`~sr_shrink.export.qat.quantized_convs`). ``reference``: the student whose weights the
    error is taken against (default ``student``; the fp32 student when ``student``'s weights were already chosen on
    the grid, :func:`~sr_shrink.export.gptq.gptq_round`)."""
    if student.block != "plain":
        raise ValueError("correct_bias takes a collapsed (plain) student")
    out = copy.deepcopy(student).float().eval()
    batches = calib_batches(calib[:max_inputs])
    convs = quantized_convs(out, ends, first)
    refs = quantized_convs(reference if reference is not None else student, ends, first)
    ref_of = dict(zip(convs, refs))
    shifts = []

    def correct(conv: torch.nn.Conv2d, seen: list[torch.Tensor]) -> None:
        wq = fake_quant_weight(conv.weight, qmax)
        diff = wq - ref_of[conv].weight.float()
        total = sum(F.conv2d(x, diff, None, padding=conv.padding).sum(dim=(0, 2, 3)) for x in seen)
        count = sum(x.shape[0] * x.shape[2] * x.shape[3] for x in seen)
        err = total / count
        conv.bias -= err
        conv.weight.copy_(wq)  # later convs see this conv as the int8 file computes it
        shifts.append(round(float(err.abs().max()), 6))

    visit_convs(out, convs, batches, correct)
    for conv, src in zip(convs, quantized_convs(student, ends, first)):  # hand back the float weights, corrected biases
        conv.weight.copy_(src.weight)
    rec = {"method": "empirical bias correction of int8 weight rounding", "weights": f"per channel, [-{qmax}, {qmax}]",
           "convs": len(convs), "inputs": sum(x.shape[0] for x in batches), "max_bias_shift": max(shifts, default=0.0)}
    return out, rec
