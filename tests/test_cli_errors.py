"""Bad input at the command line: one ``error:`` line and exit status 2 for every command, never a traceback.

A table of bad values per command, then a property test that fuzzes option values of ``distill`` and
``upscale`` (valid values must run, invalid ones must end in one line).
"""

from __future__ import annotations

import shlex

import pytest
from click.testing import CliRunner
from conftest import make_tiny_eval, make_tiny_run, make_tiny_teacher, one_error_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sr_shrink.cli import main


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


def _assert_one_error_line(result, args) -> None:
    """The run ended with exit 2, its output holds exactly one ``error:`` line and no traceback."""
    assert result.exit_code == 2, (args, result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, (args, result.output)
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"teacher": make_tiny_teacher(root / "teacher.pt"), "run": make_tiny_run(root / "run"),
            "eval": make_tiny_eval(root / "eval", n=1), "out": root / "out", "root": root}


DISTILL_BAD = ["--reuse 0", "--save-every 0", "--stage-step 0", "--mix 2", "--mix -0.1", "--batch 0", "--channels 0",
               "--lr -1", "--lr nan", "--lr inf", "--lr-patch -8", "--lr-patch 3", "--steps-per-stage 0",
               "--threads 0", "--stages 3:1", "--stages 0:2", "--stages x", "--g-lr 0", "--w-r -1",
               "--student-steps-per-g 0", "--scale 1", "--scale 3", "--seed -1", "--mode bogus",
               "--teacher-dtype int4", "--kd-loss l3", "--batch abc", "--bogus-flag", "--data /no/such/dir --mode data",
               "--eval /no/such/dir", "--synthetic stripes", "--block repvgg", "--batch 1", "--pool -1",
               "--time-budget 0", "--time-budget nan", "--time-budget 4x", "--time-budget 1h30",
               "--time-budget 1 --steps-per-stage 5", "--resume --force"]


@pytest.mark.parametrize("bad", DISTILL_BAD)
def test_distill_bad_values(files, bad):
    args = ["distill", str(files["teacher"]), "--out", str(files["root"] / "d"), "--steps-per-stage", "1",
            "--stages", "1:1", "--eval", "none", "--quiet", *shlex.split(bad)]
    _assert_one_error_line(_invoke(args), args)


@pytest.mark.parametrize("bad", ["--data {eval}", "--data {eval} --mode noise", "--data-target hr",
                                 "--data-target hr --mode generator"])
def test_distill_photo_options_without_mode_data(files, bad):
    """--data / --data-target hr without --mode data used to be ignored: a data-free run, not one on the photos."""
    args = ["distill", str(files["teacher"]), "--out", str(files["root"] / "nodata"), "--steps-per-stage", "1",
            "--stages", "1:1", "--eval", "none", "--quiet", *shlex.split(bad.format(eval=files["eval"]))]
    result = _invoke(args)
    _assert_one_error_line(result, args)
    assert "--mode data" in result.output and not (files["root"] / "nodata" / "run.json").exists()


@pytest.mark.parametrize("bad", ["--mode data --data {empty}", "--mode data --data {empty}/no_such_dir", "--mode data",
                                 "--eval {empty}"])
