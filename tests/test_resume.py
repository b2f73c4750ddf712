"""Kill and resume: a run killed with SIGKILL and resumed writes the same stage checkpoints, bit for bit, as a run
that never stopped (one process and two gloo processes); a resume with another teacher or recipe is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import one_error_line

from sr_shrink.distill import DistillConfig, distill
from sr_shrink.errors import SRShrinkError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _args(teacher: Path, out: Path, steps: int, stages: str = "1:3") -> list[str]:
    return ["distill", str(teacher), "--out", str(out), "--stages", stages, "--steps-per-stage", str(steps),
            "--channels", "4", "--batch", "4", "--lr-patch", "12", "--save-every", "4", "--eval", "none", "--quiet",
            "--threads", "1", "--device", "cpu", "--mode", "datafree", "--student-steps-per-g", "3", "--seed", "7"]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sr_shrink.cli", *args]


def _torchrun(args: list[str]) -> list[str]:
    with socket.socket() as s:  # a free port, so parallel test runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "sr_shrink.cli", *args]


def _kill_when(cmd: list[str], ready, timeout: float = 240) -> None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group as soon as ``ready()`` holds."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.seek(0)
        err = log.read().decode(errors="replace")[-2000:]
    assert not finished, f"the run ended (rc {proc.returncode}) before it could be killed: {err}"
    assert time.time() < deadline, f"the run never reached the kill point: {err}"


def _in_stage_2(folder: Path):
    """Return a cheap check that holds once run.json lists a finished stage 1 (state.pt is then at stage 2)."""
    def ready() -> bool:
        try:
            return len(json.loads((folder / "run.json").read_text())["stages"]) >= 1
        except (OSError, ValueError, KeyError):  # not there yet, or replaced while reading
            return False
    return ready


def _weights(folder: Path) -> dict[str, dict]:
    return {p.name: torch.load(p, weights_only=True)["state_dict"] for p in sorted(folder.glob("stage_*.pt"))}


def _assert_same_checkpoints(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert list(wa) == list(wb) == ["stage_01.pt", "stage_02.pt", "stage_03.pt"]
    for name in wa:
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), f"{name} {key} differs after resume"


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_sigkill_mid_stage_then_resume_is_bit_exact(tiny_teacher, tmp_path):
    whole, killed, lost = tmp_path / "whole", tmp_path / "killed", tmp_path / "lost"
    _run(_cli(_args(tiny_teacher, whole, 40)))
    # kill inside stage 2 or 3, at a time set by the OS scheduler: whatever checkpoint is the last, it must match
    _kill_when(_cli(_args(tiny_teacher, killed, 40)), _in_stage_2(killed))
    assert (killed / "state.pt").exists() and not (killed / "stage_03.pt").exists()
    shutil.copytree(killed, lost)
    _run(_cli(_args(tiny_teacher, killed, 40) + ["--resume"]))
    _assert_same_checkpoints(whole, killed)
    run = json.loads((killed / "run.json").read_text())
    assert run["complete"] and [s["n_blocks"] for s in run["stages"]] == [1, 2, 3]
    (picked_up,) = run["resumed_from"]
    assert picked_up["stage"] in (2, 3) and picked_up["step"] % 4 == 0
    assert "resumed_from" not in json.loads((whole / "run.json").read_text())
    assert not (killed / "state.pt").exists()
    # negative control: without state.pt (RNG, replay buffer, optimiser) stage 2 restarts from the stage 1 file,
    # and the result is not bit-exact -- which is what the comparison above would catch
    (lost / "state.pt").unlink()
    _run(_cli(_args(tiny_teacher, lost, 40) + ["--resume"]))
    with pytest.raises(AssertionError, match="differs after resume"):
        _assert_same_checkpoints(whole, lost)


def test_ddp_two_gloo_processes_kill_and_resume(tiny_teacher, tmp_path):
    whole, killed, single = tmp_path / "whole", tmp_path / "killed", tmp_path / "single"
    _run(_torchrun(_args(tiny_teacher, whole, 24)))
    _run(_cli(_args(tiny_teacher, single, 24)))
    run = json.loads((whole / "run.json").read_text())
    assert run["world_size"] == 2 and [s["n_blocks"] for s in run["stages"]] == [1, 2, 3]
    # rank 1 trains on its own batches: two processes do not reproduce the one-process weights
    w2, w1 = _weights(whole)["stage_03.pt"], _weights(single)["stage_03.pt"]
    assert any(not torch.equal(w2[k], w1[k]) for k in w2)
    _kill_when(_torchrun(_args(tiny_teacher, killed, 24)), _in_stage_2(killed))
    state = torch.load(killed / "state.pt", weights_only=True)
    assert len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"], state["ranks"][1]["rng"]), "ranks share one RNG state"
    assert not torch.equal(state["ranks"][0]["buffer"]["x"], state["ranks"][1]["buffer"]["x"])
    shutil.copytree(killed, tmp_path / "copy")
    with pytest.raises(SRShrinkError, match="started with 2 process"):  # one process cannot resume a two-rank run
        distill(str(tiny_teacher), tmp_path / "copy", _cfg_from_args(steps_per_stage=24), eval_dir="none",
                quiet=True, device="cpu", resume=True)
    _run(_torchrun(_args(tiny_teacher, killed, 24) + ["--resume"]))
    # bit-exact with the uninterrupted two-process run: had both ranks restored rank 0's RNG, they would have drawn
    # the same batches after the resume and the weights would differ
    _assert_same_checkpoints(whole, killed)


def test_ddp_refused_run_folder_stops_every_rank_with_one_error_line(tiny_teacher, tmp_path):
    """Rank 0 refused a folder that already holds a run while rank 1 waited at the barrier, then died there with a
    gloo traceback. Rank 0's refusal now stops every rank and is printed once, with no traceback from any rank
    (torchrun's own report of the failed workers follows; it stops a rank still closing with SIGTERM)."""
    out = tmp_path / "held"
    _run(_cli(_args(tiny_teacher, out, 4, stages="1:1")))
    r = subprocess.run(_torchrun(_args(tiny_teacher, out, 4, stages="1:1")), env=ENV, capture_output=True, text=True,
                       timeout=150)
    assert r.returncode != 0
    said = (f"error: {out}: already holds a run (of {tiny_teacher.name}, finished); pass another --out for a new run, "
            "--resume to continue this one or --force to overwrite it.")  # the teacher: whose run it is
    assert r.stderr.count(said) == 1, r.stderr[-3000:]
    assert "[rank1]" not in r.stderr and not re.search(r'File ".*sr_shrink', r.stderr), r.stderr[-3000:]
    assert "terminate called" not in r.stderr, r.stderr[-3000:]  # a rank aborting as the group closed


def test_ddp_budgeted_run_checks_its_pace_on_every_rank(tiny_teacher, tmp_path):
    """Under --time-budget every rank asks rank 0 for the stage's steps every 10 steps (a cut must end the stage on
    every rank at once); a check that only some ranks made would hang the run at its first broadcast."""
    out = tmp_path / "b"
    args = [a for a in _args(tiny_teacher, out, 24) if a not in ("--steps-per-stage", "24")]
    r = subprocess.run(_torchrun([*args, "--time-budget", "0.3"]), env=ENV, capture_output=True, text=True,
                       timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["complete"]
    assert run["time_budget"]["stage_steps"] == [s["steps"] for s in run["stages"]] and run["stages"][0]["steps"] > 10
    assert run["time_budget"]["spent_seconds"] <= 0.3 * 60 + 5


def _cfg_from_args(**kw) -> DistillConfig:
    base = dict(stage_start=1, stage_end=3, steps_per_stage=40, channels=4, batch=4, lr_patch=12, save_every=4,
                mode="datafree", student_steps_per_g=3, seed=7)
    return DistillConfig(**{**base, **kw})


def _other_teacher(path: Path) -> Path:
    from conftest import make_tiny_teacher

    make_tiny_teacher(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["tail.1.bias"] += 0.01
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("change, message", [
    (dict(channels=8), "--channels 4, not 8"),
    (dict(stage_end=4), "--stages 1:3, not 1:4"),
    (dict(stage_step=2), "--stage-step 1, not 2"),
    (dict(mode="deadleaves"), "--mode datafree, not deadleaves"),
    (dict(lr_patch=16), "--lr-patch 12, not 16"),
    (dict(seed=8), "--seed 7, not 8"),
    (dict(teacher_dtype="bf16"), "--teacher-dtype auto, not bf16"),
    (dict(pool=0), "--pool 512, not 0"),
    (dict(block="plain"), "--block rep, not plain"),
])
def test_resume_refuses_another_recipe(tiny_teacher, tmp_path, change, message):
    distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
            device="cpu")
    with pytest.raises(SRShrinkError, match=message):
        distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2, **change), eval_dir="none",
                quiet=True, device="cpu", resume=True)


