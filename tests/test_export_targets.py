"""The export target registry (issue 19, item 2): one record per target, read by options, graph checks, bench,
demo and the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from conftest import make_tiny_run

from sr_shrink.bench import artifacts
from sr_shrink.cli import main
from sr_shrink.demo import demo_targets
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import GraphInfo, check_graph, options, targets
from sr_shrink.export.options import ExportConfig
from sr_shrink.runtimes import RUNTIMES


def test_registry_refuses_a_second_record_under_one_name():
    before = dict(targets.TARGETS)
    with pytest.raises(ValueError, match="registered twice"):
        targets.register(dataclasses.replace(targets.TARGETS["onnx"], suffix=".other"))
    assert targets.TARGETS == before


def test_old_tables_are_views_of_the_registry():
    reg = targets.TARGETS
    assert tuple(reg) == options.TARGETS == ("onnx", "coreml", "tflite")
    assert options.SUFFIX == {"onnx": ".onnx", "coreml": ".mlpackage", "tflite": ".tflite"}
    assert options.DEFAULT_PRECISION == {"onnx": "fp32", "coreml": "fp16", "tflite": "fp32"}
    assert options.DEFAULT_LAYOUT == {"onnx": "nchw", "coreml": "nchw", "tflite": "nhwc"}
    assert artifacts.TARGETS == {"onnxruntime": "onnx", "litert": "tflite"}
    assert list(demo_targets()) == ["onnx", "tflite", "coreml"]
    for t in reg.values():  # the runner that opens a target's files is picked by the same suffix
        assert RUNTIMES[t.runtime].suffix == t.suffix


def test_cli_target_choices_match_the_registry():
    export = main.commands["export"]
    choices = next(p.type.choices for p in export.params if p.name == "target")
    assert tuple(choices) == tuple(targets.TARGETS)
    precision = next(p.type.choices for p in export.params if p.name == "precision")
    assert tuple(precision) == options.PRECISIONS


def test_record_fields_drive_config_and_graph_checks(monkeypatch):
    assert ExportConfig("onnx", precision="int8").calibrated
    assert not ExportConfig("coreml", precision="int8").calibrated
    with pytest.raises(SRShrinkError, match="--shapes applies to Core ML only"):
        ExportConfig("onnx", shapes="256x256,512x512")
    onnx = targets.TARGETS["onnx"]
    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(
        onnx, options=onnx.options | {"shapes"}, quantizes_activations=False))
    assert ExportConfig("onnx", shapes="256x256,512x512").shapes == ((256, 256), (512, 512))
    assert not ExportConfig("onnx", precision="int8").calibrated
    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(onnx, fixed_size=(64, 32)))
    assert ExportConfig("onnx").input_size == (64, 32)
    graph = GraphInfo(ops={"Conv": 1, "DepthToSpace": 1}, max_rank=4)
    assert check_graph("onnx", graph)["ops_allowed"]
    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(onnx, allowed_ops=frozenset({"Conv"})))
    with pytest.raises(SRShrinkError, match="DepthToSpace"):
        check_graph("onnx", graph)


def _int8_entry(delta: float, options: dict | None = None, precision: str = "int8") -> dict:
    return {"file": "stage_02_int8.onnx", "target": "onnx", "precision": precision, "options": options or {},
            "verification": {"delta_psnr_y": delta}}


def test_int8_note_names_the_closer_options_not_already_given():
    from sr_shrink.export.verify import INT8_NEAR, int8_note

    closer = targets.get_target("onnx").int8_closer
    line = int8_note(_int8_entry(-0.1846), closer)
    assert line.startswith("stage_02_int8.onnx: int8 costs 0.185 dB")
    for flag in ("--no-reduce-range", "--float-stream", "--float-first-conv", "--qat 1000", "--precision w8a16"):
        assert flag in line
    line = int8_note(_int8_entry(-0.068, {"reduce_range": False, "float_stream": True}), closer)
    assert "--float-stream" not in line and "--no-reduce-range" not in line and "--qat 1000" in line
    assert "--float-first-conv" in line
    # --reduce-range (the default's 7-bit weights, given explicitly) is not --no-reduce-range
    assert "--no-reduce-range" in int8_note(_int8_entry(-0.1, {"reduce_range": True}), closer)
    assert int8_note(_int8_entry(-INT8_NEAR / 2), closer) is None  # close enough: no note
    assert int8_note(_int8_entry(+0.05), closer) is None
    assert int8_note(_int8_entry(-0.2, precision="w8a16"), closer) is None
    assert int8_note(_int8_entry(-0.2), ()) is None  # a target with nothing measured closer (Core ML)
    qat = {**_int8_entry(-0.01, {"qat_steps": 1000}), "qat_steps": 1000, "qat_delta_psnr_y": -0.05}
    assert "costs 0.050 dB" in int8_note(qat, closer)  # after --qat: against the original fp32 student
    assert int8_note({**qat, "qat_delta_psnr_y": -0.02}, closer) is None
    given = {"calib_method": "percentile", "qat_steps": 1000}
    tfl = int8_note(_int8_entry(-0.1, given), targets.get_target("tflite").int8_closer)
    assert "--calib-method" not in tfl and "--qat" not in tfl and "--precision w8a16" in tfl


def test_int8_notes_say_one_advice_once_for_every_file_it_fits():
    from sr_shrink.export.verify import int8_note, int8_notes

    def entry(stage: int, delta: float, options: dict | None = None) -> dict:
        return {**_int8_entry(delta, options), "file": f"stage_0{stage}_int8.onnx"}

    closer = targets.get_target("onnx").int8_closer
    files = [entry(1, -0.137), entry(2, -0.01), entry(3, -0.082), entry(4, -0.073, {"float_stream": True})]
    lines = int8_notes(files, lambda _e: closer)
    assert len(lines) == 2  # stage 2 is close enough; stage 4 was given --float-stream, so its advice differs
    assert lines[0].startswith("stage_01_int8.onnx, stage_03_int8.onnx: int8 costs 0.137, 0.082 dB Y-PSNR against "
                               "their fp32 students here (more than 0.03); measured closer on the teacher panel: "
                               "--no-reduce-range")
    assert lines[1] == int8_note(files[3], closer) and "--float-stream" not in lines[1]
    assert "against its fp32 student" in lines[1]
    assert int8_notes(files[1:2], lambda _e: closer) == []


def test_int8_notes_say_when_one_image_carries_most_of_the_loss():
    """An int8 file's loss often sits on one near-exact image (BENCHMARKS 31); the note says so when one image
    carries more than half of every file's loss, from ``verification.per_image``."""
    from sr_shrink.export.verify import int8_notes

    def entry(stage: int, per: dict[str, tuple[float, float]]) -> dict:
        e = _int8_entry(sum(a - b for a, b in per.values()) / len(per))
        e["file"] = f"stage_0{stage}_int8.onnx"
        e["verification"]["per_image"] = {n: {"psnr_y": a, "torch_psnr_y": b} for n, (a, b) in per.items()}
        return e

    closer = targets.get_target("onnx").int8_closer
    flat = entry(1, {"ladybird": (50.6, 51.0), "bridge": (37.99, 38.0), "coffee": (33.99, 34.0)})
    flat4 = entry(2, {"ladybird": (50.5, 51.04), "bridge": (37.98, 38.0), "coffee": (33.99, 34.0)})
    line, = int8_notes([flat, flat4], lambda _e: closer)
    assert ("int8 costs 0.140, 0.190 dB Y-PSNR against their fp32 students here (more than 0.03); most of it on "
            "ladybird, where the student is at 51.0 dB (rounding noise") in line
    spread = entry(1, {"ladybird": (50.9, 51.0), "bridge": (37.9, 38.0), "coffee": (33.9, 34.0)})
    assert "most of it" not in int8_notes([spread], lambda _e: closer)[0]  # a third each
    other = entry(2, {"ladybird": (51.0, 51.0), "bridge": (37.7, 38.0), "coffee": (34.0, 34.0)})
    assert "most of it" not in int8_notes([flat, other], lambda _e: closer)[0]  # not the same image
    assert "most of it" not in int8_notes([_int8_entry(-0.1)], lambda _e: closer)[0]  # no per_image record