def test_a_failed_distill_leaves_no_run_folder_behind(files, tmp_path, bad):
    """A distill that failed on a bad --data (a folder without images, a missing one) or --eval used to leave the
    new, empty run folder behind. Folders that were there before stay, with what they hold."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "kept").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for out in (tmp_path / "new" / "run", tmp_path / "kept", tmp_path / "mine" / "run"):
        args = ["distill", str(files["teacher"]), "--out", str(out), "--steps-per-stage", "1", "--stages", "1:1",
                "--quiet", *shlex.split(bad.format(empty=tmp_path / "empty"))]
        _assert_one_error_line(_invoke(args), args)
    assert not (tmp_path / "new").exists() and not (tmp_path / "mine" / "run").exists()
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "run.json").exists()
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_distill_missing_or_bad_teacher(files, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for teacher in ("/no/such/teacher.pt", str(tmp_path / "junk.pt"), str(tmp_path)):
        args = ["distill", teacher, "--out", str(tmp_path / "o"), "--quiet"]
        _assert_one_error_line(_invoke(args), args)


@pytest.mark.parametrize("bad", ["--target bogus", "--precision int4", "--stage 7", "--stage x", "--input-size 0x0",
                                 "--input-size big", "--layout nhcw", "--palettize 5", "--calib-samples 0",
                                 "--seed -3", "--calib /no/such/dir --precision int8", "--eval /no/such/dir",
                                 "--float-stream", "--no-reduce-range --precision w8a16",
                                 "--target tflite --precision int8 --float-stream", "--tail-refit",
                                 "--target tflite --precision int8 --no-tail-refit",
                                 "--precision int8 --qat 2 --tail-refit", "--float-first-conv",
                                 "--target tflite --precision int8 --float-first-conv",
                                 "--precision int8 --calib-samples 100000",
                                 "--target tflite --precision w8a16 --calib-samples 6000"])
def test_export_bad_values(files, bad):
    args = ["export", str(files["run"]), *shlex.split(bad)]
    if "--target" not in bad:
        args += ["--target", "onnx"]
    _assert_one_error_line(_invoke(args), args)


@pytest.mark.parametrize("target", ["tflite", "onnx"])
def test_export_io_image_names_the_target_not_flags_never_given(files, target):
    """--target tflite --io image said 'drop --layout nhwc / --native-io' though neither was passed (nhwc is
    TFLite's default); the error names the target --io image is for."""
    line = one_error_line(_invoke(["export", str(files["run"]), "--target", target, "--io", "image"]))
    assert line == (f"error: --io image is for Core ML (an RGB image input and output), not {target}; drop --io "
                    "image, or use --target coreml.")
    line = one_error_line(_invoke(["export", str(files["run"]), "--target", "coreml", "--io", "image", "--native-io"]))
    assert line == "error: --io image is for Core ML with the default nchw layout and float I/O; drop --native-io."


def test_export_precision_list_says_one_export_per_precision(files):
    """bench takes ``--precisions fp32,int8``; export's ``--precision`` takes one, and a list written bench's way
    got click's "'fp32,int8' is not one of ..." without saying how to get both files."""
    line = one_error_line(_invoke(["export", str(files["run"]), "--target", "onnx", "--precision", "fp32,int8"]))
    assert "export writes one precision per run; run it once for each (--precision fp32, --precision int8) with " \
           "the same --out" in line, line
    line = one_error_line(_invoke(["export", str(files["run"]), "--target", "onnx", "--precision", "fp32,int4"]))
    assert "is not one of" in line and "one precision per run" not in line, line


def test_export_calib_samples_that_would_not_fit_in_memory(files):
    """--calib-samples 100000 (the option's top) of TFLite's 256x256 inputs meant 79 GB held at once: the export
    died of memory after its first stages; it is refused first, with the count that fits and the default."""
    line = one_error_line(_invoke(["export", str(files["run"]), "--target", "tflite", "--precision", "int8",
                                   "--calib-samples", "100000"]))
    assert line == ("error: --calib-samples 100000 of 256x256 would hold 78.6 GB of calibration inputs in memory; "
                    "use at most 5461 (the default is 18).")


def test_export_bad_run_folder(tmp_path):
    for run in ("/no/such/run", str(tmp_path)):
        args = ["export", run, "--target", "onnx"]
        _assert_one_error_line(_invoke(args), args)


def test_output_paths_that_are_files(files, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (["export", str(files["run"]), "--target", "onnx", "--out", str(afile)],
                 ["export", str(files["run"]), "--target", "onnx", "--out", str(afile / "sub")],
                 ["bench", str(files["run"]), "--runtimes", "torch", "--repeats", "1", "--warmup", "0", "--rounds",
                  "1", "--eval", str(files["eval"]), "--json", str(afile / "b.json")],
                 ["distill", str(files["teacher"]), "--out", str(afile), "--quiet"]):
        _assert_one_error_line(_invoke(args), args)


def test_empty_output_folders_are_refused(files, tmp_path, monkeypatch):
    """``--out ""`` (e.g. ``--out "$RUN"`` with RUN unset) meant the current folder: distill wrote its run there."""
    monkeypatch.chdir(tmp_path)
    img = next(files["eval"].iterdir())
    for args in (["distill", str(files["teacher"]), "--out", "", "--steps-per-stage", "1", "--stages", "1:1",
                  "--eval", "none", "--quiet"],
                 ["export", str(files["run"]), "--target", "onnx", "--out", ""],
                 ["upscale", str(files["run"] / "stage_01.pt"), str(img), "-o", ""],
                 ["demo", "--out", "", "--steps-per-stage", "1"]):
        _assert_one_error_line(_invoke(args), args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["--threads 0", "--max-images 0", "--budget-ms 0", "--budget-ms nan",
                                 "--min-psnr inf", "--repeats 0", "--warmup -1", "--rounds 0", "--input-size 2x2",
                                 "--runtimes bogus", "--precisions fp8", "--device tpu", "--eval /no/such/dir",
                                 "--adb-args --use_gpu=true", "--latency-from /no/such/file.csv"])
def test_bench_bad_values(files, bad):
    args = ["bench", str(files["run"]), "--runtimes", "torch", "--repeats", "1", "--warmup", "0", "--rounds", "1",
            *shlex.split(bad)]
    _assert_one_error_line(_invoke(args), args)


def test_bench_of_one_stage_file_names_the_run_folder(files, tmp_path):
    stage = files["run"] / "stage_01.pt"
    line = one_error_line(_invoke(["bench", str(stage), "--runtimes", "torch"]))
    assert line == (f"error: {stage}: bench compares the stages of a distill run; pass its folder {files['run']}, "
                    "not one file.")
    run = make_tiny_run(tmp_path / "run", n_stages=1)
    exported = run / "exports" / "stage_01_fp32.onnx"  # it named RUN/exports as the run's folder
    exported.parent.mkdir()
    exported.write_bytes(b"not read")
    line = one_error_line(_invoke(["bench", str(exported), "--runtimes", "torch"]))
    assert line == (f"error: {exported}: bench compares the stages of a distill run; pass its folder {run}, "
                    "not one file.")
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(b"not read")
    line = one_error_line(_invoke(["bench", str(lone)]))
    assert "pass the folder 'sr-shrink distill' wrote, not one file." in line, line


@pytest.mark.parametrize("command, given, expected", [
    ("bench {run} --runtimes torch --precisions fp32 int8", "(int8)", "--precisions fp32,int8"),
    ("bench {run} --runtimes torch litert --rounds 1", "(litert)", "--runtimes torch,litert"),
    ("distill {teacher} --synthetic deadleaves pink grown-smooth", "(pink grown-smooth)",
     "--synthetic deadleaves,pink,grown-smooth"),
    ("export {run} --target coreml --shapes 64x64 128x128", "(128x128)", "--shapes 64x64,128x128")])
def test_a_list_written_with_spaces_gets_the_comma_form(files, command, given, expected):
    args = shlex.split(command.format(run=files["run"], teacher=files["teacher"]))
    line = one_error_line(_invoke(args))
    assert line.startswith("error: Got unexpected extra argument") and given in line, line
    assert f"takes a comma list without spaces: {expected} (see" in line, line


def test_an_extra_argument_after_another_option_gets_no_comma_hint(files):
    line = one_error_line(_invoke(["bench", str(files["run"]), "--input-size", "64x64", "extra"]))
    assert line.startswith("error: Got unexpected extra argument (extra) (see '") and "comma" not in line, line
    line = one_error_line(_invoke(["bench", str(files["run"]), "--precisions", "fp32", "--rounds", "1", "extra"]))
    assert "comma" not in line, line


@pytest.mark.parametrize("command, usage", [
    ("distill --teacher {teacher}", "TEACHER is an argument, not an option: sr-shrink distill TEACHER [OPTIONS]"),
    ("export --run {run} --target onnx", "RUN_DIR is an argument, not an option: sr-shrink export RUN_DIR [OPTIONS]"),
    ("upscale --model {stage} {img}",
     "MODEL is an argument, not an option: sr-shrink upscale MODEL IMAGES... [OPTIONS]"),
    ("upscale {stage} -i {img}", "IMAGES is an argument, not an option: sr-shrink upscale MODEL IMAGES... [OPTIONS]")])
def test_an_argument_given_as_an_option_is_named_as_an_argument(files, command, usage):
    """``upscale --model m.onnx``, as other tools take it: the error says MODEL is an argument and shows the usage,
    without click's guesses at similar options (``--overlap`` for ``--model``)."""
    args = shlex.split(command.format(teacher=files["teacher"], run=files["run"], stage=files["run"] / "stage_01.pt",
                                      img=next(files["eval"].iterdir())))
    line = one_error_line(CliRunner().invoke(main, args, prog_name="sr-shrink"))
    option = next(a for a in args if a.startswith("-"))
    assert line == f"error: No such option '{option}': {usage} (see 'sr-shrink {args[0]} --help')", line


def test_an_unknown_option_that_names_no_argument_keeps_clicks_guess(files):
    line = one_error_line(CliRunner().invoke(main, ["export", str(files["run"]), "--target", "onnx", "--out-dir", "x"],
                                             prog_name="sr-shrink"))
    assert line == "error: No such option '--out-dir'. Did you mean '--out'? (see 'sr-shrink export --help')", line
    line = one_error_line(_invoke(["bench", str(files["run"]), "--model", "x"]))  # bench has no MODEL argument
    assert line.startswith("error: No such option '--model'") and "argument" not in line, line


@pytest.mark.parametrize("bad", ["--tile -1", "--overlap -2", "--scale 3", "--scale 0", "--threads 0",
                                 "--device tpu", "--teacher /no/such/teacher.pt", "--crops 3", "--value-range 255",
                                 "--res-scale 0.1"])
def test_upscale_bad_values(files, bad):
    img = next(files["eval"].iterdir())
    args = ["upscale", str(files["run"] / "stage_01.pt"), str(img), "-o", str(files["out"]), *shlex.split(bad)]
    _assert_one_error_line(_invoke(args), args)


def test_upscale_bad_files(files, tmp_path):
    img = next(files["eval"].iterdir())
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    cases = [["/no/such/model.pt", str(img)], [str(files["run"] / "stage_01.pt"), "/no/such/image.png"],
             [str(files["run"] / "stage_01.pt"), str(tmp_path / "bad.png")], [str(img), str(img)]]
    for model, image in cases:
        args = ["upscale", model, image, "-o", str(tmp_path / "o")]
        _assert_one_error_line(_invoke(args), args)


@pytest.mark.parametrize("bad", ["info /no/such/file.pt", "info --scale 1", "demo --steps-per-stage 0",
                                 "nosuchcommand"])
def test_other_commands_bad_values(bad):
    args = shlex.split(bad)
    _assert_one_error_line(_invoke(args), args)


# ------------------------------------------------------------------ property tests: never a traceback
_ints = st.one_of(st.integers(-3, 4), st.sampled_from(["", "x", "1.5", "1e9", "-0", "99999999999999999999"]))
_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
                    st.sampled_from(["", "x", "1e-3", "0", "-1", "1e400", "0.5"]))
DISTILL_FUZZ = {"--batch": _ints, "--channels": _ints, "--lr-patch": st.one_of(_ints, st.sampled_from(["12", "13"])),
                "--reuse": _ints, "--stage-step": _ints, "--save-every": _ints, "--lr": _floats, "--mix": _floats,
                "--g-lr": _floats, "--w-r": _floats, "--student-steps-per-g": _ints,
                "--stages": st.sampled_from(["1:1", "1:2", "2:1", "0:1", "1", "a:b", "1:999"]),
                "--mode": st.sampled_from(["noise", "datafree", "generator", "deadleaves", "data", "x"])}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=st.dictionaries(st.sampled_from(sorted(DISTILL_FUZZ)), st.none(), min_size=1, max_size=5).flatmap(
    lambda d: st.fixed_dictionaries({k: DISTILL_FUZZ[k] for k in d})))
