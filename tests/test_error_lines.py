"""Error lines: whole sentences shortened at a word, one home for an exception's first line, and an image
passed where a teacher belongs named as an image (never a hint to trust pickles)."""

from __future__ import annotations

import io

import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_run, one_error_line
from PIL import Image

from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError, first_line, shorten
from sr_shrink.teachers import load_teacher
from sr_shrink.teachers.formats import image_kind

LONG = ("Weights only load failed. This file can still be loaded, to do so you have two options, do those steps "
        "only if you trust the source of the checkpoint. In PyTorch 2.6, we changed the default value of the "
        "weights_only argument in torch.load from False to True.")


def test_shorten_keeps_short_text_and_cuts_after_a_sentence():
    assert shorten("a short message", 200) == "a short message"
    cut = shorten(LONG, 160)
    assert cut == ("Weights only load failed. This file can still be loaded, to do so you have two options, do those "
                   "steps only if you trust the source of the checkpoint.")
    assert len(cut) <= 160 and LONG.startswith(cut)


def test_shorten_cuts_at_a_word_with_an_ellipsis():
    text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    for limit in range(12, len(text)):
        cut = shorten(text, limit)
        assert len(cut) <= limit and cut.endswith("...")
        words = cut[:-3].split(" ")
        assert words == text.split(" ")[: len(words)]  # whole words only, none cut in the middle
    assert shorten("x" * 50, 10) == "xxxxxxx..."  # one word longer than the room: the only cut inside a word


def test_first_line_takes_the_first_non_empty_line():
    assert first_line(ValueError("\n\n  first line  \nsecond")) == "first line"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(None) == "no error"
    long = first_line(RuntimeError("word " * 100))
    assert len(long) <= 200 and long.endswith("word...")


def test_first_line_keeps_the_reason_after_a_header_line():
    exc = RuntimeError('Error(s) in loading state_dict for SPAN:\n\tMissing key(s) in state_dict: "a.bias".')
    assert first_line(exc) == 'Error(s) in loading state_dict for SPAN: Missing key(s) in state_dict: "a.bias".'
    assert first_line(ValueError("only a header:")) == "only a header:"


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, name", [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("WEBP", "WebP"),
                                       ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_image_as_teacher_is_named_as_an_image(tmp_path, fmt, name):
    path = tmp_path / "photo.pth"  # the suffix does not decide: the bytes do
    path.write_bytes(_image_bytes(fmt))
    assert image_kind(path) == name
    with pytest.raises(SRShrinkError) as info:
        load_teacher(path)
    msg = str(info.value)
    assert f"{name} image, not a teacher checkpoint" in msg and "trust-pickle" not in msg and "\n" not in msg


def test_checkpoints_are_not_taken_for_images(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    (tmp_path / "c.bin").write_bytes(b"BM" + bytes(30))  # 'BM' alone is not a bitmap
    for name in ("a.pt", "b.safetensors", "c.bin"):
        assert image_kind(tmp_path / name) is None


@pytest.mark.parametrize("command", ["info", "distill"])
def test_cli_info_and_distill_of_a_photo(tmp_path, command):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_image_bytes("JPEG"))
    args = [command, str(photo)] + (["--out", str(tmp_path / "run"), "--quiet"] if command == "distill" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "JPEG image" in lines[0], result.output
    assert "--trust-pickle" not in result.output
    assert not (tmp_path / "run").exists()  # nothing written for a wrong input


@pytest.mark.parametrize("command", ["info", "distill"])
def test_a_folder_given_as_the_model_is_named_a_folder(tmp_path, command):
    """distill RUN_DIR (or any folder; info on a folder that is no run) said 'no such file' of a folder that exists;
    it says it is a folder, and of a distill run which of its files to pass (info describes a run folder itself:
    test_info_run)."""
    run = make_tiny_run(tmp_path / "run")
    (tmp_path / "weights").mkdir()
    cases = [(run, f"its students are files such as {run / 'stage_02.pt'}.")] if command == "distill" else []
    for folder, says in cases + [(tmp_path / "weights", "pass a teacher file (.pt/.pth/.safetensors state_dict")]:
        args = [command, str(folder)] + (["--out", str(tmp_path / "new"), "--quiet"] if command == "distill" else [])
        line = one_error_line(CliRunner().invoke(main, args))
        assert line.startswith(f"error: {folder}: is a folder, not a model file; {says}"), line
    assert not (tmp_path / "new").exists()


def _exported_models(folder) -> list:
    """An .onnx, a .mlpackage folder and a TFLite flatbuffer without its suffix (its identifier tells it)."""
    (folder / "stage_02_fp32.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    (folder / "stage_02_fp16.mlpackage").mkdir()
    (folder / "model.bin").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(24))
    return [(folder / "stage_02_fp32.onnx", "ONNX"), (folder / "stage_02_fp16.mlpackage", "Core ML"),
            (folder / "model.bin", "TFLite")]


def test_an_exported_model_as_teacher_is_named_as_one(tmp_path):
    """An .onnx given as the teacher was 'holds pickled Python objects ... --trust-pickle' (or, after that was
    fixed, 'not a PyTorch checkpoint; download it again'); a .mlpackage was 'no such file'."""
    for path, kind in _exported_models(tmp_path):
        with pytest.raises(SRShrinkError) as info:
            load_teacher(path)
        msg = str(info.value)
        assert f"exported {kind} model, not a teacher checkpoint" in msg and "sr-shrink upscale" in msg, msg
        assert "trust-pickle" not in msg and "no such file" not in msg


@pytest.mark.parametrize("kind", ["ONNX", "Core ML", "TFLite", "PNG"])
def test_cli_export_of_a_model_or_an_image_names_it(tmp_path, kind):
    """export RUN_DIR given an exported model or a photo said 'not a readable sr-shrink checkpoint (Weights only
    load failed. In PyTorch 2.6, ...)'."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(_image_bytes("PNG"))
    path = dict([(k, p) for p, k in _exported_models(tmp_path)] + [("PNG", photo)])[kind]
    result = CliRunner().invoke(main, ["export", str(path), "--target", "onnx"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    what = "image" if kind == "PNG" else "model"
    assert f"{kind} {what}, not a run folder or stage_XX.pt" in lines[0] and "Weights only" not in lines[0]
