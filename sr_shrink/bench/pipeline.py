"""``run_bench``: measure every stage x runtime x precision of a distill run and recommend one to ship.

Order of work: open the run (:class:`~sr_shrink.run.RunDir`, which must hold run.json), settle the runtimes,
score bicubic and the teacher on the eval images, open one runner per row (:mod:`sr_shrink.runtimes`;
exporting models that are not in RUN_DIR/exports yet) while measuring its peak memory, score every row's
quality, time all rows together in interleaved rounds, then pick. What bench compares lives here too:
:data:`RUNTIMES` (torch, onnxruntime, litert; the runners are :mod:`sr_shrink.runtimes`), the default
:data:`PRECISIONS` and :func:`settle_runtimes`; the export target each runtime runs is the registry's
(:func:`sr_shrink.export.targets.benched_targets`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import load_eval_set
from ..errors import SRShrinkError, first_line
from ..evaluate import evaluate_bicubic, fidelity, under_bicubic
from ..export.options import option_args
from ..progress import enabled as progress_enabled
from ..progress import task
from ..run import RunDir, load_stage
from ..runtimes import Runner, TorchRunner, missing_runtime_message, open_runner, require_runtime, runtime_available
from ..sizes import parse_size  # noqa: F401 - re-exported: sr_shrink.bench.parse_size
from ..teachers import count_macs
from .artifacts import Exporter, ensure_export, export_command, export_with_api, file_options, row_files
from .machine import machine_info
from .measure import DEFINITIONS, PeakMemory, bench_input, latency_stats, quality, time_interleaved, timing_steps
from .pareto import PSNR, pick
from .references import METRICS, choose_metric, teacher_score

Log = Callable[[str], None]


RUNTIMES = ("torch", "onnxruntime", "litert")  # the Core ML MIL evaluator checks exports, it is not timed
PRECISIONS = ("fp32", "fp16", "int8")  # the default set
ACCEPTED_PRECISIONS = PRECISIONS + ("w8a16",)  # w8a16 (int8 weights, 16-bit activations) when asked for
OPTIONS_MARK = "†"  # the table's mark on a row whose file was exported with non-default options


def settle_runtimes(requested: tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """Return (runtimes to bench, notes): torch always; missing packages noted, or an error if asked for."""
    if requested:
        for name in requested:
            if name not in RUNTIMES:
                raise SRShrinkError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}.")
            require_runtime(name)
        return ["torch"] + [r for r in dict.fromkeys(requested) if r != "torch"], []
    ok = [r for r in RUNTIMES if runtime_available(r)]
    return ok, [f"skipped {r}: {missing_runtime_message(r)}" for r in RUNTIMES if r not in ok]


def row_order(row: dict) -> tuple:
    """Return the sort key of a row: stage, then runtime and precision in their canonical order."""
    rank = {n: i for i, n in enumerate(RUNTIMES + ACCEPTED_PRECISIONS)}
    return row["stage"], rank.get(row["runtime"], 99), rank.get(row["precision"], 99)


@dataclass
class BenchConfig:
    """Settings of one benchmark; ``runtimes=None`` means every installed runtime (missing ones noted)."""

    device: str = "cpu"
    runtimes: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = PRECISIONS
    input_size: tuple[int, int] = (256, 256)
    threads: int | None = None
    eval_dir: str | None = None
    max_images: int | None = None
    budget_ms: float | None = None
    min_psnr: float | None = None
    repeats: int = 20
    warmup: int = 3
    rounds: int = 5
    stages: tuple[int, ...] | None = None
    metric: str = "auto"
    latency_from: str | None = None  # device latencies to rank by (bench.device)
    adb: str | None = None  # benchmark_model to run on the attached Android device (bench.device)
    adb_args: str = ""

    def benches(self, stage: int) -> bool:
        """Return True when ``stage`` is one of the stages to bench (``--stages``; all when not given)."""
        return not self.stages or stage in self.stages

    def validate(self) -> BenchConfig:
        """Return self after checking the values, raising SRShrinkError with a one-line fix otherwise."""
        if self.metric not in METRICS:
            raise SRShrinkError(f"unknown --metric {self.metric!r}; choose from {', '.join(METRICS)}.")
        if self.budget_ms is not None and self.min_psnr is not None:
            raise SRShrinkError("pass either --budget-ms or --min-psnr, not both.")
        if self.latency_from and self.adb:
            raise SRShrinkError("pass either --latency-from or --adb, not both.")
        if self.adb_args.strip() and not self.adb:
            raise SRShrinkError("--adb-args are benchmark_model flags for --adb; add --adb BENCHMARK_MODEL or drop "
                                "them.")
        if self.runtimes is not None and not self.runtimes:  # e.g. --runtimes "," (None: every installed one)
            raise SRShrinkError(f"--runtimes names no runtime; pass some of {', '.join(RUNTIMES)} (comma-separated), "
                                "or leave --runtimes out for every installed one.")
        bad = [p for p in self.precisions if p not in ACCEPTED_PRECISIONS]
        if bad or not self.precisions:
            raise SRShrinkError(f"unknown precision {', '.join(bad) or '(none)'}; "
                                f"choose from {', '.join(ACCEPTED_PRECISIONS)}.")
        if min(self.input_size) < 8:
            raise SRShrinkError(f"--input-size {self.input_size[0]}x{self.input_size[1]} is too small; use >= 8x8.")
        if self.repeats < 1 or self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise SRShrinkError("--repeats and --threads must be at least 1 and --warmup at least 0.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SRShrinkError("--device cuda but no CUDA GPU is visible to PyTorch; use --device cpu.")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise SRShrinkError(f"unknown --device {self.device!r}; use cpu or cuda.")
        return self


@dataclass
class Row:
    """One benchmark row while it is being measured: its facts so far and the runner that serves it."""

    meta: dict[str, Any]
    runner: Runner
    radius: int
    extra: dict[str, Any] = field(default_factory=dict)


def _torch_row(ckpt: Path, cfg: BenchConfig, threads: int, x) -> Row:
    with PeakMemory() as mem:
        model, _ = load_stage(ckpt)
        runner = TorchRunner(model, threads, cfg.device, path=ckpt)
        runner(x)
    meta = {"params": sum(p.numel() for p in model.parameters()), "n_blocks": model.n_blocks,
            "size_bytes": ckpt.stat().st_size, "path": str(ckpt), "peak_rss_mib": mem.mib}
    return Row(meta, runner, radius=2 * model.n_blocks + 2, extra={"model": model})


def _export_row(run: RunDir, stage: int, runtime: str, precision: str, cfg: BenchConfig, threads: int, x,
                exporter: Exporter | None) -> tuple[dict, Runner]:
    path, made = ensure_export(run, stage, runtime, precision, cfg.input_size, exporter)
    with PeakMemory() as mem:
        runner = open_runner(path, threads, cfg.device)
        if not runner.takes(cfg.input_size):
            raise SRShrinkError(f"{path} takes {runner.tile_hw} inputs, not {cfg.input_size}.")
        runner(x)
    runner.precision = precision
    meta = {"size_bytes": path.stat().st_size, "path": str(path), "exported_now": made, "peak_rss_mib": mem.mib,
            "layout": runner.layout, "io_dtype": runner.io_dtype, "export_options": file_options(run, path)}
    return meta, runner


def open_rows(run: RunDir, cfg: BenchConfig, runtimes: list[str], threads: int, x, exporter: Exporter | None,
              log: Log, advance: Callable[[], None] = lambda: None) -> tuple[list[Row], list[str]]:
    """Return (one Row per stage x runtime x precision that could be opened, notes on the ones skipped), calling
    ``advance()`` (progress) after each row tried."""
    rows = []
    notes = [f"skipped stage {n}: run.json records it but stage_{n:02d}.pt is missing." for n in run.missing_stages()
             if cfg.benches(n)]
    for stage, ckpt in run.stages.items():
        if not cfg.benches(stage):
            continue
        log(f"stage {stage}: torch")
        base = _torch_row(ckpt, cfg, threads, x)
        base.meta.update(stage=stage, runtime="torch", precision="fp32", device=base.runner.device,
                         macs=count_macs(base.extra["model"], tuple(cfg.input_size)))
        rows.append(base)
        advance()
        for runtime in runtimes[1:]:
            for precision in cfg.precisions:
                log(f"stage {stage}: {runtime} {precision}")
                try:
                    meta, runner = _export_row(run, stage, runtime, precision, cfg, threads, x, exporter)
                except Exception as exc:  # noqa: BLE001 - one failed export/runtime must not sink the whole benchmark
                    notes.append(f"skipped stage {stage} {runtime} {precision}: {first_line(exc)}")
                    continue
                finally:
                    advance()
                meta = {**{k: base.meta[k] for k in ("stage", "n_blocks", "params", "macs")}, **meta,
                        "runtime": runtime, "precision": precision, "device": runner.device}
                rows.append(Row(meta, runner, base.radius))
    if not rows:
        raise SRShrinkError(f"{run.root}: no stage checkpoint could be benchmarked; {' '.join(notes)}")
    return rows, notes


NO_LITERT_ROW = "--adb runs .tflite files, but no litert row was benchmarked; add --runtimes litert."


def _device_source(cfg: BenchConfig, runtimes: list[str], run: RunDir, stages: list[int],
                   notes: list[str]) -> list | None:
    """Return the latencies of ``--latency-from`` (None without it), read before any row is measured, and check
    that they name at least one file the rows of ``run``'s ``stages`` can run, and that ``--adb`` has adb and a
    litert row to run: a bad file or setup fails at once, not after the work. The file's notes (a model named
    twice, a run cut short) are appended to ``notes``."""
    from .device import adb_exe, read_latency_file

    if cfg.adb:
        if "litert" not in runtimes:
            raise SRShrinkError(NO_LITERT_ROW)
        adb_exe()
    if not cfg.latency_from:
        return None
    latencies = read_latency_file(cfg.latency_from, notes.append)
    files = row_files(run, stages, runtimes, cfg.precisions)
    named = sorted({d.file for d in latencies})
    if not files:
        raise SRShrinkError(f"--latency-from {cfg.latency_from}: device latencies rank exported files, but this bench "
                            f"has only torch rows (--runtimes {','.join(runtimes)}); add --runtimes litert or "
                            "onnxruntime.")
    if not set(named) & set(files):
        raise SRShrinkError(f"--latency-from {cfg.latency_from}: none of its files ({_some(named)}) is one this "
                            f"run's rows use ({_some(files)}); name the files as bench's rows do, or pass the "
                            "--runtimes and --precisions they were measured for.")
    return latencies


def _some(names: list[str], most: int = 6) -> str:
    """Return up to ``most`` of ``names``, comma-separated, with ", ..." when there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _device_latency(rows: list[dict], cfg: BenchConfig, log: Log, latencies: list | None) -> list[str]:
    """Rank ``rows`` by device latencies: ``latencies`` (``--latency-from``, read by :func:`_device_source`), else
    measured with ``--adb``; return the notes."""
    from .device import apply_device_latency, run_on_device

    if latencies is not None:
        return apply_device_latency(rows, latencies)
    files = list(dict.fromkeys(Path(r["path"]) for r in rows if r["runtime"] == "litert"))
    if not files:
        raise SRShrinkError(NO_LITERT_ROW)
    log(f"running benchmark_model on the Android device for {len(files)} .tflite file(s)")
    return apply_device_latency(rows, run_on_device(cfg.adb, files, cfg.adb_args))


