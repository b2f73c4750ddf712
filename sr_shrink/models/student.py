"""The student family for phones: a small EDSR-like body with a cheap anchor residual.

``SRStudent(scale, n_blocks, channels)``: conv 3->C, ``n_blocks`` residual blocks (conv-ReLU-conv),
conv C->3*s^2, plus the input repeated s^2 times per colour (``repeat_interleave``, the ABPN/QuickSRNet
anchor, exact nearest-neighbour upsampling once shuffled), then ``pixel_shuffle``. Only Conv, ReLU, Add and
DepthToSpace: every tensor stays rank 4 in ONNX, Core ML and TFLite graphs.

``grow(student)`` returns a student with one more block whose output equals the old one exactly (the new
block's last conv is zero), which is how progressive distillation adds depth stage by stage.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """conv - ReLU - conv with identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class SRStudent(nn.Module):
    """Mobile SR student; ``forward`` maps RGB (N,3,h,w) in [0,1] to (N,3,s*h,s*w)."""

    def __init__(self, scale: int = 2, n_blocks: int = 4, channels: int = 16):
        super().__init__()
        if scale < 2 or scale > 8:
            raise ValueError(f"scale must be between 2 and 8, not {scale}")
        self.scale, self.n_blocks, self.channels = scale, n_blocks, channels
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[Block(channels) for _ in range(n_blocks)])
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as nearest-neighbour upsampling
        nn.init.zeros_(self.tail.bias)
        for blk in self.body:
            _zero(blk.conv2)

    def config(self) -> dict:
        """Return the constructor arguments that rebuild this student."""
        return {"scale": self.scale, "n_blocks": self.n_blocks, "channels": self.channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        out = self.tail(self.body(feat)) + x.repeat_interleave(self.scale * self.scale, dim=1)
        return F.pixel_shuffle(out, self.scale)


def _zero(conv: nn.Conv2d) -> None:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)


def grow(student: SRStudent, generator: torch.Generator | None = None) -> SRStudent:
    """Return a copy of ``student`` with one more block appended; its output equals the old one exactly.

    The new block's first conv is randomly initialised (Kaiming uniform, seeded by ``generator``) and its
    last conv is zero, so the block starts as the identity and gradients flow into it at once.
    """
    new = SRStudent(student.scale, student.n_blocks + 1, student.channels).to(
        next(student.parameters()).device)
    new.load_state_dict(copy.deepcopy(student.state_dict()), strict=False)
    blk = new.body[-1]
    with torch.no_grad():
        bound = (1.0 / (blk.conv1.in_channels * 9)) ** 0.5 * (3**0.5)
        w = torch.rand(blk.conv1.weight.shape, generator=generator) * 2 - 1
        blk.conv1.weight.copy_(w * bound)
        blk.conv1.bias.zero_()
    _zero(blk.conv2)
    return new


def load_student(path) -> tuple[SRStudent, dict]:
    """Return (student in eval mode, checkpoint dict) from an sr-shrink ``stage_XX.pt`` file.

    Raises :class:`~sr_shrink.errors.SRShrinkError` with a one-line message for a missing, corrupt or
    foreign file.
    """
    from pathlib import Path

    from ..errors import SRShrinkError

    path = Path(path)
    if not path.is_file():
        raise SRShrinkError(f"{path}: no such student checkpoint; pass a stage_XX.pt from a distill run.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SRShrinkError(f"{path}: not a readable sr-shrink checkpoint ({str(exc).splitlines()[0][:120]}).") \
            from None
    if not (isinstance(ckpt, dict) and ckpt.get("arch") == "student" and "state_dict" in ckpt):
        raise SRShrinkError(f"{path}: not an sr-shrink student checkpoint; pass a stage_XX.pt from a distill run.")
    try:
        model = SRStudent(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, RuntimeError) as exc:
        raise SRShrinkError(f"{path}: damaged student checkpoint ({str(exc).splitlines()[0][:120]}).") from None
    return model.eval(), ckpt
