"""The check before the first step: a teacher whose answers to a synthetic source are no upscale of it gets one
warning line naming the source (issue 18: ``noise`` students collapse on SPAN and Real-ESRGAN)."""

import torch
import torch.nn.functional as F

import sr_shrink.distill as distill_pkg
from sr_shrink.distill import DistillConfig, distill
from sr_shrink.distill.answers import FAR, answer_warning, far_answers
from sr_shrink.teachers import load_teacher
from sr_shrink.teachers.wrapper import Teacher


class Wild(torch.nn.Module):
    """Answers like SPAN on noise: an upscale amplified far outside [0, 1] wherever the input is not flat."""

    def forward(self, x):
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return (up - F.avg_pool2d(up, 5, 1, 2, count_include_pad=False)) * 400 + 0.5


def _wild(tiny_teacher) -> Teacher:
    return Teacher(Wild(), load_teacher(str(tiny_teacher)).info)


def test_far_answers_tell_a_wild_teacher_from_an_upscaler(tiny_teacher):
    good = far_answers(load_teacher(str(tiny_teacher)), ["noise", "deadleaves"], 16)
    wild = far_answers(_wild(tiny_teacher), ["noise", "deadleaves"], 16)
    assert max(good.values()) < FAR < wild["noise"]  # the tiny EDSR is bicubic plus a small residual
    assert answer_warning(good, "noise") is None
    msg = answer_warning(wild, "noise")
    assert msg.startswith("warning: ") and "noise (" in msg and "--mode datafree" in msg and "\n" not in msg
    assert "drop it from --synthetic" in answer_warning(wild, "datafree")


def test_distill_warns_before_training_and_quiet_runs_do_not_check(tiny_teacher, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distill_pkg, "load_teacher", lambda *a, **k: _wild(tiny_teacher))
    cfg = DistillConfig(stage_start=1, stage_end=1, steps_per_stage=2, channels=4, batch=2, lr_patch=12, pool=4,
                        mode="noise")
    distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", device="cpu")
    err = capsys.readouterr().err
    assert err.count("warning: the teacher does not answer the noise (") == 1
    calls = []
    monkeypatch.setattr(distill_pkg, "far_answers", lambda *a, **k: calls.append(a) or {})
    distill(str(tiny_teacher), tmp_path / "q", cfg, eval_dir="none", device="cpu", quiet=True)
    assert not calls and "warning" not in capsys.readouterr().err