ROW_KEYS = ("stage", "n_blocks", "runtime", "precision", "params", "macs", "size_bytes", "latency_ms_median",
            "latency_ms_p90", "psnr_y", "ssim_y", "fidelity_psnr_y", "fidelity_ssim_y", "delta_teacher_db",
            "delta_bicubic_db")


def finish_row(row: Row, times: list[float], scores: dict, teacher: dict, bicubic: dict, threads: int,
               fid: dict | None = None) -> dict:
    """Return the JSON row: the required keys first (``fidelity_*`` None without a teacher), then latency
    spread and samples (ms, in the order timed), memory, file and device extras."""
    stats = latency_stats(times)
    t_psnr = teacher.get("psnr_y")
    out = {**row.meta, **stats, "latency_ms_samples": [round(t * 1000, 4) for t in times],
           "psnr_y": scores["psnr_y"], "ssim_y": scores["ssim_y"],
           **(fidelity(fid) if fid else {"fidelity_psnr_y": None, "fidelity_ssim_y": None}),
           "delta_teacher_db": round(scores["psnr_y"] - t_psnr, 4) if t_psnr is not None else None,
           "delta_bicubic_db": round(scores["psnr_y"] - bicubic["psnr_y"], 4), "threads": threads}
    return {**{k: out.get(k) for k in ROW_KEYS}, **{k: v for k, v in out.items() if k not in ROW_KEYS}}


