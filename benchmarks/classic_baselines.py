"""The distilled students against classic small SR baselines (FSRCNN, ESPCN) on the same runtime and input.

1. Trains FSRCNN(d=56, s=12, m=4) and ESPCN(64, 32), RGB, at x``--scale`` on the HR images of ``--data``
   (``RealPatches``: random 24 px LR / 48 px HR crops with flips/rotations, bicubic LR, batch 16), L1 to
   the HR crop, Adam (lr 1e-3) with cosine decay, ``--steps`` steps each (default 1000, the student-step
   budget of a 4-stage x 250-step distillation). Both see the same batches (same seed).
2. Takes every student stage (``RUN_DIR/stage_XX.pt``) of ``--run``.
3. Exports every model to ONNX fp32 (``torch.onnx.export``, TorchScript exporter, opset 17, fixed
   1x3xHxW input) and checks ONNX Runtime against PyTorch on the timing input.
4. Measures on ONNX Runtime with one intra-op thread: median / p90 latency at ``--input-size``, all rows
   interleaved round-robin over ``--rounds`` rotating rounds on the same input; Y-PSNR/SSIM on the bundled
   eval split (in PyTorch: the export is checked to match), params and MACs at the input size.
5. Prints a markdown table (Pareto front over all rows) and writes ``OUT/classic_baselines.json``.

    OMP_NUM_THREADS=1 python benchmarks/classic_baselines.py --data data/train \
        --run runs/ablation/datafree__default__s0 --steps 1000 --out runs/classic
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.bench.machine import machine_info  # noqa: E402
from sr_shrink.bench.measure import bench_input, latency_stats, time_interleaved  # noqa: E402
from sr_shrink.bench.pareto import pareto_front  # noqa: E402
from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.distill.sources.photos import RealPatches  # noqa: E402
from sr_shrink.evaluate import evaluate_bicubic, evaluate_model  # noqa: E402
from sr_shrink.models.classic import ESPCN, FSRCNN  # noqa: E402
from sr_shrink.models.registry import save_model_checkpoint  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.runtimes import OrtRunner  # noqa: E402
from sr_shrink.teachers import count_macs  # noqa: E402

LABELS = {"fsrcnn": "FSRCNN (d56 s12 m4)", "espcn": "ESPCN (64-32)"}
BASELINES = {"fsrcnn": lambda s: FSRCNN(s, d=56, s=12, m=4), "espcn": lambda s: ESPCN(s, c1=64, c2=32)}


def train_baseline(model: torch.nn.Module, source: RealPatches, steps: int, batch: int, lr: float,
                   seed: int, log_every: int = 100) -> dict:
    """Train ``model`` in place with L1 to HR on ``source`` batches (Adam, cosine decay); return a summary."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        lr_b, hr_b = source.sample(batch, gen)
        loss = (model(lr_b) - hr_b).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps):
            recent = losses[-log_every:]
            print(f"  step {step:5d}/{steps}  L1 {sum(recent) / len(recent):.5f}", flush=True)
    model.eval()
    tail = losses[-min(len(losses), 50):] or [float("nan")]
    return {"steps": steps, "batch": batch, "lr": lr, "seconds": round(time.perf_counter() - t0, 1),
            "first_l1": round(losses[0], 5) if losses else None, "final_l1": round(sum(tail) / len(tail), 5)}


