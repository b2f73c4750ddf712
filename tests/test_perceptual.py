"""``--synthetic auto`` (the default): dead leaves for a PSNR teacher, dead leaves + smooth fields for a perceptual
one, decided on crops of the bundled photos, recorded in run.json and kept on resume (issue 18)."""

import json

import pytest
import torch

import sr_shrink.distill.perceptual as perceptual
from sr_shrink.data import EVAL_DIR
from sr_shrink.distill import DistillConfig, distill
from sr_shrink.distill.perceptual import PERCEPTUAL_SOURCES, PSNR_SOURCES, centre_crops, resolve_synthetic, teacher_kind
from sr_shrink.teachers import load_teacher

BUNDLED_X2 = EVAL_DIR.parent / "teacher_x2.pt"  # a trained EDSR: well above bicubic
TINY = dict(stage_start=1, stage_end=1, steps_per_stage=2, channels=4, batch=4, lr_patch=12, pool=4)


def test_crops_are_centred_and_their_inputs_are_the_bicubic_downscale():
    pairs = centre_crops(2, side=16)
    assert len(pairs) == 10 and all(p.hr.shape[-2:] == (32, 32) and p.lr.shape[-2:] == (16, 16) for p in pairs)


def test_a_trained_teacher_is_psnr_and_one_no_better_than_bicubic_is_perceptual(tiny_teacher):
    trained = teacher_kind(load_teacher(str(BUNDLED_X2)), 2)
    assert not trained.perceptual and trained.teacher_psnr_y > trained.bicubic_psnr_y + 1
    weak = teacher_kind(load_teacher(str(tiny_teacher)), 2)  # random residual on bicubic: below it
    assert weak.perceptual and weak.to_dict()["synthetic"] == PERCEPTUAL_SOURCES


def test_resolution_measures_only_when_it_has_to(tiny_teacher, monkeypatch):
    teacher = load_teacher(str(tiny_teacher))
    explicit, kind = resolve_synthetic(DistillConfig(synthetic="texleaves"), teacher, None)
    assert explicit.synthetic == "texleaves" and kind is None
    monkeypatch.setattr(perceptual, "teacher_kind", lambda *a: pytest.fail("measured"))
    resumed, kind = resolve_synthetic(DistillConfig(), teacher, {"config": {"synthetic": PERCEPTUAL_SOURCES}})
    assert resumed.synthetic == PERCEPTUAL_SOURCES and kind is None
    noise, _ = resolve_synthetic(DistillConfig(mode="noise"), teacher, None)
    assert noise.synthetic == PSNR_SOURCES  # no synthetic share to choose: unmeasured
    no_share, _ = resolve_synthetic(DistillConfig(mix=0.0), teacher, None)
    assert no_share.synthetic == PSNR_SOURCES