def test_resume_refuses_another_teacher(tiny_teacher, tmp_path):
    distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
            device="cpu")
    other = _other_teacher(tmp_path / "other.pt")
    with pytest.raises(SRShrinkError, match="another teacher"):
        distill(str(other), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
                device="cpu", resume=True)
    # the same teacher resumes (a finished run: nothing left to train, run.json unchanged in its stages)
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
                  device="cpu", resume=True)
    assert run["complete"] and len(run["stages"]) == 3 and "resumed_from" not in run


def test_resume_after_a_stage_file_was_deleted_trains_it_and_the_stages_grown_from_it(tiny_teacher, tmp_path):
    """A finished run with stage_02.pt deleted: --resume used to keep stage 3, train a stage 3 again on top of it
    and list [1, 3, 3] in run.json, stage 2 gone for good."""
    distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
            device="cpu")
    (tmp_path / "r" / "stage_02.pt").unlink()
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
                  device="cpu", resume=True)
    assert run["complete"] and [(s["stage"], s["n_blocks"]) for s in run["stages"]] == [(1, 1), (2, 2), (3, 3)]
    assert run["resumed_from"] == [{"stage": 2, "step": 0, "from_collapsed": True}]
    assert [p.name for p in sorted((tmp_path / "r").glob("stage_*.pt"))] == ["stage_01.pt", "stage_02.pt",
                                                                            "stage_03.pt"]


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_resume_after_a_stage_file_was_corrupted_trains_it_and_the_stages_grown_from_it(tiny_teacher, tmp_path,
                                                                                        damage):
    """A finished run whose stage_02.pt was cut short or overwritten: --resume used to see the file, keep all three
    stages and train nothing, so export failed half way. It is now retrained like a missing one, with a note."""
    from click.testing import CliRunner

    from sr_shrink.cli import main
    from sr_shrink.models.student import load_student

    out = tmp_path / "r"
    args = _args(tiny_teacher, out, 2)
    assert CliRunner().invoke(main, args).exit_code == 0
    path = out / "stage_02.pt"
    path.write_bytes(path.read_bytes()[:200] if damage == "truncated" else b"\x00junk" * 50)
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("note:")]
    reason = "truncated or damaged" if damage == "truncated" else "its bytes are not a PyTorch checkpoint"
    assert notes == [f"note: {path}: not a readable sr-shrink checkpoint ({reason}); training stage 2 and the stages "
                     "after it again."]  # not torch's message about weights_only defaults
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and [(s["stage"], s["n_blocks"]) for s in run["stages"]] == [(1, 1), (2, 2), (3, 3)]
    assert run["resumed_from"] == [{"stage": 2, "step": 0, "from_collapsed": True}]
    assert load_student(path)[0].n_blocks == 2 and load_student(out / "stage_03.pt")[0].n_blocks == 3


