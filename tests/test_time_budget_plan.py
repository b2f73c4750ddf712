"""--time-budget covers the whole wall time (issue 21 item 3): the planner on given phase seconds, the refusal
at once, and the phase accounting of a real run."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from click.testing import CliRunner

from sr_shrink.cli import main
from sr_shrink.distill import Callbacks, DistillConfig, distill, summary_table
from sr_shrink.distill.budget import (
    FINAL_S,
    SAFETY,
    WRITE_S,
    Setup,
    StageDeadline,
    eval_images_that_fit,
    first_plan,
    minimum_seconds,
    pool_seconds,
    refuse_if_short,
    replan,
    steps_that_fit,
)
from sr_shrink.errors import SRShrinkError
from sr_shrink.models.student import load_student


def _setup(forward: float = 2.0, **kw) -> Setup:
    base = dict(forward=forward, batch_pixels=16 * 8 * 8, eval_pixels=10 * 96 * 96, stages=4, game=True, reuse=4,
                steps_per_g=10, pool=True, student_share=0.001)
    return Setup(**{**base, **kw})


def test_setup_estimates_scale_with_the_forward():
    s = _setup(2.0)
    assert s.eval_references() == pytest.approx(90 * 2.0)  # 92160 eval pixels / 1024 per batch
    assert s.game_step() == 6.0 and s.step() == pytest.approx(0.6)  # pool crops: no teacher in refills
    assert _setup(2.0, pool=False).step() == pytest.approx(0.6 + 0.5)
    assert _setup(2.0, game=False).game_step() == 0.0
    # a crop of an eval image gives the eval references' own cost per pixel (small patches cost more per pixel)
    assert _setup(2.0, eval_pixel_seconds=1e-4).eval_references() == pytest.approx(92160 * 1e-4)
    # never dearer per pixel than the batch (the crop is one forward of a new shape: a slow one is noise)
    assert _setup(2.0, eval_pixel_seconds=1.0).eval_references() == pytest.approx(90 * 2.0)
    # every estimate doubles with the forward; the minimum adds what is already spent
    fast, slow = _setup(1.0), _setup(2.0)
    assert minimum_seconds(slow, 0) == pytest.approx(2 * minimum_seconds(fast, 0) - 4 * (WRITE_S) - FINAL_S)
    assert minimum_seconds(slow, 30) == pytest.approx(minimum_seconds(slow, 0) + 30)


def test_refusal_names_the_minimum_and_the_minimum_is_enough():
    s = _setup(2.0)
    need = minimum_seconds(s, 12.0)
    assert refuse_if_short(need / 60 + 0.01, s, 12.0) == need  # just above: accepted
    with pytest.raises(SRShrinkError) as exc:  # negative control: just below is refused
        refuse_if_short(need / 60 - 0.01, s, 12.0)
    msg = str(exc.value)
    shown = float(re.search(r"give at least (\d+\.\d\d) minutes", msg).group(1))
    assert "\n" not in msg and need / 60 <= shown < need / 60 + 0.011 and "takes 2.00 s" in msg


def test_eval_references_take_at_most_their_share():
    s = _setup(2.0, eval_pixel_seconds=1e-3)  # 10 images of 9216 px: 9.2 s each
    pixels = [96 * 96] * 10
    assert eval_images_that_fit(pixels, s, 1000.0) == 10  # 92 s of a 150 s share: all of them
    assert eval_images_that_fit(pixels, s, 480.0) == 7  # a 72 s share: the first 7
    assert eval_images_that_fit(pixels, s, 10.0) == 1  # never none
    assert eval_images_that_fit([], s, 480.0) == 0


def test_pool_gets_a_share_of_what_is_left():
    s = _setup(2.0)
    budget = 480.0
    early, late = pool_seconds(budget, 10.0, s), pool_seconds(budget, 200.0, s)
    assert early == pytest.approx(0.1 * (budget - 10.0 - s.fixed_after_pool()))
    assert late < early  # a slow setup leaves the pool less
    assert pool_seconds(budget, budget, s) == 0.0  # nothing left: the first chunk only


def test_steps_fill_what_is_left():
    steps = steps_that_fit(100.0, [1.0, 1.0], [5.0, 5.0], final=1.0)
    assert steps == int((100 - 11) * SAFETY / 2)
    assert steps * 2 + 11 <= 100 and (steps + 1) * 2 > (100 - 11) * SAFETY  # fills the safety share of it
    assert steps_that_fit(10.0, [1.0], [10.0]) < 1  # nothing fits


def test_first_plan_and_replan_follow_the_measured_pace():
    costs = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}
    plan = first_plan(8.0, 120.0, costs, 3.0, 4, {"startup": [None, 10.0]})
    assert plan.stage_steps == [plan.steps_per_stage] * 4
    planned_total = 120.0 + sum(plan.phases[f"stage_{i}"][0] for i in range(1, 5)) + FINAL_S
    assert planned_total <= 480.0 and planned_total == pytest.approx(plan.planned_seconds)
    assert plan.phases["startup"] == [None, 10.0] and list(plan.phases)[0] == "startup"
    n = plan.steps_per_stage
    spent = 120.0 + n * 0.5 + 5.0  # stage 1 ran at the planned pace
    same = replan(first_plan(8.0, 120.0, costs, 3.0, 4), 1, spent, n * 0.5, 5.0)
    slow = replan(first_plan(8.0, 120.0, costs, 3.0, 4), 1, spent, n * 1.0, 5.0)  # twice as slow as planned
    assert same == pytest.approx(n, abs=2)
    assert slow < 0.6 * same  # the next stages expect the slower pace (and have less time left)
    assert plan.to_dict()["phases"]["startup"] == {"planned": None, "spent": 10.0}
    with pytest.raises(SRShrinkError, match="give at least"):
        first_plan(8.0, 479.0, costs, 3.0, 4)
    late = first_plan(8.0, 120.0, costs, 3.0, 4)
    assert replan(late, 3, 480.0, 1.0, 5.0) == 0  # over time already: none (the stage is written as grown)


def test_impossible_budget_is_refused_before_the_setup(tiny_teacher, tmp_path):
    seen: list = []
    cfg = DistillConfig(stage_start=1, stage_end=4, channels=4, batch=4, time_budget=0.001)
    with pytest.raises(SRShrinkError, match=r"--time-budget 0.001: .*give at least \d+\.\d\d minutes"):
        distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu",
                callbacks=Callbacks(label=lambda x: seen.append(x.shape)))
    assert len(seen) == 2  # the two timed forwards: no pool, no probe (the eval references come after)
    assert not (tmp_path / "r" / "run.json").exists() and not list((tmp_path / "r").glob("stage_*.pt"))
    r = CliRunner().invoke(main, ["distill", str(tiny_teacher), "--out", str(tmp_path / "c"), "--time-budget",
                                  "0.001", "--channels", "4", "--batch", "4"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --time-budget 0.001:") and "minutes" in lines[0]


def test_time_budget_takes_durations_with_units(tiny_teacher, tmp_path):
    """``--time-budget 4m`` (as ``timeout`` and ``sleep`` take durations) was refused: "'4m' is not a valid float
    range". A plain number is minutes as before; s, m/min and h/hr units convert to minutes."""
    import click

    from sr_shrink.cli import Minutes

    minutes = Minutes(0, 1e6, min_open=True)
    for text, want in [("30", 30.0), ("2.5", 2.5), ("1e3", 1000.0), ("4m", 4.0), ("30min", 30.0), ("90s", 1.5),
                       ("1.5h", 90.0), ("2hr", 120.0), ("1h30m", 90.0), ("1h 30m", 90.0), (".5h", 30.0)]:
        assert minutes.convert(text, None, None) == want, text
    for bad in ["4x", "m", "1h30", "30mm", "-3m", "4 m x", "nan", "0s"]:
        with pytest.raises(click.BadParameter):
            minutes.convert(bad, None, None)
    r = CliRunner().invoke(main, ["distill", str(tiny_teacher), "--out", str(tmp_path / "c"), "--time-budget",
                                  "0.06s", "--channels", "4", "--batch", "4"])  # 0.001 minutes: refused as such
    assert r.exit_code == 2 and r.output.startswith("error: --time-budget 0.001:"), r.output


