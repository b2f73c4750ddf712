"""Teacher-grown synthetic images (``--synthetic grown-deadleaves``, sr_shrink/distill/grown.py)."""

import json

import pytest
import torch
from conftest import make_tiny_run

from sr_shrink.distill import DistillConfig, distill
from sr_shrink.distill.answers import far_answers
from sr_shrink.distill.grown import GROWN, KINDS, grow, render_mix
from sr_shrink.distill.perceptual import PERCEPTUAL_SOURCES, PSNR_SOURCES
from sr_shrink.distill.render import dead_leaves, smooth_fields, synthetic_mix
from sr_shrink.distill.sources import Labeller
from sr_shrink.errors import SRShrinkError
from sr_shrink.export.qat import DataFreeInputs
from sr_shrink.resize import downscale
from sr_shrink.run import RunDir
from sr_shrink.teachers import load_teacher


class Counting:
    """A stand-in teacher (x2 nearest upscale, brightened so that growing changes the image) that counts inputs."""

    scale = 2

    def __init__(self):
        self.seen = []

    def __call__(self, x):
        self.seen.append(x.shape[0])
        return (torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest") * 1.3).clamp(0, 1)


def test_render_mix_without_grown_kinds_is_synthetic_mix_and_runs_no_teacher():
    teach = Counting()
    a = render_mix(["deadleaves", "smooth"], 7, 12, torch.Generator().manual_seed(3), teach, 2)
    b = synthetic_mix(["deadleaves", "smooth"], 7, 12, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and teach.seen == []


def test_grown_share_is_the_teacher_output_downscaled_and_the_rest_is_untouched():
    teach = Counting()
    x = render_mix(["grown-deadleaves", "smooth"], 7, 12, torch.Generator().manual_seed(5), teach, 2)
    g = torch.Generator().manual_seed(5)
    leaves, fields = dead_leaves(4, 12, g), smooth_fields(3, 12, g)  # the first kind takes the remainder
    assert teach.seen == [4]  # one teacher forward, on the grown share only
    assert torch.allclose(x[:4], downscale(teach(leaves), 2).clamp(0, 1))
    assert not torch.allclose(x[:4], leaves, atol=1e-3)  # negative control: growing changed them
    assert torch.equal(x[4:], fields)
    assert x.shape == (7, 3, 12, 12) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(grow(leaves, teach, 2), x[:4])


def _cfg(**kw):
    base = dict(stage_start=1, stage_end=2, steps_per_stage=4, channels=4, batch=4, lr_patch=12, save_every=2)
    return DistillConfig(**{**base, **kw})


@pytest.mark.parametrize("pool", [512, 0])
def test_distill_trains_on_grown_sources_with_and_without_the_pool(tiny_teacher, tmp_path, pool):
    grown = "grown-deadleaves,grown-smooth"
    run = distill(str(tiny_teacher), tmp_path / "r", _cfg(synthetic=grown, pool=pool), eval_dir="none", quiet=True,
                  device="cpu")
    assert run["recipe"]["synthetic"] == grown
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["synthetic"] == grown
    assert (tmp_path / "r" / "stage_02.pt").exists()
    # negative control: the same run on dead leaves trains a different student
    other = distill(str(tiny_teacher), tmp_path / "o", _cfg(synthetic="deadleaves,smooth", pool=pool),
                    eval_dir="none", quiet=True, device="cpu")
    a = torch.load(tmp_path / "r" / "stage_02.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "o" / "stage_02.pt", weights_only=True)["state_dict"]
    assert other["recipe"]["synthetic"] == "deadleaves,smooth"
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_unknown_source_names_grown_among_the_choices(tiny_teacher, tmp_path):
    assert {"grown-deadleaves", "grown-smooth"} <= set(KINDS)
    with pytest.raises(SRShrinkError, match="grown-smooth"):
        distill(str(tiny_teacher), tmp_path / "r", _cfg(synthetic="grown-stripes"), eval_dir="none", quiet=True,
                device="cpu")


def test_answer_check_grows_the_grown_source(tiny_teacher):
    teacher = load_teacher(tiny_teacher)
    d = far_answers(teacher, ["deadleaves", "grown-deadleaves"], 12)
    assert set(d) == {"deadleaves", "grown-deadleaves"} and d["grown-deadleaves"] != d["deadleaves"]


def test_qat_inputs_keep_the_runs_grown_sources_and_grow_them(tmp_path, tiny_teacher):
    run = make_tiny_run(tmp_path / "r")
    record = json.loads((run / "run.json").read_text())
    record["config"] = {"synthetic": "grown-deadleaves,smooth", "mix": 0.5, "lr_patch": 12}
    (run / "run.json").write_text(json.dumps(record))
    inputs = DataFreeInputs(RunDir.open(run), 2, None, seed=1)
    assert inputs.kinds == ["grown-deadleaves", "smooth"] and inputs.mix == 1.0  # no generator.pt: synthetic only
    teacher = load_teacher(tiny_teacher)
    x, t = inputs.source(Labeller(teacher, torch.device("cpu"))).refill(4)
    g = torch.Generator().manual_seed(1)
    leaves, fields = dead_leaves(2, 12, g), smooth_fields(2, 12, g)
    with torch.no_grad():
        assert torch.allclose(x[:2], downscale(teacher(leaves), 2).clamp(0, 1), atol=1e-6)  # Labeller: raw
        assert torch.equal(x[2:], fields) and t.shape == (4, 3, 24, 24)


def test_auto_grows_for_perceptual_teachers_only():
    assert all(k in GROWN for k in PERCEPTUAL_SOURCES.split(","))  # README: auto = grown-deadleaves,grown-smooth
    assert not any(k in GROWN for k in PSNR_SOURCES.split(","))  # PSNR teachers keep the same students