def option_notes(rows: list[dict]) -> list[str]:
    """Return one note per row whose file was exported with options beyond the defaults (``export_options``:
    e.g. ``--qat``, ``--float-stream``), which the table marks, so that a row is not read as the default file."""
    return [f"stage {r['stage']} {r['runtime']} {r['precision']} (marked {OPTIONS_MARK}) is a file exported with "
            f"{' '.join(option_args(r['export_options']))}: {r['path']}" for r in rows if r.get("export_options")]


def run_bench(run_dir: str | Path | RunDir, config: BenchConfig | None = None, exporter: Exporter | None = None,
              log: Log | None = None) -> dict:
    """Benchmark a distill run (a folder or an open RunDir).

    Returns ``{"rows", "recommended", "machine", "teacher", "bicubic", "notes", ...}``.

    ``recommended`` is the picked row plus ``reason``; when no row meets --budget-ms/--min-psnr it is None
    and ``pick_error`` holds the message (so the measurements can still be saved before failing).
    """
    torch_threads = torch.get_num_threads()
    try:
        cfg = (config or BenchConfig()).validate()
        return _run_bench(RunDir.open(run_dir), cfg, exporter, log or (lambda _m: None))
    finally:
        torch.set_num_threads(torch_threads)


def _say(log: Log, what: str) -> None:
    """Log the start of a phase, unless progress reporting is on: then its own lines or bar name it."""
    if not progress_enabled():
        log(what)


