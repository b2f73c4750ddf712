"""The teacher's pass over large eval images runs in tiles (bounded memory, progress per tile); small ones, the
bundled split among them, in one call as before."""

from __future__ import annotations

import torch
from conftest import make_tiny_teacher

from sr_shrink import evaluate
from sr_shrink.data import EvalPair, make_lr
from sr_shrink.teachers.load import load_teacher


def test_teacher_tiles_are_even_and_at_most_the_tile_size():
    top, ov = evaluate.TEACHER_TILE, evaluate.TEACHER_OVERLAP
    assert evaluate.teacher_tile((300, top)) == (300, top)  # up to the size: one call
    for length in (top + 1, int(1.2 * top), 2 * top, 6 * top):
        t, _ = evaluate.teacher_tile((length, 10))
        n = -(-(length - 2 * ov) // (top - 2 * ov))
        assert t <= top and n * t - 2 * ov * (n - 1) >= length, length  # n tiles cover it
        assert (n - 1) * t - 2 * ov * (n - 2) < length, length  # and n - 1 would not: the fewest
    assert evaluate.teacher_pixels((100, 100)) == 100 * 100
    side = int(1.2 * top)
    assert evaluate.teacher_pixels((side, side)) > side * side  # the overlaps, which --time-budget counts
    assert evaluate.teacher_pixels((side, side)) < 1.5 * side * side  # even tiles: two of `top` would run 2.9x


def test_a_large_eval_image_runs_the_teacher_in_tiles_with_the_same_result(tmp_path, monkeypatch):
    """A whole 12 MP eval photo went through the teacher in one call (13.4 GB for a 6-block RRDB x4 on a 1058x1058
    LR image; the progress said nothing until it ended). Tiles with TEACHER_OVERLAP pixels of context give the
    same 8-bit output for a teacher whose receptive field is smaller than that; without the context (the
    negative control) the seams show."""
    teacher = load_teacher(make_tiny_teacher(tmp_path / "t.pt"))
    hr = torch.rand(3, 1, 1).mul(0.6).add(0.2) + 0.15 * torch.rand(3, 400, 440)
    hr = hr.clamp(0, 1)
    pairs = [EvalPair("big", hr, make_lr(hr, 2)), EvalPair("small", hr[:, :64, :64], make_lr(hr[:, :64, :64], 2))]
    whole_scores, whole = evaluate.teacher_references(teacher, pairs, 2)  # LR 200x220: under the tile size
    calls = []
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda x: calls.append(tuple(x.shape[-2:])) or forward(x))
    monkeypatch.setattr(evaluate, "TEACHER_TILE", 128)
    scores, tiled = evaluate.teacher_references(teacher, pairs, 2)
    assert len(calls) == 4 * 4 + 1 and max(max(c) for c in calls) <= 128 and calls[-1] == (32, 32)
    assert torch.equal(tiled[1].hr, whole[1].hr)  # the small image: one call, as before
    diff = (tiled[0].hr - whole[0].hr).abs()
    assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0).float().mean() < 1e-3
    assert abs(scores["psnr_y"] - whole_scores["psnr_y"]) < 1e-3
    monkeypatch.setattr(evaluate, "TEACHER_OVERLAP", 0)  # the negative control: tiles without context
    _, seams = evaluate.teacher_references(teacher, pairs, 2)
    assert (seams[0].hr - whole[0].hr).abs().max() > 2 / 255


def test_a_teacher_spandrel_discourages_tiling_runs_whole(tmp_path, monkeypatch):
    """A teacher with global context (spandrel: tiling discouraged, e.g. SwinIR) is answered differently in tiles:
    it runs on each eval image in one call, large or not."""
    teacher = load_teacher(make_tiny_teacher(tmp_path / "t.pt"))
    hr = torch.rand(3, 400, 440)
    pairs = [EvalPair("big", hr, make_lr(hr, 2))]
    monkeypatch.setattr(evaluate, "TEACHER_TILE", 128)
    calls = []
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda x: calls.append(tuple(x.shape[-2:])) or forward(x))
    teacher.info.tiling = "discouraged"
    evaluate.teacher_references(teacher, pairs, 2)
    assert calls == [(200, 220)]
    teacher.info.tiling = "supported"
    evaluate.teacher_references(teacher, pairs, 2)
    assert len(calls) == 1 + 16