def _stopped_in_stage_2(teacher: Path, out: Path) -> None:
    """Run the three-stage recipe of ``_args(teacher, out, 8)`` and stop it at stage 2's step-4 checkpoint, as a kill
    would: stage_01.pt, run.json and state.pt (stage 2, step 4) are left."""
    from sr_shrink.distill.train import Callbacks

    class Stop(Exception):
        pass

    def saved(idx, step):
        if (idx, step) == (1, 4):
            raise Stop

    with pytest.raises(Stop):
        distill(str(teacher), out, _cfg_from_args(steps_per_stage=8), eval_dir="none", quiet=True, device="cpu",
                callbacks=Callbacks(saved=saved))
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 4 and not (out / "stage_02.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_resume_with_an_unreadable_state_goes_on_from_the_stage_files(tiny_teacher, tmp_path, damage):
    """A run killed in stage 2 whose state.pt was cut short or overwritten: --resume used to fail with 'rerun with
    --force', which would have thrown stage 1 away. It now goes on as if state.pt were missing (stage 2 starts again,
    grown from stage_01.pt, which is kept as it was), with one note naming the file."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    out = tmp_path / "r"
    _stopped_in_stage_2(tiny_teacher, out)
    stage_1 = (out / "stage_01.pt").read_bytes()
    state = out / "state.pt"
    state.write_bytes(state.read_bytes()[:300] if damage == "truncated" else b"\x00junk" * 50)
    r = CliRunner().invoke(main, [*_args(tiny_teacher, out, 8), "--resume"])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(f"note: {state}: not a readable checkpoint ("), r.output
    assert notes[0].endswith("); resuming from the finished stage files instead: stage 2 starts again from its "
                             "first step, grown from stage_01.pt.")
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and [(s["stage"], s["n_blocks"]) for s in run["stages"]] == [(1, 1), (2, 2), (3, 3)]
    assert run["resumed_from"] == [{"stage": 2, "step": 0, "from_collapsed": True}]
    assert (out / "stage_01.pt").read_bytes() == stage_1 and not state.exists()


@pytest.mark.parametrize("damage", ["truncated", "not an object"])
def test_an_unreadable_run_json_refuses_resume_in_one_line_and_force_starts_over(tiny_teacher, tmp_path, damage):
    """run.json is the only record of the run's teacher and options (state.pt and the stage files do not hold them),
    so a --resume cannot check it continues the same run: it is refused with one line saying so and what to do, and
    nothing in the folder changes. --force used to fail on the same unreadable run.json instead of starting over."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    out = tmp_path / "r"
    _stopped_in_stage_2(tiny_teacher, out)
    path = out / "run.json"
    path.write_text(path.read_text()[:300] if damage == "truncated" else "[]")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    r = CliRunner().invoke(main, [*_args(tiny_teacher, out, 8), "--resume"])
    line = one_error_line(r)
    why = "unreadable run.json (" if damage == "truncated" else "run.json does not hold a JSON object;"
    assert line.startswith(f"error: {path}: {why}")
    assert line.endswith("; it is the only record of the run's teacher and options, so --resume cannot check it "
                          "continues the same run: restore run.json and rerun with --resume, or start over in "
                          "another --out (--force here deletes the finished stages).")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
    r = CliRunner().invoke(main, [*_args(tiny_teacher, out, 2), "--force"])
    assert r.exit_code == 0, r.output
    run = json.loads(path.read_text())
    assert run["complete"] and len(run["stages"]) == 3 and "resumed_from" not in run


def test_a_lost_run_json_refuses_resume_instead_of_training_over_the_stages(tiny_teacher, tmp_path):
    """Stage files and state.pt without run.json (deleted or lost after them): --resume used to train every stage
    again from scratch over them, unchecked; it is refused in one line and nothing in the folder changes."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    out = tmp_path / "r"
    _stopped_in_stage_2(tiny_teacher, out)
    (out / "run.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    r = CliRunner().invoke(main, [*_args(tiny_teacher, out, 8), "--resume"])
    line = one_error_line(r)
    assert line == (f"error: {out}: holds stage_01.pt, state.pt but no run.json, the only record of the run's "
                     "teacher and options, so --resume cannot check it continues the same run: restore run.json "
                     "and rerun with --resume, or start over in another --out (--force here deletes the finished "
                     "stages).")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before


def test_a_bare_resume_goes_on_with_the_runs_teacher_and_options(tiny_teacher, tmp_path, monkeypatch):
    """``sr-shrink distill --out RUN --resume`` used to load the bundled teacher and the default options, and so was
    refused ("was distilled from another teacher"); the user had to retype the whole command. It now takes the
    teacher and every option left out from run.json, and trains the same students as an uninterrupted run."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    whole, out = tmp_path / "whole", tmp_path / "r"
    distill(str(tiny_teacher), whole, _cfg_from_args(steps_per_stage=8), eval_dir="none", quiet=True, device="cpu")
    _stopped_in_stage_2(tiny_teacher, out)
    # run.json records --eval none as such (a folder by its absolute path)
    assert json.loads((out / "run.json").read_text())["eval_dir"] == "none"
    monkeypatch.chdir(tmp_path)  # the teacher's path as run.json names it (absolute here) still reads
    bare = ["distill", "--out", str(out), "--resume", "--threads", "1", "--device", "cpu"]
    r = CliRunner().invoke(main, [*bare, "--seed", "8"])  # an option given keeps its value, and is refused
    assert r.exit_code == 2 and "was started with --seed 7, not 8" in r.output
    r = CliRunner().invoke(main, bare)
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("note: resuming")]
    assert notes == [f"note: resuming {out} with the teacher and options run.json records: {tiny_teacher} --stages "
                     "1:3 --steps-per-stage 8 --channels 4 --batch 4 --lr-patch 12 --student-steps-per-g 3 --eval none "
                     "--seed 7 --save-every 4."], r.output
    _assert_same_checkpoints(whole, out)
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["resumed_from"] == [{"stage": 2, "step": 4}]
    assert run["eval_dir"] == "none" and all("val_psnr_y" not in s for s in run["stages"])  # --eval none, kept
    assert run["config"] == json.loads((whole / "run.json").read_text())["config"]


