"""KD targets clamped to the teacher's value range [0, 1] by default, or kept raw (issue 18, item 2)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sr_shrink.cli import main
from sr_shrink.distill import DistillConfig, distill
from sr_shrink.distill.buffer import ReplayBuffer
from sr_shrink.distill.sources import generator as game_module
from sr_shrink.errors import SRShrinkError
from sr_shrink.models.registry import save_model_checkpoint
from sr_shrink.models.student import SRStudent


def _offset_teacher(path) -> str:
    """A tiny x2 teacher whose output leaves [0, 1] on both sides for any input: half its sub-pixels get +1.5,
    the other half -1.5 (tail bias), on top of its nearest-neighbour anchor."""
    t = SRStudent(2, 1, 4)
    with torch.no_grad():
        t.tail.bias.copy_(torch.tensor([1.5, -1.5] * (t.tail.bias.numel() // 2)))
    save_model_checkpoint(t, "student", t.config(), path)
    return str(path)


def _cfg(**kw) -> DistillConfig:
    base = dict(stage_start=1, stage_end=1, steps_per_stage=12, channels=4, batch=4, lr_patch=8, seed=1,
                student_steps_per_g=3, reuse=2, save_every=100)
    return DistillConfig(**{**base, **kw})


def _spy(monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Record every target put into the replay buffer and every teacher output L_G sees."""
    targets, g_outputs = [], []
    add, g_loss = ReplayBuffer.add, game_module.generator_loss

    def spy_add(self, x, t):
        targets.append(t.detach().clone())
        return add(self, x, t)

    def spy_g_loss(x, z, t, *args, **kw):
        g_outputs.append(t.detach().clone())
        return g_loss(x, z, t, *args, **kw)

    monkeypatch.setattr(ReplayBuffer, "add", spy_add)
    monkeypatch.setattr(game_module, "generator_loss", spy_g_loss)
    return targets, g_outputs


@pytest.mark.parametrize("mode, pool", [("noise", 0), ("noise", 16), ("datafree", 16), ("datafree", 0)])
def test_targets_clamped_by_default_raw_on_request(tmp_path, monkeypatch, mode, pool):
    teacher = _offset_teacher(tmp_path / "offset.pt")
    targets, g_outputs = _spy(monkeypatch)
    run = distill(teacher, tmp_path / "clamp", _cfg(mode=mode, pool=pool), eval_dir="none", quiet=True, device="cpu")
    assert run["config"]["targets"] == "clamp" and run["recipe"]["targets"] == "clamp"
    t = torch.cat([v.flatten() for v in targets])
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert ((t > 0) & (t < 1)).float().mean() < 0.5 and (t == 0).any() and (t == 1).any()  # clamped, not rescaled
    if mode == "datafree":  # the generator's own loss keeps the raw teacher output
        g = torch.cat([v.flatten() for v in g_outputs])
        assert g.min() < -0.2 and g.max() > 1.2
    targets.clear()
    run = distill(teacher, tmp_path / "raw", _cfg(mode=mode, pool=pool, targets="raw"), eval_dir="none", quiet=True,
                  device="cpu")
    t = torch.cat([v.flatten() for v in targets])
    assert run["recipe"]["targets"] == "raw" and t.min() < -0.2 and t.max() > 1.2


def test_targets_flag_reaches_run_json_and_bad_value_is_one_line(tmp_path):
    teacher = _offset_teacher(tmp_path / "offset.pt")
    args = ["distill", teacher, "--out", str(tmp_path / "r"), "--mode", "noise", "--stages", "1:1",
            "--steps-per-stage", "2", "--channels", "4", "--batch", "4", "--lr-patch", "8", "--eval", "none",
            "--quiet", "--device", "cpu", "--targets", "raw"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["targets"] == "raw"
    res = CliRunner().invoke(main, args[:-1] + ["clip", "--force"])
    assert res.exit_code == 2 and "--targets" in res.output
    with pytest.raises(SRShrinkError, match="--targets 'clip'"):
        _cfg(targets="clip").validate()


def test_resume_refuses_other_targets_and_a_run_from_before_the_option_resumes_raw(tmp_path):
    teacher = _offset_teacher(tmp_path / "offset.pt")
    cfg = _cfg(mode="noise", stage_end=2, steps_per_stage=4)
    distill(teacher, tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu")
    (tmp_path / "r" / "stage_02.pt").unlink()
    with pytest.raises(SRShrinkError, match="--targets clamp, not raw"):
        distill(teacher, tmp_path / "r", _cfg(mode="noise", stage_end=2, steps_per_stage=4, targets="raw"),
                eval_dir="none", quiet=True, device="cpu", resume=True)
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    del rec["config"]["targets"], rec["recipe"]["targets"]  # as an sr-shrink from before the option wrote it
    (tmp_path / "r" / "run.json").write_text(json.dumps(rec))
    run = distill(teacher, tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu", resume=True)
    assert run["config"]["targets"] == "raw" and run["recipe"]["targets"] == "raw" and len(run["stages"]) == 2
