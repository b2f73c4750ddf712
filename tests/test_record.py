"""run.json as typed records (RunRecord / StageRecord) and the run's teacher loaded once per RunDir."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_run

import sr_shrink.teachers
from sr_shrink.distill import DistillConfig, distill
from sr_shrink.errors import SRShrinkError
from sr_shrink.export.qat import run_teacher
from sr_shrink.record import RunRecord, StageRecord
from sr_shrink.run import RunDir
from sr_shrink.teachers import sha256_file


def test_a_distilled_run_json_reads_and_writes_back_the_same(tiny_teacher, tmp_path):
    cfg = DistillConfig(stage_start=1, stage_end=2, steps_per_stage=3, channels=4, batch=2, lr_patch=12, pool=4,
                        save_every=2, mode="datafree")
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu")
    text = (tmp_path / "r" / "run.json").read_text()
    rec = RunRecord.from_dict(json.loads(text))
    assert json.dumps(rec.to_dict(), indent=2) + "\n" == text and rec.to_dict() == run  # same keys, same order
    assert [type(s) for s in rec.stages] == [StageRecord, StageRecord] and rec.stages[1].checkpoint == "stage_02.pt"
    assert rec.mode == "datafree" and rec.complete is True and rec.extra == {}
    assert rec.stage(2).n_blocks == 2 and rec.stage(3) is None


def test_old_and_odd_run_json_load_and_round_trip():
    old = {"scale": 2, "teacher": {"path": "t.pt"}, "stages": [{"stage": 1, "checkpoint": "stage_01.pt"}]}
    rec = RunRecord.from_dict(old)
    assert rec.mode is None and rec.pool is None and rec.stages[0].val_psnr_y is None and rec.to_dict() == old
    odd = {"note": "by hand", "scale": "2", "teacher": "odd", "complete": None, "stages": [{"stage": 1.5}, 3]}
    rec = RunRecord.from_dict(odd)
    assert rec.scale is None and rec.teacher is None and rec.extra == {"note": "by hand", "scale": "2",
                                                                       "teacher": "odd", "complete": None}
    assert list(rec.to_dict()) == list(odd) and rec.stages[0].extra == {"stage": 1.5}
    assert rec.get("note") == "by hand" and rec.get("mode", "?") == "?"


def test_keys_are_written_in_the_order_first_set():
    rec = RunRecord(scale=2, mode="noise", stages=[], complete=False)
    rec.pool = {"images": 4}  # a fresh --time-budget run: the pool, then the plan
    rec.time_budget = {"minutes": 1}
    rec.complete = True  # set again: stays where it was
    assert list(rec.to_dict()) == ["scale", "mode", "stages", "complete", "pool", "time_budget"]
    resumed = RunRecord(scale=2, stages=[], complete=False)
    resumed.time_budget = {"minutes": 1}  # a resumed one takes the plan over first
    resumed.resumed_from = [{"stage": 2, "step": 4}]
    resumed.pool = {"images": 4}
    assert list(resumed.to_dict()) == ["scale", "stages", "complete", "time_budget", "resumed_from", "pool"]
    again = RunRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert list(again.to_dict()) == list(rec.to_dict())


def _teacher_run(tmp_path, teacher, sha=None):
    run = make_tiny_run(tmp_path / "run")
    data = json.loads((run / "run.json").read_text())
    data["teacher"] = {"path": str(teacher), "sha256": sha or sha256_file(teacher), "arch": "edsr",
                       "value_range": 1.0}
    (run / "run.json").write_text(json.dumps(data))
    return RunDir.open(run)


def test_the_run_teacher_is_loaded_once(tiny_teacher, tmp_path, monkeypatch):
    calls = []
    real = sr_shrink.teachers.load_teacher
    monkeypatch.setattr(sr_shrink.teachers, "load_teacher", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    rd = _teacher_run(tmp_path, tiny_teacher)
    first = rd.load_teacher()
    net, rec = run_teacher(rd, 2)  # export --qat
    assert net is first.net and rd.load_teacher().net is net and len(calls) == 1
    assert calls[0][1]["value_range"] == 1.0 and rec == {"path": str(tiny_teacher), "source": "run.json"}
    assert first.source == "run.json" and rd.same_teacher() is True
    other = rd.load_teacher(path=tiny_teacher)  # --teacher: loaded as given, not the run's record
    assert other.source == "--teacher" and other.net is not net and len(calls) == 2
    assert run_teacher(rd, 2, teacher=tiny_teacher)[0] is other.net and len(calls) == 2


def test_the_run_teacher_errors_and_hash(tiny_teacher, tmp_path):
    rd = _teacher_run(tmp_path, tiny_teacher, sha="0" * 64)
    assert rd.same_teacher() is False
    assert run_teacher(rd, 2)[1]["note"] == "sha256 differs from the teacher the run was distilled from"
    rd.run["teacher"]["path"] = "gone.pt"
    with pytest.raises(SRShrinkError, match="names teacher 'gone.pt', which is not there; put the file back"):
        rd.load_teacher()
    with pytest.raises(SRShrinkError, match="which is not there; --qat fine-tunes against the teacher"):
        run_teacher(rd, 2)
