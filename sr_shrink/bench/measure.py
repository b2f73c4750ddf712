"""Measurements: interleaved latency rounds, peak memory of loading + first inference, and quality.

Timing is honest by construction: every row gets the same input; rows are run round-robin, a few calls at
a time, for several rounds, and the row order rotates each round, so slow drift of the machine (thermal,
a neighbour process) spreads over all rows instead of favouring whichever ran first.

Peak memory is Linux's ``VmHWM`` (peak resident set size) after resetting it via ``/proc/self/clear_refs``
and returning freed heap pages with ``malloc_trim``: the growth of the whole process's resident memory
while a runtime loads a model and runs its first inference (weights, arenas, activations, runtime
buffers). It is None where the kernel does not offer the reset (non-Linux).
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import EvalPair
from ..evaluate import model_outputs, score_outputs
from ..runtimes import Runner
from ..tiling import tiled_apply

DEFINITIONS = {
    "latency_ms_*": "wall time of one call (numpy in, numpy out, host<->device copies included) on the same "
                    "input, after warm-up, rows interleaved in rotating rounds; spread = (p90 - p10) / median; "
                    "latency_ms_samples lists every timed call",
    "peak_rss_mib": "growth of the process's peak resident memory (Linux VmHWM, reset before) while the runtime "
                    "loads the model and runs its first inference; null where not measurable",
    "psnr_y/ssim_y": "Y channel (BT.601), border of `scale` pixels cropped, outputs rounded to 8 bits, mean over "
                     "the eval images (static-size graphs run tiled, exactly)",
    "fidelity_psnr_y/fidelity_ssim_y": "the same, against the teacher's 8-bit output on the eval LR images instead "
                                       "of the ground truth (null when the teacher file is not at hand)",
    "metric": "what the pick and the Pareto front use: psnr (psnr_y) or fidelity (fidelity_psnr_y); by default "
              "fidelity when the teacher scores less than 0.5 dB above bicubic (a perceptual teacher)",
    "size_bytes": "size of the file the row runs (stage_XX.pt checkpoint for torch rows)",
    "macs": "multiply-accumulates of one forward pass at the bench input size",
}
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    """Return a ``/proc/self/status`` field (VmRSS, VmHWM) in KiB, or None if unavailable."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class PeakMemory:
    """Context manager: ``mib`` is the peak RSS growth (MiB) inside the block, or None if unmeasurable."""

    mib: float | None = None

    def __enter__(self):
        _trim_heap()
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
            self._base = _status_kib("VmRSS")
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kib("VmHWM")
        if self._base is not None and hwm is not None:
            self.mib = round(max(0, hwm - self._base) / 1024, 2)


def percentile(values: list[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100, linear interpolation) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_stats(samples_s: list[float]) -> dict:
    """Return median/p90/p10/min/mean latency in ms and the spread ((p90 - p10) / median, in %)."""
    ms = [s * 1000 for s in samples_s]
    med = percentile(ms, 50)
    p10, p90 = percentile(ms, 10), percentile(ms, 90)
    return {"latency_ms_median": round(med, 4), "latency_ms_p90": round(p90, 4),
            "latency_ms_p10": round(p10, 4), "latency_ms_min": round(min(ms), 4),
            "latency_ms_mean": round(float(np.mean(ms)), 4),
            "latency_spread_pct": round(100 * (p90 - p10) / med, 2) if med > 0 else 0.0,
            "latency_samples": len(ms)}


def round_plan(repeats: int, rounds: int) -> list[int]:
    """Return how many timed calls each row gets in each round: ``repeats`` split over ``rounds``."""
    rounds = max(1, min(rounds, repeats))
    base, extra = divmod(repeats, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def timing_steps(n_rows: int, repeats: int, rounds: int) -> int:
    """Return how many times :func:`time_interleaved` calls ``advance``: once per row for the warm-up, then once
    per row and round."""
    return n_rows * (1 + len(round_plan(repeats, rounds)))


def time_interleaved(fns: dict[Hashable, Callable[[np.ndarray], np.ndarray]], x: np.ndarray, repeats: int = 20,
                     warmup: int = 3, rounds: int = 5,
                     advance: Callable[[], None] | None = None) -> dict[Hashable, list[float]]:
    """Return per-row call times (s) of ``fns`` on the same input ``x``, timed round-robin with rotation.

    Every row first gets ``warmup`` untimed calls; then, for each round, each row in turn makes its share
    of the ``repeats`` timed calls, the order rotated by ``len(rows) / rounds`` places per round so that each
    row runs early in some rounds and late in others. ``advance()`` (progress) is called after each row's
    warm-up and after each row's share of a round, outside the timed calls.
    """
    advance = advance or (lambda: None)
    keys = list(fns)
    for k in keys:
        for _ in range(warmup):
            fns[k](x)
        advance()
    times: dict[Hashable, list[float]] = {k: [] for k in keys}
    plan = round_plan(repeats, rounds)
    for r, n in enumerate(plan):
        shift = (r * len(keys)) // len(plan) if keys else 0
        for k in keys[shift:] + keys[:shift]:
            fn = fns[k]
            for _ in range(n):
                t0 = time.perf_counter()
                fn(x)
                times[k].append(time.perf_counter() - t0)
            advance()
    return times


def bench_input(input_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Return the one float32 (1,3,h,w) input every row is timed on: smooth gradients plus seeded noise."""
    h, w = input_hw
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2]) * 0.6 + 0.2
    img = (base + 0.15 * torch.rand(3, h, w, generator=gen)).clamp(0, 1)
    return img.unsqueeze(0).numpy().astype(np.float32)


def quality(runner: Runner, pairs: list[EvalPair], scale: int, overlap: int = 16,
            references: list[EvalPair] | None = None,
            advance: Callable[[], None] | None = None) -> tuple[dict, dict | None]:
    """Return (Y-PSNR/SSIM of ``runner`` on ``pairs``, the same against ``references`` (the teacher's outputs on
    the same LR images: fidelity) or None), from one run over the images; fixed-size and enumerated-size graphs
    run tiled (at the fixed or default size).
    ``advance()`` (progress) is called after each image."""
    fn = runner.torch_fn()
    if runner.tile_hw:
        tile = tuple(runner.tile_hw)
        overlap = min(overlap, (min(tile) - 1) // 2)
        run = fn
        fn = lambda x: tiled_apply(run, x, scale, tile, overlap, fixed=True)  # noqa: E731
    outputs = model_outputs(fn, pairs, advance)
    return score_outputs(outputs, pairs, scale), score_outputs(outputs, references, scale) if references else None
