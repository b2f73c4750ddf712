"""Measure what each export costs in quality: Y-PSNR of every target/precision next to the PyTorch student.

With ``--run RUN_DIR`` it exports that run's last stage; otherwise it fits a realistic student first
(SRStudent(scale 2, 4 blocks, 16 channels), ``--steps`` of L1 on bicubic-downscaled crops of ``--train``
photos, one thread) and writes it as a one-stage run directory. All figures come from the export.json
entries ``sr_shrink.export.export_run`` writes (verification on the bundled eval split, whole LR images for
ONNX/Core ML, 256x256 padded crops for TFLite). Also: the int8 ONNX ablation (float tail on/off), the
calibration source (photos vs the run's generator.pt when there is one) and TFLite pixel-shuffle timings.

    OMP_NUM_THREADS=1 python benchmarks/export_quality.py --out /tmp/export_quality --steps 300 --train data/train
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import EVAL_DIR, list_images, make_lr, random_patches, read_image  # noqa: E402
from sr_shrink.export import export_run  # noqa: E402
from sr_shrink.export import onnx as onnx_fmt  # noqa: E402
from sr_shrink.models.registry import save_model_checkpoint  # noqa: E402
from sr_shrink.models.student import SRStudent  # noqa: E402

ANY = {"shapes": "any"}  # Core ML verified on whole LR images, as these figures always were (the default now
# enumerates five sizes, BENCHMARKS 24)
EXPORTS = [("onnx", "fp32", {}), ("onnx", "fp16", {}), ("onnx", "int8", {}),
           ("coreml", "fp32", ANY), ("coreml", "fp16", ANY), ("coreml", "int8", ANY),
           ("coreml", "fp16", {"palettize": 8, **ANY}), ("coreml", "fp16", {"palettize": 6, **ANY}),
           ("coreml", "fp16", {"palettize": 4, **ANY}),
           ("tflite", "fp32", {}), ("tflite", "fp16", {}), ("tflite", "int8", {})]


def fit_student(train_dir: Path, steps: int, seed: int) -> SRStudent:
    """Return SRStudent(2, 4, 16) fitted with ``steps`` of L1 (batch 16, 32 px LR) on ``train_dir`` photos."""
    torch.manual_seed(seed)
    images = [read_image(p) for p in list_images(train_dir)]
    model = SRStudent(2, 4, 16)
    for blk in model.body:  # a fresh student, not a grown one: give every block a live second conv
        torch.nn.init.normal_(blk.conv2.weight, 0, 1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        hr = random_patches(images, 16, 64, gen)
        loss = (model(make_lr(hr, 2)) - hr).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def write_run(model: SRStudent, run: Path, steps: int) -> Path:
    """Write ``model`` as a one-stage run directory (stage_01.pt + run.json); return it."""
    save_model_checkpoint(model, "student", model.config(), run / "stage_01.pt",
                          extra={"stage": 1, "n_blocks": model.n_blocks, "scale": model.scale})
    rec = {"stage": 1, "n_blocks": model.n_blocks, "channels": model.channels, "checkpoint": "stage_01.pt",
           "params": sum(p.numel() for p in model.parameters()), "steps": steps}
    (run / "run.json").write_text(json.dumps({"scale": 2, "mode": "data (bench fit)", "stages": [rec]}, indent=2))
    return run


def row(e: dict) -> str:
    """Return the markdown table row of one export.json entry."""
    v = e["verification"]
    cal = e.get("calibration", {}).get("source", "-")
    return (f"| {e['file']} | {e['size_bytes'] / 1024:.1f} | {v.get('psnr_vs_torch', '-')} | "
            f"{v.get('max_abs_err', '-')} | {v.get('psnr_y', '-')} | {v.get('torch_psnr_y', '-')} | "
            f"{v.get('delta_psnr_y', '-'):+.4f} | {cal} | {'yes' if e['verified'] else 'NO'} |")


def time_tflite(path: Path, reps: int = 10) -> float:
    """Return the median LiteRT (XNNPACK, 1 thread) latency in ms of the .tflite at ``path``."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.random.rand(*inp["shape"]).astype(np.float32))
    times = []
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="an existing distill run (its last stage is exported)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/export_quality"))
    ap.add_argument("--train", type=Path, default=REPO / "data" / "train")
    ap.add_argument("--calib", type=Path, help="photo folder for int8 calibration [default: --train]")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run is None:
        t0 = time.time()
        train = args.train if args.train.is_dir() else EVAL_DIR
        args.run = write_run(fit_student(train, args.steps, args.seed), args.out / "run", args.steps)
        print(f"fitted SRStudent(2, 4, 16) for {args.steps} steps on {train} in {time.time() - t0:.0f} s")
    calib = str(args.calib or (args.train if args.train.is_dir() else EVAL_DIR))
    entries = []
    for target, precision, opts in EXPORTS:
        entries += export_run(args.run, target, stage="last", precision=precision, out=args.out / "exports",
                              calib=calib, **opts)
    print("| file | KiB | PSNR vs torch (dB) | max abs err | Y-PSNR | torch Y-PSNR | delta | calib | verified |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in entries:
        print(row(e))
    ablations(args, calib)


def ablations(args, calib: str) -> None:
    """Print the int8 calibration-source and ONNX float-tail ablations and the TFLite shuffle timings."""
    out = args.out / "ablations"
    print("\nint8 calibration sources (ONNX keeps its float tail):")
    sources = [("photos " + Path(calib).name, calib), ("bundled eval images", str(EVAL_DIR))]
    if (args.run / "generator.pt").is_file():
        sources.append(("generator.pt", "generator"))
    for target in ("onnx", "tflite"):
        for name, src in sources:
            e = export_run(args.run, target, stage="last", precision="int8", out=out / f"{target}_{name}",
                           calib=src)[0]
            print(row(e).replace(f"| {e['file']} ", f"| {e['file']}, calib {name} ", 1))
    keep, keep_ends = onnx_fmt.float_tail_nodes, onnx_fmt.float_end_convs
    onnx_fmt.float_tail_nodes = onnx_fmt.float_end_convs = lambda proto: []
    try:
        e = export_run(args.run, "onnx", stage="last", precision="int8", out=out / "all_int8", calib=calib)[0]
        print(row(e).replace(f"| {e['file']} ", f"| {e['file']}, everything int8 (no float tail) ", 1))
    finally:
        onnx_fmt.float_tail_nodes, onnx_fmt.float_end_convs = keep, keep_ends
    print("\nTFLite fp32 256x256, LiteRT XNNPACK 1 thread, median ms:")
    for shuffle in ("native", "convt"):
        e = export_run(args.run, "tflite", stage="last", out=out / f"tfl_{shuffle}", shuffle=shuffle,
                       eval_images=1)[0]
        print(f"| pixel shuffle {shuffle} | {sorted(e['ops'])} | {time_tflite(Path(e['path'])):.1f} ms |")


if __name__ == "__main__":
    main()
