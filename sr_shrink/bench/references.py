"""What bench judges students against: the run's teacher (scored here on the eval images, or as run.json
recorded it) and the quality measure that follows from it (:func:`choose_metric`: Y-PSNR to the ground truth, or
fidelity to a perceptual teacher)."""

from __future__ import annotations

from collections.abc import Callable

from ..data import EvalPair
from ..errors import SRShrinkError
from ..evaluate import PERCEPTUAL_MARGIN_DB, teacher_references
from ..run import RunDir
from .pareto import PSNR

METRICS = ("auto", "psnr", "fidelity")
METRIC_KEYS = {"psnr": PSNR, "fidelity": "fidelity_psnr_y"}


def teacher_score(rd: RunDir, pairs: list[EvalPair], device: str,
                  log: Callable[[str], None]) -> tuple[dict, list, list]:
    """Return (teacher metrics dict with a ``source``, the fidelity reference pairs (empty when the teacher is
    not at hand), notes); the metrics are measured here or, without the teacher file, taken from run.json."""
    run = rd.record
    stored = run.teacher_psnr_y
    fallback = {"psnr_y": stored, "ssim_y": run.teacher_ssim_y, "source": "run.json"}
    if rd.teacher_path() is None:
        note = (f"teacher file {(run.teacher or {}).get('path')!r} not found; teacher PSNR {stored} dB taken from "
                "run.json (measured by distill, possibly on other images); no fidelity to the teacher.")
        return fallback, [], [note]
    notes = [f"teacher {rd.teacher_path()} differs from the one distilled from (sha256 mismatch)."] \
        if rd.same_teacher() is False else []
    try:
        teacher = rd.load_teacher(device=device)
    except SRShrinkError as exc:
        return fallback, [], notes + [f"teacher not loadable ({exc}); teacher PSNR taken from run.json."]
    log(f"scoring the teacher {teacher.path.name}")
    scores, references = teacher_references(teacher.net, pairs, rd.scale)
    return {"psnr_y": scores["psnr_y"], "ssim_y": scores["ssim_y"], "source": str(teacher.path)}, references, notes


def choose_metric(requested: str, teacher: dict, bicubic: dict, have_fidelity: bool) -> dict:
    """Return ``{"name", "key", "reason"}``: the quality measure the pick and the Pareto front use."""
    t, b = teacher.get("psnr_y"), bicubic.get("psnr_y")
    margin = None if t is None else t - b
    if requested == "fidelity" and not have_fidelity:
        raise SRShrinkError("--metric fidelity needs the teacher file named in run.json, which is not at hand; "
                            "put it back there or use --metric psnr.")
    if requested != "auto":
        return {"name": requested, "key": METRIC_KEYS[requested], "reason": f"--metric {requested}"}
    if margin is not None and margin < PERCEPTUAL_MARGIN_DB and have_fidelity:
        return {"name": "fidelity", "key": METRIC_KEYS["fidelity"],
                "reason": f"the teacher scores {margin:+.2f} dB against bicubic on the eval images (under "
                          f"+{PERCEPTUAL_MARGIN_DB} dB: a perceptual teacher), so students are ranked by fidelity "
                          "to it"}
    why = ("no teacher file for fidelity" if not have_fidelity else
           f"the teacher scores {margin:+.2f} dB over bicubic (a PSNR-trained teacher)" if margin is not None
           else "teacher PSNR unknown")
    return {"name": "psnr", "key": PSNR, "reason": f"{why}, so students are ranked by Y-PSNR to the ground truth"}