def test_real_run_accounts_for_every_phase(tiny_teacher, tmp_path):
    cfg = DistillConfig(stage_start=1, stage_end=2, channels=4, batch=4, lr_patch=8, seed=1, reuse=2,
                        student_steps_per_g=5, time_budget=0.5)
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu", eval_images=2)
    rec = json.loads((tmp_path / "r" / "run.json").read_text())["time_budget"]
    assert rec == run["time_budget"]
    phases = rec["phases"]
    assert list(phases) == ["startup", "forward_probe", "eval_references", "pool", "step_probe", "stage_1",
                            "stage_2", "final"]
    assert all(p["spent"] is not None and p["spent"] >= 0 for p in phases.values())
    assert all(phases[k]["planned"] is not None for k in ("eval_references", "pool", "step_probe", "stage_1",
                                                          "stage_2", "final"))
    total = rec["spent_seconds"]
    covered = sum(p["spent"] for p in phases.values())
    assert covered <= total + 0.1 and covered >= 0.9 * total  # the phases cover the wall time
    assert rec["stage_steps"] == [s["steps"] for s in run["stages"]]
    # without a budget nothing of this is recorded
    plain = distill(str(tiny_teacher), tmp_path / "p", DistillConfig(stage_start=1, stage_end=1, channels=4, batch=4,
                                                                   steps_per_stage=3), quiet=True, device="cpu",
                    eval_dir="none")
    assert "time_budget" not in plain


