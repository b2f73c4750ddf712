"""The shared labelled pool, --time-budget and the out-of-memory message of distill (issue 11)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from sr_shrink import progress
from sr_shrink.cli import main
from sr_shrink.distill import Callbacks, DistillConfig, distill
from sr_shrink.distill.pool import MAX_POOL_BYTES, LabelledPool, PoolPlan, plan_pool
from sr_shrink.distill.sources import resolve_teacher_dtype
from sr_shrink.errors import SRShrinkError


def _nearest(x: torch.Tensor, s: int = 2) -> torch.Tensor:
    """A 'teacher' whose output at every HR pixel depends only on its LR pixel (so crops commute with it)."""
    return x.repeat_interleave(s, -2).repeat_interleave(s, -1) * 0.5 + 0.25


def test_pool_crops_are_aligned_and_turned_together():
    g = torch.Generator().manual_seed(0)
    pool = LabelledPool.build(PoolPlan(6, 16, 2), ["deadleaves", "pink"], _nearest, g, batch=4)
    assert pool.x.shape == (6, 3, 16, 16) and pool.t.shape == (6, 3, 32, 32)
    x, t = pool.crops(40, 8, torch.Generator().manual_seed(1))
    assert x.shape == (40, 3, 8, 8) and t.shape == (40, 3, 16, 16)
    # every target is the teacher's output of its own input crop: same position, same flip/turn
    assert torch.equal(t, _nearest(x))
    # negative control: shifting the target window by one LR pixel breaks it
    shifted = torch.roll(t, 2, dims=-1)
    assert not torch.equal(shifted, _nearest(x))
    # the crops are not all the same orientation/position (40 draws from 6 images x 81 offsets x 8 turns)
    assert len({tuple(v.flatten()[:8].tolist()) for v in x}) > 30
    only_x = pool.crops(40, 8, torch.Generator().manual_seed(1), with_targets=False)
    assert torch.equal(only_x, x)
    none_x, none_t = pool.crops(0, 8, torch.Generator().manual_seed(1))  # batch 1 in datafree mode asks for none
    assert none_x.shape == (0, 3, 8, 8) and none_t.shape == (0, 3, 16, 16)


def test_a_pool_cut_to_its_time_share_says_how_many_images_it_labelled(capsys):
    """Under --time-budget the pool stops at the images that fit its share; the progress lines said '512 images'
    while it labelled 18: the first line now says 'up to', the last how many it did."""
    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return _nearest(x)

    progress.enable(progress.stderr_console())
    try:
        pool = LabelledPool.build(PoolPlan(64, 16, 2), ["deadleaves"], slow, torch.Generator().manual_seed(0),
                                  batch=4, seconds=0.01)
    finally:
        progress.disable()
    lines = capsys.readouterr().err.splitlines()
    assert len(pool) == 4  # the first chunk only
    assert lines[0].startswith("labelling the pool (up to 64 images, as many as fit")
    assert lines[-1].startswith("labelling the pool (up to 64 images") and lines[-1].endswith(" (4 images)")


def test_plan_pool_caps():
    assert plan_pool(0, 8, 4, None) is None
    assert plan_pool(512, 16, 2, None).images == 512
    # no more teacher time than the synthetic share would have cost: 100 patch labels -> 25 images of 4x the area
    assert plan_pool(512, 16, 2, 100).images == 25
    big = plan_pool(10**6, 64, 4, None)
    assert big.bytes() <= MAX_POOL_BYTES < PoolPlan(big.images + 1, 128, 4).bytes()


def _count_labels() -> tuple[list[int], Callbacks]:
    """Return (the LR pixels of every batch the teacher labels, the callbacks that record them)."""
    seen: list[int] = []
    return seen, Callbacks(label=lambda x: seen.append(x.shape[0] * x.shape[-1] * x.shape[-2]))


def _cfg(**kw) -> DistillConfig:
    base = dict(stage_start=1, stage_end=3, steps_per_stage=30, channels=4, batch=4, lr_patch=8, seed=3,
                student_steps_per_g=5, reuse=2)
    return DistillConfig(**{**base, **kw})


def test_pool_labels_fewer_teacher_pixels_across_stages(tiny_teacher, tmp_path):
    seen, counting = _count_labels()
    run = distill(str(tiny_teacher), tmp_path / "pool", _cfg(pool=512), eval_dir="none", quiet=True, device="cpu",
                  callbacks=counting)
    with_pool = sum(seen)
    seen.clear()
    distill(str(tiny_teacher), tmp_path / "fresh", _cfg(pool=0), eval_dir="none", quiet=True, device="cpu",
            callbacks=counting)
    without = sum(seen)
    # one stage's 16 refills x 2 synthetic patches of 8x8 -> a pool of 8 images of 16x16, labelled once for 3 stages
    assert run["pool"]["images"] == 8 and run["pool"]["side"] == 16
    assert with_pool < 0.8 * without, (with_pool, without)
    rec = json.loads((tmp_path / "pool" / "run.json").read_text())
    assert rec["config"]["pool"] == 512 and rec["pool"]["images"] == 8 and "pool" in rec["timing_seconds"]
    assert "pool" not in json.loads((tmp_path / "fresh" / "run.json").read_text())


def test_time_budget_plans_steps_and_leaves_no_trace(tiny_teacher, tmp_path, monkeypatch, capsys):
    import sr_shrink.distill.run as run_mod

    monkeypatch.setattr(run_mod, "_paced", lambda deadline, world: None)  # no stage cut on a busy machine
    cfg = _cfg(stage_end=2, time_budget=0.4, steps_per_stage=500, pool=0)
    progress.enable(progress.stderr_console())
    try:
        run = distill(str(tiny_teacher), tmp_path / "budget", cfg, eval_dir="none", quiet=True, device="cpu")
    finally:
        progress.disable()
    assert "timing the student's steps at 1 and 2 blocks: started (2 sizes)" in capsys.readouterr().err.splitlines()
    plan = run["time_budget"]
    steps = plan["steps_per_stage"]  # the first plan; stage 2 is re-planned from stage 1's pace
    assert steps >= 1 and steps != 500 and plan["stage_steps"][0] == steps
    assert [s["steps"] for s in run["stages"]] == plan["stage_steps"]
    assert run["config"]["steps_per_stage"] == plan["stage_steps"][-1]
    assert set(plan) >= {"minutes", "setup_seconds", "step_seconds", "eval_seconds_per_stage", "planned_seconds"}
    assert plan["planned_seconds"] <= 0.4 * 60
    # the probe's steps are thrown away: the same run with stage 1's steps fixed writes the same stage 1 (the tiny
    # teacher scores below bicubic, so the budget left out --mix for the pool alone; the fixed run is given it)
    assert run["config"]["mix"] == 1.0 and run["teacher_kind"]["perceptual"]
    distill(str(tiny_teacher), tmp_path / "fixed", _cfg(stage_end=2, steps_per_stage=steps, pool=0, mix=1.0),
            eval_dir="none", quiet=True, device="cpu")
    a = torch.load(tmp_path / "budget" / "stage_01.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "fixed" / "stage_01.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_probe_of_a_budgeted_run_with_the_generator_leaves_no_trace(tiny_teacher, tmp_path, monkeypatch):
    """The same check with --mix 0.5 given: the probe times generator steps too, and throws them away."""
    import sr_shrink.distill.run as run_mod

    monkeypatch.setattr(run_mod, "_paced", lambda deadline, world: None)
    run = distill(str(tiny_teacher), tmp_path / "budget", _cfg(stage_end=1, time_budget=0.2, pool=0, mix=0.5),
                  eval_dir="none", quiet=True, device="cpu")
    assert run["config"]["mix"] == 0.5 and run["timing_seconds"]["generator"] > 0
    distill(str(tiny_teacher), tmp_path / "fixed", _cfg(stage_end=1, steps_per_stage=run["stages"][0]["steps"], pool=0,
                                                        mix=0.5), eval_dir="none", quiet=True, device="cpu")
    a = torch.load(tmp_path / "budget" / "stage_01.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "fixed" / "stage_01.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mix_left_out_is_the_pool_alone_for_a_budgeted_run_on_a_perceptual_teacher():
    from sr_shrink.distill.perceptual import TeacherKind, resolve_mix
    from sr_shrink.distill.resume import adopt

    perceptual, psnr = TeacherKind(30.0, 31.0, 10), TeacherKind(33.0, 31.0, 10)
    assert perceptual.perceptual and not psnr.perceptual
    budgeted = DistillConfig(time_budget=2)
    assert budgeted.mix == 0.5 and "mix_auto" not in budgeted.to_dict()
    assert resolve_mix(budgeted, perceptual).mix == 1.0
    assert resolve_mix(budgeted, psnr).mix == 0.5 and resolve_mix(budgeted, None).mix == 0.5
    assert resolve_mix(DistillConfig(), perceptual).mix == 0.5  # a set number of steps keeps the generator
    assert resolve_mix(DistillConfig(time_budget=2, mix=0.5), perceptual).mix == 0.5  # --mix given
    # a resumed run goes on with its recorded share when --mix is left out (its resume does not measure the teacher
    # again: the sources and the share are run.json's), and is checked against it when given
    assert adopt(budgeted, {"config": {"mix": 1.0}}).mix == 1.0
    assert adopt(DistillConfig(time_budget=2, mix=0.5), {"config": {"mix": 1.0}}).mix == 0.5


def test_mix_1_trains_on_the_pool_alone_with_no_generator(tiny_teacher, tmp_path):
    """--mix 1 used to create the generator and play its game all the same (its samples reached the students through
    the replay buffer, at the cost of a teacher forward and backward per game step); the share says none come
    from it."""
    parts = []
    cfg = _cfg(stage_end=2, steps_per_stage=6, mix=1.0, student_steps_per_g=1)
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu",
                  callbacks=Callbacks(step=lambda *a: parts.append(a[-1])))
    assert run["config"]["mix"] == 1.0 and run["timing_seconds"]["generator"] == 0 and run["pool"]["images"] > 0
    assert len(parts) == 12 and not any(parts)  # no game step: no parts of L_G
    assert not (tmp_path / "r" / "generator.pt").exists() and (tmp_path / "r" / "stage_02.pt").exists()
    run = distill(str(tiny_teacher), tmp_path / "g", _cfg(stage_end=1, steps_per_stage=6, mix=0.9), eval_dir="none",
                  quiet=True, device="cpu")
    assert run["timing_seconds"]["generator"] > 0 and (tmp_path / "g" / "generator.pt").exists()  # control


def test_time_budget_pool_is_the_requested_size(tiny_teacher, tmp_path):
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=1, time_budget=0.4, pool=40), eval_dir="none",
                  quiet=True, device="cpu")
    assert run["pool"]["images"] == 40  # the steps are unknown when the pool is built: no cap from them


def test_time_budget_resume_keeps_the_plan(tiny_teacher, tmp_path):
    cfg = _cfg(stage_end=2, time_budget=0.4)
    first = distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu")
    (tmp_path / "r" / "stage_02.pt").unlink()  # as if killed during stage 2
    again = distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=2, time_budget=0.4), eval_dir="none",
                    quiet=True, device="cpu", resume=True)
    assert again["time_budget"] == first["time_budget"]
    assert again["stages"][1]["steps"] == first["config"]["steps_per_stage"]
    with pytest.raises(SRShrinkError, match="--time-budget 0.4, not 0.3"):
        distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=2, time_budget=0.3), eval_dir="none", quiet=True,
                device="cpu", resume=True)


def test_time_budget_too_small_is_one_line(tiny_teacher, tmp_path):
    r = CliRunner().invoke(main, ["distill", str(tiny_teacher), "--out", str(tmp_path / "r"), "--time-budget",
                                  "0.0001", "--eval", "none", "--quiet", "--channels", "4", "--batch", "4"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --time-budget 0.0001:") and "minutes" in lines[0]
    r = CliRunner().invoke(main, ["distill", str(tiny_teacher), "--out", str(tmp_path / "r2"), "--time-budget", "1",
                                  "--steps-per-stage", "10"])
    assert r.exit_code == 2 and "not both" in r.output


@pytest.mark.parametrize("where", ["label", "generator"])
def test_teacher_out_of_memory_is_one_line(tiny_teacher, tmp_path, monkeypatch, where):
    from sr_shrink.teachers import Teacher

    orig = Teacher.forward

    def oom(self, x):
        if torch.is_grad_enabled() == (where == "generator"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes.")
        return orig(self, x)

    monkeypatch.setattr(Teacher, "forward", oom)
    r = CliRunner().invoke(main, ["distill", str(tiny_teacher), "--out", str(tmp_path / "r"), "--eval", "none",
                                  "--quiet", "--steps-per-stage", "3", "--batch", "8", "--lr-patch", "16",
                                  "--synthetic", "deadleaves"])  # not auto, which scores the teacher first (below)
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and line.startswith("error: the teacher's") and "ran out of memory" in line
    assert "--batch 4" in line and "--lr-patch 8" in line


def test_teacher_out_of_memory_while_auto_scores_it_is_one_line(tiny_teacher, tmp_path, monkeypatch):
    from sr_shrink.teachers import Teacher

    def oom(self, x):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes.")

    monkeypatch.setattr(Teacher, "forward", oom)
    r = CliRunner().invoke(main, ["distill", str(tiny_teacher), "--out", str(tmp_path / "r"), "--eval", "none",
                                  "--quiet", "--steps-per-stage", "3"])
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and line.startswith("error: the teacher ran out of memory on 48 px crops")
    assert "--synthetic deadleaves" in line


def test_teacher_dtype_auto_is_fp32_on_cpu():
    assert resolve_teacher_dtype("auto", torch.device("cpu")) == "fp32"
    assert resolve_teacher_dtype("bf16", torch.device("cpu")) == "bf16"


def test_resuming_a_run_from_before_the_pool_keeps_labelling_fresh_images(tiny_teacher, tmp_path):
    distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=2, steps_per_stage=6, pool=0), eval_dir="none",
            quiet=True, device="cpu")
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    del rec["config"]["pool"], rec["recipe"]["pool"]  # as an older sr-shrink wrote it
    (tmp_path / "r" / "run.json").write_text(json.dumps(rec))
    (tmp_path / "r" / "stage_02.pt").unlink()
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=2, steps_per_stage=6), eval_dir="none",
                  quiet=True, device="cpu", resume=True)
    assert run["config"]["pool"] == 0 and "pool" not in run


def test_time_budget_sizes_the_pool_to_its_share(tiny_teacher, tmp_path):
    # a teacher slowed to >= 50 ms per labelled batch of 4: the pool's share of a 0.2-minute budget (10 %, 1.2 s)
    # holds at most 1.2 / (0.05 / 4) = 96 of the 512 images asked for (the first chunk always)
    slow = Callbacks(label=lambda x: time.sleep(0.05))
    cfg = _cfg(stage_end=2, time_budget=0.2, pool=512, mode="deadleaves")
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu", callbacks=slow)
    images = run["pool"]["images"]
    assert 4 <= images <= 96 and run["pool"]["side"] == 16
    (tmp_path / "r" / "stage_02.pt").unlink()  # as if killed during stage 2: the resumed run rebuilds that pool
    again = distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu", resume=True)
    assert again["pool"]["images"] == images


def test_a_budget_that_cannot_fit_is_refused_before_any_setup(tiny_teacher, tmp_path):
    seen, counting = _count_labels()
    with pytest.raises(SRShrinkError, match=r"--time-budget 0.0001: .* give at least [0-9.]+ minutes"):
        distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=2, time_budget=0.0001), eval_dir="none", quiet=True,
                device="cpu", callbacks=counting)
    assert len(seen) == 2  # the two timed forwards (the first pays kernel setup): no pool labelled, no probe run
    assert not (tmp_path / "r" / "run.json").exists()