def test_every_int8_option_named_is_an_export_option_of_its_target():
    flags = {o for p in main.commands["export"].params for o in (*p.opts, *p.secondary_opts)}
    names = {f.name for f in dataclasses.fields(ExportConfig)}
    seen = 0
    for t in targets.TARGETS.values():
        for o in t.int8_closer:
            seen += 1
            assert o.args.split()[0] in flags, o
            if o.field is not None:
                assert o.field in names and o.field in options.FILE_OPTIONS, o
    assert seen >= 5


def test_cli_export_prints_the_int8_note(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sr_shrink.export import verify

    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    monkeypatch.setattr(verify, "INT8_NEAR", -1.0)  # every int8 file "loses" more than that
    res = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--precision", "int8", "--out",
                                    str(tmp_path / "x"), "--calib-samples", "2", "--float-stream"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "stage_01_int8.onnx: int8 costs" in text and "--qat 1000" in text and "--float-stream (" not in text


def test_options_an_export_does_not_use_get_a_note():
    """``--calib`` and ``--equalize`` on an fp32 file, ``--equalize`` on w8a16: accepted (bench and scripts pass
    one set of options to every precision) but said to do nothing, instead of silently; used options get none."""
    from sr_shrink.export.options import unused_options_note

    def note(precision, **opts):
        return unused_options_note(opts, ExportConfig(target="onnx", precision=precision, **opts))

    line = note("fp32", calib="generator", equalize=True, calib_samples=8)
    assert line == ("--calib (for int8 and w8a16), --calib-samples (for int8 and w8a16), --equalize (for int8) do "
                    "nothing for fp32 onnx files; ignored.")
    assert note("w8a16", equalize=True) == "--equalize (for int8) does nothing for w8a16 onnx files; ignored."
    assert note("fp32", bias_correction=False).startswith("--no-bias-correction (for int8 and w8a16) does")
    assert note("int8", calib="generator", equalize=True, calib_samples=8) is None
    assert note("fp32") is None and note("fp32", input_size=(32, 32)) is None


def test_cli_export_says_an_unused_option_does_nothing(tmp_path):
    from click.testing import CliRunner

    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    res = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--out", str(tmp_path / "x"),
                                    "--equalize"])
    assert res.exit_code == 0, res.output
    assert "--equalize (for int8) does nothing for fp32 onnx files; ignored." in " ".join(res.output.split())