def test_a_run_folder_where_the_teacher_goes_is_resumed_or_named(tiny_teacher, tmp_path, monkeypatch):
    """``sr-shrink distill --resume RUN`` (the run folder where the teacher goes, as the Ctrl-C line's folder invites)
    said "RUN: is a folder, not a model file". It now continues RUN as ``--out RUN --resume`` does, with the
    recorded teacher; without --resume, or beside another --out, one line names the command that continues it."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    whole, out = tmp_path / "whole", tmp_path / "r"
    distill(str(tiny_teacher), whole, _cfg_from_args(steps_per_stage=8), eval_dir="none", quiet=True, device="cpu")
    _stopped_in_stage_2(tiny_teacher, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    want = f"error: {out}: is a distill run folder, not a teacher file; continue it with: sr-shrink distill --out " \
           f"{out} --resume"
    for args in ([str(out)], [str(out), "--out", str(tmp_path / "other"), "--resume"]):
        r = CliRunner().invoke(main, ["distill", *args, "--threads", "1", "--device", "cpu"])
        assert r.exit_code == 2 and r.output.strip() == want, r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
    assert not (tmp_path / "other").exists()
    monkeypatch.chdir(tmp_path / "whole")  # the default --out (runs/distill) is not where it goes
    r = CliRunner().invoke(main, ["distill", "--resume", str(out), "--threads", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"note: resuming {out} with the teacher and options run.json records: {tiny_teacher} " in r.output
    _assert_same_checkpoints(whole, out)
    assert not (tmp_path / "whole" / "runs").exists()


def test_recorded_options_of_a_budgeted_run_take_its_budget_not_its_steps(tiny_teacher, tmp_path):
    from sr_shrink.distill.resume import recorded_options

    assert recorded_options(tmp_path / "none") == {} and recorded_options(tmp_path) == {}
    out = tmp_path / "r"
    distill(str(tiny_teacher), out, _cfg_from_args(steps_per_stage=2), quiet=True, device="cpu", eval_images=1)
    got = recorded_options(out)
    assert got["teacher"] == str(tiny_teacher) and got["stages"] == "1:3" and got["steps_per_stage"] == 2
    assert "time_budget" not in got and "eval_dir" not in got  # the bundled split: --eval left out
    assert got["value_range"] == "1" and "synthetic" not in got  # auto takes the recorded sources on a resume
    run = json.loads((out / "run.json").read_text())
    run["config"]["time_budget"] = 2.5
    (out / "run.json").write_text(json.dumps(run))
    got = recorded_options(out)
    assert got["time_budget"] == 2.5 and "steps_per_stage" not in got  # the resume adopts the plan's steps
    (out / "run.json").write_text("{damaged")
    assert recorded_options(out) == {}  # the resume itself says why it cannot go on


def test_resume_refuses_other_teacher_overrides(tiny_teacher, tmp_path):
    # the same file read with another value range or EDSR res_scale is another teacher function
    distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
            device="cpu")
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["teacher"]["value_range"] == 1.0 and "res_scale" not in run["teacher"]["config"]
    with pytest.raises(SRShrinkError, match="--value-range 1, not 255"):
        distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
                device="cpu", resume=True, value_range=255.0)
    with pytest.raises(SRShrinkError, match=r"--res-scale \(the default\), not 0.5"):
        distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
                device="cpu", resume=True, res_scale=0.5)


# ---------------------------------------------------------------- what an interrupted run leaves (issue 21 item 4)


def test_interrupt_says_which_checkpoint_exists(tiny_teacher, tmp_path):
    out = tmp_path / "r"
    with tempfile.TemporaryFile() as log:
        # stages 1:8 leave the run going long after stage 2 even when a loaded machine slows this watcher down
        proc = subprocess.Popen(_cli(_args(tiny_teacher, out, 40, "1:8")), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=log)
        first = None  # state.pt's mtime once run.json lists stage 1; interrupt at the next save (mid stage 2)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            try:
                if len(json.loads((out / "run.json").read_text())["stages"]) >= 1:
                    m = (out / "state.pt").stat().st_mtime_ns
                    first = m if first is None else first
                    if m != first:
                        break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        log.seek(0)
        lines = log.read().decode().strip().splitlines()
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] > 0
    assert lines[-1] == (f"interrupted; {out} holds a checkpoint at stage {state['stage_idx'] + 1} step "
                         f"{state['step']}; continue from it with: sr-shrink distill --out {out} --resume")


def test_saved_progress_names_what_is_there(tiny_teacher, tmp_path):
    from sr_shrink.distill.resume import saved_progress

    empty = tmp_path / "empty"
    empty.mkdir()
    assert saved_progress(empty).startswith(f"nothing was saved in {empty} yet")
    distill(str(tiny_teacher), tmp_path / "r", _cfg_from_args(steps_per_stage=2), eval_dir="none", quiet=True,
            device="cpu")
    assert saved_progress(tmp_path / "r") == (f"{tmp_path / 'r'} holds stage_03.pt; continue after it with: "
                                              f"sr-shrink distill --out {tmp_path / 'r'} --resume")
    spaced = tmp_path / "my run"  # the command is one a shell reads back
    (tmp_path / "r").rename(spaced)
    assert saved_progress(spaced).endswith(f"sr-shrink distill --out '{spaced}' --resume")
    spaced.rename(tmp_path / "r")
    (tmp_path / "r" / "state.pt").write_bytes(b"damaged")
    assert "holds state.pt" in saved_progress(tmp_path / "r")


def test_a_run_stopped_before_its_first_checkpoint_says_to_resume_it(tiny_teacher, tmp_path):
    """Stopped in stage 1 before any checkpoint, a run leaves run.json alone. Ctrl-C and ``info`` said "nothing was
    saved yet; rerun without --resume to start over", and that rerun was refused ("already holds a run")."""
    from click.testing import CliRunner

    from sr_shrink.cli import main
    from sr_shrink.distill.resume import saved_progress
    from sr_shrink.distill.train import Callbacks

    class Stop(Exception):
        pass

    def step(idx, n, _kd, _parts):
        if n == 1:
            raise Stop

    out = tmp_path / "r"
    with pytest.raises(Stop):
        distill(str(tiny_teacher), out, _cfg_from_args(steps_per_stage=8), eval_dir="none", quiet=True,
                device="cpu", callbacks=Callbacks(step=step))
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["run.json"]
    assert saved_progress(out) == (f"{out} holds run.json but no checkpoint yet; --force starts over, and this "
                                   "starts stage 1 again with its teacher and options: sr-shrink distill --out "
                                   f"{out} --resume")
    r = CliRunner().invoke(main, _args(tiny_teacher, out, 8))  # what the old sentence said to do
    assert r.exit_code == 2 and f"already holds a run (of {tiny_teacher.name}, unfinished); pass another --out" \
        in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["distill", "--out", str(out), "--resume", "--quiet", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["complete"] and (out / "stage_03.pt").is_file()


def test_resume_with_nothing_to_resume_says_so(tiny_teacher, tmp_path):
    from click.testing import CliRunner

    from sr_shrink.cli import main

    args = [a for a in _args(tiny_teacher, tmp_path / "r", 2) if a != "--quiet"]
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "nothing to resume" in line]
    assert notes == [f"note: {tmp_path / 'r'} holds nothing to resume (no run.json, stage_XX.pt or state.pt); "
                     "starting a new run."]
    r = CliRunner().invoke(main, [*args, "--resume"])  # now there is a run: no note
    assert r.exit_code == 0 and "nothing to resume" not in r.output


