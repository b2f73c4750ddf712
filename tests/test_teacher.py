"""load_teacher: every accepted format, conventions, and a clear one-line error for each bad input."""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sr_shrink.errors import SRShrinkError
from sr_shrink.models.edsr import EDSR
from sr_shrink.models.msrresnet import MSRResNet
from sr_shrink.models.registry import save_model_checkpoint
from sr_shrink.models.student import SRStudent
from sr_shrink.models.vdsr import VDSR
from sr_shrink.teachers import DEFAULT_TEACHER, count_macs, load_teacher, rgb_to_ycbcr, ycbcr_to_rgb

X = torch.rand(1, 3, 12, 10)


def _edsr(scale=2):
    torch.manual_seed(0)
    return EDSR(scale=scale, n_resblocks=2, n_feats=8).eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_reference_state_dict(tmp_path, scale):
    m = _edsr(scale)
    torch.save(m.state_dict(), tmp_path / "edsr.pt")
    t = load_teacher(tmp_path / "edsr.pt")
    assert (t.info.arch, t.info.scale, t.info.value_range, t.info.format) == ("edsr", scale, 255.0, "state_dict")
    assert t.info.config["n_resblocks"] == 2 and t.info.config["n_feats"] == 8
    with torch.no_grad():
        assert torch.allclose(t(X), m(X * 255) / 255, atol=1e-5)


def test_wrapped_and_dataparallel_state_dicts(tmp_path):
    m = _edsr()
    sd = {"module." + k: v for k, v in m.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "w.pth")
    t = load_teacher(tmp_path / "w.pth")
    with torch.no_grad():
        assert torch.allclose(t(X), m(X * 255) / 255, atol=1e-5)


def test_basicsr_edsr_params_wrapper(tmp_path):
    m = _edsr()
    rename = {"head.0": "conv_first", "body.2": "conv_after_body", "tail.0.0": "upsample.0", "tail.1": "conv_last"}
    sd = {}
    for k, v in m.state_dict().items():
        if k.startswith(("sub_mean", "add_mean")):
            continue  # BasicSR keeps the mean as a plain attribute
        for a, b in rename.items():
            if k.startswith(a + "."):
                k = b + k[len(a):]
        k = k.replace(".body.0.", ".conv1.").replace(".body.2.", ".conv2.")
        sd[k] = v
    torch.save({"params": sd}, tmp_path / "basicsr.pth")
    t = load_teacher(tmp_path / "basicsr.pth")
    assert t.info.arch == "edsr" and t.info.scale == 2
    with torch.no_grad():  # BasicSR: (x - mean) * 255 through the net, then / 255 + mean
        assert torch.allclose(t(X), m(X * 255) / 255, atol=1e-5)


def test_basicsr_msrresnet_params_ema(tmp_path):
    m = MSRResNet(num_feat=8, num_block=2, upscale=4).eval()
    torch.save({"params_ema": m.state_dict(), "params": {}}, tmp_path / "msr.pth")
    t = load_teacher(tmp_path / "msr.pth")
    assert (t.info.arch, t.info.scale, t.info.value_range) == ("msrresnet", 4, 1.0)
    with torch.no_grad():
        assert torch.allclose(t(X), m(X), atol=1e-6)


def test_vdsr_y_only_pre_upsampling(tmp_path):
    v = VDSR(depth=4, channels=8).eval()
    torch.save(v.state_dict(), tmp_path / "vdsr.pt")
    with pytest.raises(SRShrinkError, match="--scale"):
        load_teacher(tmp_path / "vdsr.pt")
    t = load_teacher(tmp_path / "vdsr.pt", scale=3)
    assert t.info.y_only and t.info.pre_upsample and t.info.scale == 3
    out = t(X)
    assert out.shape == (1, 3, 36, 30)


def test_ycbcr_round_trip():
    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-5)


def test_torchscript_and_value_range_guess(tmp_path):
    m = _edsr()
    torch.jit.save(torch.jit.trace(m, torch.rand(1, 3, 16, 16)), tmp_path / "ts.pt")
    t = load_teacher(tmp_path / "ts.pt")
    assert t.info.format == "torchscript" and t.info.scale == 2 and t.info.value_range == 255.0
    s = SRStudent(2, 1, 4).eval()  # works on [0, 1]
    torch.jit.save(torch.jit.script(s), tmp_path / "s_ts.pt")
    assert load_teacher(tmp_path / "s_ts.pt").info.value_range == 1.0


def test_torch_export_pt2(tmp_path):
    s = SRStudent(2, 1, 4).eval()
    h = torch.export.Dim("h", min=8, max=128)
    w = torch.export.Dim("w", min=8, max=128)
    ep = torch.export.export(s, (torch.rand(1, 3, 16, 16),), dynamic_shapes={"x": {2: h, 3: w}})
    torch.export.save(ep, tmp_path / "s.pt2")
    t = load_teacher(tmp_path / "s.pt2")
    assert t.info.format == "torch.export" and t.info.scale == 2
    assert torch.allclose(t(X), s(X), atol=1e-6)


