"""The teacher as a labeller: every teacher output that becomes a student target passes through
:meth:`Labeller.target`, and every labelling forward through :meth:`Labeller.__call__`.

The teacher's forwards run in the precision ``--teacher-dtype`` asks for (autocast; ``auto`` resolves by device,
:func:`resolve_teacher_dtype`) and come back as fp32; an out-of-memory failure becomes one line naming the batch and
patch to try instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from ...errors import SRShrinkError, first_line

TEACHER_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def resolve_teacher_dtype(name: str, device: torch.device) -> str:
    """Return the concrete teacher precision for ``--teacher-dtype``: ``auto`` is bf16 on a CUDA device that
    supports it and fp32 elsewhere (on CPUs without native bf16, e.g. this project's AMD EPYC runners, bf16
    autocast made the teacher 8x slower: BENCHMARKS section 10); the others are returned as they are."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def is_oom(exc: BaseException) -> bool:
    """Return True when ``exc`` is an out-of-memory failure of CPU, CUDA or MPS."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS))


class Labeller:
    """Runs ``teacher`` on LR batches: ``labeller(x)`` is the (no-gradient) KD target of ``x``, ``forward(x)`` the
    differentiable output the generator game needs; ``amp`` (--amp) sets the student's autocast in that game and
    in the student steps; ``targets`` (``clamp``/``raw``) is :meth:`target`'s rule. ``seconds`` adds up the time
    spent labelling; ``on_label(x)``, when given, sees every labelled batch (tests count the teacher's work with it)."""

    def __init__(self, teacher: torch.nn.Module, device: torch.device, dtype: str = "fp32",
                 channels_last: bool = False, amp: bool = False, batch: int = 16, lr_patch: int = 16,
                 on_label: Callable[[torch.Tensor], None] | None = None, targets: str = "raw"):
        self.teacher, self.device, self.dtype, self.channels_last = teacher, device, dtype, channels_last
        self.clamp = targets == "clamp"
        self.amp, self.batch, self.lr_patch, self.on_label = amp, batch, lr_patch, on_label
        self.seconds = 0.0

    @property
    def scale(self) -> int:
        """Return the teacher's upscaling factor."""
        return self.teacher.scale

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` in the run's memory format (channels_last under ``--channels-last``)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        """Return the autocast context of the teacher's forwards: off (fp32) unless --teacher-dtype asks."""
        dtype, dev = TEACHER_DTYPE[self.dtype], self.device.type
        if dtype is None:
            return torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()
        return torch.autocast(dev, dtype=dtype)

    def student_autocast(self):
        """Return the autocast context of the student's forward: bf16 under --amp on CUDA, else none."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def target(self, t: torch.Tensor) -> torch.Tensor:
        """Return the student target made of the teacher output ``t``: clamped to the teacher's value range
        [0, 1] with ``targets="clamp"`` (distill's default), as it came with ``"raw"``. Every teacher-labelled
        target (pool, refills, the generator game's buffer pairs) passes through here; the generator's own loss
        L_G sees the raw output (:meth:`forward`)."""
        return t.clamp(0.0, 1.0) if self.clamp else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the teacher's fp32 output for ``x`` with gradient (the generator game's forward)."""
        with self.autocast():
            return self.teacher(self.fmt(x)).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the KD target of ``x`` (teacher output, no gradient), or a clear error when memory runs out."""
        if self.on_label is not None:
            self.on_label(x)
        t0 = time.perf_counter()
        try:
            with torch.no_grad(), self.autocast():
                out = self.target(self.teacher(self.fmt(x)).float())
        except RuntimeError as exc:
            if is_oom(exc):
                raise self.oom_error(exc, x.shape[0], "forward") from None
            raise
        self.seconds += time.perf_counter() - t0
        return out

    def oom_error(self, exc: BaseException, n: int, what: str) -> SRShrinkError:
        """Return the one-line error for a teacher ``what`` (forward/backward) that ran out of memory."""
        first = first_line(exc)
        patch = self.lr_patch
        return SRShrinkError(
            f"the teacher's {what} ran out of memory at batch {n} with {patch} px LR patches ({first}); its "
            f"memory grows with batch x patch area: try --batch {max(1, self.batch // 2)}"
            f"{f' or --lr-patch {max(4, patch // 2 // 4 * 4)}' if patch > 4 else ''}"
            f"{' or --teacher-dtype bf16' if self.device.type == 'cuda' and self.dtype == 'fp32' else ''}"
            f", in a new run (--force: --resume keeps the batch and patch it started with).")
