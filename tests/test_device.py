"""Phone latencies in bench's pick: benchmark_model output, CSV/JSON files, and --adb through a stand-in adb."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tiny_run, one_error_line
from export_helpers import export_stage

from sr_shrink.bench import BenchConfig, run_bench
from sr_shrink.bench.device import apply_device_latency, parse_benchmark_model, read_latency_file
from sr_shrink.bench.pareto import pick
from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError

# benchmark_model's output as the tool prints it (a newer build: percentiles on the count= line, INFO: prefixes)
RUN_NEW = """INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/sr_shrink/{name}]
INFO: Use gpu: [1]
INFO: Loaded model /data/local/tmp/sr_shrink/{name}
INFO: Created TensorFlow Lite delegate for GPU.
INFO: Replacing 19 out of 19 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 1 partitions.
INFO: The input model file size (MB): 0.0913
INFO: Initialized session in 412.5ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=31 first=21011 curr=15880 min=15101 max=21011 avg=16012.3 std=1102 p5=15160 median=15794 p95=17803

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=64 first=15911 curr=15420 min=14980 max=18240 avg=15690.4 std=611 p5=15020 median={median} p95=16950

INFO: Inference timings in us: Init: 412500, First inference: 21011, Warmup (avg): 16012.3, Inference (avg): 15690.4
INFO: Memory footprint delta from the start of the tool (MB): init=31.2 overall=48.7
"""
# an older build through adb logcat: no percentiles, a tag prefix, the mean in e-notation
RUN_OLD = """I tflite  : Graph: [/sdcard/{name}]
I tflite  : count=50 first=1249964 curr=1240143 min=1238588 max=1252566 avg=1.24027e+06 std=2565
I tflite  : Inference timings in us: Init: 5579, First inference: 1357602, Warmup (avg): 1.3576e+06, \
Inference (avg): 1.24027e+06
"""


def test_benchmark_model_output_is_parsed():
    runs = parse_benchmark_model(RUN_NEW.format(name="stage_01_fp32.tflite", median=15321)
                                 + RUN_OLD.format(name="stage_02_int8.tflite"))
    assert [(d.file, d.ms, d.statistic, d.runs) for d in runs] == [("stage_01_fp32.tflite", 15.321, "median", 64),
                                                                   ("stage_02_int8.tflite", 1240.27, "avg", 50)]
    assert runs[0].delegated_nodes == "19/19" and runs[1].delegated_nodes is None


def test_latency_files(tmp_path):
    csv = tmp_path / "xcode.csv"
    csv.write_text("file,median_ms\n# from an Xcode performance report\nexports/stage_01_fp16.mlpackage, 2.5\n"
                   "stage_02_fp16.mlpackage,3\n")
    assert [(d.file, d.ms) for d in read_latency_file(csv)] == [("stage_01_fp16.mlpackage", 2.5),
                                                               ("stage_02_fp16.mlpackage", 3.0)]
    js = tmp_path / "lat.json"
    js.write_text(json.dumps({"stage_01_fp32.tflite": 4.25}))
    assert read_latency_file(js)[0].ms == 4.25
    bad = tmp_path / "bad.csv"
    bad.write_text("file,ms\nstage_01_fp32.tflite,fast\n")
    with pytest.raises(SRShrinkError, match="line 2 .* is not 'file,ms'"):
        read_latency_file(bad)
    (tmp_path / "zero.csv").write_text("stage_01_fp32.tflite,0\n")
    with pytest.raises(SRShrinkError, match="must be > 0"):
        read_latency_file(tmp_path / "zero.csv")
    with pytest.raises(SRShrinkError, match="no such file"):
        read_latency_file(tmp_path / "nope.csv")


def test_latency_csv_from_a_spreadsheet_is_read(tmp_path):
    """Latencies with a unit ('2.5 ms') made a one-row CSV 'no latencies found' (its row taken for a header) and
    a longer one fail on line 2 with line 1 dropped; Excel's byte order mark stuck to the first file name (so it
    matched no row) and hid a JSON object; 'inf' was taken as a latency."""
    csv = tmp_path / "phone.csv"
    csv.write_bytes("\ufeffstage_01_fp32.tflite, 2.5 ms\r\nstage_02_fp32.tflite,3100us\r\n".encode())
    assert [(d.file, d.ms) for d in read_latency_file(csv)] == [("stage_01_fp32.tflite", 2.5),
                                                               ("stage_02_fp32.tflite", 3.1)]
    csv.write_text("stage_01_fp32.tflite,2.5ms\n")
    assert [(d.file, d.ms) for d in read_latency_file(csv)] == [("stage_01_fp32.tflite", 2.5)]
    csv.write_text("file,ms\nstage_01_fp32.tflite,2.5 fast\n")
    with pytest.raises(SRShrinkError, match=r"line 2 'stage_01_fp32.tflite,2.5 fast' is not 'file,ms'"):
        read_latency_file(csv)
    js = tmp_path / "lat.json"
    js.write_bytes("\ufeff".encode() + json.dumps({"stage_01_fp32.tflite": 4.25}).encode())
    assert [(d.file, d.ms) for d in read_latency_file(js)] == [("stage_01_fp32.tflite", 4.25)]
    csv.write_text("stage_01_fp32.tflite,inf\n")
    with pytest.raises(SRShrinkError, match=r"is inf; must be > 0 ms \(a finite number\)"):
        read_latency_file(csv)


def _row(stage, runtime, precision, ms, psnr):
    return {"stage": stage, "n_blocks": stage, "runtime": runtime, "precision": precision, "psnr_y": psnr,
            "latency_ms_median": ms, "latency_ms_p90": ms, "path": f"/x/stage_{stage:02d}_{precision}.tflite"}


def test_device_latency_changes_the_pick():
    """On this host int8 is slower than fp32 (no VNNI); on the phone it is 3x faster: the pick follows the phone."""
    rows = [_row(4, "litert", "fp32", 10.0, 30.0), _row(4, "litert", "int8", 12.0, 29.95),
            _row(4, "torch", "fp32", 20.0, 30.0)]
    assert pick(rows, budget_ms=11)["precision"] == "fp32"
    lat = read_latency_file_from({"stage_04_fp32.tflite": 9.0, "stage_04_int8.tflite": 3.0})
    notes = apply_device_latency(rows, lat)
    assert rows[2]["latency_ms_median"] is None and rows[2]["host_latency_ms_median"] == 20.0
    assert rows[1]["latency_ms_median"] == 3.0 and rows[1]["host_latency_ms_median"] == 12.0
    assert rows[1]["latency_source"].startswith("device")
    assert pick(rows, budget_ms=5)["precision"] == "int8"
    assert any("left out of the pick" in n and "torch" in n for n in notes)
    with pytest.raises(SRShrinkError, match="names a benchmarked file"):
        apply_device_latency([_row(1, "litert", "fp32", 1.0, 30.0)], lat)


def read_latency_file_from(data: dict):
    from sr_shrink.bench.device import DeviceLatency

    return [DeviceLatency(k, v, "given", "test") for k, v in data.items()]


@pytest.fixture(scope="module")
def phone_run(tmp_path_factory) -> Path:
    run = make_tiny_run(tmp_path_factory.mktemp("phone") / "run")
    for stage in (1, 2):
        export_stage(run, stage, "litert", (32, 32))
    return run


def _cfg(**kw) -> BenchConfig:
    return BenchConfig(runtimes=("litert",), precisions=("fp32",), input_size=(32, 32), max_images=1, repeats=2,
                       warmup=0, rounds=1, **kw)


def test_bench_latency_from_ranks_with_device_numbers(phone_run, tmp_path):
    log = tmp_path / "bm.txt"
    log.write_text(RUN_NEW.format(name="stage_01_fp32.tflite", median=2000)
                   + RUN_NEW.format(name="stage_02_fp32.tflite", median=90000))
    result = run_bench(phone_run, _cfg(latency_from=str(log), budget_ms=10))
    rec = result["recommended"]
    assert (rec["stage"], rec["runtime"], rec["latency_ms_median"]) == (1, "litert", 2.0)
    lite = {r["stage"]: r for r in result["rows"] if r["runtime"] == "litert"}
    assert lite[2]["latency_ms_median"] == 90.0 and lite[2]["device_latency"]["delegated_nodes"] == "19/19"
    assert all(r["latency_ms_median"] is None for r in result["rows"] if r["runtime"] == "torch")
    assert any("measured on the device" in n for n in result["notes"])
    res = CliRunner().invoke(main, ["bench", str(phone_run), "--runtimes", "litert", "--precisions", "fp32",
                                    "--input-size", "32x32", "--max-images", "1", "--repeats", "2", "--warmup", "0",
                                    "--rounds", "1", "--latency-from", str(log), "--json", str(tmp_path / "b.json"),
                                    "--plot", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b.json").read_text())["recommended"]["latency_source"].startswith("device")


def test_a_cut_short_log_or_a_model_named_twice_is_said(phone_run, tmp_path):
    """benchmark_model output cut short before any run finished was read as a CSV ("line 1 'INFO: STARTING!' is
    not 'file,ms'"); one cut short after some runs dropped the last run, and a model benchmarked twice kept its
    last latency, without a word. Now: an error that says the output was cut short, and a note for each."""
    log = tmp_path / "bm.txt"
    cut = RUN_NEW.format(name="stage_02_fp32.tflite", median=90000).split("INFO: Running benchmark")[0]
    log.write_text(cut)
    with pytest.raises(SRShrinkError, match="no finished run .* cut short: rerun the tool"):
        read_latency_file(log)
    log.write_text(RUN_OLD.format(name="stage_01_fp32.tflite") + RUN_NEW.format(name="stage_01_fp32.tflite",
                                                                                median=2000) + cut)
    result = run_bench(phone_run, _cfg(latency_from=str(log)))
    assert "--latency-from bm.txt names stage_01_fp32.tflite 2 times (1240.27, 2 ms); the last is used" in \
        result["notes"]
    assert ("--latency-from bm.txt: the benchmark_model run of stage_02_fp32.tflite has no 'Inference timings' (cut "
            "short or failed); it is left out") in result["notes"]
    lite = {r["stage"]: r for r in result["rows"] if r["runtime"] == "litert"}
    assert lite[1]["latency_ms_median"] == 2.0 and lite[2]["latency_ms_median"] is None


STAND_IN_ADB = """#!{python}
import sys, pathlib
log = pathlib.Path({log!r})
args = sys.argv[1:]
with log.open("a") as f:
    f.write(" ".join(args) + "\\n")
if args[0] == "shell" and any(a.startswith("--graph=") for a in args):
    graph = next(a for a in args if a.startswith("--graph="))[8:]
    name = graph.rsplit("/", 1)[-1]
    text = pathlib.Path({recorded!r}).read_text()
    print(text.replace("/data/local/tmp/sr_shrink/MODEL", graph).replace("MEDIAN", "3000" if "01" in name else "1500"))
"""


def test_bench_adb_runs_benchmark_model_on_the_device(phone_run, tmp_path, monkeypatch):
    """A stand-in adb replays recorded benchmark_model output; bench pushes the tool and every .tflite, runs it
    with --graph and the extra flags, and ranks by what it printed."""
    recorded = tmp_path / "recorded.txt"
    recorded.write_text(RUN_NEW.format(name="MODEL", median="MEDIAN"))
    log = tmp_path / "adb.log"
    adb = tmp_path / "adb"
    adb.write_text(STAND_IN_ADB.format(python=sys.executable, log=str(log), recorded=str(recorded)))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    tool = tmp_path / "benchmark_model"
    tool.write_bytes(b"\x7fELF stand-in")
    monkeypatch.setenv("SR_SHRINK_ADB", str(adb))
    result = run_bench(phone_run, _cfg(adb=str(tool), adb_args="--use_gpu=true"))
    lite = {r["stage"]: r for r in result["rows"] if r["runtime"] == "litert"}
    assert lite[1]["latency_ms_median"] == 3.0 and lite[2]["latency_ms_median"] == 1.5
    assert result["recommended"]["runtime"] == "litert"
    calls = log.read_text().splitlines()
    assert f"push {tool} /data/local/tmp/sr_shrink/benchmark_model" in calls
    assert any(c.startswith("push ") and c.endswith("/data/local/tmp/sr_shrink/stage_02_fp32.tflite") for c in calls)
    runs = [c for c in calls if "--graph=" in c]
    assert len(runs) == 2 and all("--use_gpu=true" in c and "--num_threads=4" in c for c in runs)
    monkeypatch.setenv("SR_SHRINK_ADB", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SRShrinkError, match="needs Android's adb"):
        run_bench(phone_run, _cfg(adb=str(tool)))
    assert os.environ["SR_SHRINK_ADB"] == ""


@pytest.mark.parametrize("setup", ["missing", "garbage", "adb without litert", "adb missing"])
def test_a_bad_device_setup_fails_before_any_row_is_measured(setup, tmp_path, monkeypatch):
    """A mistyped --latency-from path (or a bad file, or --adb without adb or a litert row) used to end the run
    only after every row was exported, scored and timed, and nothing was saved."""
    from sr_shrink.bench import pipeline

    def measured(*_a, **_k):
        raise AssertionError("rows were opened before the device latencies were checked")

    monkeypatch.setattr(pipeline, "open_rows", measured)
    run = make_tiny_run(tmp_path / "run")
    (tmp_path / "bad.csv").write_text("garbage\n")
    monkeypatch.setenv("SR_SHRINK_ADB", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cfg = {"missing": dict(latency_from=str(tmp_path / "no_such.csv")), "garbage": dict(latency_from=str(
        tmp_path / "bad.csv")), "adb without litert": dict(adb="benchmark_model", runtimes=("torch",)),
           "adb missing": dict(adb="benchmark_model")}[setup]
    with pytest.raises(SRShrinkError, match="latency-from|file,ms|adb"):
        run_bench(run, BenchConfig(**{**dict(runtimes=("torch", "litert"), precisions=("fp32",), input_size=(32, 32),
                                             max_images=1, repeats=1, warmup=0, rounds=1), **cfg}))


def test_a_latency_file_that_names_no_row_fails_before_any_row_is_measured(tmp_path, monkeypatch):
    """--latency-from naming none of the run's files (another run's, Core ML's, a typo) used to fail only after
    every row was exported, scored and timed."""
    from sr_shrink.bench import pipeline

    def measured(*_a, **_k):
        raise AssertionError("rows were opened before the device latencies were matched to the run's files")

    monkeypatch.setattr(pipeline, "open_rows", measured)
    run = make_tiny_run(tmp_path / "run")
    lat = tmp_path / "lat.csv"
    lat.write_text("stage_01_fp16.mlpackage,2.5\nother_run/stage_09_fp32.tflite,3\n")
    res = CliRunner().invoke(main, ["bench", str(run), "--runtimes", "litert", "--precisions", "fp32,int8",
                                    "--latency-from", str(lat)])
    line = one_error_line(res)
    assert line == (f"error: --latency-from {lat}: none of its files (stage_01_fp16.mlpackage, "
                     "stage_09_fp32.tflite) is one this run's rows use (stage_01_fp32.tflite, stage_01_int8.tflite, "
                     "stage_02_fp32.tflite, stage_02_int8.tflite); name the files as bench's rows do, or pass the "
                     "--runtimes and --precisions they were measured for.")
    assert not (run / "bench.json").exists() and not (run / "exports").exists()
    with pytest.raises(SRShrinkError, match="only torch rows .*; add --runtimes litert or onnxruntime"):
        run_bench(run, BenchConfig(runtimes=("torch",), precisions=("fp32",), latency_from=str(lat)))
