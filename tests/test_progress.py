"""Progress: plain whole lines when output is not a terminal (never cut at 80 columns), nothing when off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_eval, make_tiny_run, make_tiny_teacher

from sr_shrink import progress
from sr_shrink.progress import clock, task

ROOT = Path(__file__).resolve().parents[1]


def test_reporting_off_prints_nothing(capsys):
    progress.disable()
    with task("a phase", total=3) as advance:
        for _ in range(3):
            advance()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_plain_lines_with_estimate(capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line on every item
    progress.enable(progress.stderr_console())
    try:
        with task("verifying " + "x" * 150, total=4) as advance:
            for _ in range(4):
                advance()
    finally:
        progress.disable()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "verifying " + "x" * 150 + ": started (4 items)"  # a 170-character line, whole
    assert any(", about " in ln and ln.startswith("verifying " + "x" * 150 + ": 2/4, ") for ln in lines)
    assert lines[-1].startswith("verifying " + "x" * 150 + ": done in 0:0")


def test_a_phase_cut_short_says_stopped_not_done(capsys):
    """Ctrl-C (or an error) inside a phase printed 'PHASE: done in 0:03' just before 'interrupted'."""
    progress.enable(progress.stderr_console())
    try:
        with pytest.raises(KeyboardInterrupt), task("writing big_x4.png", total=4) as advance:
            advance()
            raise KeyboardInterrupt
        with task("labelling", total=2) as advance:
            advance(2)
    finally:
        progress.disable()
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith("writing big_x4.png: stopped after 0:0") and lines[1].endswith(" (1/4)")
    assert lines[-1].startswith("labelling: done in 0:0")


def test_a_quiet_phase_shows_only_once_it_is_slow(capsys, monkeypatch):
    """``quiet_s``: a phase that ends sooner writes nothing; one that runs longer starts its lines when an advance
    finds it that old, saying how far it got, and ends them as any phase does (the teacher-kind check of a large
    teacher takes seconds, of a small one milliseconds)."""
    clock_now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock_now[0])
    progress.enable(progress.stderr_console())
    try:
        with task("quick", total=3, quiet_s=1.0) as advance:
            for _ in range(3):
                clock_now[0] += 0.1
                advance()
        with task("slow", total=4, quiet_s=1.0) as advance:
            for _ in range(4):
                clock_now[0] += 0.6
                advance()
    finally:
        progress.disable()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["slow: started (4 items, 2 done)", "slow: done in 0:02"], lines


def test_a_count_of_one_is_in_the_singular(capsys):
    """One item is "1 item" in the first line (and "1 band of rows" for a unit of several words); more stay plural."""
    progress.enable(progress.stderr_console())
    try:
        for total, unit in ((1, "items"), (1, "bands of rows"), (3, "bands of rows"), (2, "tiles")):
            with task(f"phase of {total}", total=total, unit=unit) as advance:
                advance()
    finally:
        progress.disable()
    started = [ln for ln in capsys.readouterr().err.splitlines() if ": started" in ln]
    assert started == ["phase of 1: started (1 item)", "phase of 1: started (1 band of rows)",
                       "phase of 3: started (3 bands of rows)", "phase of 2: started (2 tiles)"], started


def test_clock():
    assert clock(0) == "0:00" and clock(61.4) == "1:01" and clock(3725) == "1:02:05"


def test_piped_export_lines_are_whole(tmp_path):
    """`sr-shrink export` with stdout and stderr piped: the progress lines and the table keep long lines whole."""
    run = make_tiny_run(tmp_path / "run")
    out = tmp_path / ("exports_with_a_long_folder_name_" + "y" * 90)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "sr_shrink.cli", "export", str(run), "--target", "onnx", "--stage", "last",
           "--out", str(out), "--eval", str(make_tiny_eval(tmp_path / "eval", n=2))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    err = r.stderr.splitlines()
    assert any(ln.startswith("stage 2: writing stage_02_fp32.onnx: done in ") for ln in err), r.stderr
    assert any(ln.startswith("verifying with onnxruntime") and ": started (2 items)" in ln for ln in err), r.stderr
    title = [ln for ln in r.stdout.splitlines() if "sr-shrink export ->" in ln]
    assert len(title) == 1 and str(out) in title[0], r.stdout  # the long title on one line, not wrapped at 80
    assert max(len(ln) for ln in r.stdout.splitlines()) > 80


def test_piped_distill_reports_each_stage_and_prints_the_table_whole(tmp_path):
    """`sr-shrink distill` piped: a line when each stage starts and ends (a log is not silent while it trains, as
    rich's bars would be off a terminal), and the summary table is not cut at 80 columns."""
    teacher = make_tiny_teacher(tmp_path / "teacher.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "sr_shrink.cli", "distill", str(teacher), "--out", str(tmp_path / "run"),
           "--stages", "1:2", "--steps-per-stage", "3", "--batch", "2", "--pool", "0",
           "--eval", str(make_tiny_eval(tmp_path / "eval", n=1))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    err = r.stderr.splitlines()
    for i in (1, 2):
        assert f"stage {i} ({i} blk): started (3 steps)" in err, r.stderr
        assert any(ln.startswith(f"stage {i} ({i} blk): done in 0:") for ln in err), r.stderr
    assert not any("━" in ln for ln in err), r.stderr  # no bar frames in the log
    # --synthetic auto scores the teacher on the bundled photos' crops first: quick on this tiny teacher, so no lines
    assert not any(ln.startswith("scoring the teacher") for ln in err), err
    rows = [ln for ln in r.stdout.splitlines() if "fidelity" in ln or "teacher" in ln]
    assert rows and not any("…" in ln for ln in r.stdout.splitlines()), r.stdout  # nothing truncated


def test_demo_phase_lines_say_elapsed_and_left():
    from sr_shrink.demo import PHASE_SHARES, phase_line

    assert phase_line(1, "distilling", 100.0, 100.0) == "[1/3] distilling (0:00 elapsed)"
    line = phase_line(2, "exporting", 100.0, 100.0 + 110.0)  # distill took 110 s
    left = 110.0 / PHASE_SHARES[0] * (1 - PHASE_SHARES[0])
    assert line == f"[2/3] exporting (1:50 elapsed, about {clock(left)} left)"
    assert "left" in phase_line(3, "benchmarking", 0.0, 150.0)


def test_distill_table_says_dash_for_metrics_a_run_without_eval_images_lacks():
    from rich.console import Console

    from sr_shrink.distill import summary_table

    stage = {"stage": 1, "n_blocks": 1, "params": 100, "final_kd_loss": 0.04, "seconds": 2.0}
    console = Console(width=200, record=True)
    console.print(summary_table({"mode": "datafree", "scale": 2, "stages": [stage]}))
    row = [ln for ln in console.export_text().splitlines() if "0.0400" in ln][0]
    assert "nan" not in row and row.count(" - ") == 3
    console.print(summary_table({"mode": "datafree", "scale": 2, "stages": [dict(stage, val_psnr_y=31.234)]}))
    assert "31.23" in console.export_text()


def test_a_slow_stage_scoring_shows_its_progress(capsys, monkeypatch, tmp_path):
    """After a stage trains, distill scores it on the eval images (and its fidelity to the teacher): with large
    images or a large student that took seconds with nothing on the screen. It is a phase that shows once slow."""
    import sr_shrink.distill.run as distill_run
    from sr_shrink.distill import DistillConfig, distill

    monkeypatch.setattr(distill_run, "QUIET_S", 0.0)  # every phase counts as slow here
    teacher = make_tiny_teacher(tmp_path / "teacher.pt")
    progress.enable(progress.stderr_console())
    try:
        distill(str(teacher), tmp_path / "run", DistillConfig(scale=2, stage_start=1, stage_end=2, steps_per_stage=2,
                                                               channels=4, batch=2, lr_patch=12, pool=0),
                eval_dir=str(make_tiny_eval(tmp_path / "eval", n=2)), quiet=True, device="cpu")
    finally:
        progress.disable()
    lines = capsys.readouterr().err.splitlines()
    for stage in (1, 2):
        assert f"scoring stage {stage} on 2 eval images: started (2 images)" in lines, lines
        assert any(ln.startswith(f"scoring stage {stage} on 2 eval images: done in 0:0") for ln in lines), lines
