"""sr-shrink bench: runners, timing, memory, picks, and the command end to end on a tiny run."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_run, one_error_line
from export_helpers import export_onnx, export_stage, export_tflite
from PIL import Image

from sr_shrink import runtimes
from sr_shrink.bench import BenchConfig, parse_size, pipeline, run_bench
from sr_shrink.bench.artifacts import find_export
from sr_shrink.bench.measure import PeakMemory, latency_stats, round_plan, time_interleaved
from sr_shrink.bench.pareto import knee, pareto_front, pick
from sr_shrink.cli import main
from sr_shrink.data import load_eval_set, write_image
from sr_shrink.errors import SRShrinkError
from sr_shrink.metrics import psnr_y, quantize
from sr_shrink.models.student import load_student
from sr_shrink.run import RunDir
from sr_shrink.runtimes import LiteRTRunner, OrtRunner, TorchRunner, open_runner

ROW_KEYS = {"stage", "n_blocks", "runtime", "precision", "params", "macs", "size_bytes", "latency_ms_median",
            "latency_ms_p90", "psnr_y", "ssim_y", "delta_teacher_db", "delta_bicubic_db"}
FAST = ["--input-size", "32x32", "--repeats", "3", "--warmup", "1", "--precisions", "fp32"]
HAVE_ORT = runtimes.runtime_available("onnxruntime")
HAVE_LITERT = runtimes.runtime_available("litert") and importlib.util.find_spec("litert_torch") is not None


def _row(stage, lat, psnr, runtime="torch", precision="fp32"):
    return {"stage": stage, "n_blocks": stage, "runtime": runtime, "precision": precision,
            "latency_ms_median": lat, "psnr_y": psnr}


SYNTH = [_row(1, 1.0, 30.0), _row(2, 2.0, 31.0), _row(3, 3.0, 31.5), _row(4, 6.0, 31.6),
         _row(2, 2.5, 30.5, "litert"), _row(5, 9.0, 31.55)]


# ---- picks on synthetic rows -------------------------------------------------------------------------------

def test_pareto_front_drops_dominated_rows():
    front = pareto_front(SYNTH)
    assert [(r["stage"], r["runtime"]) for r in front] == [(1, "torch"), (2, "torch"), (3, "torch"), (4, "torch")]


def test_knee_is_where_gains_flatten():
    # scaled to [0, 1] the front is (0, 0), (.2, .625), (.4, .94), (1, 1): stage 3 is farthest above the chord
    assert knee(pareto_front(SYNTH))["stage"] == 3
    flat = [_row(1, 1.0, 30.0), _row(2, 2.0, 31.0), _row(3, 3.0, 31.05), _row(4, 4.0, 31.1)]
    assert knee(flat)["stage"] == 2


def test_pick_budget_takes_best_within_budget():
    rec = pick(SYNTH, budget_ms=2.6)
    assert (rec["stage"], rec["runtime"]) == (2, "torch")
    assert "2.6 ms" in rec["reason"]
    assert pick(SYNTH, budget_ms=100)["stage"] == 4


def test_pick_min_psnr_takes_fastest_above_floor():
    rec = pick(SYNTH, min_psnr=31.5)
    assert rec["stage"] == 3 and "31.5 dB" in rec["reason"]
    assert pick(SYNTH, min_psnr=29)["stage"] == 1


def test_pick_errors_when_nothing_qualifies():
    with pytest.raises(SRShrinkError, match=r"no row runs within --budget-ms 0\.5.*fastest: stage 1"):
        pick(SYNTH, budget_ms=0.5)
    with pytest.raises(SRShrinkError, match=r"no row reaches --min-psnr 40.*best: stage 4"):
        pick(SYNTH, min_psnr=40)
    with pytest.raises(SRShrinkError, match="either --budget-ms or --min-psnr"):
        pick(SYNTH, budget_ms=5, min_psnr=30)


def test_knee_with_one_or_two_points():
    assert "only row" in pick([_row(1, 1.0, 30.0)])["reason"]
    assert knee([_row(1, 1.0, 30.0), _row(2, 10.0, 30.1)])["stage"] == 1  # 9x slower for 0.1 dB
    assert knee([_row(1, 1.0, 30.0), _row(2, 1.1, 32.0)])["stage"] == 2  # nearly free 2 dB


# ---- timing and memory --------------------------------------------------------------------------------------

def test_rounds_interleave_and_rotate():
    calls = []
    fns = {k: (lambda x, k=k: calls.append(k)) for k in "ab"}
    times = time_interleaved(fns, np.zeros(1), repeats=4, warmup=1, rounds=2)
    assert calls == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a"]  # warm-ups, then 2 rounds, rotated
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    assert round_plan(10, 3) == [4, 3, 3] and round_plan(2, 5) == [1, 1]


def test_latency_stats_reports_spread():
    stats = latency_stats([0.001] * 8 + [0.002, 0.004])
    assert stats["latency_ms_median"] == pytest.approx(1.0)
    assert stats["latency_ms_p90"] == pytest.approx(2.2)
    assert stats["latency_spread_pct"] == pytest.approx(120.0)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_sees_a_big_allocation():
    with PeakMemory() as small:
        np.ones(1000)
    with PeakMemory() as big:
        a = np.ones(48 * 2**20 // 8)  # 48 MiB, touched
        del a
    assert big.mib is not None and big.mib > 40
    assert small.mib is not None and small.mib < 20


# ---- runners --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def student_exports(tmp_path_factory):
    """A tiny 2-block student with an .onnx (dynamic) and, if litert-torch is there, a 32x32 .tflite."""
    run = make_tiny_run(tmp_path_factory.mktemp("r"))
    model, _ = load_student(run / "stage_02.pt")
    out = {"model": model, "onnx": export_onnx(model, run / "m.onnx") if HAVE_ORT else None}
    out["tflite"] = export_tflite(model, run / "m.tflite") if HAVE_LITERT else None
    return out


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")
def test_ort_runner_matches_torch_at_any_size(student_exports):
    runner = open_runner(student_exports["onnx"], threads=1)
    assert isinstance(runner, OrtRunner) and runner.input_hw is None and runner.threads == 1
    x = np.random.default_rng(0).random((1, 3, 20, 28), dtype=np.float32)
    want = student_exports["model"](torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(runner(x), want, atol=1e-5)


@pytest.mark.skipif(not HAVE_LITERT, reason="litert not installed")
def test_litert_runner_matches_torch(student_exports):
    runner = open_runner(student_exports["tflite"], threads=1)
    assert isinstance(runner, LiteRTRunner) and tuple(runner.input_hw) == (32, 32)
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    want = TorchRunner(student_exports["model"], threads=1)(x)
    assert runner(x).shape == (1, 3, 64, 64)
    np.testing.assert_allclose(runner(x), want, atol=1e-4)


def test_open_runner_rejects_unknown_and_missing(tmp_path):
    with pytest.raises(SRShrinkError, match="no such model file"):
        open_runner(tmp_path / "nope.onnx")
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(SRShrinkError, match="unknown model type"):
        open_runner(tmp_path / "m.bin")


def test_missing_runtime_is_a_note_unless_asked_for(monkeypatch):
    monkeypatch.setattr(runtimes, "runtime_available", lambda name: name != "litert")
    monkeypatch.setattr(pipeline, "runtime_available", lambda name: name != "litert")
    names, notes = pipeline.settle_runtimes(None)
    assert "litert" not in names and names[0] == "torch"
    assert len(notes) == 1 and "sr-shrink[tflite]" in notes[0]
    with pytest.raises(SRShrinkError, match=r"pip install 'sr-shrink\[tflite\]'"):
        pipeline.settle_runtimes(("litert",))
    with pytest.raises(SRShrinkError, match="unknown runtime"):
        pipeline.settle_runtimes(("tensorrt",))


@pytest.mark.parametrize("given", [",", " , ", ""])
def test_runtimes_that_name_nothing_are_refused(tiny_run, given):
    """--runtimes "," (nothing left after splitting) used to mean every installed runtime."""
    res = CliRunner().invoke(main, ["bench", str(tiny_run), "--runtimes", given])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and lines == ["error: --runtimes names no runtime; pass some of torch, onnxruntime, "
                                            "litert (comma-separated), or leave --runtimes out for every installed "
                                            "one."], res.output
    assert not (tiny_run / "bench.json").exists() and not (tiny_run / "exports").exists()
    with pytest.raises(SRShrinkError, match="names no runtime"):
        BenchConfig(runtimes=()).validate()


@pytest.mark.skipif(not HAVE_LITERT, reason="litert not installed")
def test_find_export_ignores_tflite_of_another_size(student_exports, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "stage_02_fp32.tflite").write_bytes(student_exports["tflite"].read_bytes())
    run = RunDir(tmp_path, {}, {})
    assert find_export(run, 2, "litert", "fp32", (32, 32)) == exports / "stage_02_fp32.tflite"
    assert find_export(run, 2, "litert", "fp32", (48, 48)) is None


def test_parse_size_and_config_checks():
    assert parse_size("64x48") == (64, 48) and parse_size("96") == (96, 96)
    with pytest.raises(SRShrinkError, match="HxW"):
        parse_size("big")
    with pytest.raises(SRShrinkError, match="unknown precision"):
        BenchConfig(precisions=("fp8",)).validate()


# ---- the command end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    """Two small structured HR images (48x48) to score on."""
    folder = tmp_path_factory.mktemp("eval")
    yy, xx = torch.meshgrid(torch.linspace(0, 6, 48), torch.linspace(0, 6, 48), indexing="ij")
    for i in range(2):
        img = torch.stack([torch.sin(xx * (i + 1)), torch.cos(yy * 2 + i), torch.sin(xx + yy)]) * 0.4 + 0.5
        write_image(img, folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    """A tiny two-stage run whose fp32 .onnx and 32x32 .tflite exports already sit in RUN_DIR/exports."""
    run = make_tiny_run(tmp_path_factory.mktemp("bench") / "run")
    for stage in (1, 2):
        for rt, ok in (("onnxruntime", HAVE_ORT), ("litert", HAVE_LITERT)):
            if ok:
                export_stage(run, stage, rt, (32, 32))
    return run


def _bench(run: Path, eval_dir: Path, *extra: str):
    return CliRunner().invoke(main, ["bench", str(run), "--eval", str(eval_dir), *FAST, *extra])


def test_bench_writes_complete_json_and_plot(bench_run, eval_dir):
    res = _bench(bench_run, eval_dir, "--plot", str(bench_run / "p.png"))
    assert res.exit_code == 0, res.output
    data = json.loads((bench_run / "bench.json").read_text())
    rows = data["rows"]
    want = {"torch"} | ({"onnxruntime"} if HAVE_ORT else set()) | ({"litert"} if HAVE_LITERT else set())
    assert {r["runtime"] for r in rows} == want
    assert {(r["stage"], r["runtime"]) for r in rows} == {(s, rt) for s in (1, 2) for rt in want}
    for r in rows:
        assert ROW_KEYS <= r.keys(), ROW_KEYS - r.keys()
        samples = r["latency_ms_samples"]  # the stats are those of the recorded samples, one per timed call
        assert len(samples) == r["latency_samples"] == 3 and min(samples) > 0
        for key, q in (("latency_ms_median", 50), ("latency_ms_p90", 90), ("latency_ms_p10", 10)):
            assert r[key] == pytest.approx(float(np.percentile(samples, q)), abs=2e-4)
        assert r["latency_ms_min"] == pytest.approx(min(samples), abs=2e-4)
        assert r["delta_bicubic_db"] == pytest.approx(r["psnr_y"] - data["bicubic"]["psnr_y"], abs=1e-3)
        assert r["delta_teacher_db"] == pytest.approx(r["psnr_y"] - 33.0, abs=1e-3)  # run.json fallback
        assert r["threads"] == data["machine"]["threads"]
    torch_rows = {r["stage"]: r for r in rows if r["runtime"] == "torch"}
    pairs = load_eval_set(2, eval_dir)
    for stage, r in torch_rows.items():  # the row's Y-PSNR, computed here independently of bench
        model, _ = load_student(bench_run / f"stage_{stage:02d}.pt")
        with torch.no_grad():
            own = np.mean([psnr_y(quantize(model(p.lr.unsqueeze(0)))[0], p.hr, 2) for p in pairs])
        assert r["psnr_y"] == pytest.approx(own, abs=1e-3)
    for r in rows:  # fp32 exports score like the eager model (the static 32x32 tflite runs tiled, exactly)
        assert r["psnr_y"] == pytest.approx(torch_rows[r["stage"]]["psnr_y"], abs=1e-3)
    assert torch_rows[2]["macs"] > torch_rows[1]["macs"] and torch_rows[2]["params"] > torch_rows[1]["params"]
    assert "reason" in data["recommended"] and data["recommended"]["runtime"] in want
    machine_keys = {"cpu", "cores", "threads", "python", "torch", "onnxruntime", "litert", "input_size"}
    assert machine_keys <= data["machine"].keys()
    assert data["machine"]["input_size"] == "32x32"
    assert any("taken from run.json" in n for n in data["notes"])
    png = (bench_run / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rec = data["recommended"]  # the file to ship and the command that made it, printed and in bench.json
    assert f"file to ship: {rec['path']}" in res.output
    assert "made by: " in res.output
    if rec["export_command"]:
        assert rec["export_command"].startswith(f"sr-shrink export {bench_run} --target ")
        assert f"made by: {rec['export_command']}" in res.output
    with Image.open(bench_run / "p.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    assert "recommended" in res.output


def test_bench_budget_and_floor_steer_the_pick(bench_run, eval_dir, tmp_path):
    res = _bench(bench_run, eval_dir, "--budget-ms", "10000", "--json", str(tmp_path / "b.json"))
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["recommended"]["psnr_y"] == max(r["psnr_y"] for r in data["rows"])
    floor = min(r["psnr_y"] for r in data["rows"]) - 1
    res = _bench(bench_run, eval_dir, "--min-psnr", str(floor), "--json", str(tmp_path / "c.json"))
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "c.json").read_text())
    fastest = min(r["latency_ms_median"] for r in data["rows"])
    assert data["recommended"]["latency_ms_median"] == fastest
    assert "fastest" in data["recommended"]["reason"]


def test_bench_fails_clearly_when_nothing_meets_the_constraint(bench_run, eval_dir, tmp_path):
    res = _bench(bench_run, eval_dir, "--runtimes", "torch", "--budget-ms", "0.000001", "--json",
                 str(tmp_path / "b.json"))
    assert res.exit_code == 2
    assert "no row runs within --budget-ms" in res.output and "saved in" in res.output
    assert json.loads((tmp_path / "b.json").read_text())["recommended"] is None  # measurements kept
    res = _bench(bench_run, eval_dir, "--runtimes", "torch", "--min-psnr", "99", "--json", str(tmp_path / "c.json"))
    assert res.exit_code == 2 and "no row reaches --min-psnr 99" in res.output


def test_bench_measures_a_teacher_that_is_there(tiny_run, eval_dir, tmp_path):
    from sr_shrink.models.registry import save_model_checkpoint
    from sr_shrink.models.student import SRStudent

    teacher = SRStudent(2, 1, 8)
    torch.nn.init.normal_(teacher.tail.weight, 0, 0.02)
    t_path = save_model_checkpoint(teacher, "student", teacher.config(), tmp_path / "teacher.pt")
    run = json.loads((tiny_run / "run.json").read_text())
    run["teacher"]["path"] = str(t_path)
    (tiny_run / "run.json").write_text(json.dumps(run))
    cfg = BenchConfig(runtimes=("torch",), input_size=(32, 32), eval_dir=str(eval_dir), repeats=2, warmup=0)
    result = run_bench(tiny_run, cfg)
    t = result["teacher"]
    assert t["source"] == str(t_path) and t["psnr_y"] != 33.0
    for r in result["rows"]:
        assert r["delta_teacher_db"] == pytest.approx(r["psnr_y"] - t["psnr_y"], abs=1e-3)
    assert any("sha256 mismatch" in n for n in result["notes"])  # run.json holds a fake hash


def test_bench_rejects_a_folder_without_run_json(tiny_run, tmp_path):
    res = CliRunner().invoke(main, ["bench", str(tmp_path)])
    assert res.exit_code == 2 and "not a distill run (no stage_XX.pt files)" in res.output
    (tiny_run / "run.json").unlink()
    res = CliRunner().invoke(main, ["bench", str(tiny_run)])
    assert res.exit_code == 2 and "no run.json" in res.output and res.output.count("\n") == 1


def test_bench_refuses_an_unreadable_stage_file_before_any_work(tiny_run, eval_dir):
    """A run whose stage_02.pt was overwritten: bench named the checkpoint error without the fix, after exporting
    the stages before it."""
    path = tiny_run / "stage_02.pt"
    path.write_bytes(b"junk" * 64)
    res = _bench(tiny_run, eval_dir, "--runtimes", "onnxruntime")
    line = one_error_line(res)
    assert line.startswith(f"error: {path}: not a readable sr-shrink checkpoint (")
    assert f"rerun `sr-shrink distill ... --out {tiny_run} --resume`" in line
    assert not (tiny_run / "exports").exists() and not (tiny_run / "bench.json").exists()


def test_bench_notes_a_stage_whose_export_fails(tiny_run, eval_dir):
    def broken(run_dir, stage, runtime, precision, hw):
        raise RuntimeError("converter exploded")

    cfg = BenchConfig(runtimes=("onnxruntime",), precisions=("int8",), input_size=(32, 32), eval_dir=str(eval_dir),
                      repeats=2, warmup=0) if HAVE_ORT else None
    if cfg is None:
        pytest.skip("onnxruntime not installed")
    result = run_bench(tiny_run, cfg, exporter=broken)
    assert {r["runtime"] for r in result["rows"]} == {"torch"}
    assert sum("converter exploded" in n for n in result["notes"]) == 2


def _has_export_run() -> bool:
    try:
        return hasattr(importlib.import_module("sr_shrink.export"), "export_run")
    except ImportError:
        return False


@pytest.mark.skipif(not (_has_export_run() and HAVE_ORT), reason="sr_shrink.export.export_run not there yet")
def test_bench_exports_missing_models_with_export_run(tiny_run, eval_dir):
    names = ("onnxruntime", "litert") if HAVE_LITERT else ("onnxruntime",)
    cfg = BenchConfig(runtimes=names, precisions=("fp32",), input_size=(32, 32), eval_dir=str(eval_dir),
                      repeats=2, warmup=0, stages=(2,))
    result = run_bench(tiny_run, cfg)
    made = [r for r in result["rows"] if r["runtime"] != "torch"]
    assert {r["runtime"] for r in made} == set(names), result["notes"]
    assert all(r["exported_now"] and Path(r["path"]).parent == tiny_run / "exports" for r in made)
    torch_psnr = {r["stage"]: r["psnr_y"] for r in result["rows"] if r["runtime"] == "torch"}
    assert all(r["psnr_y"] == pytest.approx(torch_psnr[r["stage"]], abs=0.01) for r in made)
    if HAVE_LITERT:  # the static TFLite graph was exported at the bench input size
        tfl = next(r for r in made if r["runtime"] == "litert")
        assert tuple(open_runner(tfl["path"]).input_hw) == (32, 32)
    again = run_bench(tiny_run, cfg)  # second time the exports are found, not redone
    assert not any(r["exported_now"] for r in again["rows"] if r["runtime"] != "torch")


@pytest.mark.skipif(not HAVE_ORT, reason="needs onnxruntime")
def test_a_file_bench_exports_is_named_as_a_file_it_finds(tiny_run, eval_dir, monkeypatch):
    """'file to ship' named a file bench had just exported by its absolute path and one it found by the run
    folder as given (``run/exports/...``): two spellings for one folder in one table and bench.json."""
    monkeypatch.chdir(tiny_run.parent)
    cfg = BenchConfig(runtimes=("onnxruntime",), precisions=("fp32",), input_size=(32, 32), eval_dir=str(eval_dir),
                      repeats=2, warmup=0, stages=(2,))
    made = [r for r in run_bench(Path(tiny_run.name), cfg)["rows"] if r["runtime"] != "torch"]
    found = [r for r in run_bench(Path(tiny_run.name), cfg)["rows"] if r["runtime"] != "torch"]
    assert made[0]["exported_now"] and not found[0]["exported_now"]
    assert made[0]["path"] == found[0]["path"] == str(Path(tiny_run.name) / "exports" / "stage_02_fp32.onnx")


@pytest.mark.skipif(not HAVE_ORT, reason="needs onnxruntime")
def test_bench_passes_on_the_note_of_an_export_that_sets_a_damaged_generator_aside(tiny_run, eval_dir):
    """bench exports an int8 row itself; when the run's generator.pt cannot be read, that export calibrates on the
    bundled eval images instead and says so. The note used to reach only export.json, never bench's output."""
    from sr_shrink.distill.generator import RefineGenerator, save_generator

    gen = save_generator(RefineGenerator(patch=8), tiny_run / "generator.pt")
    gen.write_bytes(b"\x00junk" * 50)
    said: list[str] = []
    cfg = BenchConfig(runtimes=("onnxruntime",), precisions=("int8",), input_size=(32, 32), eval_dir=str(eval_dir),
                      repeats=1, warmup=0, stages=(1,))
    result = run_bench(tiny_run, cfg, log=said.append)
    assert any(r["runtime"] == "onnxruntime" and r["exported_now"] for r in result["rows"])
    notes = [m for m in said if m.startswith("note:")]
    assert notes == [f"note: {gen}: damaged generator checkpoint (its bytes are not a PyTorch checkpoint); this export "
                     "calibrates on the bundled eval images instead, as for a run without generator.pt."]


