"""Shared fixtures: tiny teachers, students and a fake distill run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sr_shrink.models.registry import save_model_checkpoint
from sr_shrink.models.student import SRStudent, grow

torch.set_num_threads(1)


def make_tiny_run(run_dir: Path, scale: int = 2, channels: int = 8, n_stages: int = 2, seed: int = 0) -> Path:
    """Write a run directory shaped like ``sr-shrink distill`` output: stage_XX.pt files and run.json."""
    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    s = SRStudent(scale, 1, channels)
    for p in s.parameters():  # non-trivial weights so exports are really tested
        torch.nn.init.normal_(p, 0, 0.05)
    stages = []
    for i in range(1, n_stages + 1):
        if i > 1:
            s = grow(s)
            torch.nn.init.normal_(s.body[-1].conv2.weight, 0, 0.05)
        name = f"stage_{i:02d}.pt"
        save_model_checkpoint(s, "student", s.config(), run_dir / name,
                              extra={"stage": i, "n_blocks": s.n_blocks, "scale": scale})
        stages.append({"stage": i, "n_blocks": s.n_blocks, "channels": channels,
                       "params": sum(p.numel() for p in s.parameters()), "checkpoint": name, "steps": 10,
                       "final_kd_loss": 0.01, "val_psnr_y": 30.0 + i, "val_ssim_y": 0.9, "seconds": 1.0})
    run = {"scale": scale, "teacher": {"path": "tiny", "sha256": "0" * 64}, "mode": "datafree", "seed": seed,
           "stages": stages, "teacher_psnr_y": 33.0, "bicubic_psnr_y": 29.0, "complete": True}
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    return run_dir


def one_error_line(result) -> str:
    """Return the one line a CLI ``result`` printed, asserting the house rule for bad input: exit status 2 and a
    single line of output (the test fails with the whole output otherwise)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A fake two-stage x2 distill run with 8-channel students."""
    return make_tiny_run(tmp_path / "run")


def make_tiny_teacher(path: Path, scale: int = 2) -> Path:
    """Write a tiny random x``scale`` EDSR teacher (sr-shrink checkpoint, RGB [0, 1]) and return its path."""
    from sr_shrink.models.edsr import EDSR

    torch.manual_seed(123)
    cfg = dict(scale=scale, n_resblocks=1, n_feats=8, rgb_range=1.0, skip="bicubic")
    m = EDSR(**cfg)
    torch.nn.init.normal_(m.tail[1].weight, 0, 0.02)
    save_model_checkpoint(m, "edsr", cfg, path)
    return path


def make_tiny_eval(folder: Path, n: int = 2, size: int = 48) -> Path:
    """Write ``n`` small crops of the bundled eval images into ``folder`` and return it."""
    from sr_shrink.data import EVAL_DIR, list_images, read_image, write_image

    folder.mkdir(parents=True, exist_ok=True)
    for p in list_images(EVAL_DIR)[:n]:
        write_image(read_image(p)[:, 100:100 + size, 100:100 + size], folder / f"{p.stem}.png")
    return folder


@pytest.fixture
def tiny_teacher(tmp_path: Path) -> Path:
    """Path of a tiny x2 EDSR teacher checkpoint."""
    return make_tiny_teacher(tmp_path / "teacher.pt")


@pytest.fixture
def tiny_eval(tmp_path: Path) -> Path:
    """A folder of two 48 px eval images."""
    return make_tiny_eval(tmp_path / "eval")


FAST_EXPORT = {"eval_images": 2, "calib_samples": 4}


@pytest.fixture(scope="session")
def export_run_dir(tmp_path_factory) -> Path:
    """A tiny two-stage run shared by the export tests and the runtime tests (they export its stage 2)."""
    return make_tiny_run(tmp_path_factory.mktemp("export") / "run")


@pytest.fixture(scope="session")
def exported(export_run_dir):
    """exported(target, precision, **opts) -> the export.json entry of stage 2; each combination is exported
    once per test session (into its own folder under RUN/exports) and shared between test modules."""
    from sr_shrink.export import export_run

    cache: dict = {}

    def get(target: str, precision: str, **opts) -> dict:
        key = (target, precision, tuple(sorted(opts.items())))
        if key not in cache:
            out = export_run_dir / "exports" / "_".join(f"{k}{v}" for k, v in [("", target), ("", precision), *key[2]])
            cache[key] = export_run(export_run_dir, target, stage=2, precision=precision, out=out, **FAST_EXPORT,
                                    **opts)[0]
        return cache[key]

    return get
