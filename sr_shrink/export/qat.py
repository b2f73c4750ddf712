"""Data-free quantization-aware fine-tuning for int8 exports (``sr-shrink export --precision int8 --qat STEPS``).

Before an int8 export, the collapsed student (``stage_XX.pt``) is fine-tuned for STEPS steps with fake
quantization in its forward pass, on the run's own data-free inputs (no photos):

- **inputs**: batches of LR patches (batch 16, the run's LR patch size, else the distill default for the
  scale) mixed as distill's ``datafree`` mode mixes them: a share ``mix`` (run.json's, else 0.5) from the
  synthetic sources (run.json's, else dead leaves), the rest sampled from ``RUN_DIR/generator.pt``; a run
  without generator.pt gets synthetic patches only;
- **target** (``--qat-target``): ``student`` (the default): the original fp32 student's own output on the same
  patches, so the fine-tuning only makes the function robust to the file's rounding; ``teacher``: the teacher's
  output (knowledge distillation, the first recipe), the teacher loaded as bench and ``upscale --compare`` load
  it (``--teacher`` or the file run.json names, with its ``value_range``/``res_scale``). L1 either way;
- **fake quantization** (:class:`QATStudent`) where the int8 exporters quantize: every conv weight per output
  channel, symmetric int8 [-127, 127]; activations per tensor, asymmetric int8, at the input, after the head
  conv, after each block's conv-ReLU and second conv, after each block's residual Add and after the tail conv
  (TFLite PT2E puts Q/DQ there), except the tail's output for TFLite, whose file rounds it on the 8-bit pixel
  grid, the output's own rounding (``pixel_tail``; :func:`~sr_shrink.export.tflite.align_to_pixel_grid`). The
  anchor (exact in int8) and the last Add stay float. For ONNX the fake
  quantization follows its scheme (``export.onnx.INT8_SCHEME``): 7-bit weights in [-64, 64], and the head and
  tail convs float, so the input and the tail's output are not quantized.
  Rounding is a straight-through estimator (``torch.fake_quantize_per_*_affine``: gradient 1 inside the range,
  0 where clipped); weight scales follow the weights (max |w| / 127, as the exporters compute them);
- **activation ranges** (``QATConfig.ranges``): with the student target, frozen before the first step at the
  file's own calibration rule over the export's calibration inputs (:func:`freeze_ranges`): ONNX's two-sided
  percentile (99.99: 0.005 % cut at each end) or min/max, TFLite PT2E's histogram observer; with the teacher
  target, EMA min/max observers (momentum :data:`EMA`) updated on every training batch, as before;
- **schedule**: Adam at ``lr`` (default 1e-5 for the student target, 1e-4 for the teacher target) with distill's
  cosine decay to 1 % of it (``distill.train.schedule``), distill's KD step (``distill.train.kd_step``), each
  fresh batch used for ``reuse`` (2) steps, seeded, deterministic on the CPU for a given thread count.

What comes out is a plain float student (:class:`~sr_shrink.models.student.SRStudent`) whose weights are robust
to the quantization noise; the normal int8 export (calibration and all) then quantizes it, recalibrating its
ranges on the tuned student.

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distill.config import default_lr_patch
from ..distill.generator import load_generator
from ..distill.sources import Labeller, MixedSource
from ..distill.train import kd_step, schedule
from ..errors import SRShrinkError
from ..models.student import SRStudent
from ..progress import task
from ..run import RunDir
from .calib import recorded_sources
from .onnx import CALIB_PERCENTILE
from .options import QAT_TARGETS

EMA = 0.9  # momentum of the activation range observers
BATCH = 16
DEFAULT_LR = 1e-4  # the teacher target (section 11's recipe)
STUDENT_LR = 1e-5  # the student target: best of 3e-6..1e-4 on the two worst panel students (BENCHMARKS.md 22)
RANGES = ("ema", "percentile", "minmax", "histogram")
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

    In training mode each call updates the range (the first call sets it); in eval mode, or once
    :meth:`freeze` has set it, the range is fixed. ``enabled=False`` makes it the identity (weights-only fake
    quantization)."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.frozen = False
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.training and not self.frozen:
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

    def freeze(self, lo: float, hi: float) -> None:
        """Fix the range to [min(lo, 0), max(hi, 0)]; training no longer updates it."""
        self.lo.fill_(min(float(lo), 0.0))
        self.hi.fill_(max(float(hi), 0.0))
        self.seen.fill_(True)
        self.frozen = True

    def range(self) -> list[float]:
        """Return the observed [min, max] as floats."""
        return [round(float(self.lo), 5), round(float(self.hi), 5)]


def quantized_convs(student: SRStudent, ends: bool, first: bool = True) -> list[nn.Conv2d]:
    """Return the student's convs in network order: head, each block's two, tail; without head and tail when
    ``ends`` is False (the ONNX int8 scheme keeps them float), without the first block's first conv when
    ``first`` is False (ONNX ``--float-first-conv``)."""
    body = [c for blk in student.body for c in (blk.conv1, blk.conv2)]
    body = body if first else body[1:]
    return [student.head, *body, student.tail] if ends else body


def _conv(conv: nn.Conv2d, x: torch.Tensor, qmax: int | None = INT8_W[1]) -> torch.Tensor:
    w = conv.weight if qmax is None else fake_quant_weight(conv.weight, qmax)
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding)


class QATStudent(nn.Module):
    """A plain :class:`SRStudent` with fake quantization at the exporters' Q/DQ points (module docstring).

    ``activations=False`` fake-quantizes the weights only (Core ML int8: int8 weights, fp16 compute).
    ``weight_max``: the weights' integer range [-weight_max, weight_max] (127, or 64 for ONNX's 7-bit weights);
    ``float_ends``: the head and tail convs stay float, as the ONNX export keeps them (so the input and the
    tail's output are not quantized either); ``float_stream``: the residual stream stays float and each block's
    first conv reads a rounded copy of it (ONNX ``--float-stream``); ``float_first``: the first block's first conv
    stays float and reads the head's output unrounded (ONNX ``--float-first-conv``); ``pixel_tail``: the tail's
    output is not rounded (TFLite int8 rounds it on the output's own 8-bit grid). :meth:`student` returns the
    float student with the current weights."""

    def __init__(self, student: SRStudent, activations: bool = True, weight_max: int = INT8_W[1],
                 float_ends: bool = False, float_stream: bool = False, float_first: bool = False,
                 pixel_tail: bool = False):
        super().__init__()
        self.float_stream, self.float_first = float_stream, float_first
        if student.block != "plain":
            raise SRShrinkError("--qat needs a collapsed (plain) student; stage_XX.pt files hold one.")
        self.net = copy.deepcopy(student).float()
        n = student.n_blocks
        self.weight_max, self.end_max = weight_max, None if float_ends else weight_max
        self.q_in = ActQuant(activations and not float_ends)
        self.q_tail = ActQuant(activations and not float_ends and not pixel_tail)
        # with the float stream the head's output is rounded only for the first conv: not at all when that is float
        self.q_head = ActQuant(activations and not (float_stream and float_first))
        self.q_mid = nn.ModuleList(ActQuant(activations) for _ in range(n))
        self.q_conv2 = nn.ModuleList(ActQuant(activations) for _ in range(n))
        self.q_add = nn.ModuleList(ActQuant(activations) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.net.scale
        xq = self.q_in(x)
        head = feat = _conv(self.net.head, xq, self.end_max)
        stream_q = [self.q_head, *self.q_add]  # the stream's rounding after the head and after each Add
        if not self.float_stream:
            feat = self.q_head(feat)
        for i, blk in enumerate(self.net.body):
            if i == 0 and self.float_first:  # a float conv reading the head's output itself
                inp, wmax = head, None
            else:  # float stream: only the conv's copy is rounded
                inp, wmax = (stream_q[i](feat) if self.float_stream else feat), self.weight_max
            mid = self.q_mid[i](F.relu(_conv(blk.conv1, inp, wmax)))
            feat = feat + self.q_conv2[i](_conv(blk.conv2, mid, self.weight_max))
            if not self.float_stream:
                feat = self.q_add[i](feat)
        out = self.q_tail(_conv(self.net.tail, feat, self.end_max)) + xq.repeat_interleave(s * s, dim=1)
        return F.pixel_shuffle(out, s)

    def quantized_convs(self) -> list[tuple[nn.Conv2d, int]]:
        """Return (conv, its weights' largest integer level) for every conv whose weights the file rounds."""
        ends = (self.net.head, self.net.tail)
        return [(c, self.end_max if c in ends else self.weight_max)
                for c in quantized_convs(self.net, self.end_max is not None, not self.float_first)]

    def ranges(self) -> dict[str, list[float]]:
        """Return the activation ranges by Q/DQ point (``input``, ``head``, ``body.N.relu`` ...) of the points
        that round (the scheme's float ones, e.g. ONNX's input and tail, are left out)."""
        points = {"input": self.q_in, "head": self.q_head}
        for i in range(len(self.q_mid)):
            points.update({f"body.{i}.relu": self.q_mid[i], f"body.{i}.conv2": self.q_conv2[i],
                           f"body.{i}.add": self.q_add[i]})
        points["tail"] = self.q_tail
        return {name: q.range() for name, q in points.items() if q.enabled}

    def student(self) -> SRStudent:
        """Return a copy of the float student with the fine-tuned weights (eval mode)."""
        return copy.deepcopy(self.net).eval()


@dataclass
class QATConfig:
    """How to fine-tune: ``steps``, Adam ``lr`` (cosine), ``batch``, LR ``patch`` side (None: the run's, else the
    distill default for the scale), ``seed``, whether activations are fake-quantized too, ``reuse``: steps per
    fresh batch of inputs and targets (distill's default, 2); the integer weight range and which parts stay float
    (the ONNX scheme's); ``target`` (the label net passed to :func:`finetune`: "student" or "teacher", recorded);
    ``ranges``: "ema" (EMA min/max observers updated while training) or a rule the ranges are frozen at before
    the first step: "percentile" (two-sided ``percentile``, ONNX Runtime's Percentile calibrator), "minmax",
    "histogram" (PT2E's HistogramObserver, as the TFLite int8 export calibrates)."""

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
    float_first: bool = False  # ONNX --float-first-conv: the first body conv float, reading the head unrounded
    pixel_tail: bool = False  # TFLite: the tail's output rounded on the output's pixel grid (no rounding of its own)
    target: str = "teacher"
    ranges: str = "ema"
    percentile: float = CALIB_PERCENTILE
    bounded: bool = False  # only the rounding is learned: see RoundingBox

    def __post_init__(self) -> None:
        if self.target not in QAT_TARGETS:
            raise SRShrinkError(f"--qat-target {self.target!r}: choose one of {', '.join(QAT_TARGETS)}.")
        if self.ranges not in RANGES:
            raise SRShrinkError(f"QAT ranges {self.ranges!r}: choose one of {', '.join(RANGES)}.")


def _histogram_range(values: torch.Tensor) -> tuple[float, float]:
    """Return the [lo, hi] range PT2E's int8 HistogramObserver (the TFLite export's activation observer,
    ``eps`` 2**-12) gives ``values``."""
    try:
        from torchao.quantization.pt2e.observer import HistogramObserver
    except ImportError:  # the tflite extra brings torchao; torch's own copy computes the same
        from torch.ao.quantization.observer import HistogramObserver
    obs = HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=INT8_A[0],
                            quant_max=INT8_A[1], eps=2 ** -12)
    obs(values)
    scale, zero = (float(t) for t in obs.calculate_qparams())
    return (INT8_A[0] - zero) * scale, (INT8_A[1] - zero) * scale


def calibrated_range(values: torch.Tensor, rule: str, percentile: float = CALIB_PERCENTILE) -> tuple[float, float]:
    """Return the (lo, hi) activation range the int8 exporter's ``rule`` gives the flat float ``values``:
    "percentile" cuts (100 - ``percentile``) / 2 % at each end (ONNX Runtime's Percentile calibrator on its
    two-sided histogram; exact values here), "minmax" the extremes, "histogram" PT2E's HistogramObserver."""
    v = values.detach().flatten()
    if rule == "histogram":
        return _histogram_range(v.float())
    if rule == "minmax":
        return float(v.min()), float(v.max())
    cut = (100.0 - percentile) / 2
    lo, hi = np.percentile(v.numpy(), [cut, 100.0 - cut])
    return float(lo), float(hi)


def freeze_ranges(model: QATStudent, calib: list[torch.Tensor], rule: str,
                  percentile: float = CALIB_PERCENTILE) -> dict:
    """Freeze every enabled fake-quant point of ``model`` at ``rule``'s range (:func:`calibrated_range`) of the
    float model's values there over the calibration inputs ``calib``; return the ranges by point
    (:meth:`QATStudent.ranges`). A point the scheme never reaches stays off."""
    points = [m for m in model.modules() if isinstance(m, ActQuant) and m.enabled]
    seen: dict[ActQuant, list[torch.Tensor]] = {p: [] for p in points}
    hooks = [p.register_forward_pre_hook(lambda m, a: seen[m].append(a[0].detach().flatten())) for p in points]
    for p in points:
        p.enabled = False
    try:
        with torch.no_grad():
            for x in calib:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    for p in points:
        if seen[p]:  # the float stream's last Add is never rounded
            p.freeze(*calibrated_range(torch.cat(seen[p]), rule, percentile))
            p.enabled = True
    return model.ranges()


class DataFreeInputs:
    """The run's data-free LR patches: distill's datafree source (:class:`~sr_shrink.distill.sources.MixedSource`)
    with generator.pt's samples mixed with synthetic images as run.json records the recipe, or synthetic images
    alone when the run has no generator; fresh images for every batch (no pool)."""

    def __init__(self, run: RunDir, scale: int, patch: int | None, seed: int):
        config = run.record.config or {}
        self.kinds = recorded_sources(config) or ["deadleaves"]
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
        raise SRShrinkError(f"{run.root}: --qat-target teacher needs the run's teacher, but there is no run.json "
                            "here; export the run folder `sr-shrink distill` wrote, pass --teacher PATH, or use "
                            "--qat-target student (needs no teacher).")
    if run.teacher_path() is None:
        raise SRShrinkError(f"{run.run_path} {run.teacher_missing()}; --qat fine-tunes against the teacher: put the "
                            "file back, pass --teacher PATH, or use --qat-target student (needs no teacher).")
    loaded = run.load_teacher(scale, trust_pickle=trust_pickle)
    rec = {"path": str(loaded.path), "source": "run.json"}
    if run.same_teacher() is False:
        rec["note"] = "sha256 differs from the teacher the run was distilled from"
    return loaded.net, rec


class RoundingBox:
    """Keeps each rounded conv weight within half a rounding step of its original value and inside its channel's
    original max |w|, whose element stays put (so the file's per-channel scale does not change), and the float
    convs' weights fixed: the weights can only choose their rounding direction (AdaRound's feasible set, learned
    here with the straight-through gradient); biases move freely. :meth:`snap` puts the weights on their integer
    grid at the end, so the exporter's own rounding of them is exact."""

    def __init__(self, model: QATStudent):
        self.convs = model.quantized_convs()
        self.bounds = []
        for conv, qmax in self.convs:
            w = conv.weight.detach()
            amax = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
            half = torch.where(w.abs() >= amax, 0.0, amax / qmax / 2)  # the channel's largest |w| sets its scale
            self.bounds.append(((w - half).clamp(min=-amax), (w + half).clamp(max=amax)))
        rounded = {id(c.weight) for c, _ in self.convs}
        for conv in (model.net.head, model.net.tail):
            if id(conv.weight) not in rounded:
                conv.weight.requires_grad_(False)

    @torch.no_grad()
    def project(self) -> None:
        """Clamp every rounded weight back into its box."""
        for (conv, _), (lo, hi) in zip(self.convs, self.bounds):
            conv.weight.copy_(torch.maximum(torch.minimum(conv.weight, hi), lo))

    @torch.no_grad()
    def snap(self) -> None:
        """Replace every rounded weight by its fake-quantized value."""
        for conv, qmax in self.convs:
            conv.weight.copy_(fake_quant_weight(conv.weight, qmax))


def finetune(student: SRStudent, label_net: nn.Module, inputs: DataFreeInputs, cfg: QATConfig,
             calib: list[torch.Tensor] | None = None, step_fn=kd_step) -> tuple[SRStudent, dict]:
    """Fine-tune a copy of ``student`` with fake quantization against ``label_net`` (the teacher, or ``student``
    itself for the student target) on ``inputs``; return (the fine-tuned float student, its export.json record:
    steps, lr, batch, inputs, target, ranges, losses, seconds).

    A frozen ``cfg.ranges`` rule needs ``calib`` (the export's calibration inputs). distill's pieces: the source,
    its labeller, the KD step and the cosine schedule; each fresh batch is used for ``reuse`` steps as it comes
    (no replay buffer). ``step_fn(model, opt, x, target)`` takes one step and returns its loss (default: distill's
    KD step; benchmarks pass variants of the loss). ``student`` itself is left untouched. Deterministic for a given
    seed and thread count."""
    torch.manual_seed(cfg.seed)
    model = QATStudent(student, cfg.activations, cfg.weight_max, cfg.float_ends, cfg.float_stream,
                       cfg.float_first, cfg.pixel_tail).train()
    if cfg.activations and cfg.ranges != "ema":  # frozen at a calibration rule
        if not calib:
            raise SRShrinkError("QAT with frozen calibrated ranges needs the export's calibration inputs.")
        freeze_ranges(model, calib, cfg.ranges, cfg.percentile)
    label_net.eval()
    source = inputs.source(Labeller(label_net, torch.device("cpu")))
    box = RoundingBox(model) if cfg.bounded else None
    opt = torch.optim.Adam([p for p in model.net.parameters() if p.requires_grad], lr=cfg.lr)
    sched = schedule(opt, cfg.steps)
    losses: list[float] = []
    t0 = time.perf_counter()
    with task(f"QAT: fine-tuning against the {cfg.target}", total=cfg.steps) as advance:
        for step in range(cfg.steps):
            if step % cfg.reuse == 0:
                x, target = source.refill(cfg.batch)
            try:
                losses.append(step_fn(model, opt, x, target))
            except FloatingPointError:
                raise SRShrinkError(f"--qat step {step}: the loss became NaN/inf; try a lower --qat-lr.") from None
            sched.step()
            if box is not None:
                box.project()
            advance()
    if box is not None:
        box.snap()
    head, tail = losses[:10], losses[-10:]
    rule = {"ema": "EMA min/max", "percentile": f"frozen at the {cfg.percentile:g} percentile of the calibration "
            "inputs", "minmax": "frozen at the calibration inputs' min/max",
            "histogram": "frozen at the PT2E histogram observer's range on the calibration inputs"}[cfg.ranges]
    rec = {"steps": cfg.steps, "lr": cfg.lr, "schedule": "cosine to 1 %", "optimizer": "Adam", "batch": cfg.batch,
           "reuse": cfg.reuse, "seed": cfg.seed, "inputs": inputs.describe(), "target": cfg.target,
           "loss": f"L1 to the {'original fp32 student' if cfg.target == 'student' else 'teacher'}'s output",
           "fake_quant": (f"weights in [-{cfg.weight_max}, {cfg.weight_max}] (symmetric, per channel)"
                          + (f" + 8-bit activations (per tensor, {rule})" if cfg.activations else
                             "; activations float")
                          + ("; head and tail convs float" if cfg.float_ends else "")
                          + ("; residual stream float" if cfg.float_stream else "")
                          + ("; first body conv float" if cfg.float_first else "")
                          + ("; rounding only (weights within half a step of the original)" if cfg.bounded else "")),
           "first_loss": round(sum(head) / len(head), 6) if head else None,
           "final_loss": round(sum(tail) / len(tail), 6) if tail else None,
           "seconds": round(time.perf_counter() - t0, 2)}
    if cfg.activations:
        rec["activation_ranges"] = model.ranges()
        rec["ranges"] = cfg.ranges
    return model.student(), rec
