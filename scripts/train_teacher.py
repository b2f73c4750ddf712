"""Train sr-shrink's bundled teachers: an EDSR (32 feats x 8 blocks, global bicubic skip) at x2 (default) or x4.

The training split comes from Debian's free wallpaper packages (``scripts/make_images.py --train``); it
never overlaps the bundled eval split. Users never need to run this: the weights ship in
``sr_shrink/assets``. Kill it at any time and rerun with ``--resume``.

    python scripts/make_images.py --train data/train
    python scripts/train_teacher.py --train data/train --iters 4000 --resume
    python scripts/train_teacher.py --train data/train --scale 4 --lr-patch 32 --iters 3000 --threads 1 --resume
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import list_images, load_eval_set, make_lr, random_patches, read_image  # noqa: E402
from sr_shrink.evaluate import evaluate_bicubic, evaluate_model  # noqa: E402
from sr_shrink.models.edsr import EDSR  # noqa: E402
from sr_shrink.models.registry import save_model_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=REPO / "data" / "train")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--n-feats", type=int, default=32)
    ap.add_argument("--n-resblocks", type=int, default=8)
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr-patch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="checkpoint folder [default: data/teacher_run (x2), data/teacher_run_xS]")
    ap.add_argument("--out", type=Path, help="[default: sr_shrink/assets/teacher_xS.pt]")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    args.work = args.work or REPO / "data" / ("teacher_run" if args.scale == 2 else f"teacher_run_x{args.scale}")
    args.out = args.out or REPO / "sr_shrink" / "assets" / f"teacher_x{args.scale}.pt"

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    images = [read_image(p) for p in list_images(args.train)]
    config = dict(scale=args.scale, n_resblocks=args.n_resblocks, n_feats=args.n_feats, res_scale=1.0,
                  rgb_range=1.0, skip="bicubic")
    model = EDSR(**config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt_path, start = args.work / "last.pt", 0
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start = state["iter"]
        print(f"resumed at iteration {start}", flush=True)
    t0, seconds = time.time(), 0.0
    for it in range(start, args.iters):
        lr = 1e-6 + 0.5 * (args.lr - 1e-6) * (1 + math.cos(math.pi * it / args.iters))
        for g in opt.param_groups:
            g["lr"] = lr
        hr = random_patches(images, args.batch, args.lr_patch * args.scale, gen)
        lr_img = make_lr(hr, args.scale)
        loss = (model(lr_img) - hr).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % 50 == 0:
            print(f"iter {it + 1}/{args.iters} loss {loss.item():.4f} lr {lr:.2e} "
                  f"{(it + 1 - start) / (time.time() - t0):.2f} it/s", flush=True)
        if (it + 1) % 500 == 0 or it + 1 == args.iters:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "iter": it + 1}, tmp)
            os.replace(tmp, ckpt_path)
    seconds = time.time() - t0
    model.eval()
    pairs = load_eval_set(args.scale)
    res = evaluate_model(model, pairs, args.scale)
    bic = evaluate_bicubic(pairs, args.scale)
    manifest = {
        "arch": "edsr", "config": config, "scale": args.scale, "value_range": 1.0,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "training": {"command": "python scripts/train_teacher.py " + " ".join(sys.argv[1:]),
                     "iters": args.iters, "batch": args.batch, "lr_patch": args.lr_patch, "lr": args.lr,
                     "images": len(images), "seconds_last_session": round(seconds, 1), "seed": args.seed},
        "eval": {"split": "bundled eval split", "images": len(pairs), "psnr_y": res["psnr_y"],
                 "ssim_y": res["ssim_y"], "bicubic_psnr_y": bic["psnr_y"], "bicubic_ssim_y": bic["ssim_y"]},
        "licence": "Apache-2.0 (weights trained by sr-shrink on CC/GPL wallpapers, see README)",
    }
    save_model_checkpoint(model, "edsr", config, args.out, value_range=1.0, extra={"manifest": manifest})
    args.out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["eval"], indent=2))


if __name__ == "__main__":
    main()
