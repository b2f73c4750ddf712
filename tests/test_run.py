"""RunDir: the one reader of a run folder (stage files, run.json, teacher path, generator, export.json)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import make_tiny_run, one_error_line

from sr_shrink.cli import main
from sr_shrink.distill import DistillConfig, distill
from sr_shrink.errors import SRShrinkError
from sr_shrink.run import RunDir


def test_open_a_folder_and_a_single_stage_file(tiny_run):
    run = RunDir.open(tiny_run)
    assert run.root == tiny_run and sorted(run.stages) == [1, 2] and run.scale == 2
    assert run.stages[2] == tiny_run / "stage_02.pt" and run.generator is None
    assert run.stage_record(2)["val_psnr_y"] == 32.0 and run.stage_record(9) == {}
    assert run.exports_dir == tiny_run / "exports"
    one = RunDir.open(tiny_run / "stage_01.pt")
    assert one.stages == {1: tiny_run / "stage_01.pt"} and one.run["mode"] == "datafree"
    (tiny_run / "generator.pt").write_bytes(b"g")
    assert RunDir.open(tiny_run).generator == tiny_run / "generator.pt"
    assert RunDir.open(run) is run


def test_select_stages(tiny_run):
    run = RunDir.open(tiny_run)
    assert run.select("all") == [1, 2] and run.select("last") == [2] and run.select(" 1 ") == [1]
    with pytest.raises(SRShrinkError, match=r"no stage 3; this run has stage\(s\) 1, 2"):
        run.select(3)
    with pytest.raises(SRShrinkError, match="pass a stage number"):
        run.select("first")


def test_a_stage_file_asked_for_another_stage_says_so(tiny_run):
    """export RUN/stage_01.pt --stage 2 said 'RUN: no stage 2; this run has stage(s) 1' of a run that has stage 2:
    the file holds one stage; the error says so and names the folder to pass."""
    line = one_error_line(CliRunner().invoke(main, ["export", str(tiny_run / "stage_01.pt"), "--target", "onnx",
                                                    "--stage", "2"]))
    assert line == (f"error: --stage 2: {tiny_run / 'stage_01.pt'} holds stage 1 alone; drop --stage, or pass the "
                    f"run folder {tiny_run} to pick among its stages.")
    assert RunDir.open(tiny_run / "stage_01.pt").select("1") == [1]


def test_bad_folders_and_run_json(tmp_path, tiny_run):
    with pytest.raises(SRShrinkError, match="no such run directory"):
        RunDir.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SRShrinkError, match="not a distill run"):
        RunDir.open(tmp_path / "empty")
    (tiny_run / "run.json").write_text("{broken")
    with pytest.raises(SRShrinkError, match="unreadable run.json"):
        RunDir.open(tiny_run)
    (tiny_run / "run.json").write_text("[1, 2]")
    with pytest.raises(SRShrinkError, match="does not hold a JSON object"):
        RunDir.open(tiny_run)
    (tiny_run / "run.json").unlink()
    run = RunDir.open(tiny_run)  # export works without run.json; bench asks for it
    assert run.run == {} and run.scale is None and run.missing_stages() == []
    with pytest.raises(SRShrinkError, match="no run.json here"):
        run.require_run("scale")


def test_missing_stages_and_require_run(tiny_run):
    (tiny_run / "stage_01.pt").unlink()
    run = RunDir.open(tiny_run)
    assert sorted(run.stages) == [2] and run.missing_stages() == [1]
    assert run.require_run("scale", "stages")["scale"] == 2
    with pytest.raises(SRShrinkError, match="has no seeds"):
        run.require_run("seeds")


def test_teacher_path_rules(tiny_run, tmp_path, monkeypatch):
    run = RunDir.open(tiny_run)
    assert run.teacher_path() is None  # run.json names "tiny", which is not there
    beside = tiny_run / "teacher.pt"
    beside.write_bytes(b"t")
    run.run["teacher"]["path"] = "teacher.pt"  # relative to the run folder
    monkeypatch.chdir(tmp_path)
    assert run.teacher_path() == tiny_run / "teacher.pt"
    (tmp_path / "teacher.pt").write_bytes(b"cwd")  # relative to the current folder wins, as given
    assert run.teacher_path().resolve() == (tmp_path / "teacher.pt").resolve()
    run.run["teacher"]["path"] = str(beside.resolve())  # absolute
    assert run.teacher_path() == beside.resolve()
    run.run["teacher"] = "not a dict"
    assert run.teacher_path() is None


def test_a_relative_teacher_path_is_found_from_another_folder(tiny_teacher, tmp_path, monkeypatch):
    """run.json used to record the teacher path as given alone: a run started with ``../t/teacher.pt`` and resumed,
    exported with --qat or benched from another folder lost its teacher. It records where the file was too."""
    (tmp_path / "a" / "t").mkdir(parents=True)
    (tmp_path / "b" / "c").mkdir(parents=True)
    shutil.copy(tiny_teacher, tmp_path / "a" / "t" / "teacher.pt")
    monkeypatch.chdir(tmp_path / "a")
    distill("t/teacher.pt", tmp_path / "run", DistillConfig(scale=2, stage_start=1, stage_end=1, steps_per_stage=1,
                                                             channels=4, batch=2, lr_patch=12),
            eval_dir="none", quiet=True, device="cpu")
    teacher = json.loads((tmp_path / "run" / "run.json").read_text())["teacher"]
    assert teacher["path"] == "t/teacher.pt" and teacher["abs_path"] == str(tmp_path / "a" / "t" / "teacher.pt")
    monkeypatch.chdir(tmp_path / "b" / "c")
    assert RunDir.open(tmp_path / "run").teacher_path() == tmp_path / "a" / "t" / "teacher.pt"
    del teacher["abs_path"]  # a run.json of an older version: the path as given alone
    assert RunDir(tmp_path / "run", {"teacher": teacher}, {}).teacher_path() is None


def test_find_the_run_of_a_model_file(tiny_run, tmp_path):
    (tiny_run / "exports" / "bench_32x32").mkdir(parents=True)
    exports = tiny_run / "exports"
    for p in (tiny_run / "stage_01.pt", exports / "m.onnx", exports / "bench_32x32" / "m.tflite"):
        p.touch()
        assert RunDir.find(p).root == tiny_run.resolve()
    (tmp_path / "loose").mkdir()
    assert RunDir.find(tmp_path / "loose" / "m.onnx") is None


def test_export_index_merge_and_damage(tiny_run):
    run = RunDir.open(tiny_run)
    assert run.read_index() == {"exports": []}
    out = run.exports_dir
    path = run.update_index([{"file": "b.onnx", "stage": 2, "path": "/abs/b.onnx"}, {"file": "a.onnx", "stage": 1}])
    assert path == out / "export.json"
    data = json.loads(path.read_text())
    assert [e["file"] for e in data["exports"]] == ["a.onnx", "b.onnx"] and "path" not in data["exports"][1]
    assert data["run"] == {"path": str(tiny_run), "scale": 2, "mode": "datafree", "seed": 0, "teacher_psnr_y": 33.0,
                           "bicubic_psnr_y": 29.0}
    run.update_index([{"file": "a.onnx", "stage": 1, "verified": True}])
    assert [e.get("verified") for e in run.read_index()["exports"]] == [True, None]
    assert [p for _, p in run.index_paths()] == [out / "a.onnx", out / "b.onnx"]
    path.write_text("{damaged")
    assert run.read_index()["exports"] == []
    run.update_index([{"file": "c.onnx"}])
    assert [e["file"] for e in run.read_index()["exports"]] == ["c.onnx"]


def test_write_run_is_atomic_and_kept(tmp_path):
    run = RunDir.open(make_tiny_run(tmp_path / "r", n_stages=1))
    new = {**run.run, "complete": False, "note": "rewritten"}
    path = run.write_run(new)
    assert json.loads(path.read_text()) == new and run.run is new
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".run.json")] == []  # no temp left


def test_commands_share_the_rules(tiny_run):
    """export and bench read a run through RunDir: the same one-line error for the same bad run.json."""
    (tiny_run / "run.json").write_text("{broken")
    for args in (["export", str(tiny_run), "--target", "onnx"], ["bench", str(tiny_run)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and "unreadable run.json" in res.output and res.output.count("\n") == 1, args


def test_create_a_run_folder_for_a_writer(tmp_path):
    run = RunDir.create(tmp_path / "new" / "run")
    assert run.root.is_dir() and run.run == {} and run.stages == {} and run.generator is None
    run.write_run({"scale": 2, "stages": []})
    again = RunDir.create(run.root)
    assert again.run == {"scale": 2, "stages": []} and again.scale == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(SRShrinkError, match="is not a folder"):
        RunDir.create(tmp_path / "file")


def test_teacher_overrides_reload_the_teacher_as_distilled(tmp_path):
    from sr_shrink.run import RunDir

    rd = RunDir.create(tmp_path / "r")
    rd.write_run({"teacher": {"arch": "edsr", "value_range": 255.0, "config": {"res_scale": 0.1}}})
    assert RunDir.create(tmp_path / "r").teacher_overrides() == {"value_range": 255.0, "res_scale": 0.1}
    rd.write_run({"teacher": {"arch": "ESRGAN", "value_range": 1.0, "config": {"res_scale": 0.2}}})
    assert RunDir.create(tmp_path / "r").teacher_overrides() == {"value_range": 1.0, "res_scale": None}
    rd.write_run({"teacher": "odd"})
    assert RunDir.create(tmp_path / "r").teacher_overrides() == {"value_range": None, "res_scale": None}
