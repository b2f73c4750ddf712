"""``sr-shrink info RUN``: what a distill run folder holds, read from its own files (run.json, the stage files,
state.pt's stage and step, exports/export.json and bench.json) without loading a model or the teacher.

:func:`describe_run` gathers the facts (``info --json`` prints them), :func:`run_rows` and :func:`export_rows`
the rows of the two tables ``info`` shows beside distill's own stage table
(:func:`~sr_shrink.distill.summary_table`). A run still training (or killed) says where a ``--resume`` goes on.
"""

from __future__ import annotations

from pathlib import Path

from .distill import teacher_params
from .distill.resume import resume_command, saved_progress
from .io import read_json_object
from .run import BENCH_JSON, RUN_JSON, RunDir


def describe_run(path: str | Path) -> dict:
    """Return what the run folder ``path`` holds: ``path``, ``run`` (run.json), ``stage_files`` (the stage numbers
    whose checkpoint is there), ``complete``, ``progress`` (the sentence a Ctrl-C prints: where a --resume goes
    on, ending with the command that does), ``resume_command`` (that command, None when complete), ``exports``
    (export.json's entries of RUN/exports), ``bench`` (bench.json's recommended row, None when the run was not
    benchmarked) and ``bench_file`` (that row's file in RUN/exports, None when it is not there); an SRShrinkError
    when ``path`` is no run folder."""
    root = Path(path)
    if root.is_dir() and (root / RUN_JSON).is_file() and not any(root.glob("stage_*.pt")):  # before stage 1 ends
        rd = RunDir(root, read_json_object(root / RUN_JSON, RUN_JSON), {})
    else:
        rd = RunDir.open(root)
    if rd.from_file:
        raise ValueError("describe_run takes a run folder")
    bench = read_json_object(rd.root / BENCH_JSON, BENCH_JSON)
    return {"path": str(rd.root), "run": rd.run, "stage_files": sorted(rd.stages),
            "complete": bool(rd.run.get("complete")), "progress": saved_progress(rd.root),
            "resume_command": None if rd.run.get("complete") else resume_command(rd.root),
            "exports": rd.read_index()["exports"], "bench": bench.get("recommended"),
            "bench_file": str(pick) if (pick := rd.bench_pick(bench.get("recommended") or {})) else None,
            "bench_machine": bench.get("machine"), "bench_settings": bench.get("settings")}


def _teacher_row(run: dict) -> str:
    """Return the teacher cell: architecture, scale, the parameters its eval forward uses (distill's table's
    cell), path."""
    t = run.get("teacher") or {}
    arch = t.get("arch_name") or t.get("arch") or "?"
    count = f"params {teacher_params(t)}" if isinstance(t.get("params"), int) else ""
    return ", ".join(x for x in (f"{arch} x{run.get('scale', '?')}", count, t.get("path")) if x)


def _training_row(run: dict) -> str:
    """Return the training cell: the student shape, stages and steps (or the time budget)."""
    cfg = run.get("config") or {}
    stages = [s.get("n_blocks") for s in run.get("stages") or []]
    done = f"{len(stages)} trained" if stages else "none trained yet"
    if not cfg:  # a run.json without its options: what the stage records say
        return f"stages: {done}"
    shape = f"{cfg.get('channels', '?')} ch {cfg.get('block', '?')} blocks"
    span = (f"stages of {cfg.get('stage_start', '?')}-{cfg.get('stage_end', '?')} blocks "
            f"(step {cfg.get('stage_step', 1)})")
    budget = run.get("time_budget")
    if budget:
        spent = budget.get("spent_seconds")
        steps = f"--time-budget {budget.get('minutes', 0):g} min" + (f" ({spent / 60:.1f} min spent)" if spent else "")
        taken = [s for s in budget.get("stage_steps") or [] if s is not None]
        steps += f", {min(taken)}-{max(taken)} steps per stage" if taken else ""
    else:
        steps = f"{cfg.get('steps_per_stage', '?')} steps per stage"
    return f"{shape}; {span}, {done}; {steps}; LR patch {cfg.get('lr_patch', '?')}, batch {cfg.get('batch', '?')}"


def run_rows(desc: dict) -> list[tuple[str, str]]:
    """Return the (name, value) rows ``info RUN`` shows for :func:`describe_run`'s ``desc``."""
    run = desc["run"]
    rows = [("teacher", _teacher_row(run)),
            ("mode", f"{run.get('mode', '?')}, seed {run.get('seed', '?')}"
                     + (f", synthetic {run['config']['synthetic']}" if (run.get("config") or {}).get("synthetic")
                        and run.get("mode") == "datafree" else "")
                     + (", the pool alone (--mix 1: no generator)" if run.get("mode") == "datafree"
                        and (run.get("config") or {}).get("mix") == 1 else "")),
            ("student", _training_row(run))]
    resumed = run.get("resumed_from") or []
    if resumed:
        rows.append(("resumed", "; ".join(f"at stage {r.get('stage')} step {r.get('step')}" for r in resumed)))
    rows.append(("status", "complete" if desc["complete"] else f"not finished: {desc['progress']}"))
    exports = desc["exports"]
    if exports:
        checked = [e for e in exports if e.get("verified")]
        rows.append(("exports", f"{len(exports)} file(s) in {Path(desc['path']) / 'exports'}, {len(checked)} "
                                "verified against their student (files bench wrote are scored by bench)"))
    pick = desc.get("bench")
    if pick:
        machine, settings = desc.get("bench_machine") or {}, desc.get("bench_settings") or {}
        size = "x".join(map(str, settings.get("input_size") or [])) or None
        source = settings.get("latency_from") or ("adb" if settings.get("adb") else None)
        where = (f"latency from {source}" if source else
                 ", ".join(str(x) for x in (pick.get("device"), machine.get("cpu"),
                                            f"{pick['threads']} threads" if pick.get("threads") else None, size) if x))
        rows.append(("bench pick", f"stage {pick.get('stage')} {pick.get('runtime')} {pick.get('precision')}: "
                                   f"Y-PSNR {pick.get('psnr_y', float('nan')):.2f} dB at "
                                   f"{pick.get('latency_ms_median', float('nan')):.2f} ms ({where}); "
                                   f"{desc.get('bench_file') or pick.get('path') or pick.get('export_command', '')}"))
    return rows


def export_rows(desc: dict) -> list[tuple[str, ...]]:
    """Return the rows (file, stage, precision, KiB, verification) of the run's exported files."""
    rows = []
    for e in desc["exports"]:
        v = e.get("verification") or {}
        check = (f"{v['delta_psnr_y']:+.4f} dB" if e.get("verified") and "delta_psnr_y" in v
                 else "not verified" + (f" ({v['reason']})" if v.get("reason") not in (None, "skipped") else ""))
        rows.append((str(e.get("file")), str(e.get("stage", "-")), str(e.get("precision", "-")),
                     f"{e.get('size_bytes', 0) / 1024:.1f}", check))
    return rows
