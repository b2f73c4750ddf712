"""Data-free quantization-aware fine-tuning for int8 exports (``sr-shrink export --precision int8 --qat STEPS``).

Before an int8 export, the collapsed student (``stage_XX.pt``) is fine-tuned for STEPS steps with fake
quantization in its forward pass, against the run's teacher, on the run's own data-free inputs (no photos):

- **inputs**: batches of LR patches (batch 16, the run's LR patch size, else the distill default for the
  scale) mixed as distill's ``datafree`` mode mixes them: a share ``mix`` (run.json's, else 0.5) from the
  synthetic sources (run.json's, else dead leaves), the rest sampled from ``RUN_DIR/generator.pt``; a run
  without generator.pt gets synthetic patches only;
- **target**: the teacher's output on the same patches (L1, knowledge distillation), the teacher loaded as
  bench and ``upscale --compare`` load it (the file run.json names, with its ``value_range``/``res_scale``);
- **fake quantization** (:class:`QATStudent`) where the int8 exporters quantize: every conv weight per output
  channel, symmetric int8 [-127, 127]; activations per tensor, asymmetric int8, at the input, after the head
  conv, after each block's conv-ReLU and second conv, after each block's residual Add and after the tail conv
  (TFLite PT2E puts Q/DQ there). The anchor (exact in int8) and the last Add stay float. For ONNX the fake
  quantization follows its scheme (``export.onnx.INT8_SCHEME``): 7-bit weights in [-64, 64], and the head and
  tail convs float, so the input and the tail's output are not quantized.
  Rounding is a straight-through estimator (``torch.fake_quantize_per_*_affine``: gradient 1 inside the range,
  0 where clipped); weight scales follow the weights (max |w| / 127, as the exporters compute them);
  activation ranges are EMA min/max observers (momentum :data:`EMA`) updated on every training batch;
- **schedule**: Adam at ``lr`` (default 1e-4) with distill's cosine decay to 1 % of it (``distill.train.schedule``),
  distill's KD step (``distill.train.kd_step``), each fresh batch used for ``reuse`` (2) steps, seeded,
  deterministic on the CPU for a given thread count.

What comes out is a plain float student (:class:`~sr_shrink.models.student.SRStudent`) whose weights are robust
to the quantization noise; the normal int8 export (calibration and all) then quantizes it. The exporters
calibrate their own activation ranges (percentile / histogram); the observers' ranges are recorded, not used.

Two things change, and the export records both (:func:`sr_shrink.export.pipeline.export_run`): the file is
verified against its own source float model (the fine-tuned student, ``verification.delta_psnr_y``), and,
because fine-tuning moves the float weights, it is also compared with the **original** fp32 student:
``qat_delta_psnr_y`` (QAT int8 file minus original student) next to ``ptq_delta_psnr_y`` (plain PTQ int8 file of
the original student minus the original student), both on the same verification images.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..distill.config import default_lr_patch
from ..distill.generator import load_generator
from ..distill.grown import KINDS
from ..distill.sources import Labeller, MixedSource
from ..distill.train import kd_step, schedule
from ..errors import SRShrinkError
from ..models.student import SRStudent
from ..run import RunDir

EMA = 0.9  # momentum of the activation range observers
BATCH = 16
DEFAULT_LR = 1e-4
INT8_W = (-127, 127)  # symmetric weights, as ONNX Runtime (WeightSymmetric) and PT2E store them
INT8_A = (-128, 127)  # asymmetric activations


def fake_quant_weight(w: torch.Tensor, qmax: int = INT8_W[1]) -> torch.Tensor:
    """Return ``w`` (O, I, kh, kw) rounded to symmetric per-output-channel integers in [-qmax, qmax] and back
    (straight-through gradient); the scale of a channel is its max |w| / qmax (127: int8; 64: the 7-bit
    weights of the ONNX export, ``Int8Scheme.reduce_range``)."""
    amax = w.detach().abs().amax(dim=(1, 2, 3)).clamp_min(1e-8)
    scale = (amax / qmax).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


class ActQuant(nn.Module):
    """Per-tensor asymmetric int8 fake quantization with an EMA min/max observer (range always holds 0).

    In training mode each call updates the range (the first call sets it); in eval mode the range is frozen.
    ``enabled=False`` makes it the identity (weights-only fake quantization)."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
                if bool(self.seen):
                    lo, hi = torch.lerp(lo, self.lo, EMA), torch.lerp(hi, self.hi, EMA)
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.seen.fill_(True)
        scale = ((self.hi - self.lo) / (INT8_A[1] - INT8_A[0])).clamp_min(1e-8).float()
        zero = (INT8_A[0] - torch.round(self.lo / scale)).clamp(*INT8_A).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, *INT8_A)

    def range(self) -> list[float]:
        """Return the observed [min, max] as floats."""
        return [round(float(self.lo), 5), round(float(self.hi), 5)]