def test_stage_deadline_cuts_a_stage_that_runs_slower_than_planned():
    d = StageDeadline(end=100.0, mark=(0.0, 0))
    assert d.steps(40, 100, 4.0) == 100  # under the pace window (5 s): nothing judged yet
    assert d.mark == (0.0, 0)
    assert d.steps(60, 100, 6.0) == 100  # 0.1 s per step: 100 steps end at 10 s, well before 100 s
    assert d.mark == (6.0, 60)
    # the machine got 20x busier: 2 s per step since the last mark; the 40 s left fit 20 more steps
    d = StageDeadline(end=100.0, mark=(50.0, 60))
    assert d.steps(65, 100, 60.0) == 65 + 20
    assert d.mark == (60.0, 65)
    assert d.steps(70, 85, 70.0) == 85  # back on the new pace: no change
    # 5 % too slow: fewer than 10 % of the steps would not fit, a small overrun the next stages' re-plan absorbs
    assert StageDeadline(end=100.0, mark=(0.0, 0)).steps(100, 200, 52.5) == 200
    assert StageDeadline(end=100.0, mark=(0.0, 0)).steps(100, 200, 60.0) == 100 + 66  # 20 % too slow: cut
    assert StageDeadline(end=100.0, mark=(90.0, 10)).steps(20, 50, 110.0) == 20  # past the end: stop now
    assert StageDeadline(end=1e9, mark=(0.0, 0)).steps(10, 50, 10.0) == 50  # never more than planned
    assert StageDeadline(end=100.0, mark=(0.0, 30)).steps(30, 50, 10.0) == 50  # no step since the mark
    # the last tenth of a stage slowed down 8x (a machine that got busy near its end): planned 40 s for 573 steps,
    # step 525 at 41 s at 0.5 s a step; the 48 steps left would run 24 s late (60 % of the stage's time): cut now,
    # though they are fewer than 10 % of its steps
    late = StageDeadline(end=40.0, mark=(0.0, 0))
    late.mark = (31.0, 505)
    assert late.span == 40.0 and late.steps(525, 573, 41.0) == 525
    # the same 48 steps at the planned pace (0.07 s: 3.4 s late, under 10 % of 40 s) are left to the re-plan
    late = StageDeadline(end=40.0, mark=(0.0, 0))
    late.mark = (37.2, 472)
    assert late.steps(525, 573, 40.9) == 573


def test_one_process_checks_its_pace_after_every_step():
    """A step that takes seconds is judged when it ends, not 10 steps later (a distributed run checks every
    CHECK_STEPS steps, each check a broadcast)."""
    from sr_shrink.distill.run import _paced

    now = time.time()
    late = StageDeadline(end=now - 1.0, mark=(now - 60.0, 0))  # past its end, 3 steps in a minute
    assert _paced(late, 1)(3, 100) == 3  # stop now
    on_time = StageDeadline(end=now + 3000.0, mark=(now - 60.0, 0))  # 20 s a step: 150 more fit
    assert _paced(on_time, 1)(3, 100) == 100


