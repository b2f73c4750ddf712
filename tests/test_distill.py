"""Progressive distillation on a tiny teacher: stages, L_G gradients, KD progress, modes, resume, DDP, errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sr_shrink.distill import DistillConfig, distill
from sr_shrink.distill.generator import Generator, load_generator
from sr_shrink.distill.losses import diversity_loss, generator_loss, natural_stats_loss
from sr_shrink.distill.render import (
    dead_leaves,
    pink_noise,
    smooth_fields,
    textured_leaves,
    uniform_noise,
)
from sr_shrink.errors import SRShrinkError
from sr_shrink.models.registry import save_model_checkpoint
from sr_shrink.models.student import SRStudent, load_student
from sr_shrink.teachers import load_teacher

TINY = dict(channels=4, batch=4, lr_patch=12, save_every=5)


def _cfg(**kw):
    return DistillConfig(**{**TINY, "stage_start": 1, "stage_end": 2, "steps_per_stage": 6, **kw})


def test_stages_grow_and_each_stage_starts_from_the_previous(tiny_teacher, tiny_eval, tmp_path):
    # with lr 0 the students never change, so stage i+1 must reproduce stage i exactly (output-preserving growth)
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=3, lr=0.0, mode="noise"), eval_dir=str(tiny_eval),
                  quiet=True, device="cpu")
    assert [s["n_blocks"] for s in run["stages"]] == [1, 2, 3]
    students = [load_student(tmp_path / "r" / s["checkpoint"])[0] for s in run["stages"]]
    x = torch.rand(1, 3, 10, 10)
    assert students[1].n_blocks == 2 and students[2].n_blocks == 3
    assert torch.equal(students[0](x), students[1](x)) and torch.equal(students[1](x), students[2](x))
    for key in ("stage", "n_blocks", "channels", "params", "checkpoint", "steps", "final_kd_loss",
                "val_psnr_y", "val_ssim_y", "fidelity_psnr_y", "fidelity_ssim_y", "seconds"):
        assert key in run["stages"][0]
    # fidelity to the teacher: the student's and the teacher's 8-bit outputs compared like psnr_y, border cropped
    from sr_shrink.data import load_eval_set
    from sr_shrink.metrics import psnr_y, quantize

    teacher = load_teacher(tiny_teacher)
    want = []
    with torch.no_grad():
        for pair in load_eval_set(2, tiny_eval):
            lr = pair.lr.unsqueeze(0)
            want.append(psnr_y(quantize(students[0](lr))[0], quantize(teacher(lr))[0], 2))
    assert abs(run["stages"][0]["fidelity_psnr_y"] - sum(want) / len(want)) < 1e-3
    assert run["stages"][0]["fidelity_psnr_y"] != run["stages"][0]["val_psnr_y"]
    on_disk = json.loads((tmp_path / "r" / "run.json").read_text())
    assert on_disk["complete"] and on_disk["teacher"]["sha256"] and "teacher_psnr_y" in on_disk
    assert "bicubic_psnr_y" in on_disk and on_disk["recipe"]["mode"] == "noise"


def test_stage_step_and_trained_growth(tiny_teacher, tmp_path):
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_start=1, stage_end=5, stage_step=2, mode="noise"),
                  eval_dir="none", quiet=True, device="cpu")
    assert [s["n_blocks"] for s in run["stages"]] == [1, 3, 5]
    assert sorted(p.name for p in (tmp_path / "r").glob("stage_*.pt")) == ["stage_01.pt", "stage_02.pt",
                                                                             "stage_03.pt"]


def test_generator_loss_sends_gradient_through_both_terms(tiny_teacher):
    teacher = load_teacher(tiny_teacher)
    student = SRStudent(2, 1, 4)
    torch.nn.init.normal_(student.tail.weight, 0, 0.05)
    gen = Generator(z_dim=8, patch=12, width=16)
    z = torch.randn(4, 8)
    for adversarial, w_r in ((True, 0.0), (False, 1.0)):
        gen.zero_grad()
        x = gen(z)
        loss, _ = generator_loss(x, z, teacher(x), student(x), 2, w_r=w_r, adversarial=adversarial)
        loss.backward()
        norm = sum(p.grad.norm() ** 2 for p in gen.parameters() if p.grad is not None) ** 0.5
        assert norm > 0, f"no gradient for adversarial={adversarial}, w_r={w_r}"


def test_prior_terms_have_gradients():
    x = torch.rand(4, 3, 12, 12, requires_grad=True)
    z = torch.randn(4, 8)
    (diversity_loss(x, z) + natural_stats_loss(x)).backward()
    assert x.grad.abs().sum() > 0


def test_kd_loss_falls(tiny_teacher, tmp_path):
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=1, steps_per_stage=80, mode="deadleaves",
                                                          lr=3e-3), eval_dir="none", quiet=True, device="cpu")
    st = run["stages"][0]
    assert st["final_kd_loss"] < 0.8 * st["first_kd_loss"]


@pytest.mark.parametrize("mode", ["noise", "pink", "deadleaves", "texleaves", "generator", "datafree"])
def test_modes_run_and_are_deterministic(tiny_teacher, tmp_path, mode):
    a = distill(str(tiny_teacher), tmp_path / "a", _cfg(mode=mode, seed=3), eval_dir="none", quiet=True, device="cpu")
    b = distill(str(tiny_teacher), tmp_path / "b", _cfg(mode=mode, seed=3), eval_dir="none", quiet=True, device="cpu")
    sa = torch.load(tmp_path / "a" / "stage_02.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b" / "stage_02.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["recipe"]["mode"] == mode and a["stages"][-1]["final_kd_loss"] == b["stages"][-1]["final_kd_loss"]
    if mode in ("generator", "datafree"):
        g = load_generator(tmp_path / "a" / "generator.pt")
        assert g.sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 12, 12)


def test_data_mode(tiny_teacher, tiny_eval, tmp_path):
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(mode="data", data_dir=str(tiny_eval)), eval_dir="none",
                  quiet=True, device="cpu")
    assert len(run["stages"]) == 2 and run["mode"] == "data"
    with pytest.raises(SRShrinkError, match="--data"):
        distill(str(tiny_teacher), tmp_path / "r2", _cfg(mode="data"), eval_dir="none", quiet=True, device="cpu")


def test_data_mode_names_the_images_too_small_for_a_patch(tiny_teacher, tiny_eval, tmp_path):
    """The error said "1 image(s) smaller than one 32 px patch" and left the user to find which."""
    from PIL import Image

    Image.new("RGB", (30, 20)).save(tiny_eval / "thumb.png")
    Image.new("RGB", (10, 50)).save(tiny_eval / "zz.png")
    cfg = _cfg(mode="data", data_dir=str(tiny_eval), lr_patch=12)
    with pytest.raises(SRShrinkError) as err:
        distill(str(tiny_teacher), tmp_path / "r", cfg, eval_dir="none", quiet=True, device="cpu")
    assert str(err.value) == (f"{tiny_eval / 'thumb.png'} (and 1 more): 30x20 px, smaller than one 24 px training "
                              f"patch (--lr-patch 12 at x2); take it out of {tiny_eval} or pass a smaller --lr-patch.")
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_synthetic_sources_shapes_and_range():
    g = torch.Generator().manual_seed(0)
    for fn in (uniform_noise, pink_noise, smooth_fields, dead_leaves, textured_leaves):
        x = fn(3, 16, g)
        assert x.shape == (3, 3, 16, 16) and x.min() >= 0 and x.max() <= 1 and x.std() > 0.01
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(dead_leaves(2, 16, g1), dead_leaves(2, 16, g2))
    # smooth fields are smoother than pink noise: less of their variance in neighbour differences
    pink = pink_noise(32, 32, torch.Generator().manual_seed(0))
    smooth = smooth_fields(32, 32, torch.Generator().manual_seed(0))

    def roughness(x):
        return float((x[..., 1:] - x[..., :-1]).pow(2).mean() / x.var(dim=(2, 3)).mean())

    assert roughness(smooth) < 0.5 * roughness(pink)


def _flat_share(x: torch.Tensor) -> float:
    """Share of horizontal neighbour pairs whose luminance is equal (to 1e-3): the untextured interiors."""
    lum = x.mean(dim=1)
    return float(((lum[..., 1:] - lum[..., :-1]).abs() < 1e-3).float().mean())


def test_textured_leaves_carry_fine_texture():
    """The same unshaded leaves (same seed) have less than half the flat neighbour pairs with textured fills
    (0.05 vs 0.15 here), and leaf_texture=0 is exactly the flat-leaves image (no extra random numbers drawn)."""
    def leaves(**kw):
        return dead_leaves(16, 24, torch.Generator().manual_seed(1), texture=0.0, shading=0.0, **kw)

    flat, tex = leaves(), leaves(leaf_texture=0.8)
    assert torch.equal(flat, leaves(leaf_texture=0.0))
    assert _flat_share(flat) > 0.08 and _flat_share(tex) < 0.5 * _flat_share(flat)


def test_existing_run_refused_unwritable_fails_early(tiny_teacher, tmp_path):
    distill(str(tiny_teacher), tmp_path / "r", _cfg(stage_end=1, mode="noise"), eval_dir="none", quiet=True,
            device="cpu")
    with pytest.raises(SRShrinkError, match="--resume"):
        distill(str(tiny_teacher), tmp_path / "r", _cfg(mode="noise"), eval_dir="none", quiet=True, device="cpu")
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(mode="noise"), eval_dir="none", quiet=True, device="cpu",
                  force=True)
    assert len(run["stages"]) == 2
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SRShrinkError, match="cannot write"):
        distill(str(tiny_teacher), tmp_path / "afile" / "run", _cfg(), eval_dir="none", quiet=True, device="cpu")


def test_nan_loss_stops_with_clear_message(tmp_path):
    t = SRStudent(2, 1, 4)
    with torch.no_grad():
        t.tail.bias.fill_(float("nan"))
    save_model_checkpoint(t, "student", t.config(), tmp_path / "nan_teacher.pt")
    with pytest.raises(SRShrinkError, match="NaN"):
        distill(str(tmp_path / "nan_teacher.pt"), tmp_path / "r", _cfg(mode="noise"), eval_dir="none", quiet=True,
                device="cpu")
    assert not (tmp_path / "r" / "stage_01.pt").exists()


def test_datafree_synthetic_mix_and_data_targets(tiny_teacher, tiny_eval, tmp_path):
    run = distill(str(tiny_teacher), tmp_path / "a", _cfg(mode="datafree", synthetic="deadleaves,pink", mix=0.75),
                  eval_dir="none", quiet=True, device="cpu")
    assert run["recipe"]["synthetic"] == "deadleaves,pink" and run["recipe"]["mix"] == 0.75
    with pytest.raises(SRShrinkError, match="unknown synthetic source"):
        distill(str(tiny_teacher), tmp_path / "b", _cfg(mode="datafree", synthetic="stripes"), eval_dir="none",
                quiet=True, device="cpu")
    hr = distill(str(tiny_teacher), tmp_path / "c", _cfg(mode="data", data_dir=str(tiny_eval), data_target="hr"),
                 eval_dir="none", quiet=True, device="cpu")
    assert hr["recipe"]["data_target"] == "hr"
    with pytest.raises(SRShrinkError, match="multiple of 4"):
        distill(str(tiny_teacher), tmp_path / "d", _cfg(mode="generator", lr_patch=10), eval_dir="none", quiet=True,
                device="cpu")


def _cli_args(teacher, out, steps):
    return [sys.executable, "-m", "sr_shrink.cli", "distill", str(teacher), "--out", str(out), "--stages", "1:3",
            "--steps-per-stage", str(steps), "--channels", "4", "--batch", "4", "--lr-patch", "12",
            "--save-every", "5", "--eval", "none", "--quiet", "--threads", "1", "--device", "cpu"]


def test_cli_recipe_options_reach_run_json(tiny_teacher, tmp_path):
    out = tmp_path / "r"
    args = _cli_args(tiny_teacher, out, 3) + ["--mode", "generator", "--g-kind", "latent", "--mix", "0.3",
                                              "--synthetic", "pink", "--reuse", "3"]
    r = subprocess.run(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recipe = json.loads((out / "run.json").read_text())["recipe"]
    assert (recipe["g_kind"], recipe["mix"], recipe["synthetic"], recipe["reuse"]) == ("latent", 0.3, "pink", 3)
    r = subprocess.run(_cli_args(tiny_teacher, out, 3), env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr


def test_atomic_writes_leave_no_partial_file(tmp_path):
    from sr_shrink.io import atomic_torch_save, atomic_write_json

    atomic_write_json({"a": 1}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        atomic_write_json({"a": object()}, tmp_path / "x.json")  # not JSON: the old file must survive
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt", "x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "w.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it


def test_a_checkpoint_comes_by_time_too_and_does_not_change_the_run(tiny_teacher, tiny_eval, tmp_path, monkeypatch):
    """A stage shorter than --save-every (a slow teacher under --time-budget) still gets mid-stage checkpoints,
    one whenever SAVE_EVERY_S has passed; saving reads the state only, so the students are the same."""
    from sr_shrink.distill import train
    from sr_shrink.distill.train import Callbacks

    def run(name: str) -> tuple[list, list]:
        saves: list = []
        cfg = _cfg(save_every=1000, steps_per_stage=5)
        distill(str(tiny_teacher), tmp_path / name, cfg, eval_dir=str(tiny_eval), quiet=True, device="cpu",
                callbacks=Callbacks(saved=lambda idx, step: saves.append((idx, step))))
        return saves, [load_student(tmp_path / name / f"stage_0{i}.pt")[0].state_dict() for i in (1, 2)]

    plain_saves, plain = run("steps")
    assert plain_saves and all(step == 0 for _, step in plain_saves), plain_saves  # at stage ends only
    monkeypatch.setattr(train, "SAVE_EVERY_S", 0.0)
    timed_saves, timed = run("timed")
    assert [(i, s) for i, s in timed_saves if s > 0] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3),
                                                          (1, 4)]  # every step but the last of each stage
    for a, b in zip(plain, timed):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