@pytest.mark.parametrize("folder", ["missing", "empty"])
@pytest.mark.parametrize("refused", ["--force", "a missing teacher"])
def test_a_refused_resume_of_nothing_prints_only_its_error(tiny_teacher, tmp_path, folder, refused):
    """--resume --force (or a missing teacher) on an empty or missing --out used to print the 'nothing to resume'
    note before its error line."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    out = tmp_path / "r"
    if folder == "empty":
        out.mkdir()
    teacher = tiny_teacher if refused == "--force" else tmp_path / "no_such_teacher.pt"
    args = [*_args(teacher, out, 2), "--resume", *(["--force"] if refused == "--force" else [])]
    r = CliRunner().invoke(main, args)
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    if refused == "--force":
        assert lines[0] == "error: pass --resume (continue the run in --out) or --force (start it over), not both."
    assert out.exists() == (folder == "empty")


def test_a_second_writer_is_refused_and_the_lock_is_not_stale(tiny_teacher, tmp_path):
    from click.testing import CliRunner

    from sr_shrink.cli import main
    from sr_shrink.run import RunDir

    out = tmp_path / "r"
    with RunDir.create(out).lock():  # another process writing this folder (a second open file: flock conflicts)
        r = CliRunner().invoke(main, _args(tiny_teacher, out, 2))
        assert r.exit_code == 2
        assert r.output.strip() == (f"error: {out}: another sr-shrink process (pid {os.getpid()}) is writing this "
                                    "run folder; wait for it to end or pass another --out.")
        assert not (out / "run.json").exists()
    r = CliRunner().invoke(main, _args(tiny_teacher, out, 2))  # the holder is gone: the lock goes with it
    assert r.exit_code == 0, r.output


def test_a_killed_run_leaves_no_stale_lock(tiny_teacher, tmp_path):
    out = tmp_path / "r"
    _kill_when(_cli(_args(tiny_teacher, out, 40)), lambda: (out / "state.pt").exists())
    assert (out / ".lock").exists()  # the file stays, the lock died with the process
    _run(_cli(_args(tiny_teacher, out, 40) + ["--resume"]))
    assert json.loads((out / "run.json").read_text())["complete"]


def test_force_deletes_the_old_runs_bench_results(tiny_teacher, tmp_path):
    """--force deleted the old stages and exports/ but left the bench.json and bench.png of the run it replaced
    (another teacher's numbers, naming files that no longer exist) beside the new stages."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    out = tmp_path / "run"
    assert CliRunner().invoke(main, _args(tiny_teacher, out, 2, "1:1")).exit_code == 0
    (out / "bench.json").write_text('{"rows": []}')
    (out / "bench.png").write_bytes(b"old plot")
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, [*_args(tiny_teacher, out, 2, "1:1"), "--force"])
    assert r.exit_code == 0, r.output
    assert (out / "stage_01.pt").is_file() and (out / "notes.txt").read_text() == "mine"
    assert not (out / "bench.json").exists() and not (out / "bench.png").exists()


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tiny_teacher, tiny_eval, tmp_path, monkeypatch):
    """--resume on a finished run re-scored the teacher and reprinted the table without a word: it looked as if
    the resume had trained something. It says so, and takes the teacher's and bicubic's scores from run.json
    instead of running the teacher over the eval images again (a minute on a large teacher, for a table)."""
    from click.testing import CliRunner

    import sr_shrink.distill.run as distill_run
    from sr_shrink.cli import main

    out = tmp_path / "run"
    scored = [str(tiny_eval) if a == "none" else a for a in _args(tiny_teacher, out, 2, "1:2")]  # --eval DIR
    assert CliRunner().invoke(main, scored).exit_code == 0
    before = json.loads((out / "run.json").read_text())

    def no_pass(*_args, **_kw):
        raise AssertionError("the teacher ran over the eval images again")

    monkeypatch.setattr(distill_run, "teacher_references", no_pass)
    r = CliRunner().invoke(main, [*scored, "--resume"])
    assert r.exit_code == 0, r.output
    assert f"note: {out} already holds all 2 stages; nothing to train" in r.stderr
    after = json.loads((out / "run.json").read_text())
    keys = ("teacher_psnr_y", "teacher_ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")
    assert all(after[k] == before[k] is not None for k in keys) and after["stages"] == before["stages"]
    assert "were scored on" not in r.stderr  # the same --eval: nothing to say
    r = CliRunner().invoke(main, [*_args(tiny_teacher, out, 2, "1:2"), "--resume"])  # --eval none: not this run's
    assert r.exit_code == 0, r.output
    assert (f"note: {out}'s stages were scored on --eval {tiny_eval}; there is nothing to train, so --eval none is "
            f"not used (sr-shrink bench {out} --eval FOLDER scores every stage on a folder).") in r.stderr
    monkeypatch.undo()
    r = CliRunner().invoke(main, [*_args(tiny_teacher, tmp_path / "half", 2, "1:2")])
    (tmp_path / "half" / "stage_02.pt").unlink()  # a stage to train: no such note
    r = CliRunner().invoke(main, [*_args(tiny_teacher, tmp_path / "half", 2, "1:2"), "--resume"])
    assert r.exit_code == 0 and "nothing to train" not in r.stderr, r.output