def test_plan_deadline_is_the_stage_share_at_the_planned_pace():
    costs = {1: 0.5, 2: 0.6}
    plan = first_plan(8.0, 120.0, costs, 3.0, 2)
    n = plan.steps_per_stage
    assert plan.deadline(1, 1000.0).end == pytest.approx(1000.0 + n * 0.6 / SAFETY)
    assert plan.deadline(1, 1000.0, step=n // 2).end == pytest.approx(1000.0 + (n - n // 2) * 0.6 / SAFETY)
    replan(plan, 1, 120.0 + n, n * 1.0, 5.0)  # stage 1 ran at twice the planned pace
    assert plan.pace == pytest.approx(2.0)
    assert plan.deadline(1, 0.0).end == pytest.approx(plan.stage_steps[1] * 0.6 * 2.0 / SAFETY)


def _slow_from(step_from: int, seconds: float, stage: int = 0, hits: list | None = None) -> Callbacks:
    """Callbacks under which every step of ``stage`` from ``step_from`` on takes ``seconds`` longer (a machine that
    got busier mid-stage), recording each shortening in ``hits``."""
    def step(idx, k, _kd, _parts):
        if idx == stage and k >= step_from:
            time.sleep(seconds)

    def shortened(idx, steps, planned):
        if hits is not None:
            hits.append((idx, steps, planned))
    return Callbacks(step=step, shortened=shortened)


def test_a_stage_that_slows_down_is_cut_to_its_share_and_the_next_stage_keeps_its_own(tiny_teacher, tmp_path):
    hits: list = []
    cfg = DistillConfig(stage_start=1, stage_end=2, channels=4, batch=4, lr_patch=8, seed=1, time_budget=0.3)
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu", eval_dir="none",
                  callbacks=_slow_from(20, 0.05, hits=hits))
    rec = run["time_budget"]
    planned = rec["steps_per_stage"]
    assert planned > 300  # without the cut, stage 1 alone would sleep planned * 0.05 s, over the 18 s budget
    assert hits and hits[0][0] == 0 and hits[0][2] == planned
    assert run["stages"][0]["steps"] == hits[-1][1] < planned
    assert rec["stage_steps"] == [s["steps"] for s in run["stages"]]
    assert run["stages"][1]["steps"] >= 50  # the next stage still trained
    assert rec["spent_seconds"] <= 0.3 * 60 + 3.0  # the budget held (a few seconds of slack for the checks)


def test_a_stage_with_no_time_left_is_written_grown_and_untrained(tiny_teacher, tmp_path, monkeypatch):
    import sr_shrink.distill.run as run_mod
    from sr_shrink.distill.budget import replan as real

    def spent(plan, done, *args):  # as if the budget were gone after stage 1
        real(plan, done, *args)
        plan.stage_steps[done:] = [0] * (len(plan.stage_steps) - done)
        return 0

    monkeypatch.setattr(run_mod, "replan", spent)
    notes: list[str] = []
    cfg = DistillConfig(stage_start=1, stage_end=3, channels=4, batch=4, lr_patch=8, seed=1, time_budget=0.3)
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu", eval_images=2, log=notes.append)
    s1, s2, s3 = run["stages"]
    assert s1["steps"] > 0 and s2["steps"] == s3["steps"] == 0 and run["time_budget"]["stage_steps"][1:] == [0, 0]
    assert s3["val_psnr_y"] == pytest.approx(s1["val_psnr_y"], abs=1e-4)  # grown: the same output
    assert notes == ["note: --time-budget 0.3: no time is left to train stages 2-3; written untrained, grown from "
                     "stage 1 (the same output as stage 1)."]
    a, _ = load_student(tmp_path / "r" / "stage_01.pt")
    c, _ = load_student(tmp_path / "r" / "stage_03.pt")
    x = torch.rand(1, 3, 12, 12)
    assert c.n_blocks == 3 and torch.allclose(a(x), c(x), atol=1e-6)
    table = summary_table(run)
    assert list(table.columns[3].cells)[1:3] == ["-", "-"]  # no final KD for the untrained stages


def test_a_cut_stage_resumes_to_its_cut_steps(tiny_teacher, tmp_path):
    hits: list = []
    saves: list = []
    slow = _slow_from(20, 0.05, hits=hits)

    def saved(idx, step):
        saves.append(step)
        if hits and step > hits[0][1] // 2 and step < hits[0][1]:
            raise KeyboardInterrupt  # killed mid-stage, after the cut and a checkpoint

    cfg = DistillConfig(stage_start=1, stage_end=1, channels=4, batch=4, lr_patch=8, seed=1, time_budget=0.3,
                        save_every=5)
    with pytest.raises(KeyboardInterrupt):
        distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu", eval_dir="none",
                callbacks=slow.then(Callbacks(saved=saved)))
    assert hits, "the stage was never cut"
    again = distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu", eval_dir="none", resume=True)
    assert again["stages"][0]["steps"] == hits[-1][1]  # not the plan's steps_per_stage
    assert again["stages"][0]["steps"] < again["time_budget"]["steps_per_stage"]


