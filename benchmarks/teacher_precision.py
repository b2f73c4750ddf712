"""Teacher precision on this machine: fp32 vs bf16 / fp16 autocast, speed and the error put into the targets.

For each teacher, one batch of dead-leaves LR patches (batch 16, 24 px) goes through the teacher in fp32 and
under bf16 and fp16 autocast (the ``--teacher-dtype`` options); prints the fastest of ``--repeats`` timed
forwards after one warm-up, the slowdown against fp32, and the PSNR of each low-precision output against the
fp32 one (both clamped to [0, 1]): how much error the precision adds to the distillation targets. Prints the
CPU's bf16/VNNI/AVX-512 flags first, since they decide the speed.

    python benchmarks/teacher_precision.py --threads 2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.distill.render import dead_leaves  # noqa: E402
from sr_shrink.teachers import load_teacher  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> str:
    """Return the CPU model and its bf16/VNNI/AVX-512/AMX flags from /proc/cpuinfo ('' elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    keep = sorted(f for f in flags if any(k in f for k in ("bf16", "vnni", "avx512f", "amx", "avx2")))
    return f"{model}: {' '.join(keep) or 'none of avx2/avx512/vnni/bf16/amx'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", nargs="+", default=[str(REPO / "sr_shrink/assets/teacher_x2.pt"),
                                                         str(REPO / "sr_shrink/assets/teacher_x4.pt")])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_flags(), f"| torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| teacher | precision | ms / forward (batch 16, 24 px) | vs fp32 | target PSNR vs fp32 (dB) |")
    print("|---|---|---:|---:|---:|")
    x = dead_leaves(16, 24, torch.Generator().manual_seed(0))
    for path in args.teachers:
        teacher = load_teacher(path)
        ref, base = None, None
        for name, dtype in DTYPES.items():
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                teacher(x)
                best = float("inf")
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    y = teacher(x).float().clamp(0, 1)
                    best = min(best, time.perf_counter() - t0)
            if ref is None:
                ref, base = y, best
                err = "-"
            else:
                mse = float(((y - ref) ** 2).mean())
                err = f"{10 * math.log10(1 / mse):.1f}" if mse > 0 else "exact"
            print(f"| {Path(path).name} | {name} | {best * 1000:.0f} | {best / base:.1f}x | {err} |", flush=True)


if __name__ == "__main__":
    main()
