"""Check an exported model against the PyTorch student on the eval images.

For each LR/HR pair the export's runtime and the student see the same input: the whole LR image for
exports with free input size; for fixed-size exports a centred crop of that size, replicate-padded where the
LR image is smaller (the pad is cut off the output before comparing with HR), on fewer images at sizes above
:data:`FULL_PIXELS` (:func:`images_at`). Recorded: ``max_abs_err`` and
``psnr_vs_torch`` (dB, peak 1, RGB, unrounded outputs) between export and student, and the Y-PSNR against HR
of both (``psnr_y``, ``torch_psnr_y``; outputs rounded to 8 bits, ``crop_border = scale``, mean over images;
``per_image`` keeps each image's pair, since a file's loss can sit on one image: an int8 file's noise costs most
where the student is nearly exact).

An export is **verified** when ``delta_psnr_y`` (its Y-PSNR minus the student's) is within ``tolerance_db``
of zero, the tolerance of its weight precision in :data:`TOLERANCE_DB`: the quality the user measured on
the student is the quality the file delivers, to that precision. w8a16 is held to a **loss bound** instead
(:data:`LOSS_BOUND`): it may lose at most ``tolerance_db``, and a higher Y-PSNR than the student's counts only
when the file is also close to the student (``psnr_vs_torch`` >= ``min_psnr_vs_torch``), so a gain is the
rounding noise of an almost exact file, not a different model.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import EvalPair
from ..metrics import psnr_y, quantize
from ..progress import task

Runner = Callable[[np.ndarray], np.ndarray]  # float32 NCHW (1,3,h,w) in [0,1] -> float32 NCHW (1,3,sh,sw)

# How far (dB) an export's mean Y-PSNR may be from the PyTorch student's and still count as verified.
# fp32 differs from PyTorch only by float summation order; fp16 measured within 0.001 dB on every target;
# int8 (ONNX static QDQ, TFLite full integer) measured 0.05-0.2 dB below; palettes (Core ML, 4 to 8 bits)
# measured 0.003-0.07 dB for 6/8 bits and 0.7-1.4 dB for uniform 4-bit ones, which therefore fail
# (BENCHMARKS.md, section 4).
# w8a16 (int8 weights, 16-bit activations) may lose at most 0.01 dB (a loss bound, :data:`LOSS_BOUND`).
TOLERANCE_DB = {"fp32": 1e-3, "fp16": 0.01, "int8": 0.3, "w8a16": 0.01, "palettized": 0.5}
# Precisions verified by a one-sided loss bound, with the RGB PSNR against the student (dB) the file must reach
# for a gain to count. w8a16: 16-bit activations leave only the int8 weights' rounding, 69-70 dB from a real
# student and >= 55 dB from the tests' tiny one, where its Y-PSNR came out 0.014-0.015 dB *above* the student's
# (BENCHMARKS.md, section 16): rounding flips at that closeness, not a loss. Two-sided for everything else.
LOSS_BOUND = {"w8a16": 50.0}
# An int8 file this close (dB below the student's Y-PSNR) costs nothing worth a note (issue 20's bar); below it,
# ``export`` names the options that measured closer on the target (:func:`int8_note`).
INT8_NEAR = 0.03
# LR pixels of a fixed verification size up to which every eval image is run at it (:func:`images_at`): every
# size of the README's recipes (up to 720x1280) keeps all of them; a 2048x2048 size gets two instead of ten
FULL_PIXELS = 720 * 1280


def int8_note(entry: dict, closer: tuple) -> str | None:
    """Return the line ``export`` prints when an int8 file (an export.json ``entry``) loses more than
    :data:`INT8_NEAR` dB of Y-PSNR to its student (the original fp32 student after ``--qat``:
    ``qat_delta_psnr_y``): the loss and the options of ``closer`` (the target's
    :class:`~sr_shrink.export.targets.Int8Option` s) that the export was not already given; None otherwise."""
    notes = int8_notes([entry], lambda _e: closer)
    return notes[0] if notes else None


def qat_note(entry: dict) -> str | None:
    """Return the line ``export`` prints for a ``--qat`` file (None for others): the Y-PSNR deltas of the file and
    of the one ``export`` writes without ``--qat`` against the original fp32 student, and "drop --qat" when the
    latter is closer by more than 0.001 dB."""
    if not entry.get("qat_steps"):
        return None
    ptq, qat = entry.get("ptq_delta_psnr_y"), entry.get("qat_delta_psnr_y")
    show = {k: "-" if v is None else f"{v:+.4f} dB" for k, v in (("ptq", ptq), ("qat", qat))}
    worse = ("; the file without --qat is closer to it: drop --qat" if ptq is not None and qat is not None
             and qat < ptq - 0.001 else "")
    return (f"{entry['file']}: QAT {entry['qat_steps']} steps; vs the original fp32 student: without --qat "
            f"{show['ptq']}, with it {show['qat']} (the table compares with the fine-tuned student){worse}")


def int8_notes(entries: list[dict], closer_of) -> list[str]:
    """Return :func:`int8_note`'s lines for the export.json ``entries`` of one export, one line for all the files
    whose note names the same options (``closer_of(entry)``: its target's ``int8_closer``), so an export of every
    stage says it once with each file's loss, in order."""
    groups: dict[str, list[tuple[str, float, tuple | None]]] = {}
    for entry in entries:
        qat = bool(entry.get("qat_steps"))
        rec = ((entry.get("qat") or {}).get("fp32_verification") if qat else entry.get("verification")) or {}
        delta = entry.get("qat_delta_psnr_y") if qat else rec.get("delta_psnr_y")
        if entry.get("precision") != "int8" or delta is None or not delta < -INT8_NEAR:
            continue
        left = [o for o in closer_of(entry) if not o.given(entry.get("options") or {})]
        if left:
            tries = ", ".join(f"{o.args} ({o.when})" if o.when else o.args for o in left)
            groups.setdefault(tries, []).append((entry["file"], -delta, _most_of_the_loss(rec.get("per_image"))))
    lines = []
    for tries, files in groups.items():
        names, losses = ", ".join(f for f, _, _ in files), ", ".join(f"{loss:.3f}" for _, loss, _ in files)
        whose = "its fp32 student" if len(files) == 1 else "their fp32 students"
        where = {w[0] if w else None for _, _, w in files}
        most = ""
        if len(where) == 1 and None not in where:  # one image carries most of every file's loss
            lo, hi = (f(w[1] for _, _, w in files) for f in (min, max))
            at = f"{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}"
            most = (f"; most of it on {where.pop()}, where the student is at {at} dB (rounding noise costs most "
                    "where the student is nearly exact)")
        lines.append(f"{names}: int8 costs {losses} dB Y-PSNR against {whose} here (more than {INT8_NEAR:g}){most}; "
                     f"measured closer on the teacher panel: {tries} (BENCHMARKS.md, sections 19, 23, 25, 31, 33)")
    return lines


def _most_of_the_loss(per_image: dict | None) -> tuple[str, float] | None:
    """Return (the image, the student's Y-PSNR there) when one image of a verification's ``per_image`` record
    carries more than half of the file's summed Y-PSNR loss, else None."""
    if not per_image:
        return None
    deltas = {n: r["psnr_y"] - r["torch_psnr_y"] for n, r in per_image.items()}
    name = min(deltas, key=deltas.get)
    total = sum(deltas.values())
    return (name, per_image[name]["torch_psnr_y"]) if total < 0 and deltas[name] < total / 2 else None


def images_at(n_images: int, sizes) -> dict[tuple[int, int], int]:
    """Return {(h, w): how many of ``n_images`` verification images to run at each fixed LR size in ``sizes``}:
    all of them at the smallest size when it is at most :data:`FULL_PIXELS`, and at every size as many as give
    about the pixels of ``n_images`` at min(smallest size, :data:`FULL_PIXELS`), at least one. Each image is
    padded to the size, so above it more images cost time and memory without checking more of the file."""
    budget = n_images * min(min(h * w for h, w in sizes), FULL_PIXELS)
    return {(h, w): max(1, min(n_images, round(budget / (h * w)))) for h, w in sizes}


def tolerance_key(precision: str, palettize: int | None = None) -> str:
    """Return the :data:`TOLERANCE_DB` key of an export: ``palettized`` for palettes, else its precision."""
    return "palettized" if palettize else precision


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
           size: tuple[int, int] | None, tolerance: str, runtime: str) -> dict:
    """Return the verification record of ``run`` against ``student`` on ``pairs`` (see module docstring)."""
    max_err, psnrs, ys, ts, names = 0.0, [], [], [], []
    key = _weights_key(student)
    at = f" at {size[0]}x{size[1]}" if size else ""
    n = f"{len(pairs)} eval image{'s' if len(pairs) != 1 else ''}"
    with task(f"verifying with {runtime}{at} on {n}", total=len(pairs)) as advance:
        for pair in pairs:
            s = make_sample(pair, scale, size)
            ref, ref_y = _student_reference(key, student, s, scale)
            out = torch.from_numpy(np.ascontiguousarray(run(s.lr.numpy()), dtype=np.float32))
            if out.shape != ref.shape:
                raise ValueError(f"{pair.name}: exported model returned {tuple(out.shape)}, "
                                 f"expected {tuple(ref.shape)}")
            max_err = max(max_err, float((out - ref).abs().max()))
            psnrs.append(_psnr(out.numpy(), ref.numpy()))
            ys.append(psnr_y(quantize(_valid(out, s.valid, scale)), s.hr, scale))
            ts.append(ref_y)
            names.append(pair.name)
            advance()
    return _record(max_err, psnrs, ys, ts, tolerance, runtime, size, names)