def test_sr_shrink_checkpoint_and_default_teacher(tmp_path):
    s = SRStudent(3, 2, 4)
    save_model_checkpoint(s, "student", s.config(), tmp_path / "c.pt")
    t = load_teacher(tmp_path / "c.pt", scale=3)
    assert t.info.format == "sr-shrink checkpoint" and t.info.scale == 3
    d = load_teacher()
    assert d.info.scale == 2 and d.info.arch == "edsr" and d.info.path == str(DEFAULT_TEACHER)


def test_bundled_teachers_by_scale():
    x4 = load_teacher(scale=4)  # the bundled x4 teacher, chosen by the scale alone
    assert x4.info.scale == 4 and x4.info.arch == "edsr" and x4.info.path.endswith("teacher_x4.pt")
    manifest = json.loads(Path(x4.info.path).with_suffix(".json").read_text())
    assert manifest["eval"]["psnr_y"] > manifest["eval"]["bicubic_psnr_y"] + 0.3  # it is a real x4 teacher
    assert Path(x4.info.path).stat().st_size <= 5 * 2**20
    with pytest.raises(SRShrinkError, match="no bundled x3 teacher"):
        load_teacher(scale=3)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SR_SHRINK_PWNED']}",))


def test_untrusted_pickle_is_refused_and_not_executed(tmp_path, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("SR_SHRINK_PWNED", str(flag))
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(SRShrinkError, match="--trust-pickle"):
        load_teacher(tmp_path / "evil.pt")
    assert not flag.exists()


def test_full_module_pickle_needs_trust(tmp_path):
    m = _edsr()
    torch.save(m, tmp_path / "full.pt")
    with pytest.raises(SRShrinkError, match="--trust-pickle"):
        load_teacher(tmp_path / "full.pt")
    t = load_teacher(tmp_path / "full.pt", trust_pickle=True)
    assert t.info.format == "pickled nn.Module" and t.info.scale == 2


def test_a_file_that_is_no_checkpoint_is_not_called_a_pickle(tmp_path):
    """Text or junk bytes used to be reported as 'holds pickled Python objects ... Pass --trust-pickle': the
    weights-only unpickler refuses their first byte as it refuses a pickled class."""
    for name, data in (("notes.pt", b"not a checkpoint"), ("x.pth", b"x\n"), ("zeros.pt", bytes(64)),
                       ("hello.pth", b"hello world\n")):  # 'h' reaches torch's unpickler: a bare "KeyError: 104"
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SRShrinkError, match="not a PyTorch checkpoint") as err:
            load_teacher(tmp_path / name)
        assert "trust-pickle" not in str(err.value) and "pickled Python objects" not in str(err.value)
        assert not re.search(r"\(\d+\)", str(err.value))  # no bare number from torch
    torch.save(_edsr(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # a real pickle still is one
    with pytest.raises(SRShrinkError, match="--trust-pickle"):
        load_teacher(tmp_path / "legacy.pt")


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(SRShrinkError, match="no such file"):
        load_teacher(tmp_path / "missing.pt")
    torch.save(_edsr().state_dict(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SRShrinkError, match="truncated or damaged; check the file") as err:
        load_teacher(tmp_path / "trunc.pt")
    assert "Errno" not in str(err.value)  # torch's "[Errno 22] Invalid argument" for a zip cut short
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SRShrinkError, match="empty"):
        load_teacher(tmp_path / "empty.pt")
    torch.save({"fc.weight": torch.rand(10, 4), "fc.bias": torch.rand(10)}, tmp_path / "unknown.pt")
    with pytest.raises(SRShrinkError, match="unknown architecture"):
        load_teacher(tmp_path / "unknown.pt")
    with pytest.raises(SRShrinkError, match="upscales x2, not x4"):
        load_teacher(tmp_path / "ok.pt", scale=4)


def test_non_sr_network_is_rejected(tmp_path):
    clf = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    torch.jit.save(torch.jit.trace(clf, torch.rand(1, 3, 32, 32)), tmp_path / "clf.pt")
    with pytest.raises(SRShrinkError, match="does not look like an image SR network"):
        load_teacher(tmp_path / "clf.pt")


def test_count_macs():
    s = SRStudent(2, 1, 4)
    # head 3->4, block 4->4 x2, tail 4->12, all 3x3 convs on 16x16
    expected = 16 * 16 * 9 * (3 * 4 + 4 * 4 * 2 + 4 * 12)
    assert count_macs(s, (16, 16)) == expected


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sr_shrink.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_info_and_one_line_errors(tmp_path):
    torch.save(_edsr().state_dict(), tmp_path / "ok.pt")
    r = _cli("info", str(tmp_path / "ok.pt"), "--json")
    assert r.returncode == 0, r.stderr
    assert '"arch": "edsr"' in r.stdout and '"macs_256x256"' in r.stdout
    for bad in (["info", str(tmp_path / "nope.pt")], ["info", str(tmp_path / "ok.pt"), "--scale", "3"]):
        r = _cli(*bad)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")


def test_cli_untrusted_pickle_message(tmp_path):
    torch.save(_edsr(), tmp_path / "full.pt")
    r = _cli("info", str(tmp_path / "full.pt"))
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and "Traceback" not in r.stderr
    assert Path(tmp_path / "full.pt").exists()
