"""The SR model zoo as teachers: official checkpoint layouts through spandrel, refusals, overrides, padding."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import one_error_line
from torch import nn

import sr_shrink.teachers.zoo as zoo
from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError
from sr_shrink.models.edsr import EDSR
from sr_shrink.teachers import SizeRequirements, count_inference_params, count_macs, load_teacher

if zoo.import_spandrel() is None:  # the optional `zoo` extra (part of `all`, which CI installs)
    pytest.skip("spandrel is not installed: pip install 'sr-shrink[zoo]'", allow_module_level=True)

from zoo_checkpoints import BUILDERS, ESRGAN, Compact, compact, rrdbnet_x2_unshuffle, rrdbnet_x4, span, swinir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_official_layouts_load_and_match_their_own_forward(tmp_path, name):
    case = BUILDERS[name](tmp_path)
    t = load_teacher(case.path)
    assert (t.info.arch, t.info.scale) == (case.arch, case.scale)
    assert t.info.detected_by.startswith("spandrel") and t.info.value_range == 1.0 and not t.info.y_only
    assert t.info.format == ("safetensors" if case.path.suffix == ".safetensors" else "state_dict")
    assert t.info.params == sum(p.numel() for p in case.ref.parameters())
    x = torch.rand(2, 3, 16, 20)  # a size every one of them takes without padding
    with torch.no_grad():
        y, ref = t(x), case.ref(x)
    assert y.shape == (2, 3, 16 * case.scale, 20 * case.scale)
    assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()


def test_spandrels_tiling_hint_is_recorded(tmp_path):
    """SwinIR relies on global image information (spandrel: tiling discouraged); the teacher pass over large eval
    photos runs such a teacher whole (evaluate.teacher_references), so its info must say so."""
    assert load_teacher(BUILDERS["swinir"](tmp_path).path).info.tiling == "discouraged"
    t = load_teacher(rrdbnet_x2_unshuffle(tmp_path).path)
    assert t.info.tiling == "supported" and t.info.to_dict()["tiling"] == "supported"


def test_info_fields_from_spandrel(tmp_path):
    t = load_teacher(rrdbnet_x2_unshuffle(tmp_path).path)
    d = t.info.to_dict()
    assert d["arch_name"] == "ESRGAN" and "unshuffle" in d["tags"] and "16nf" in d["tags"]
    assert d["size_requirements"] == {"minimum": 4, "multiple_of": 4, "square": False}
    assert d["config"]["num_filters"] == 16 and d["config"]["shuffle_factor"] == 2
    assert (t.size_requirements.multiple_of, t.size_requirements.minimum, t.fit_size(13)) == (4, 4, 16)
    json.dumps(d)  # run.json-ready


def test_size_requirements_pad_and_crop(tmp_path):
    """An input the network does not take is padded (reflect) and the output cropped: same as doing it by hand.

    SwinIR (minimum 16 px, window 8) also pads to its window inside, so there the wrapper's padding must
    coincide with that; the RRDBNet x2 (sides a multiple of 4, its own forward pads to 2) is where only
    the wrapper's padding gives spandrel's result.
    """
    case = swinir(tmp_path)
    t = load_teacher(case.path)
    assert t.size_requirements.minimum == 16
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        y = t(x)
        manual = case.ref(F.pad(x, (0, 6, 0, 4), mode="reflect"))[..., :24, :20]
        replicate = case.ref(F.pad(x, (0, 6, 0, 4), mode="replicate"))[..., :24, :20]
    assert y.shape == (1, 3, 24, 20)
    assert torch.allclose(y, manual, atol=1e-5)
    assert not torch.allclose(y, replicate, atol=1e-3)  # the comparison can tell paddings apart

    case = rrdbnet_x2_unshuffle(tmp_path)  # sides a multiple of 4
    t = load_teacher(case.path)
    x = torch.rand(1, 3, 13, 10)
    with torch.no_grad():
        y = t(x)
        manual = case.ref(F.pad(x, (0, 2, 0, 3), mode="reflect"))[..., :26, :20]
    assert y.shape == (1, 3, 26, 20) and torch.allclose(y, manual, atol=1e-5)


def test_size_requirements_pad_beyond_reflection():
    req = SizeRequirements(minimum=8, multiple_of=4)
    x = torch.arange(9.0).view(1, 1, 3, 3)
    p = req.pad(x)
    assert p.shape == (1, 1, 8, 8) and torch.equal(p[..., :3, :3], x)
    assert torch.equal(p[..., 3, :3], x[..., 1, :])  # reflected row
    assert torch.equal(p[..., 7, :3], p[..., 4, :3])  # replicated beyond what reflection reaches
    assert req.pad(torch.rand(1, 1, 8, 12)).shape == (1, 1, 8, 12)
    assert SizeRequirements(square=True).padded_size(5, 9) == (9, 9)


def test_value_range_override(tmp_path):
    case = compact(tmp_path)
    t = load_teacher(case.path, value_range=255)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(t(x), case.ref(x * 255) / 255, atol=1e-5)
        assert not torch.allclose(t(x), case.ref(x), atol=1e-3)
    assert t.info.value_range == 255.0 and not t.info.value_range_guessed
    with pytest.raises(SRShrinkError, match="use 1 or 255"):
        load_teacher(case.path, value_range=100)


class TooBright(nn.Module):
    """Bicubic x2, 10% too bright: neither value range makes it a clean upscaler of the probe image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False) * 1.1 + 0.01