_REFS: OrderedDict[tuple, tuple[torch.Tensor, float]] = OrderedDict()
_REFS_MAX = 64  # verification images' student outputs kept: ~10 images x a few sizes x a few students
# ... and at most this many bytes of them: one x4 output at 2048x2048 LR is 805 MB, ten filled 8 GB
_REFS_MAX_BYTES = 512 * 2**20


def _weights_key(student: torch.nn.Module) -> str:
    """Return a digest of ``student``'s class, parameters and buffers: equal for the same weights, loaded
    twice (sr-shrink demo exports one stage to five files, each with its own load)."""
    h = hashlib.sha256(type(student).__name__.encode())
    for name, t in [*student.named_parameters(), *student.named_buffers()]:
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _digest(t: torch.Tensor) -> str:
    """Return the sha256 of a CPU tensor's bytes."""
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def _student_reference(key: str, student: torch.nn.Module, s: Sample, scale: int) -> tuple[torch.Tensor, float]:
    """Return (the student's clamped output on ``s.lr``, its Y-PSNR against ``s.hr``), computed once per process
    for the same weights, input pixels and torch thread count (so the numbers are the ones a fresh run gives).
    Callers must not modify the tensor."""
    lr = s.lr.contiguous()
    memo_key = (key, s.name, tuple(lr.shape), _digest(lr), s.valid, tuple(s.hr.shape), _digest(s.hr), scale,
                torch.get_num_threads())
    if memo_key in _REFS:
        _REFS.move_to_end(memo_key)
        return _REFS[memo_key]
    with torch.no_grad():
        ref = student(lr).float().clamp(0, 1)  # every export clamps its output (export.wrapper)
    value = (ref, psnr_y(quantize(_valid(ref, s.valid, scale)), s.hr, scale))
    _REFS[memo_key] = value
    while len(_REFS) > _REFS_MAX or (len(_REFS) > 1 and _refs_bytes() > _REFS_MAX_BYTES):
        _REFS.popitem(last=False)
    return value