@pytest.mark.skipif(not (importlib.util.find_spec("ai_edge_litert") and importlib.util.find_spec("litert_torch")),
                    reason="litert not installed")
def test_cli_tflite_export_says_its_fixed_input_size(tmp_path):
    """A TFLite file takes one LR size (256x256 by default) and an app must tile larger images; export printed
    that for Core ML packages only, so the one-line table gave no hint that the file refuses a 720p frame."""
    from click.testing import CliRunner

    run = make_tiny_run(tmp_path / "r", n_stages=2, seed=0)
    res = CliRunner().invoke(main, ["export", str(run), "--target", "tflite", "--out", str(tmp_path / "x"),
                                    "--input-size", "24x32"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    # one line for the files alike (it was repeated word for word for every stage)
    assert ("stage_01_fp32.tflite, stage_02_fp32.tflite: each takes LR 24x32 only (input serving_default_lr: "
            "1x24x32x3 float32, a fixed size): cut larger images into overlapping 24x32 tiles") in text, text
    assert text.count("takes LR") == 1, text
    one = CliRunner().invoke(main, ["export", str(run / "stage_02.pt"), "--target", "tflite", "--out",
                                    str(tmp_path / "y"), "--input-size", "24x32"])
    assert "stage_02_fp32.tflite: takes LR 24x32 only (input" in " ".join(one.output.split()), one.output
    onnx = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--out", str(tmp_path / "o")])
    assert onnx.exit_code == 0 and "takes LR" not in onnx.output  # free size: nothing to say


def test_cli_export_table_shows_every_psnr_with_four_decimals(tmp_path, monkeypatch):
    """The table printed the rounded floats as they came: '32.054 (32.054)' on one row, '32.0082 (32.0082)' on
    the next, as if one were measured less precisely."""
    from click.testing import CliRunner

    import sr_shrink.export as export_pkg

    entry = {"file": "stage_03_fp32.onnx", "path": str(tmp_path / "stage_03_fp32.onnx"), "target": "onnx",
             "size_bytes": 90421, "verified": True,
             "verification": {"psnr_y": 32.054, "torch_psnr_y": 32.05, "delta_psnr_y": 0.004, "tolerance_db": 0.001}}
    monkeypatch.setattr(export_pkg, "export_run", lambda *a, **k: [entry])
    res = CliRunner().invoke(main, ["export", str(make_tiny_run(tmp_path / "r")), "--target", "onnx"],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "32.0540 (32.0500)" in res.output, res.output