def test_export_command_rebuilds_the_file(tmp_path):
    from sr_shrink.bench.artifacts import export_command
    from sr_shrink.export import export_run

    if not HAVE_ORT:
        pytest.skip("onnxruntime is not installed")
    run = make_tiny_run(tmp_path / "run")
    e = export_run(run, "onnx", stage=2, precision="fp32", out=tmp_path / "mine", input_size="24x32",
                   layout="nhwc", verify=False)[0]
    cmd = export_command(RunDir.open(run), Path(e["path"]))
    assert cmd == (f"sr-shrink export {run} --target onnx --stage 2 --precision fp32 --input-size 24x32 "
                   f"--layout nhwc --out {tmp_path / 'mine'}")
    assert export_command(RunDir.open(run), run / "stage_02.pt") is None
    index = tmp_path / "mine" / "export.json"  # an export.json from before "options": rebuilt from the fields
    data = json.loads(index.read_text())
    del data["exports"][0]["options"]
    index.write_text(json.dumps(data))
    assert export_command(RunDir.open(run), Path(e["path"])) == cmd


def test_export_command_names_every_option_the_file_was_made_with(tmp_path):
    """The made-by line of an int8 file exported with the scheme options, QAT and calibration settings is a
    command that writes the same file again (the options record in export.json, not a guess from its fields)."""
    from sr_shrink.bench.artifacts import export_command

    if not HAVE_ORT:
        pytest.skip("onnxruntime is not installed")
    run = make_tiny_run(tmp_path / "run")
    args = ["export", str(run), "--target", "onnx", "--stage", "2", "--precision", "int8", "--no-reduce-range",
            "--float-stream", "--float-first-conv", "--no-tail-refit", "--equalize", "--bias-correction", "--gptq",
            "--calib-samples", "4", "--seed", "3", "--qat", "2", "--qat-lr", "2e-05", "--shuffle", "convt",
            "--out", str(tmp_path / "a")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    first = json.loads((tmp_path / "a" / "export.json").read_text())["exports"][0]
    cmd = export_command(RunDir.open(run), tmp_path / "a" / first["file"])
    for flag in ("--no-reduce-range", "--float-stream", "--float-first-conv", "--no-tail-refit", "--equalize",
                 "--bias-correction", "--gptq", "--calib-samples 4", "--seed 3", "--qat 2", "--qat-lr 2e-05",
                 "--shuffle convt"):
        assert f" {flag}" in cmd, cmd
    again = cmd.split()[1:-1] + [str(tmp_path / "b")]  # the same command into another folder
    res = CliRunner().invoke(main, again)
    assert res.exit_code == 0, res.output
    second = json.loads((tmp_path / "b" / "export.json").read_text())["exports"][0]
    assert second["options"] == first["options"] and second["quantization"] == first["quantization"]
    assert (tmp_path / "a" / first["file"]).read_bytes() == (tmp_path / "b" / second["file"]).read_bytes()


def test_options_an_export_leaves_unused_are_not_recorded(tmp_path):
    """An fp32 file exported with the int8 calibration options (which leave float exports alone) and --native-io
    (its I/O is float32 either way) is the plain file: export.json used to record them, so bench marked its row
    as exported with options and its made-by command named them."""
    from sr_shrink.bench.artifacts import export_command

    if not HAVE_ORT:
        pytest.skip("onnxruntime is not installed")
    run = make_tiny_run(tmp_path / "run")
    unused = ["--equalize", "--bias-correction", "--calib-samples", "4", "--seed", "3", "--native-io"]
    res = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--stage", "2", "--layout", "nhwc",
                                    *unused, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    entry = json.loads((tmp_path / "a" / "export.json").read_text())["exports"][0]
    assert entry["options"] == {"layout": "nhwc"}
    cmd = export_command(RunDir.open(run), tmp_path / "a" / entry["file"])
    assert cmd.endswith(f"--precision fp32 --layout nhwc --out {tmp_path / 'a'}"), cmd


def test_a_row_from_a_file_exported_with_options_is_marked(tmp_path, eval_dir):
    """bench reuses the int8 file exports/ holds; one exported with --float-stream is marked in the table and
    named in a note (with its options), a plain file bench exported itself is not."""
    from io import StringIO

    from rich.console import Console

    from sr_shrink.bench.report import print_report
    from sr_shrink.export import export_run

    if not HAVE_ORT:
        pytest.skip("onnxruntime is not installed")
    run = make_tiny_run(tmp_path / "run")
    export_run(run, "onnx", stage=2, precision="int8", float_stream=True, calib_samples=4, verify=False)
    cfg = BenchConfig(runtimes=("onnxruntime",), precisions=("fp32", "int8"), input_size=(32, 32),
                      eval_dir=str(eval_dir), repeats=2, warmup=0, stages=(2,))
    result = run_bench(run, cfg)
    rows = {r["precision"]: r for r in result["rows"] if r["runtime"] == "onnxruntime"}
    assert not rows["int8"]["exported_now"]
    assert rows["int8"]["export_options"] == {"float_stream": True, "calib_samples": 4}
    assert rows["fp32"]["exported_now"] and rows["fp32"]["export_options"] == {}
    assert next(r for r in result["rows"] if r["runtime"] == "torch").get("export_options") is None
    notes = [n for n in result["notes"] if "exported with" in n]
    assert len(notes) == 1 and "onnxruntime int8" in notes[0] and "--float-stream" in notes[0]
    out = StringIO()
    print_report(result, Console(file=out, width=250))
    lines = out.getvalue().splitlines()
    assert any("int8 †" in ln for ln in lines) and not any("fp32 †" in ln for ln in lines)
    flat = " ".join(out.getvalue().split())  # the caption wraps where the console width puts it
    assert "† a file exported with options" in flat
    assert flat.count(result["metric"]["reason"]) == 1  # said once, in the metric line, not in the caption too


def test_plot_uses_a_log_axis_and_labels_do_not_collide():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sr_shrink.bench.report import place_labels

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    pts = [(300.0, 31.0), (301.0, 31.0), (2.0, 30.5), (2.05, 30.52), (2.1, 30.5), (2.0, 30.49), (40.0, 29.0)]
    ax.scatter(*zip(*pts))
    ax.set_xscale("log")
    anns = place_labels(ax, pts, [str(i) for i in range(len(pts))])
    fig.canvas.draw()
    boxes = [a.get_window_extent(fig.canvas.get_renderer()) for a in anns]
    assert all(not boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))
    plt.close(fig)


