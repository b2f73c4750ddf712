"""``sr-shrink demo``: the whole pipeline on the bundled teacher in a few minutes on two CPU cores.

distill (data-free, stages 1..4) -> export the last stage to every target installed here -> bench every
stage on the runtimes installed here, ending with the table, the plot and the recommended stage.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Callable

from .distill import DistillConfig, distill
from .progress import clock

DEMO_ORDER = ("onnx", "tflite", "coreml")  # the order the demo exports in


def demo_targets() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Return {target: (converter module, precisions the demo exports)} from the export target registry."""
    from .export.targets import TARGETS as REGISTRY

    return {n: (REGISTRY[n].converter, REGISTRY[n].demo_precisions) for n in DEMO_ORDER}


def installed_targets() -> list[str]:
    """Return the export targets whose converter package is importable here."""
    return [t for t, (mod, _) in demo_targets().items() if importlib.util.find_spec(mod) is not None]


# Shares of the demo's time per phase (distill, export, bench), from one quiet run on 2 cores (48 s, 48 s, 101 s;
# BENCHMARKS.md section 15); they turn the time so far into an estimate of what is left.
PHASE_SHARES = (0.25, 0.25, 0.50)


def phase_line(n: int, what: str, started: float, now: float) -> str:
    """Return ``[n/3] what (M:SS elapsed, about M:SS left)``; no estimate before the first phase has ended."""
    elapsed = now - started
    done = sum(PHASE_SHARES[: n - 1])
    left = f", about {clock(elapsed / done * (1 - done))} left" if done and elapsed > 0 else ""
    return f"[{n}/3] {what} ({clock(elapsed)} elapsed{left})"


def run_demo(out: str | Path, steps_per_stage: int, log: Callable[[str], None], force: bool = True,
             input_size: str = "256x256", scale: int = 2) -> dict:
    """Run distill -> export -> bench on the bundled x``scale`` teacher into ``out``, logging each phase with the
    time so far and an estimate of what is left; return the bench result."""
    from .bench import BenchConfig, parse_size, run_bench

    out = Path(out)
    t0 = time.perf_counter()
    log(phase_line(1, f"distilling the bundled x{scale} teacher into {out} (data-free, 4 stages x "
                      f"{steps_per_stage} steps)", t0, time.perf_counter()))
    cfg = DistillConfig(scale=scale, stage_start=1, stage_end=4, steps_per_stage=steps_per_stage)
    distill(None, out, cfg, force=force, resume=not force, teacher_scale=scale)
    targets = installed_targets()
    log(phase_line(2, f"exporting the last stage to: {', '.join(targets) or 'nothing (no export extra installed)'}",
                   t0, time.perf_counter()))
    from .export import export_run

    for target in targets:
        for precision in demo_targets()[target][1]:
            for e in export_run(out, target, stage="last", precision=precision):
                v = e["verification"]
                log(f"  {e['file']}: {e['size_bytes'] / 1024:.0f} KiB, verified={e['verified']}, "
                    f"Y-PSNR {v.get('psnr_y', '-')} (torch {v.get('torch_psnr_y', '-')})")
    log(phase_line(3, "benchmarking every stage (latency at 256x256, Y-PSNR on the eval split)", t0,
                   time.perf_counter()))
    bcfg = BenchConfig(precisions=("fp32", "int8"), input_size=parse_size(input_size), repeats=10, warmup=2,
                       rounds=5)
    result = run_bench(out, bcfg, log=log)
    log(f"demo done in {clock(time.perf_counter() - t0)}")
    return result
