"""The mobile-safe wrapper every export converts: the student rewritten so each tensor stays rank 4.

``SRStudent.forward`` uses ``x.repeat_interleave(s*s, dim=1)`` for its anchor, which exporters lower through
rank-5 reshapes. The wrapper computes the same anchor with a fixed 1x1 convolution (weight 1 from colour c to
output channels c*s^2 ... c*s^2+s^2-1, 0 elsewhere), exact in fp32 and in int8 (per-channel scale 1/127).
The pixel shuffle is either ``F.pixel_shuffle`` ("native": ONNX DepthToSpace CRD, Core ML pixel_shuffle,
litert-torch's rank-4 reshape/transpose form) or a fixed one-hot stride-s ConvTranspose2d ("convt").
``layout="nhwc"`` makes the model take (N, h, w, 3) and return (N, s*h, s*w, 3).

The output is clamped to [0, 1] before the pixel shuffle (``clamp``, on by default), as spandrel's and
chaiNNer's runners clamp theirs: the images are the same once written as 8-bit, and an int8 output (TFLite
full-int8) then spans exactly [0, 1] in 255 steps, the 8-bit image levels themselves, instead of a wider range
whose steps the final 8-bit rounding would round a second time (BENCHMARKS.md, section 13). ``clamp_form``
"relu6" computes that clamp as ``relu6(6 y) / 6`` (the TFLite export: the converter turns ``clamp`` into
RELU_0_TO_1, which the LiteRT GPU delegate refuses, and this into a MUL with a fused RELU6 and a MUL).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models.student import SRStudent


def anchor_conv(scale: int) -> nn.Conv2d:
    """Return a frozen 1x1 conv 3 -> 3*s^2 equal to ``x.repeat_interleave(s*s, dim=1)``."""
    r = scale * scale
    conv = nn.Conv2d(3, 3 * r, 1, bias=False)
    weight = torch.zeros(3 * r, 3, 1, 1)
    for c in range(3):
        weight[c * r:(c + 1) * r, c] = 1.0
    conv.weight = nn.Parameter(weight, requires_grad=False)
    return conv


def shuffle_convt(scale: int) -> nn.ConvTranspose2d:
    """Return a frozen one-hot ConvTranspose2d (kernel = stride = s) equal to ``F.pixel_shuffle(y, s)``
    for 3 output colours: input channel c*s^2 + dy*s + dx lands on pixel (dy, dx) of colour c."""
    r = scale * scale
    conv = nn.ConvTranspose2d(3 * r, 3, scale, stride=scale, bias=False)
    weight = torch.zeros(3 * r, 3, scale, scale)
    for c in range(3):
        for dy in range(scale):
            for dx in range(scale):
                weight[c * r + dy * scale + dx, c, dy, dx] = 1.0
    conv.weight = nn.Parameter(weight, requires_grad=False)
    return conv


class MobileSR(nn.Module):
    """The student's convs with a conv anchor and a rank-4 pixel shuffle; the student's output, clamped to
    [0, 1] unless ``clamp=False``."""

    def __init__(self, student: SRStudent, layout: str = "nchw", shuffle: str = "native", clamp: bool = True):
        super().__init__()
        student = copy.deepcopy(student).float().eval()
        self.scale = student.scale
        self.head, self.body, self.tail = student.head, student.body, student.tail
        self.anchor = anchor_conv(self.scale)
        self.convt = shuffle_convt(self.scale) if shuffle == "convt" else None
        self.nhwc = layout == "nhwc"
        self.clamp = clamp
        self.clamp_form = "clamp"
        self.out_max = 1.0  # 255 for Core ML image I/O (export.coreml.image_io)
        self.requires_grad_(False)
        self.eval()

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        x = lr.permute(0, 3, 1, 2) if self.nhwc else lr
        y = self.tail(self.body(self.head(x))) + self.anchor(x)
        if self.clamp:
            y = F.relu6(y * 6.0) * (1.0 / 6.0) if self.clamp_form == "relu6" else y.clamp(0.0, self.out_max)
        y = self.convt(y) if self.convt is not None else F.pixel_shuffle(y, self.scale)
        return y.permute(0, 2, 3, 1) if self.nhwc else y


def build_wrapper(student: SRStudent, layout: str = "nchw", shuffle: str = "native", clamp: bool = True) -> MobileSR:
    """Return the :class:`MobileSR` of ``student`` (a copy: the student itself is untouched)."""
    return MobileSR(student, layout, shuffle, clamp)


def example_input(size: tuple[int, int] | None, layout: str, default: int = 64) -> torch.Tensor:
    """Return a random LR input in the wrapper's layout, ``size`` (h, w) or ``default`` square."""
    h, w = size or (default, default)
    shape = (1, h, w, 3) if layout == "nhwc" else (1, 3, h, w)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))
