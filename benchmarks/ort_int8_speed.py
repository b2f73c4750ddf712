"""ONNX Runtime int8 vs fp32 latency of one stage of a distill run, per int8 scheme and runner setting.

For the fp32 export and each int8 variant: median latency at one LR size (interleaved single calls, one
session per variant and thread count, medians over the rounds), fp32/int8 speed ratio, the Y-PSNR delta
against the PyTorch student on the eval images (sr-shrink's export verification), the op types ONNX Runtime
actually runs after its graph optimisations, and each op type's share of the time in ORT's node profile
(one thread).

    OMP_NUM_THREADS=1 python benchmarks/ort_int8_speed.py --run /tmp/int8run --out /tmp/int8run/ort_speed

Quantised files are kept in --out and reused on a second call (delete them to re-quantise).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.export import export_run  # noqa: E402
from sr_shrink.export.calib import calib_inputs, calib_source  # noqa: E402
from sr_shrink.export.onnx import INT8_SCHEME, Int8Scheme, ort_optimized_ops, to_int8  # noqa: E402
from sr_shrink.export.options import auto_calib_samples  # noqa: E402
from sr_shrink.export.verify import verify  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402
from sr_shrink.runtimes import OrtRunner, ort_session_options  # noqa: E402

# label -> (file stem, int8 scheme or None for fp32, ORT graph optimisation level)
VARIANTS = {
    "fp32": ("fp32", None, "all"),
    "int8 s8 act, full-range w (before)": ("int8_s8s8", Int8Scheme("int8", reduce_range=False,
                                                                   float_end_convs=False), "all"),
    "int8 u8 act, full-range w, head/tail convs int8": ("int8_u8s8",
                                                        Int8Scheme(reduce_range=False, float_end_convs=False), "all"),
    "int8 u8 act, 7-bit w, head/tail convs int8": ("int8_u8s8_rr", Int8Scheme(float_end_convs=False), "all"),
    "int8 u8 act, 7-bit w, float head/tail convs (new default)": ("int8_new", INT8_SCHEME, "all"),
    "int8 new default, anchor path int8 too": ("int8_new_notail", Int8Scheme(float_tail=False), "all"),
    "int8 new default, ORT level extended (no NHWC)": ("int8_new", INT8_SCHEME, "extended"),
    "int8 new default, ORT level basic (no QDQ fusion)": ("int8_new", INT8_SCHEME, "basic"),
}


def make_files(run: RunDir, stage: int, out: Path, seed: int) -> dict[str, Path]:
    """Return {file stem: path}: the fp32 export of ``stage`` and one int8 file per scheme (made if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / f"stage_{stage:02d}_fp32.onnx"
    if not fp32.is_file():
        export_run(run, "onnx", stage=stage, precision="fp32", out=out, verify=False)
    files = {"fp32": fp32}
    proto = onnx.load(str(fp32))
    scale = load_student(run.stages[stage])[0].scale
    calib = None
    for stem, scheme, _ in VARIANTS.values():
        path = out / f"stage_{stage:02d}_{stem}.onnx"
        if scheme is not None and not path.is_file():
            if calib is None:  # the calibration sr-shrink export uses by default
                calib = calib_inputs(calib_source(run, None), scale, auto_calib_samples(None), None, seed)
            t0 = time.perf_counter()
            onnx.save(to_int8(proto, calib, False, scheme)[0], str(path))
            print(f"quantised {path.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        files[stem] = path
    return files


def profile_shares(path: Path, level: str, x: np.ndarray, prof_dir: Path, runs: int = 10) -> dict[str, float]:
    """Return {op type: share of summed kernel time} from ORT's node profile of ``runs`` single-thread calls."""
    import onnxruntime as ort

    prefix = prof_dir / f"{path.stem}_{level}"
    sess = ort.InferenceSession(str(path), ort_session_options(1, level, profile_prefix=str(prefix)),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(3 + runs):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    agg: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"]
    total = sum(agg.values()) or 1.0
    return {k: v / total for k, v in sorted(agg.items(), key=lambda kv: -kv[1])}


def time_variants(paths: dict[str, tuple[Path, str]], threads: int, x: np.ndarray, rounds: int) -> dict[str, float]:
    """Return {label: median ms} of single calls, the variants interleaved call by call over ``rounds``."""
    runners = {k: OrtRunner(p, threads, options=ort_session_options(threads, lvl)) for k, (p, lvl) in paths.items()}
    for r in runners.values():
        r(x)
        r(x)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r(x)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a distill run folder")
    ap.add_argument("--stage", default="last")
    ap.add_argument("--out", type=Path, required=True, help="folder for the exported files and profiles")
    ap.add_argument("--size", type=int, default=256, help="LR side of the timed input")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run = RunDir.open(args.run)
    stage = run.select(args.stage)[-1]
    files = make_files(run, stage, args.out, args.seed)
    paths = {label: (files[stem], lvl) for label, (stem, _, lvl) in VARIANTS.items()}
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)

    student, _ = load_student(run.stages[stage])
    pairs = load_eval_set(student.scale)
    deltas, ops, shares = {}, {}, {}
    for label, (path, lvl) in paths.items():
        runner = OrtRunner(path, 1, options=ort_session_options(1, lvl))
        deltas[label] = verify(runner, student, pairs, student.scale, None, "int8", runner.label)["delta_psnr_y"]
        ops[label] = ort_optimized_ops(path, lvl)
        shares[label] = profile_shares(path, lvl, x, args.out)
    threads = [int(t) for t in args.threads.split(",")]
    ms = {t: time_variants(paths, t, x, args.rounds) for t in threads}

    print(f"stage {stage} ({student.n_blocks} blocks x {student.channels} ch), LR {args.size}x{args.size}, "
          f"{args.rounds} interleaved calls per variant, medians\n")
    head = " | ".join(f"ms {t}T | fp32/this {t}T" for t in threads)
    print(f"| variant | {head} | Δ Y-PSNR (dB) | ops ORT runs | time share per op type (1T profile) |")
    print("|---|" + "---|---|" * len(threads) + "---|---|---|")
    for label in paths:
        cells = " | ".join(f"{ms[t][label]:.2f} | {ms[t]['fp32'] / ms[t][label]:.2f}x" for t in threads)
        op_s = ", ".join(f"{k} {v}" for k, v in ops[label].items())
        share_s = ", ".join(f"{k} {v:.0%}" for k, v in shares[label].items() if v >= 0.01)
        print(f"| {label} | {cells} | {deltas[label]:+.4f} | {op_s} | {share_s} |")


if __name__ == "__main__":
    main()