def test_a_resume_scored_on_other_images_says_the_table_mixes_them(tiny_teacher, tiny_eval, tmp_path):
    """A resume given another --eval scores the stages it trains there, while the finished ones keep their scores
    on the run's images: one table of two image sets, which nothing said."""
    out = tmp_path / "r"
    _stopped_in_stage_2(tiny_teacher, out)  # scored with --eval none
    notes = []
    distill(str(tiny_teacher), out, _cfg_from_args(steps_per_stage=8), eval_dir=str(tiny_eval), resume=True,
            quiet=True, device="cpu", log=notes.append)
    assert (f"note: {out}'s finished stages were not scored (--eval none); the stages this resume trains are scored "
            f"on --eval {tiny_eval}, so the table mixes the two (leave --eval out to keep the run's).") in notes


def test_a_relative_eval_folder_is_recorded_so_a_resume_elsewhere_finds_it(tiny_teacher, tiny_eval, tmp_path,
                                                                          monkeypatch):
    """run.json recorded --eval as given: a bare --resume from another folder took the relative path along and
    could not find the images. It records the folder's absolute path; the same folder given again, relative or
    not, is the run's (no note)."""
    import shutil

    from sr_shrink.distill.resume import recorded_options

    (tmp_path / "a").mkdir()
    shutil.copytree(tiny_eval, tmp_path / "a" / "ev")
    monkeypatch.chdir(tmp_path / "a")
    out = tmp_path / "r"
    distill(str(tiny_teacher), out, _cfg_from_args(steps_per_stage=2), eval_dir="ev", quiet=True, device="cpu")
    assert json.loads((out / "run.json").read_text())["eval_dir"] == str(tmp_path / "a" / "ev")
    monkeypatch.chdir(tmp_path)
    assert recorded_options(out)["eval_dir"] == str(tmp_path / "a" / "ev")
    notes = []
    distill(str(tiny_teacher), out, _cfg_from_args(steps_per_stage=2), eval_dir="a/ev", resume=True, quiet=True,
            device="cpu", log=notes.append)
    assert not any("scored on" in n for n in notes), notes
