"""The student family for phones: a small EDSR-like body with a cheap anchor residual.

``SRStudent(scale, n_blocks, channels)``: conv 3->C, ``n_blocks`` residual blocks (conv-ReLU-conv),
conv C->3*s^2, plus the input repeated s^2 times per colour (``repeat_interleave``, the ABPN/QuickSRNet
anchor, exact nearest-neighbour upsampling once shuffled), then ``pixel_shuffle``. Only Conv, ReLU, Add and
DepthToSpace: every tensor stays rank 4 in ONNX, Core ML and TFLite graphs.

``grow(student)`` returns a student with one more block whose output equals the old one exactly (the new
block's last conv is zero), which is how progressive distillation adds depth stage by stage.

``SRStudent(..., block="rep")`` is the training-time form with re-parameterizable blocks: every block conv
is a :class:`RepConv` (3x3 + 1x1 + scaled identity + 1x1-expand/3x3-squeeze branches) and
``collapse(student)`` folds each one exactly into a single 3x3 conv, giving the plain student (same graph,
parameters and MACs) that stage checkpoints and exports hold.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import BLOCKS
from ..errors import SRShrinkError

REP_EXPAND = 2  # width multiplier of RepConv's expand-squeeze branch (ECBSR's depth multiplier)


class RepConv(nn.Module):
    """A 3x3 conv C->C (padding 1) trained as four linear branches; ``kernel()`` folds them into one.

    Branches, for an input x with C channels (E = REP_EXPAND * C):

    - ``conv3x3``: W3 (C,C,3,3), bias b3;
    - ``conv1x1``: W1 (C,C,1,1), bias b1 (RepVGG / MobileOne);
    - identity, scaled per output channel by ``identity_scale`` g (C,) (RepVGG's identity branch, with a learnable
      gain instead of a BatchNorm; a gain, not a fixed identity, so ``grow`` can start a block's last conv at 0);
    - expand-squeeze: a bias-free 1x1 conv We (E,C,1,1) then a 3x3 conv Ws (C,E,3,3) with bias bs (ECBSR's
      conv1x1-conv3x3 branch, SESR's linear expand-squeeze).

    No BatchNorm and no nonlinearity inside: the sum is linear in x, so it is exactly one 3x3 conv (with zero
    padding, as every branch has)::

        K[o,i,:,:] = W3[o,i] + W1[o,i,0,0] * c + g[o] * [o == i] * c + sum_e Ws[o,e] * We[e,i,0,0]
        b[o]       = b3[o] + b1[o] + bs[o]

    where c is the 3x3 kernel with a 1 at its centre. The 1x1 branch is the 3x3 one with a centre-only kernel
    (padding 1 adds nothing at the centre tap). The expand conv has no bias on purpose: its output is zero on
    the squeeze conv's zero padding only when We has no bias (a bias there would add a border-dependent term
    that a zero-padded 3x3 conv cannot express, which is why ECBSR pads that tensor with the bias instead);
    without it the squeeze of the expand is the conv of x with the composed kernel above. The 3x3 biases
    absorb every constant.

    ``forward`` convolves x with ``kernel()`` ("online" re-parameterization, as OREPA): the same function and
    the same gradients for every branch parameter as summing the branch outputs (``branches``), at the cost of
    one 3x3 conv per step instead of four branches.

    Why these branches: the inference conv cannot change (its MACs are the budget), so everything extra must be
    linear and foldable. The 1x1 and identity branches are RepVGG's / MobileOne's (a shortcut that keeps
    gradients well conditioned in a plain conv stack); the expand-squeeze pair is ECBSR's / SESR's linear
    over-parameterization (a wider factorised kernel that changes the optimisation, not the function class).
    Left out: BatchNorm (SR networks avoid it, and it would make the fold depend on running statistics) and
    ECBSR's fixed Sobel/Laplacian branches (also foldable; a candidate for the ablation, not needed here).
    """

    def __init__(self, channels: int, expand: int = REP_EXPAND):
        super().__init__()
        wide = expand * channels
        self.conv3x3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1x1 = nn.Conv2d(channels, channels, 1)
        self.identity_scale = nn.Parameter(torch.ones(channels))
        self.expand = nn.Conv2d(channels, wide, 1, bias=False)
        self.squeeze = nn.Conv2d(wide, channels, 3, padding=1)
        self.in_channels = self.out_channels = channels

    def kernel(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (weight (C,C,3,3), bias (C,)) of the single 3x3 conv equal to the sum of the branches, computed
        in ``dtype`` (default: the parameters' dtype), differentiable in every branch parameter."""
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)  # noqa: E731
        w = cast(self.conv3x3.weight)
        centre = F.pad(cast(self.conv1x1.weight), (1, 1, 1, 1))
        centre = centre + F.pad(torch.diag(cast(self.identity_scale))[:, :, None, None], (1, 1, 1, 1))
        composed = torch.einsum("oekl,ei->oikl", cast(self.squeeze.weight), cast(self.expand.weight)[:, :, 0, 0])
        bias = cast(self.conv3x3.bias) + cast(self.conv1x1.bias) + cast(self.squeeze.bias)
        return w + centre + composed, bias

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """Return the sum of the four branch outputs (the definition ``forward`` and ``kernel`` must equal)."""
        return (self.conv3x3(x) + self.conv1x1(x) + x * self.identity_scale.view(1, -1, 1, 1)
                + self.squeeze(self.expand(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.kernel()
        return F.conv2d(x, w, b, padding=1)


class Block(nn.Module):
    """conv - ReLU - conv with identity skip; ``block="rep"`` makes both convs :class:`RepConv`."""

    def __init__(self, channels: int, block: str = "plain"):
        super().__init__()
        conv = (lambda: RepConv(channels)) if block == "rep" else (  # noqa: E731
            lambda: nn.Conv2d(channels, channels, 3, padding=1))
        self.conv1 = conv()
        self.conv2 = conv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class SRStudent(nn.Module):
    """Mobile SR student; ``forward`` maps RGB (N,3,h,w) in [0,1] to (N,3,s*h,s*w).

    ``block``: ``plain`` (the inference form) or ``rep`` (the training form: :class:`RepConv` block convs,
    see ``collapse``). The head and tail convs are plain in both.
    """

    def __init__(self, scale: int = 2, n_blocks: int = 4, channels: int = 16, block: str = "plain"):
        super().__init__()
        if scale < 2 or scale > 8:
            raise ValueError(f"scale must be between 2 and 8, not {scale}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, not {block!r}")
        self.scale, self.n_blocks, self.channels, self.block = scale, n_blocks, channels, block
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[Block(channels, block) for _ in range(n_blocks)])
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as nearest-neighbour upsampling
        nn.init.zeros_(self.tail.bias)
        for blk in self.body:
            _zero(blk.conv2)

    def config(self) -> dict:
        """Return the constructor arguments that rebuild this student."""
        return {"scale": self.scale, "n_blocks": self.n_blocks, "channels": self.channels, "block": self.block}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        out = self.tail(self.body(feat)) + x.repeat_interleave(self.scale * self.scale, dim=1)
        return F.pixel_shuffle(out, self.scale)


def _zero(conv: nn.Module) -> None:
    """Make ``conv`` output exactly zero; for a RepConv, zero every branch's last layer (the expand conv keeps
    its weights, so the squeeze conv still gets gradients)."""
    if isinstance(conv, RepConv):
        for c in (conv.conv3x3, conv.conv1x1, conv.squeeze):
            _zero(c)
        nn.init.zeros_(conv.identity_scale)
        return
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)


def _uniform_(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    """Fill ``weight`` in place from U(-b, b), b = sqrt(3 / fan_in) (unit gain), drawn from ``generator``."""
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    bound = (1.0 / fan_in) ** 0.5 * (3**0.5)  # this exact expression: plain students grow bit for bit as before
    w = torch.rand(weight.shape, generator=generator) * 2 - 1
    weight.copy_(w * bound)


def grow(student: SRStudent, generator: torch.Generator | None = None) -> SRStudent:
    """Return a copy of ``student`` with one more block appended; its output equals the old one exactly.

    The new block's first conv is randomly initialised (Kaiming uniform, seeded by ``generator``) and its
    last conv is zero, so the block starts as the identity and gradients flow into it at once. For a rep
    student, every weight of the first RepConv is drawn that way (identity gain 1, biases 0); the second has
    its 3x3, 1x1, identity and squeeze branches at zero and a random expand conv, so its kernel is exactly 0.
    """
    new = SRStudent(student.scale, student.n_blocks + 1, student.channels, student.block).to(
        next(student.parameters()).device)
    new.load_state_dict(copy.deepcopy(student.state_dict()), strict=False)
    blk = new.body[-1]
    with torch.no_grad():
        if isinstance(blk.conv1, RepConv):
            c1 = blk.conv1
            for conv in (c1.conv3x3, c1.conv1x1, c1.expand, c1.squeeze):
                _uniform_(conv.weight, generator)
                if conv.bias is not None:
                    conv.bias.zero_()
            c1.identity_scale.fill_(1.0)
            _uniform_(blk.conv2.expand.weight, generator)
        else:
            _uniform_(blk.conv1.weight, generator)
            blk.conv1.bias.zero_()
    _zero(blk.conv2)
    return new.to(next(student.parameters()).device)


@torch.no_grad()
def collapse(student: SRStudent) -> SRStudent:
    """Return the plain student computing the same function as ``student`` (a copy if it is plain already).

    Each RepConv becomes one 3x3 conv with ``RepConv.kernel`` computed in float64 and rounded once to the
    parameters' dtype; head and tail are copied. The result has the plain student's graph, parameter count and
    MACs, and sits on the same device, in the same train/eval mode.
    """
    param = next(student.parameters())
    plain = SRStudent(student.scale, student.n_blocks, student.channels, "plain").to(param.device, param.dtype)
    state = {k: v.clone() for k, v in student.state_dict().items() if k.startswith(("head.", "tail."))}
    for i, blk in enumerate(student.body):
        for name in ("conv1", "conv2"):
            conv = getattr(blk, name)
            if isinstance(conv, RepConv):
                w, b = (t.to(param.dtype) for t in conv.kernel(torch.float64))
            else:
                w, b = conv.weight.clone(), conv.bias.clone()
            state[f"body.{i}.{name}.weight"], state[f"body.{i}.{name}.bias"] = w, b
    plain.load_state_dict(state, strict=True)
    return plain.train(student.training)


@torch.no_grad()
def to_rep(student: SRStudent) -> SRStudent:
    """Return a rep-form student with the same output as the plain ``student`` (a copy if it is rep already).

    Each block conv's kernel goes to the 3x3 branch; the 1x1, identity and squeeze branches start at zero and
    the expand conv at a fixed pattern (expand channel e copies input channel e mod C), so every branch gets
    gradients and no random number is drawn. Used to go on training from a collapsed stage checkpoint when
    the training form is not available.
    """
    if student.block == "rep":
        return copy.deepcopy(student)
    param = next(student.parameters())
    rep = SRStudent(student.scale, student.n_blocks, student.channels, "rep").to(param.device, param.dtype)
    rep.head.load_state_dict(student.head.state_dict())
    rep.tail.load_state_dict(student.tail.state_dict())
    for src, dst in zip(student.body, rep.body):
        for name in ("conv1", "conv2"):
            s_conv, r_conv = getattr(src, name), getattr(dst, name)
            _zero(r_conv)
            r_conv.conv3x3.weight.copy_(s_conv.weight)
            r_conv.conv3x3.bias.copy_(s_conv.bias)
            wide, c = r_conv.expand.weight.shape[:2]
            pattern = torch.zeros(wide, c, dtype=param.dtype, device=param.device)
            pattern[torch.arange(wide), torch.arange(wide) % c] = 1.0
            r_conv.expand.weight.copy_(pattern[:, :, None, None])
    return rep.train(student.training)


class UnreadableStudent(SRShrinkError):
    """A student checkpoint that is missing, corrupt or foreign: the one-line message (what is wrong and what to
    do), and ``reason``, what is wrong with the file alone (for callers that know the better fix)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def load_student(path) -> tuple[SRStudent, dict]:
    """Return (student in eval mode, checkpoint dict) from an sr-shrink ``stage_XX.pt`` file.

    Raises :class:`UnreadableStudent` (an :class:`~sr_shrink.errors.SRShrinkError`) with a one-line message for a
    missing, corrupt or foreign file.
    """
    from pathlib import Path

    from ..errors import first_line
    from ..io import load_problem

    path = Path(path)
    if not path.is_file():
        raise UnreadableStudent(f"{path}: no such student checkpoint; pass a stage_XX.pt from a distill run.",
                                "no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = f"not a readable sr-shrink checkpoint ({load_problem(exc)})"
        raise UnreadableStudent(f"{path}: {reason}.", reason) from None
    if not (isinstance(ckpt, dict) and ckpt.get("arch") == "student" and "state_dict" in ckpt):
        raise UnreadableStudent(f"{path}: not an sr-shrink student checkpoint; pass a stage_XX.pt from a distill "
                                "run.", "not an sr-shrink student checkpoint")
    try:
        model = SRStudent(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, RuntimeError, KeyError, ValueError) as exc:  # KeyError: no "config"
        reason = f"damaged student checkpoint ({first_line(exc)})"
        raise UnreadableStudent(f"{path}: {reason}.", reason) from None
    return model.eval(), ckpt