def export_onnx(model: torch.nn.Module, path: Path, input_hw: tuple[int, int]) -> Path:
    """Export ``model`` to ONNX fp32 (TorchScript exporter, opset 17) with a fixed 1x3xHxW input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, *input_hw)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["lr"], output_names=["sr"])
    return path


def student_models(run_dir: Path) -> list[tuple[str, str, torch.nn.Module, dict]]:
    """Return (name, file slug, model, info) for every ``stage_XX.pt`` of ``run_dir``, in stage order."""
    files = sorted(run_dir.glob("stage_*.pt"))
    if not files:
        raise SystemExit(f"{run_dir}: no stage_XX.pt files; pass a distill run directory with --run.")
    out = []
    for f in files:
        model, ckpt = load_student(f)
        stage = int(ckpt.get("stage", f.stem.split("_")[-1]))
        info = {"kind": "sr-shrink student", "stage": stage, "n_blocks": model.n_blocks,
                "channels": model.channels, "checkpoint": str(f)}
        out.append((f"sr-shrink stage {stage} ({model.n_blocks} blocks, {model.channels} ch)", f"stage_{stage:02d}",
                    model, info))
    return out


def fmt_table(rows: list[dict], bicubic: dict) -> str:
    """Return the markdown table of ``rows`` (sorted by latency) with the bicubic reference line."""
    head = ("| model | params | MACs @256² | latency median ms | latency p90 ms | Y-PSNR dB | Y-SSIM | "
            "Pareto front |\n|---|---:|---:|---:|---:|---:|---:|:---:|")
    lines = [head]
    for r in sorted(rows, key=lambda r: r["latency_ms_median"]):
        lines.append(f"| {r['name']} | {r['params']:,} | {r['macs'] / 1e9:.3f} G | {r['latency_ms_median']:.2f} | "
                     f"{r['latency_ms_p90']:.2f} | {r['psnr_y']:.3f} | {r['ssim_y']:.4f} | "
                     f"{'yes' if r['pareto_front'] else 'no'} |")
    lines.append(f"| bicubic (reference) | 0 | - | - | - | {bicubic['psnr_y']:.3f} | {bicubic['ssim_y']:.4f} | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of HR training images (teacher's split)")
    ap.add_argument("--run", type=Path, required=True, help="distill run directory holding stage_XX.pt")
    ap.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, ONNX files, JSON)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per baseline")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr-patch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-size", type=int, default=256, help="square LR input size for latency and MACs")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per row")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hw = (args.input_size, args.input_size)
    args.out.mkdir(parents=True, exist_ok=True)

    pairs = load_eval_set(args.scale)
    bicubic = evaluate_bicubic(pairs, args.scale)
    print(f"bicubic x{args.scale}: Y-PSNR {bicubic['psnr_y']:.3f} dB, Y-SSIM {bicubic['ssim_y']:.4f}", flush=True)

    models: list[tuple[str, str, torch.nn.Module, dict]] = []
    source = RealPatches(args.data, scale=args.scale, lr_patch=args.lr_patch)
    for arch, build in BASELINES.items():
        torch.manual_seed(args.seed)
        model = build(args.scale)
        print(f"training {arch} ({sum(p.numel() for p in model.parameters()):,} params), {args.steps} steps",
              flush=True)
        summary = train_baseline(model, source, args.steps, args.batch, args.lr, args.seed)
        ckpt = save_model_checkpoint(model, arch, model.config(), args.out / f"{arch}.pt", extra={"train": summary})
        models.append((LABELS[arch], arch, model,
                       {"kind": "classic baseline", "arch": arch, "config": model.config(), "train": summary,
                        "checkpoint": str(ckpt)}))
    models += student_models(args.run)

    x = bench_input(hw)
    runners, rows = {}, []
    for name, slug, model, info in models:
        onnx_path = export_onnx(model, args.out / "onnx" / f"{slug}.onnx", hw)
        runner = OrtRunner(onnx_path, args.threads)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        err = float(np.abs(runner(x) - ref).max())
        scores = evaluate_model(model, pairs, args.scale)
        row = {"name": name, **info, "onnx": str(onnx_path), "onnx_max_abs_err": err,
               "params": sum(p.numel() for p in model.parameters()), "macs": int(count_macs(model, hw)),
               "psnr_y": scores["psnr_y"], "ssim_y": scores["ssim_y"], "per_image": scores["per_image"]}
        print(f"{name}: Y-PSNR {row['psnr_y']:.3f} dB, ONNX vs torch max |err| {err:.2e}", flush=True)
        rows.append(row)
        runners[name] = runner

    print(f"timing {len(rows)} rows on ONNX Runtime, {args.threads} thread(s), {hw[0]}x{hw[1]} input", flush=True)
    times = time_interleaved(runners, x, repeats=args.repeats, warmup=args.warmup, rounds=args.rounds)
    for row in rows:
        row.update(latency_stats(times[row["name"]]))
    front = {id(r) for r in pareto_front(rows)}
    for row in rows:
        row["pareto_front"] = id(row) in front

    table = fmt_table(rows, bicubic)
    print()
    print(table)
    result = {"scale": args.scale, "input_hw": list(hw), "runtime": "onnxruntime fp32", "threads": args.threads,
              "eval_split": "sr_shrink/assets/eval (bundled)", "train_data": str(args.data),
              "run": str(args.run), "steps": args.steps, "batch": args.batch, "lr_patch": args.lr_patch,
              "lr": args.lr, "seed": args.seed, "repeats": args.repeats, "rounds": args.rounds,
              "machine": machine_info(args.threads, hw), "bicubic": {k: bicubic[k] for k in ("psnr_y", "ssim_y")},
              "rows": rows, "table_md": table}
    out = args.out / "classic_baselines.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