@pytest.mark.parametrize("which,sources", [("bundled", PSNR_SOURCES), ("tiny", PERCEPTUAL_SOURCES)])
def test_distill_records_the_sources_and_a_resume_keeps_them(which, sources, tiny_teacher, tmp_path, monkeypatch):
    path, cfg = str(BUNDLED_X2 if which == "bundled" else tiny_teacher), DistillConfig(**{**TINY, "stage_end": 2})
    run = distill(path, tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu")
    assert run["config"]["synthetic"] == sources and run["teacher_kind"]["synthetic"] == sources
    (tmp_path / "r" / "stage_02.pt").unlink()  # as if stopped before stage 2 was written
    monkeypatch.setattr(perceptual, "teacher_kind", lambda *a: pytest.fail("a resume measured again"))
    again = distill(path, tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu", resume=True)
    assert again["config"]["synthetic"] == sources and again["teacher_kind"] == run["teacher_kind"]
    assert [s["n_blocks"] for s in again["stages"]] == [1, 2] and again["resumed_from"][-1]["stage"] == 2
    assert json.loads((tmp_path / "r" / "run.json").read_text())["teacher_kind"] == run["teacher_kind"]


def test_an_explicit_source_list_is_the_run_s_and_nothing_is_measured(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(perceptual, "teacher_kind", lambda *a: pytest.fail("measured"))
    run = distill(str(tiny_teacher), tmp_path / "r", DistillConfig(**TINY, synthetic="deadleaves"), eval_dir="none",
                  quiet=True, device="cpu")
    assert run["config"]["synthetic"] == "deadleaves" and "teacher_kind" not in run


@pytest.mark.parametrize("which,sources,other", [("bundled", PSNR_SOURCES, PERCEPTUAL_SOURCES),
                                                  ("tiny", PERCEPTUAL_SOURCES, PSNR_SOURCES)])
def test_auto_trains_exactly_the_students_of_its_explicit_sources(which, sources, other, tiny_teacher, tmp_path):
    path = str(BUNDLED_X2 if which == "bundled" else tiny_teacher)
    students = {}
    for synthetic in ("auto", sources, other):  # pool 0: every batch draws fresh images of every source
        out = tmp_path / synthetic.replace(",", "_")
        distill(path, out, DistillConfig(**{**TINY, "pool": 0}, synthetic=synthetic), eval_dir="none", quiet=True,
                device="cpu")
        students[synthetic] = torch.load(out / "stage_01.pt", weights_only=True)["state_dict"]

    def same(a, b):
        return all(torch.equal(students[a][k], students[b][k]) for k in students[a])

    assert same("auto", sources)
    assert not same("auto", other)  # negative control: the other sources give another student


def test_summary_says_to_judge_a_perceptual_teachers_students_by_fidelity():
    import io

    from rich.console import Console

    from sr_shrink.distill import summary_table

    stage = {"stage": 1, "n_blocks": 1, "params": 10, "final_kd_loss": 0.05, "steps": 5, "val_psnr_y": 30.0,
             "val_ssim_y": 0.9, "fidelity_psnr_y": 29.0, "seconds": 3.0}
    run = {"mode": "datafree", "scale": 4, "stages": [stage], "teacher": {"params": 100}, "teacher_psnr_y": 28.38,
           "teacher_ssim_y": 0.83, "bicubic_psnr_y": 31.59, "bicubic_ssim_y": 0.87}

    def shown(r: dict) -> str:
        buf = io.StringIO()
        Console(file=buf, width=200).print(summary_table(r))
        return " ".join(buf.getvalue().split())

    assert "The teacher scores -3.21 dB against bicubic here: a perceptual teacher." in shown(run)
    assert "judge them by fidelity" in shown(run)
    assert "perceptual" not in shown({**run, "teacher_psnr_y": 35.0})  # +3.4 dB: a PSNR teacher, no caption
    assert "perceptual" not in shown({k: v for k, v in run.items() if not k.startswith(("teacher_", "bicubic_"))})


def test_summary_says_when_no_stage_beats_bicubic():
    """A finished run of a PSNR-trained teacher whose best stage is no better than bicubic gets a caption saying
    to train longer; a run with one stage above bicubic, a perceptual teacher's, or one still training does not."""
    import io

    from rich.console import Console

    from sr_shrink.distill import summary_table

    stages = [{"stage": i, "n_blocks": i, "params": 10, "final_kd_loss": 0.05, "steps": 5, "val_psnr_y": psnr,
               "val_ssim_y": 0.9, "fidelity_psnr_y": 35.0, "seconds": 3.0} for i, psnr in ((1, 30.2), (2, 31.3))]
    run = {"mode": "datafree", "scale": 4, "stages": stages, "teacher": {"params": 100}, "teacher_psnr_y": 34.51,
           "teacher_ssim_y": 0.91, "bicubic_psnr_y": 31.59, "bicubic_ssim_y": 0.87, "complete": True}

    def shown(r: dict) -> str:
        buf = io.StringIO()
        Console(file=buf, width=200).print(summary_table(r))
        return " ".join(buf.getvalue().split())

    assert ("No stage scores above bicubic here (31.59 dB): bicubic upscaling serves as well as any of these "
            "students. Distill again with more --steps-per-stage") in shown(run)
    assert "above bicubic" not in shown({**run, "bicubic_psnr_y": 31.29})  # stage 2 beats it
    assert "above bicubic" not in shown({**run, "complete": False})  # still training: later stages may
    assert "above bicubic" not in shown({**run, "teacher_psnr_y": 31.8})  # +0.2 dB: perceptual, judged by fidelity