def test_plain_lines_say_when_a_stage_is_cut():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from sr_shrink.distill import SHORTENED, line_callbacks

    buf = io.StringIO()
    cb = line_callbacks(Console(file=buf, width=300))
    cb.stage_start(0, SimpleNamespace(n_blocks=1), SimpleNamespace(cfg=SimpleNamespace(steps_per_stage=1000), step=0))
    cb.shortened(0, 880, 1000)
    cb.stage_end(0, None)
    lines = buf.getvalue().splitlines()
    assert [x for x in lines if "instead of" in x] == [f"stage 1 (1 blk): 880 steps instead of 1000: {SHORTENED}"]
    assert lines[-1].endswith("(0/880)")  # the last line counts against the cut total


def _cut_to(steps: int):
    """A ``_paced`` stand-in that cuts every budgeted stage to ``steps`` steps once it has taken them."""
    return lambda deadline, world: (lambda step, total: min(total, steps) if step >= steps else total)


def test_a_stage_cut_to_a_few_steps_that_moved_away_from_the_teacher_is_written_untrained(tiny_teacher, tmp_path,
                                                                                          monkeypatch):
    """A stage the budget cut short keeps the student it started from when that one is closer to the teacher on
    the replay buffer's pairs (here a learning rate of 5 wrecks the student in its 3 steps): stage 2 then has
    stage 1's output, 0 steps and a note saying why."""
    import sr_shrink.distill.run as run_mod

    monkeypatch.setattr(run_mod, "_paced", _cut_to(3))
    notes: list[str] = []
    cfg = DistillConfig(stage_start=1, stage_end=2, channels=4, batch=4, lr_patch=8, seed=1, time_budget=0.3, lr=5.0)
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu", eval_images=2, log=notes.append)
    assert [s["steps"] for s in run["stages"]] == [0, 0] and run["time_budget"]["stage_steps"] == [0, 0]
    assert notes == [f"note: --time-budget 0.3 cut stage {i} to 3 steps, which left it further from the teacher on "
                     f"its latest training batches than it started; written untrained{same}." for i, same in
                     ((1, ""), (2, ", grown from stage 1 (the same output as stage 1)"))], notes
    a, _ = load_student(tmp_path / "r" / "stage_01.pt")
    b, _ = load_student(tmp_path / "r" / "stage_02.pt")
    x = torch.rand(1, 3, 12, 12)
    assert b.n_blocks == 2 and torch.allclose(a(x), b(x), atol=1e-6)
    assert run["stages"][1]["val_psnr_y"] == pytest.approx(run["stages"][0]["val_psnr_y"], abs=1e-4)

    # cut to 40 steps at the default learning rate: the trained students are closer, and kept
    monkeypatch.setattr(run_mod, "_paced", _cut_to(40))
    notes.clear()
    cfg = DistillConfig(stage_start=1, stage_end=2, channels=4, batch=4, lr_patch=8, seed=1, time_budget=0.3)
    run = distill(str(tiny_teacher), tmp_path / "k", cfg, quiet=True, device="cpu", eval_images=2, log=notes.append)
    assert [s["steps"] for s in run["stages"]] == [40, 40] and not notes, notes


def test_a_stage_written_untrained_after_its_cut_still_says_when_no_time_is_left_for_the_next(tiny_teacher, tmp_path,
                                                                                            monkeypatch):
    """Stage 2 is cut and written as it started (0 steps); the budget is then gone: stage 3's note is still said."""
    import sr_shrink.distill.run as run_mod
    from sr_shrink.distill.budget import replan as real

    def replan(plan, done, *args):
        steps = real(plan, done, *args)
        if done < 2:
            return steps
        plan.stage_steps[done:] = [0] * (len(plan.stage_steps) - done)
        return 0

    monkeypatch.setattr(run_mod, "replan", replan)
    monkeypatch.setattr(run_mod, "_paced", _cut_to(3))  # with a learning rate of 5: both stages written untrained
    notes: list[str] = []
    cfg = DistillConfig(stage_start=1, stage_end=3, channels=4, batch=4, lr_patch=8, seed=1, time_budget=0.3, lr=5.0)
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, quiet=True, device="cpu", eval_dir="none",
                  log=notes.append)
    assert [s["steps"] for s in run["stages"]] == [0, 0, 0]
    assert notes[-1] == ("note: --time-budget 0.3: no time is left to train stage 3; written untrained, grown from "
                         "stage 2 (the same output as stage 2)."), notes