def _refs_bytes() -> int:
    """Return the bytes the cached student outputs take."""
    return sum(ref.numel() * ref.element_size() for ref, _ in _REFS.values())


def _record(max_err: float, psnrs: list[float], ys: list[float], ts: list[float], tolerance: str,
            runtime: str, size: tuple[int, int] | None, names: list[str]) -> dict:
    psnr_t = sum(psnrs) / len(psnrs)
    y, t = sum(ys) / len(ys), sum(ts) / len(ts)
    tol = TOLERANCE_DB[tolerance]
    delta = y - t
    ok, why = within_tolerance(delta, psnr_t, tolerance)
    rec = {"verified": ok, "runtime": runtime, "images": len(psnrs),
           "inputs": "whole LR images" if size is None else f"{size[0]}x{size[1]} centred LR crops (padded)",
           "max_abs_err": round(max_err, 7), "psnr_vs_torch": round(min(psnr_t, 999.0), 3),
           "psnr_y": round(y, 4), "torch_psnr_y": round(t, 4), "delta_psnr_y": round(delta, 6),
           "tolerance_db": tol, "tolerance_for": tolerance,
           "per_image": {n: {"psnr_y": round(a, 4), "torch_psnr_y": round(b, 4)} for n, a, b in zip(names, ys, ts)}}
    if tolerance in LOSS_BOUND:
        rec["rule"] = "loss bound"
        rec["min_psnr_vs_torch"] = LOSS_BOUND[tolerance]
    if not ok:
        rec["reason"] = why
    return rec


def within_tolerance(delta: float, psnr_vs_torch: float, tolerance: str) -> tuple[bool, str]:
    """Return (whether a Y-PSNR ``delta`` (export minus student, dB) at RGB closeness ``psnr_vs_torch`` (dB)
    verifies under the :data:`TOLERANCE_DB` entry ``tolerance``, the reason when it does not).

    Two-sided (``|delta| <= tol``) except for the :data:`LOSS_BOUND` precisions: ``delta >= -tol``, and a
    ``delta > tol`` only when ``psnr_vs_torch`` reaches the bound's closeness. NaN never verifies."""
    tol = TOLERANCE_DB[tolerance]
    if not delta >= -tol:  # also NaN
        return False, (f"Y-PSNR {delta:+.4f} dB from the PyTorch student's, outside the {tolerance} tolerance "
                       f"of {tol:g} dB")
    if delta <= tol:
        return True, ""
    if tolerance in LOSS_BOUND:
        floor = LOSS_BOUND[tolerance]
        if psnr_vs_torch >= floor:
            return True, ""
        return False, (f"Y-PSNR {delta:+.4f} dB above the PyTorch student's, but only {psnr_vs_torch:.1f} dB "
                       f"PSNR from it (a {tolerance} gain counts at >= {floor:g} dB)")
    return False, (f"Y-PSNR {delta:+.4f} dB from the PyTorch student's, outside the {tolerance} tolerance "
                   f"of {tol:g} dB")


def not_verified(reason: str, runtime: str) -> dict:
    """Return the verification record of an export that could not be run, saying why."""
    return {"verified": False, "runtime": runtime, "reason": reason}