def _run_bench(run: RunDir, cfg: BenchConfig, exporter: Exporter | None, log: Log) -> dict:
    run.require_run("scale")
    scale = run.scale
    if scale is None:
        raise SRShrinkError(f"{run.root / 'run.json'}: scale {run.run.get('scale')!r} is not a number.")
    stages = [s for s in run.stages if cfg.benches(s)]
    run.check_stages(stages)  # before any row is exported
    runtimes, notes = settle_runtimes(cfg.runtimes)
    latencies = _device_source(cfg, runtimes, run, stages, notes)
    threads = cfg.threads or torch.get_num_threads()
    pairs = load_eval_set(scale, cfg.eval_dir, cfg.max_images)
    bicubic = evaluate_bicubic(pairs, scale)
    teacher, references, t_notes = teacher_score(run, pairs, cfg.device, log)
    metric = choose_metric(cfg.metric, teacher, bicubic, bool(references))
    x = bench_input(cfg.input_size)
    n_rows = len(stages) * (1 + (len(runtimes) - 1) * len(cfg.precisions))
    if exporter is None:  # the export's own notes (a generator.pt it cannot read) go to bench's log
        exporter = functools.partial(export_with_api, log=log)
    with task(f"opening {n_rows} rows (exporting the files not in exports/ yet)", total=n_rows) as advance:
        rows, r_notes = open_rows(run, cfg, runtimes, threads, x, exporter, log, advance)
    what = f"scoring {len(rows)} rows on {len(pairs)} images" + (" (and against the teacher)" if references else "")
    _say(log, what)
    with task(what, total=len(rows) * len(pairs)) as advance:
        scores, fids = zip(*[quality(r.runner, pairs, scale, overlap=r.radius, references=references,
                                     advance=advance) for r in rows])
    what = f"timing {len(rows)} rows: {cfg.warmup} warm-up + {cfg.repeats} timed calls each, interleaved"
    _say(log, what)
    with task(what, total=timing_steps(len(rows), cfg.repeats, cfg.rounds)) as advance:
        times = time_interleaved({i: r.runner for i, r in enumerate(rows)}, x, cfg.repeats, cfg.warmup, cfg.rounds,
                                 advance)
    out_rows = [finish_row(r, times[i], scores[i], teacher, bicubic, threads, fids[i]) for i, r in enumerate(rows)]
    out_rows.sort(key=row_order)
    notes += option_notes(out_rows)
    if cfg.latency_from or cfg.adb:  # rank by latencies measured on the phone
        notes += _device_latency(out_rows, cfg, log, latencies)
    result = {"rows": out_rows, "recommended": None, "machine": machine_info(threads, cfg.input_size, cfg.device),
              "teacher": teacher, "bicubic": {"psnr_y": bicubic["psnr_y"], "ssim_y": bicubic["ssim_y"]},
              "eval": {"folder": str(cfg.eval_dir or "bundled"), "images": len(pairs), "scale": scale},
              "settings": {**asdict(cfg), "threads": threads}, "notes": notes + t_notes + r_notes,
              "metric": metric, "definitions": DEFINITIONS}
    try:
        result["recommended"] = pick(out_rows, cfg.budget_ms, cfg.min_psnr, metric["key"])
        rec = result["recommended"]
        rec["export_command"] = export_command(run, Path(rec["path"])) if rec.get("runtime") != "torch" else None
    except SRShrinkError as exc:
        result["pick_error"] = str(exc)
    if metric["name"] == "psnr" and (note := bicubic_note(out_rows, result["recommended"], teacher, bicubic)):
        result["notes"].append(note)
    return result


def bicubic_note(rows: list[dict], rec: dict | None, teacher: dict, bicubic: dict) -> str | None:
    """Return a note when the recommended row (``rec``) of a PSNR-trained teacher's run scores no better than
    bicubic upscaling on the eval images (every row, or the pick only: then the stages that do better); else
    None."""
    b = bicubic.get("psnr_y")
    if rec is None or not under_bicubic(rec.get(PSNR), teacher.get("psnr_y"), b):
        return None
    better = sorted({r["stage"] for r in rows if r.get(PSNR) is not None and r[PSNR] > b})
    if not better:
        return (f"no row scores above bicubic upscaling ({b:.3f} dB) on these images: bicubic serves as well as any "
                "of these students; distill again with more --steps-per-stage (or a longer --time-budget) before "
                "shipping one.")
    stages = ", ".join(map(str, better))
    return (f"the recommended row scores {rec[PSNR] - b:+.3f} dB against bicubic upscaling ({b:.3f} dB) on these "
            f"images: bicubic serves as well; stage{'s' if len(better) > 1 else ''} {stages} scores above it.")
