"""GPTQ's input moments: the patches' ``E[x xᵀ]`` from a batched product of the unfolded inputs (today) against
one product of their (N*L, K) copy (before), on one run's calibration inputs at a TFLite file's 256x256.

Times ``gptq.input_moments`` and the old formula (kept here as the reference) on every quantized conv's inputs as
:func:`~sr_shrink.export.gptq.gptq_round` sees them, in one process, interleaved, and prints the seconds, the
largest relative difference of the moments and how many int8 weight levels GPTQ then picks differently.

    OMP_NUM_THREADS=2 python benchmarks/gptq_moments_speed.py ../panel_runs/panel/span_x4/default_datafree_300_s0 \
        --stage 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.export import gptq  # noqa: E402
from sr_shrink.export.calib import calib_batches, calib_inputs, calib_source, visit_convs  # noqa: E402
from sr_shrink.export.options import auto_calib_samples  # noqa: E402
from sr_shrink.export.qat import quantized_convs  # noqa: E402
from sr_shrink.run import RunDir, load_stage  # noqa: E402


@torch.no_grad()
def moments_before(conv: torch.nn.Conv2d, inputs: list[torch.Tensor]) -> torch.Tensor:
    """The formula before: the unfolded patches copied to one (N*L, K) matrix, then one product."""
    total, count = None, 0
    for batch in inputs:
        for part in batch.split(gptq.CHUNK):
            cols = F.unfold(part, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
            cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            part_sum = (cols.T @ cols).double()
            total = part_sum if total is None else total + part_sum
            count += cols.shape[0]
    return total / max(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--stage", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="calibration input side (TFLite's default file: 256)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run = RunDir.open(args.run)
    student, _ = load_stage(run.stages[args.stage])
    size = (args.size, args.size)
    calib = calib_inputs(calib_source(run, "generator"), student.scale, auto_calib_samples(size), size, 0)
    batches = calib_batches(calib[:gptq.MAX_INPUTS])
    seen: list[tuple[torch.nn.Conv2d, list[torch.Tensor]]] = []
    net = student.float().eval()
    visit_convs(net, quantized_convs(net, True, True), batches, lambda c, x: seen.append((c, [t.clone() for t in x])))
    times: dict[str, list[float]] = {"before": [], "today": []}
    for _ in range(args.rounds):
        for name, fn in (("before", moments_before), ("today", gptq.input_moments)):
            t0 = time.perf_counter()
            for conv, inputs in seen:
                fn(conv, inputs)
            times[name].append(time.perf_counter() - t0)
    rel, changed, levels = 0.0, 0, 0
    for conv, inputs in seen:
        a, b = moments_before(conv, inputs), gptq.input_moments(conv, inputs)
        rel = max(rel, float((a - b).abs().max() / a.abs().max()))
        qa, _, _ = gptq.gptq_weights(conv.weight, a, 127)
        qb, _, _ = gptq.gptq_weights(conv.weight, b, 127)
        changed += int((qa != qb).sum())
        levels += qa.numel()
    n = sum(x.shape[0] for x in batches)
    print(f"{len(seen)} convs, {n} calibration inputs of {args.size}x{args.size}, {torch.get_num_threads()} threads")
    for name, t in times.items():
        each = ", ".join(f"{x:.2f}" for x in t)
        print(f"{name}: median {statistics.median(t):.2f} s over {args.rounds} rounds ({each})")
    print(f"speed-up {statistics.median(times['before']) / statistics.median(times['today']):.2f}x; moments differ by "
          f"{rel:.1e} relative at most; GPTQ weight levels that differ: {changed} of {levels} (each conv from the "
          "same inputs)")


if __name__ == "__main__":
    main()