def _conv(conv: nn.Conv2d, x: torch.Tensor, qmax: int | None = INT8_W[1]) -> torch.Tensor:
    w = conv.weight if qmax is None else fake_quant_weight(conv.weight, qmax)
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding)


class QATStudent(nn.Module):
    """A plain :class:`SRStudent` with fake quantization at the exporters' Q/DQ points (module docstring).

    ``activations=False`` fake-quantizes the weights only (Core ML int8: int8 weights, fp16 compute).
    ``weight_max``: the weights' integer range [-weight_max, weight_max] (127, or 64 for ONNX's 7-bit weights);
    ``float_ends``: the head and tail convs stay float, as the ONNX export keeps them (so the input and the
    tail's output are not quantized either); ``float_stream``: the residual stream stays float and each block's
    first conv reads a rounded copy of it (ONNX ``--float-stream``). :meth:`student` returns the float student
    with the current weights."""

    def __init__(self, student: SRStudent, activations: bool = True, weight_max: int = INT8_W[1],
                 float_ends: bool = False, float_stream: bool = False):
        super().__init__()
        self.float_stream = float_stream
        if student.block != "plain":
            raise SRShrinkError("--qat needs a collapsed (plain) student; stage_XX.pt files hold one.")
        self.net = copy.deepcopy(student).float()
        n = student.n_blocks
        self.weight_max, self.end_max = weight_max, None if float_ends else weight_max
        self.q_in, self.q_tail = (ActQuant(activations and not float_ends) for _ in range(2))
        self.q_head = ActQuant(activations)
        self.q_mid = nn.ModuleList(ActQuant(activations) for _ in range(n))
        self.q_conv2 = nn.ModuleList(ActQuant(activations) for _ in range(n))
        self.q_add = nn.ModuleList(ActQuant(activations) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.net.scale
        xq = self.q_in(x)
        feat = _conv(self.net.head, xq, self.end_max)
        stream_q = [self.q_head, *self.q_add]  # the stream's rounding after the head and after each Add
        if not self.float_stream:
            feat = self.q_head(feat)
        for i, blk in enumerate(self.net.body):
            inp = stream_q[i](feat) if self.float_stream else feat  # float stream: only the conv's copy is rounded
            mid = self.q_mid[i](F.relu(_conv(blk.conv1, inp, self.weight_max)))
            feat = feat + self.q_conv2[i](_conv(blk.conv2, mid, self.weight_max))
            if not self.float_stream:
                feat = self.q_add[i](feat)
        out = self.q_tail(_conv(self.net.tail, feat, self.end_max)) + xq.repeat_interleave(s * s, dim=1)
        return F.pixel_shuffle(out, s)

    def ranges(self) -> dict[str, list[float]]:
        """Return the observed activation ranges by Q/DQ point (``input``, ``head``, ``body.N.relu`` ...)."""
        out = {"input": self.q_in.range(), "head": self.q_head.range()}
        for i in range(len(self.q_mid)):
            out.update({f"body.{i}.relu": self.q_mid[i].range(), f"body.{i}.conv2": self.q_conv2[i].range(),
                        f"body.{i}.add": self.q_add[i].range()})
        out["tail"] = self.q_tail.range()
        return out

    def student(self) -> SRStudent:
        """Return a copy of the float student with the fine-tuned weights (eval mode)."""
        return copy.deepcopy(self.net).eval()


@dataclass
class QATConfig:
    """How to fine-tune: ``steps``, Adam ``lr`` (cosine), ``batch``, LR ``patch`` side (None: the run's, else the
    distill default for the scale), ``seed``, whether activations are fake-quantized too, and ``reuse``: steps per
    fresh batch of inputs and teacher outputs (distill's default, 2)."""

    steps: int
    lr: float = DEFAULT_LR
    batch: int = BATCH
    patch: int | None = None
    seed: int = 0
    activations: bool = True
    reuse: int = 2
    weight_max: int = INT8_W[1]  # 64: ONNX's 7-bit weights
    float_ends: bool = False  # ONNX keeps the head and tail convs float
    float_stream: bool = False  # ONNX --float-stream: the residual Adds float, only conv inputs rounded


class DataFreeInputs:
    """The run's data-free LR patches: distill's datafree source (:class:`~sr_shrink.distill.sources.MixedSource`)
    with generator.pt's samples mixed with synthetic images as run.json records the recipe, or synthetic images
    alone when the run has no generator; fresh images for every batch (no pool)."""

    def __init__(self, run: RunDir, scale: int, patch: int | None, seed: int):
        config = run.record.config or {}
        kinds = [k for k in str(config.get("synthetic") or "deadleaves").split(",") if k in KINDS]
        self.kinds = kinds or ["deadleaves"]
        mix = config.get("mix", 0.5)
        self.gen = load_generator(run.generator) if run.generator is not None else None
        self.mix = float(mix) if self.gen is not None and isinstance(mix, (int, float)) else 1.0
        run_patch = config.get("lr_patch") if isinstance(config.get("lr_patch"), int) else None
        self.patch = int(patch or run_patch or default_lr_patch(scale))
        if self.gen is not None and not getattr(self.gen, "any_size", False):
            self.patch = int(self.gen.config.patch)  # a latent generator has one output size
        self.g = torch.Generator().manual_seed(seed)

    def describe(self) -> dict:
        """Return the export.json record of the inputs: sources, mix and patch size."""
        src = "+".join(self.kinds) + (" + generator.pt" if self.gen is not None else "")
        return {"source": src, "synthetic_share": self.mix, "lr_patch": self.patch}

    def source(self, label: Labeller) -> MixedSource:
        """Return the source of (input, teacher output) batches: the synthetic share first, then generator.pt's
        samples, labelled by ``label``."""
        return MixedSource(self.kinds, self.mix, self.patch, self.g, label, sampler=self.gen)


def run_teacher(run: RunDir, scale: int, teacher: str | Path | None = None, trust_pickle: bool = False):
    """Return (the :class:`~sr_shrink.teachers.Teacher` to fine-tune against, its export.json record).

    ``teacher`` (a path) wins; else the file run.json names, reloaded with the run's value_range/res_scale
    overrides (:meth:`RunDir.load_teacher`). One-line errors when there is none or it cannot be loaded."""
    if teacher is not None:
        return run.load_teacher(scale, trust_pickle=trust_pickle, path=teacher).net, {"path": str(teacher),
                                                                                      "source": "--teacher"}
    if not run.run:
        raise SRShrinkError(f"{run.root}: --qat needs the run's teacher, but there is no run.json here; export the "
                            "run folder `sr-shrink distill` wrote, or pass --teacher PATH.")
    if run.teacher_path() is None:
        raise SRShrinkError(f"{run.run_path} {run.teacher_missing()}; --qat fine-tunes against the teacher: put the "
                            "file back or pass --teacher PATH.")
    loaded = run.load_teacher(scale, trust_pickle=trust_pickle)
    rec = {"path": str(loaded.path), "source": "run.json"}
    if run.same_teacher() is False:
        rec["note"] = "sha256 differs from the teacher the run was distilled from"
    return loaded.net, rec


def finetune(student: SRStudent, teacher: nn.Module, inputs: DataFreeInputs, cfg: QATConfig) -> tuple[SRStudent, dict]:
    """Fine-tune a copy of ``student`` with fake quantization against ``teacher`` on ``inputs``; return (the
    fine-tuned float student, its export.json record: steps, lr, batch, inputs, losses, seconds, ranges).

    distill's pieces: the source, its labeller, the KD step and the cosine schedule; each fresh batch is used for
    ``reuse`` steps as it comes (no replay buffer). ``student`` itself is left untouched. Deterministic for a given
    seed and thread count."""
    torch.manual_seed(cfg.seed)
    model = QATStudent(student, cfg.activations, cfg.weight_max, cfg.float_ends, cfg.float_stream).train()
    teacher.eval()
    source = inputs.source(Labeller(teacher, torch.device("cpu")))
    opt = torch.optim.Adam(model.net.parameters(), lr=cfg.lr)
    sched = schedule(opt, cfg.steps)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if step % cfg.reuse == 0:
            x, target = source.refill(cfg.batch)
        try:
            losses.append(kd_step(model, opt, x, target))
        except FloatingPointError:
            raise SRShrinkError(f"--qat step {step}: the loss became NaN/inf; try a lower --qat-lr.") from None
        sched.step()
    head, tail = losses[:10], losses[-10:]
    rec = {"steps": cfg.steps, "lr": cfg.lr, "schedule": "cosine to 1 %", "optimizer": "Adam", "batch": cfg.batch,
           "reuse": cfg.reuse, "seed": cfg.seed, "inputs": inputs.describe(), "loss": "L1 to the teacher's output",
           "fake_quant": (f"weights in [-{cfg.weight_max}, {cfg.weight_max}] (symmetric, per channel)"
                          + (" + 8-bit activations (per tensor, EMA min/max)" if cfg.activations else
                             "; activations float")
                          + ("; head and tail convs float" if cfg.float_ends else "")
                          + ("; residual stream float" if cfg.float_stream else "")),
           "first_loss": round(sum(head) / len(head), 6) if head else None,
           "final_loss": round(sum(tail) / len(tail), 6) if tail else None,
           "seconds": round(time.perf_counter() - t0, 2)}
    if cfg.activations:
        rec["activation_ranges"] = model.ranges()
    return model.student(), rec