def test_bench_plot_is_log_scaled(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from sr_shrink.bench.report import plot

    rows = [{**_row(s, lat, 30 + s / 10, rt), "n_blocks": s} for s, lat, rt in
            [(1, 3.0, "litert"), (2, 3.3, "litert"), (1, 150.0, "torch"), (2, 400.0, "torch")]]
    scales, savefig = [], plt.Figure.savefig
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: (scales.append(fig.axes[0].get_xscale()),
                                                                      savefig(fig, *a, **k)))
    plot({"rows": rows, "recommended": None}, tmp_path / "b.png")
    assert scales == ["log"] and (tmp_path / "b.png").stat().st_size > 0


@pytest.mark.parametrize("threads,said", [(1, "1 thread,"), (2, "2 threads,")])
def test_the_table_title_counts_threads_in_words(threads, said):
    """The table's title reads "1 thread" and "2 threads"."""
    from sr_shrink.bench.report import bench_table

    table = bench_table({"rows": [], "machine": {"input_size": "32x32", "threads": threads, "cpu": "some CPU"},
                         "metric": {"key": "psnr_y"}})
    assert said in str(table.title) and ("1 threads" not in str(table.title))


def test_bench_notes_a_pick_that_does_not_beat_bicubic(tiny_run, eval_dir):
    """The tiny run's random students score below bicubic while run.json's teacher is far above it: the result
    and the printed report say that no row is worth shipping yet."""
    from io import StringIO

    from rich.console import Console

    from sr_shrink.bench.report import print_report

    run = json.loads((tiny_run / "run.json").read_text())
    (tiny_run / "run.json").write_text(json.dumps({**run, "teacher_psnr_y": 99.0}))  # a PSNR-trained teacher
    cfg = BenchConfig(runtimes=("torch",), input_size=(32, 32), eval_dir=str(eval_dir), repeats=2, warmup=0)
    result = run_bench(tiny_run, cfg)
    assert result["metric"]["name"] == "psnr" and result["teacher"]["psnr_y"] == 99.0
    assert max(r["psnr_y"] for r in result["rows"]) < result["bicubic"]["psnr_y"]
    notes = [n for n in result["notes"] if "bicubic upscaling" in n]
    assert len(notes) == 1 and notes[0].startswith("no row scores above bicubic upscaling"), result["notes"]
    out = StringIO()
    print_report(result, Console(file=out, width=250))
    assert f"note: {notes[0]}" in out.getvalue()
