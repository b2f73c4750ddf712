"""``sr-shrink info RUN``: a distill run folder described from its own files (it was refused as 'a folder, not a
model file'), with where a --resume goes on for a run that did not finish."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import make_tiny_run, make_tiny_teacher, one_error_line

from sr_shrink.cli import main


def _info(*args) -> str:
    res = CliRunner().invoke(main, ["info", *map(str, args)])
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_info_on_a_finished_run_shows_its_teacher_stages_and_exports(tmp_path):
    teacher = make_tiny_teacher(tmp_path / "t.pt")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["distill", str(teacher), "--out", str(run), "--steps-per-stage", "3",
                                    "--stages", "1:2", "--channels", "8", "--quiet", "--eval", "none"])
    assert res.exit_code == 0, res.output
    text = _info(run)
    assert "teacher │ EDSR x2" in text and str(teacher) in text, text
    assert "mode │ datafree, seed 0" in text and "8 ch rep blocks; stages of 1-2 blocks (step 1), 2 trained; " \
        "3 steps per stage" in text, text
    assert "status │ complete" in text and "exported files" not in text and "bench pick" not in text, text
    assert "sr-shrink distill: datafree x2" in text  # distill's own stage table
    exp = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--stage", "2"])
    assert exp.exit_code == 0, exp.output
    delta = json.loads((run / "exports" / "export.json").read_text())["exports"][0]["verification"]["delta_psnr_y"]
    text = _info(run)
    assert "exports │ 1 file(s) in" in text and "1 verified against their student" in text, text
    assert "stage_02_fp32.onnx │ 2 │ fp32 │" in text and f"{delta:+.4f} dB" in text, text
    desc = json.loads(CliRunner().invoke(main, ["info", str(run), "--json"]).output)
    assert desc["complete"] and desc["stage_files"] == [1, 2] and desc["run"]["config"]["channels"] == 8
    assert [e["file"] for e in desc["exports"]] == ["stage_02_fp32.onnx"] and desc["bench"] is None


def test_info_says_a_run_trained_on_the_pool_alone(tmp_path):
    run = make_tiny_run(tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    record["config"] = {"mix": 0.5, "synthetic": "deadleaves"}
    (run / "run.json").write_text(json.dumps(record))
    assert "mode │ datafree, seed 0, synthetic deadleaves │" in _info(run)
    record["config"]["mix"] = 1.0  # --mix 1, or a budgeted run on a perceptual teacher
    (run / "run.json").write_text(json.dumps(record))
    assert "mode │ datafree, seed 0, synthetic deadleaves, the pool alone (--mix 1: no generator) │" in _info(run)


def test_info_on_an_unfinished_run_says_where_a_resume_goes_on(tmp_path):
    run = make_tiny_run(tmp_path / "run", n_stages=2)
    record = json.loads((run / "run.json").read_text())
    record["complete"] = False
    (run / "run.json").write_text(json.dumps(record))
    text = _info(run)
    assert (f"status │ not finished: {run} holds stage_02.pt; continue after it with: sr-shrink distill --out {run} "
            "--resume") in text, text
    from sr_shrink.run_info import describe_run

    assert describe_run(run)["resume_command"] == f"sr-shrink distill --out {run} --resume"
    for stage in run.glob("stage_*.pt"):  # killed before its first stage ended: run.json alone
        stage.unlink()
    record["stages"] = []
    (run / "run.json").write_text(json.dumps(record))
    text = _info(run)
    assert f"status │ not finished: {run} holds run.json but no checkpoint yet; --force starts over" in text, text
    assert "sr-shrink distill:" not in text  # no stage table without stages


def test_info_on_a_run_refuses_teacher_options_in_one_line(tmp_path):
    run = make_tiny_run(tmp_path / "run")
    line = one_error_line(CliRunner().invoke(main, ["info", str(run), "--value-range", "255"]))
    assert line == (f"error: --value-range describes a teacher file; {run} is a distill run, which records its "
                    "teacher's (drop the option).")
    line = one_error_line(CliRunner().invoke(main, ["info", str(run), "--scale", "4"]))
    assert line == f"error: {run} upscales x2, not x4."
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is a folder, not a model file" in one_error_line(CliRunner().invoke(main, ["info", str(empty)]))


def test_info_names_benchs_pick_in_the_runs_exports(tmp_path):
    """bench.json records the pick's path as bench was given the run (``run/exports/...`` from the folder above);
    info showed that path as recorded, which leads nowhere from another folder. It now shows the file in
    RUN/exports when it is there (--json: ``bench_file``), else the recorded path."""
    run = make_tiny_run(tmp_path / "run")
    pick = {"stage": 2, "runtime": "onnxruntime", "precision": "fp32", "psnr_y": 31.5, "latency_ms_median": 4.25,
            "path": "elsewhere/exports/stage_02_fp32.onnx", "device": "cpu"}
    (run / "bench.json").write_text(json.dumps({"recommended": pick, "machine": {"cpu": "Test CPU"}}))
    text = _info(run)
    assert ("bench pick │ stage 2 onnxruntime fp32: Y-PSNR 31.50 dB at 4.25 ms (cpu, Test CPU); "
            "elsewhere/exports/stage_02_fp32.onnx") in text, text  # not in RUN/exports: as recorded
    (run / "exports").mkdir(exist_ok=True)
    (run / "exports" / "stage_02_fp32.onnx").write_bytes(b"x")
    assert f"4.25 ms (cpu, Test CPU); {run / 'exports' / 'stage_02_fp32.onnx'}" in _info(run)
    res = CliRunner().invoke(main, ["info", str(run), "--json"])
    assert json.loads(res.output)["bench_file"] == str(run / "exports" / "stage_02_fp32.onnx")
