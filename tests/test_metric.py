"""bench --metric: a perceptual teacher (under 0.5 dB above bicubic) ranks students by fidelity, others by PSNR,
and the pick follows the chosen key."""

from __future__ import annotations

import pytest

from sr_shrink.bench.pareto import pareto_front, pick
from sr_shrink.bench.references import choose_metric
from sr_shrink.errors import SRShrinkError

BICUBIC = {"psnr_y": 25.0}


def test_auto_metric_follows_the_teacher_margin():
    gan = choose_metric("auto", {"psnr_y": 24.1}, BICUBIC, have_fidelity=True)
    assert gan["key"] == "fidelity_psnr_y" and "-0.90 dB" in gan["reason"] and "perceptual" in gan["reason"]
    edge = choose_metric("auto", {"psnr_y": 25.49}, BICUBIC, have_fidelity=True)
    assert edge["key"] == "fidelity_psnr_y"
    fid_trained = choose_metric("auto", {"psnr_y": 25.5}, BICUBIC, have_fidelity=True)
    assert fid_trained["key"] == "psnr_y" and "+0.50 dB" in fid_trained["reason"]
    no_teacher = choose_metric("auto", {"psnr_y": 24.1}, BICUBIC, have_fidelity=False)
    assert no_teacher["key"] == "psnr_y" and "no teacher file" in no_teacher["reason"]


def test_explicit_metric_and_missing_teacher():
    assert choose_metric("psnr", {"psnr_y": 24.0}, BICUBIC, True)["key"] == "psnr_y"
    assert choose_metric("fidelity", {"psnr_y": 30.0}, BICUBIC, True)["key"] == "fidelity_psnr_y"
    with pytest.raises(SRShrinkError, match="--metric psnr"):
        choose_metric("fidelity", {"psnr_y": 24.0}, BICUBIC, False)


ROWS = [  # fast rows are closer to the teacher, slow ones closer to the ground truth: the two keys disagree
    {"stage": 1, "n_blocks": 1, "runtime": "torch", "precision": "fp32", "latency_ms_median": 1.0, "psnr_y": 24.0,
     "fidelity_psnr_y": 40.0},
    {"stage": 2, "n_blocks": 2, "runtime": "torch", "precision": "fp32", "latency_ms_median": 2.0, "psnr_y": 26.0,
     "fidelity_psnr_y": 35.0},
]


def test_pick_and_front_use_the_metric_key():
    assert pick(ROWS, budget_ms=5.0)["stage"] == 2  # best Y-PSNR
    best_fid = pick(ROWS, budget_ms=5.0, key="fidelity_psnr_y")
    assert best_fid["stage"] == 1 and "fidelity Y-PSNR" in best_fid["reason"]
    assert [r["stage"] for r in pareto_front(ROWS)] == [1, 2]
    assert [r["stage"] for r in pareto_front(ROWS, "fidelity_psnr_y")] == [1]  # stage 2 is slower and worse
    assert pick(ROWS, min_psnr=36.0, key="fidelity_psnr_y")["stage"] == 1
    with pytest.raises(SRShrinkError, match="--min-psnr"):
        pick(ROWS, min_psnr=36.0)


def test_bicubic_note_when_the_pick_does_not_beat_bicubic():
    """A run trained too briefly: bench recommended a student below bicubic upscaling without a word."""
    from sr_shrink.bench.pipeline import bicubic_note

    psnr_teacher = {"psnr_y": 28.0}  # +3 dB over BICUBIC: PSNR-trained
    rows = [{"stage": 1, "psnr_y": 24.2}, {"stage": 2, "psnr_y": 24.9}]
    note = bicubic_note(rows, rows[1], psnr_teacher, BICUBIC)
    assert note and note.startswith("no row scores above bicubic upscaling (25.000 dB)") and "more --steps" in note
    rows += [{"stage": 3, "psnr_y": 25.4}]  # the pick (a --budget-ms one) is below, stage 3 above
    note = bicubic_note(rows, rows[0], psnr_teacher, BICUBIC)
    assert note == ("the recommended row scores -0.800 dB against bicubic upscaling (25.000 dB) on these images: "
                    "bicubic serves as well; stage 3 scores above it.")
    assert bicubic_note(rows, rows[2], psnr_teacher, BICUBIC) is None  # the pick beats bicubic
    assert bicubic_note(rows, rows[0], {"psnr_y": 25.3}, BICUBIC) is None  # a perceptual teacher: fidelity rules
    assert bicubic_note(rows, rows[0], {}, BICUBIC) is None  # teacher unknown
    assert bicubic_note(rows, None, psnr_teacher, BICUBIC) is None  # no pick (its error says why)