def test_ambiguous_value_range_is_reported_and_overridable(tmp_path):
    torch.jit.save(torch.jit.trace(TooBright(), torch.rand(1, 3, 16, 16)), tmp_path / "bright.pt")
    t = load_teacher(tmp_path / "bright.pt")
    assert t.info.value_range_guessed
    t1 = load_teacher(tmp_path / "bright.pt", value_range=1)
    assert t1.info.value_range == 1.0 and not t1.info.value_range_guessed
    r = CliRunner().invoke(main, ["info", str(tmp_path / "bright.pt"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["value_range_guessed"] is True
    notes = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1 and "--value-range" in notes[0]


def test_res_scale_override_on_edsr(tmp_path):
    torch.manual_seed(0)
    m = EDSR(scale=2, n_resblocks=2, n_feats=8).eval()
    torch.save(m.state_dict(), tmp_path / "edsr.pt")
    want = EDSR(scale=2, n_resblocks=2, n_feats=8, res_scale=0.3).eval()
    want.load_state_dict(m.state_dict())
    x = torch.rand(1, 3, 10, 12)
    t = load_teacher(tmp_path / "edsr.pt", res_scale=0.3)
    assert t.info.config["res_scale"] == 0.3
    with torch.no_grad():
        assert torch.allclose(t(x), want(x * 255) / 255, atol=1e-5)
        assert not torch.allclose(t(x), load_teacher(tmp_path / "edsr.pt")(x), atol=1e-3)
    with pytest.raises(SRShrinkError, match="applies to EDSR"):
        load_teacher(compact(tmp_path).path, res_scale=0.1)
    with pytest.raises(SRShrinkError, match="res_scale"):
        load_teacher(tmp_path / "edsr.pt", res_scale=float("nan"))


@pytest.mark.parametrize("build, match", [
    (lambda d: compact(d, scale=1, name="denoise_x1.pth").path, "x1 restoration"),
    (lambda d: _save_esrgan_x8(d), "upscales x8"),
])
def test_non_sr_models_are_refused_with_one_line(tmp_path, build, match):
    path = build(tmp_path)
    with pytest.raises(SRShrinkError, match=match) as err:
        load_teacher(path)
    msg = str(err.value)
    assert "\n" not in msg and ("x2/x3/x4" in msg or "x2, x3 and x4" in msg)
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def _save_esrgan_x8(d: Path) -> Path:
    m = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=8)
    torch.save(m.state_dict(), d / "esrgan_x8.pth")  # old ESRGAN keys (model.N...)
    return d / "esrgan_x8.pth"


def test_unknown_state_dict_without_spandrel_names_the_extra(tmp_path, monkeypatch):
    path = rrdbnet_x4(tmp_path).path
    monkeypatch.setattr(zoo, "import_spandrel", lambda: None)
    with pytest.raises(SRShrinkError, match=r"pip install 'sr-shrink\[zoo\]'"):
        load_teacher(path)
    torch.save(EDSR(scale=2, n_resblocks=1, n_feats=4).state_dict(), tmp_path / "edsr.pt")
    assert load_teacher(tmp_path / "edsr.pt").info.arch == "edsr"  # sr-shrink's own formats need no spandrel


def test_damaged_safetensors_is_one_line(tmp_path):
    path = BUILDERS["compact_safetensors"](tmp_path).path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SRShrinkError, match="truncated or not a safetensors file"):
        load_teacher(path)


def test_spandrel_imports_beside_a_broken_torchvision(tmp_path):
    """A torchvision that fails to import (as the PyPI wheel does beside a CPU-only torch) does not stop the zoo,
    and afterwards torchvision fails exactly as before (the stand-in is gone)."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    torch.save({"params": Compact(num_feat=8, num_conv=2, upscale=2).state_dict()}, tmp_path / "c.pth")
    code = (
        "import sys\n"
        "from sr_shrink.teachers import load_teacher\n"
        f"t = load_teacher({str(tmp_path / 'c.pth')!r})\n"
        "assert 'spandrel' in sys.modules and 'torchvision' not in sys.modules\n"
        "try:\n    import torchvision\nexcept RuntimeError as e:\n    print('torchvision still fails:', e)\n"
        "print(t.info.arch, t.info.scale)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "torchvision still fails: operator torchvision::nms" in r.stdout and "Compact 2" in r.stdout


def test_cli_info_on_rrdbnet(tmp_path):
    path = rrdbnet_x4(tmp_path).path
    r = CliRunner().invoke(main, ["info", str(path)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "ESRGAN (spandrel" in r.stdout and "x4" in r.stdout and "16nf, 1nb" in r.stdout
    r = CliRunner().invoke(main, ["info", str(path), "--json", "--value-range", "255"])
    d = json.loads(r.stdout)
    assert (d["arch"], d["arch_name"], d["scale"], d["value_range"]) == ("ESRGAN", "ESRGAN", 4, 255.0)
    assert d["size_requirements"]["minimum"] == 2 and d["macs_256x256"] > 0
    r = CliRunner().invoke(main, ["info", str(path), "--res-scale", "0.1"])
    assert r.exit_code == 2 and "applies to EDSR" in r.stderr


def test_realesrgan_x4plus_size_rrdbnet_loads_and_counts_fast(tmp_path):
    """16.7 M parameters (64 feats, 23 blocks, as RealESRGAN_x4plus): loads with one small probe forward, and
    the MACs come from fake tensors (no 256x256 forward): the exact count of its convolutions."""
    path = rrdbnet_x4(tmp_path, num_filters=64, num_blocks=23).path
    t = load_teacher(path)
    assert (t.info.arch, t.info.scale, t.info.params) == ("ESRGAN", 4, 16_697_987)
    nf, gc = 64, 32
    rdb = sum((nf + i * gc) * gc for i in range(4)) + (nf + 4 * gc) * nf  # 5 convs of one dense block
    per_lr_px = 9 * (3 * nf + 69 * rdb + nf * nf + 4 * nf * nf + 16 * nf * nf + 16 * nf * nf + 16 * nf * 3)
    assert count_macs(t) == 256 * 256 * per_lr_px == 1_174_853_910_528


def test_half_recognised_checkpoint_names_the_missing_key(tmp_path):
    """A SPAN file with one tensor gone: spandrel knows the keys but cannot build it; the error line says which
    key is missing (torch's first line, "Error(s) in loading state_dict for SPAN:", says nothing by itself)."""
    path = span(tmp_path).path
    sd = torch.load(path, map_location="cpu")
    params = sd["params_ema"]
    gone = sorted(params)[3]
    del params[gone]
    torch.save(sd, path)
    line = one_error_line(CliRunner().invoke(main, ["info", str(path)]))
    assert line.startswith("error: ") and "could not build" in line
    assert "Missing key(s)" in line and gone in line


def test_info_says_how_many_params_a_reparameterised_teacher_runs_with(tmp_path):
    """SPAN keeps Conv3XC's training branches (conv.0-2, sk) beside the collapsed eval_conv its eval forward uses:
    info said 'params 2,621,964' for a network that runs with 498,208 (and whose MACs it counted at inference)."""
    case = span(tmp_path)
    names = dict(case.ref.named_parameters())
    branches = sum(p.numel() for n, p in names.items() if re.search(r"\.(sk|conv\.\d+)\.(weight|bias)$", n))
    total = sum(p.numel() for p in names.values())
    assert branches > 0
    r = CliRunner().invoke(main, ["info", str(case.path), "--json"])
    d = json.loads(r.stdout)
    assert (d["params"], d["inference_params"]) == (total, total - branches)
    r = CliRunner().invoke(main, ["info", str(case.path)], terminal_width=250)
    assert f"{total:,} ({total - branches:,} at inference; the rest are training-only branches)" in r.stdout
    plain = rrdbnet_x4(tmp_path).path  # nothing unused: the count alone
    d = json.loads(CliRunner().invoke(main, ["info", str(plain), "--json"]).stdout)
    assert d["inference_params"] == d["params"]


def test_distill_table_gives_a_span_teacher_the_params_it_runs_with(tmp_path):
    """The distill table put SPAN's stored count (its training-only Conv3XC branches included) beside students
    counted as they run; the teacher row now leads with what its eval forward uses, and run.json records it."""
    from conftest import make_tiny_eval

    case = span(tmp_path)
    used = count_inference_params(load_teacher(case.path))
    stored = sum(p.numel() for p in case.ref.parameters())
    assert used < stored
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["distill", str(case.path), "--out", str(out), "--stages", "1:1",
                                  "--steps-per-stage", "2", "--batch", "2", "--pool", "0", "--channels", "4",
                                  "--eval", str(make_tiny_eval(tmp_path / "eval", n=1))], terminal_width=250)
    assert r.exit_code == 0, r.output
    assert f"{used:,} ({stored:,} stored)" in r.stdout, r.stdout
    assert json.loads((out / "run.json").read_text())["teacher"]["inference_params"] == used
