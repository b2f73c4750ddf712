"""An explicit --lr-patch the teacher cannot take without padding gets a one-line warning (issue 18)."""

import dataclasses

import sr_shrink.distill as distill_pkg
from sr_shrink.distill import DistillConfig, distill, padded_patch_warning
from sr_shrink.teachers import load_teacher
from sr_shrink.teachers.probe import SizeRequirements
from sr_shrink.teachers.wrapper import Teacher


def _needs(teacher: Teacher, **req) -> Teacher:
    """Return ``teacher`` re-wrapped with the given input size requirements (as spandrel reports Real-CUGAN's)."""
    info = dataclasses.replace(teacher.info, size_requirements=SizeRequirements(**req))
    return Teacher(teacher.net, info)


def test_warning_names_the_padded_size_and_the_fix(tiny_teacher):
    teacher = _needs(load_teacher(str(tiny_teacher)), minimum=32)
    msg = padded_patch_warning(DistillConfig(lr_patch=12), teacher)
    assert msg.startswith("warning: --lr-patch 12:") and "at least 32 px" in msg and "padded to 32 px" in msg
    assert "use --lr-patch 32" in msg and "\n" not in msg
    off_multiple = padded_patch_warning(DistillConfig(lr_patch=12), _needs(teacher, multiple_of=8))
    assert "padded to 16 px" in off_multiple and "multiple of 8" in off_multiple


def test_no_warning_for_a_size_the_teacher_takes_or_an_automatic_patch(tiny_teacher):
    teacher = _needs(load_teacher(str(tiny_teacher)), minimum=32)
    assert padded_patch_warning(DistillConfig(lr_patch=32), teacher) is None  # negative control: it fits
    assert padded_patch_warning(DistillConfig(), teacher) is None  # automatic: fit_patch raises it instead
    assert padded_patch_warning(DistillConfig(lr_patch=12), load_teacher(str(tiny_teacher))) is None  # any size


def test_distill_prints_the_warning_once_and_runs_as_asked(tiny_teacher, tmp_path, monkeypatch, capsys):
    real = distill_pkg.load_teacher
    monkeypatch.setattr(distill_pkg, "load_teacher", lambda *a, **k: _needs(real(*a, **k), minimum=16))
    cfg = DistillConfig(stage_start=1, stage_end=1, steps_per_stage=2, channels=4, batch=2, lr_patch=12, pool=4)
    run = distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", device="cpu")
    err = capsys.readouterr().err
    assert err.count("warning: --lr-patch 12:") == 1 and "padded to 16 px" in err
    assert run["config"]["lr_patch"] == 12  # the run keeps the size asked for
    distill(str(tiny_teacher), tmp_path / "q", cfg, eval_dir="none", device="cpu", quiet=True)
    assert "warning" not in capsys.readouterr().err  # quiet runs print nothing