def test_distill_fuzzed_options_never_traceback(files, opts):
    out = files["root"] / "fuzz"
    args = ["distill", str(files["teacher"]), "--out", str(out), "--force", "--steps-per-stage", "2", "--eval", "none",
            "--quiet"] + (["--data", str(files["eval"])] if opts.get("--mode") == "data" else [])
    if "--stages" not in opts:
        args += ["--stages", "1:1"]
    for k, v in opts.items():
        args += [k, str(v)]
    result = _invoke(args)
    if result.exit_code == 0:
        assert (out / "run.json").exists(), args
    else:
        _assert_one_error_line(result, args)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tile=_ints, overlap=_ints, scale=st.sampled_from(["2", "3", "0", "x", "-2"]))
def test_upscale_fuzzed_options_never_traceback(files, tile, overlap, scale):
    img = next(files["eval"].iterdir())
    args = ["upscale", str(files["run"] / "stage_01.pt"), str(img), "-o", str(files["out"]), "--tile", str(tile),
            "--overlap", str(overlap), "--scale", scale]
    result = _invoke(args)
    if result.exit_code == 0:
        assert (files["out"] / f"{img.stem}_x2.png").exists(), args
    else:
        _assert_one_error_line(result, args)


def test_the_cli_offers_the_config_choices_without_importing_torch():
    """sr_shrink.choices is the one home of the distill option names: the CLI reads it without torch, and
    DistillConfig refuses what the CLI does not offer."""
    import subprocess
    import sys

    from sr_shrink import choices
    from sr_shrink.distill.config import DistillConfig
    from sr_shrink.errors import SRShrinkError

    code = "import sys, sr_shrink.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing sr_shrink.cli imports torch"
    params = {p.name: p for p in main.commands["distill"].params}
    for option, names in (("mode", choices.MODES), ("block", choices.BLOCKS), ("kd_loss", choices.KD_LOSSES),
                          ("g_kind", choices.G_KINDS), ("teacher_dtype", choices.TEACHER_DTYPES),
                          ("targets", choices.KD_TARGETS), ("data_target", choices.DATA_TARGETS)):
        assert tuple(params[option].type.choices) == names, option
        if option != "data_target":
            with pytest.raises(SRShrinkError, match="choose"):
                DistillConfig(**{option: "nope"}).validate()


@pytest.mark.parametrize("command, resumable", [("bench", False), ("demo", True)])
def test_ctrl_c_mentions_resume_only_where_the_command_has_it(tmp_path, monkeypatch, command, resumable):
    """Ctrl-C in bench (or export, upscale) said 'rerun with --resume to continue from the last checkpoint':
    those commands have no --resume option."""
    import sr_shrink.bench as bench_mod
    import sr_shrink.demo as demo_mod

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_mod, "run_bench", stop)
    monkeypatch.setattr(demo_mod, "run_demo", stop)
    args = ["bench", str(tmp_path)] if command == "bench" else ["demo", "--out", str(tmp_path / "demo"), "--scale", "4"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 130
    want = (f"interrupted; continue with: sr-shrink demo --out {tmp_path / 'demo'} --scale 4 --resume" if resumable
            else "interrupted")  # the demo's own command, with the options it was given
    assert r.stderr.strip().splitlines() == [want]


@pytest.mark.parametrize("raised, expected", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "error: out of memory (one allocation of 40.0 GB): use a smaller --tile (0 runs each image whole)."),
    (MemoryError(), "error: out of memory: use a smaller --tile (0 runs each image whole)."),
])
def test_out_of_memory_is_one_error_line_naming_what_to_lower(files, tmp_path, monkeypatch, raised, expected):
    """``upscale --tile 0`` on a huge image (or a batch too large for the machine) ended in torch's allocator
    traceback; a failed allocation is one line saying what the command can lower. Other errors still propagate."""
    import sr_shrink.upscale as upscale

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(upscale, "upscale_files", fail)
    img = next(files["eval"].iterdir())
    args = ["upscale", str(files["run"] / "stage_01.pt"), str(img), "-o", str(tmp_path / "o")]
    assert one_error_line(_invoke(args)) == expected

    def other(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(upscale, "upscale_files", other)
    result = _invoke(args)
    assert isinstance(result.exception, RuntimeError) and "shape mismatch" in str(result.exception)
