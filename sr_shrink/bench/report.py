"""Show and save a benchmark: a rich table, bench.json, and a PSNR-vs-latency plot with the Pareto front."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..io import atomic_write_json
from ..progress import counted
from .pareto import PSNR, metric_label, pareto_front
from .pipeline import OPTIONS_MARK, row_order

MARKERS = {"torch": "o", "onnxruntime": "s", "litert": "^"}
COLOURS = {"fp32": "tab:blue", "fp16": "tab:orange", "int8": "tab:green", "w8a16": "tab:purple"}


def _key(row: dict) -> tuple:
    return row.get("stage"), row.get("runtime"), row.get("precision")


def metric_key(result: dict) -> str:
    """Return the row key the pick and the front use in ``result`` (``psnr_y`` for results without a metric)."""
    return (result.get("metric") or {}).get("key", PSNR)


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def bench_table(result: dict) -> Table:
    """Return a rich Table of the rows sorted by stage; * marks the pick, + the Pareto front."""
    m = result.get("machine", {})
    table = Table(title=f"sr-shrink bench: {m.get('input_size')} input, {counted(m.get('threads'), 'threads')}, "
                        f"{m.get('cpu')}",
                  caption=_caption(result))
    for name in ("", "stage", "blocks", "runtime", "prec", "params", "GMAC", "KiB", "ms p50", "ms p90",
                 "spread%", "MiB", "PSNR-Y", "SSIM-Y", "fid PSNR-Y", "Δteacher", "Δbicubic"):
        table.add_column(name, justify="left" if name in ("runtime", "prec", "") else "right")
    front = {_key(r) for r in pareto_front(result["rows"], metric_key(result))}
    pick = _key(result["recommended"]) if result.get("recommended") else None
    for r in sorted(result["rows"], key=row_order):
        mark = ("*" if _key(r) == pick else "") + ("+" if _key(r) in front else "")
        prec = r["precision"] + (f" {OPTIONS_MARK}" if r.get("export_options") else "")
        table.add_row(mark, str(r["stage"]), str(r["n_blocks"]), r["runtime"], prec, f"{r['params']:,}",
                      f"{r['macs'] / 1e9:.3f}", f"{r['size_bytes'] / 1024:.1f}", _fmt(r["latency_ms_median"], ".3f"),
                      _fmt(r["latency_ms_p90"], ".3f"), _fmt(r.get("latency_spread_pct"), ".1f"),
                      _fmt(r.get("peak_rss_mib"), ".1f"), f"{r['psnr_y']:.3f}", f"{r['ssim_y']:.4f}",
                      _fmt(r.get("fidelity_psnr_y"), ".3f"), _fmt(r.get("delta_teacher_db"), "+.3f"),
                      f"{r['delta_bicubic_db']:+.3f}",
                      style="bold green" if _key(r) == pick else None)
    return table


def _caption(result: dict) -> str:
    t, b = result.get("teacher", {}), result.get("bicubic", {})
    src = " (from run.json)" if t.get("source") == "run.json" else ""
    metric = result.get("metric") or {}
    ranked = f"ranked by {metric_label(metric_key(result))} (the metric line says why); " if metric else ""
    marked = (f"{OPTIONS_MARK} a file exported with options (see the notes); "
              if any(r.get("export_options") for r in result["rows"]) else "")
    return (f"teacher {_fmt(t.get('psnr_y'), '.3f')} dB{src}, bicubic {_fmt(b.get('psnr_y'), '.3f')} dB; {ranked}"
            f"* recommended, + on the Pareto front; {marked}fid = fidelity to the teacher; "
            "spread = (p90-p10)/median; "
            "MiB = peak RSS growth while "
            "loading + first inference")


def print_report(result: dict, console: Console | None = None) -> None:
    """Print the table, the notes and the recommendation (or why there is none) to ``console``."""
    console = console or Console()
    console.print(bench_table(result))
    for note in result.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
    rec = result.get("recommended")
    key = metric_key(result)
    if result.get("metric"):
        console.print(f"metric: {result['metric']['name']} ({result['metric']['reason']})", markup=False,
                      highlight=False)
    if rec:
        console.print(f"recommended: stage {rec['stage']} ({rec['n_blocks']} blocks) {rec['runtime']} "
                      f"{rec['precision']}: {metric_label(key)} {rec[key]:.2f} dB at {rec['latency_ms_median']:.2f} "
                      f"ms; {rec['reason']}", markup=False, highlight=False)
        console.print(f"file to ship: {rec.get('path')}", markup=False, highlight=False, soft_wrap=True)
        if rec.get("export_command"):
            console.print(f"made by: {rec['export_command']}", markup=False, highlight=False, soft_wrap=True)
        elif rec.get("runtime") == "torch":
            console.print("made by: sr-shrink distill (a PyTorch checkpoint; for a phone, export it with "
                          "sr-shrink export RUN_DIR --target onnx|tflite|coreml --stage "
                          f"{rec['stage']})", markup=False, highlight=False, soft_wrap=True)
        else:
            console.print("made by: not recorded (no export.json next to the file lists it)", markup=False,
                          highlight=False, soft_wrap=True)


def write_json(result: dict, path: str | Path) -> Path:
    """Write the benchmark ``result`` as indented JSON (atomically); return the path."""
    return atomic_write_json(result, path)


def plot(result: dict, path: str | Path) -> Path:
    """Write a PNG of Y-PSNR vs median latency: one point per row labelled with its block count, the
    Pareto front as a line, the pick circled, teacher and bicubic as horizontal lines; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = metric_key(result)
    rows = [r for r in result["rows"] if r.get(key) is not None and r.get("latency_ms_median") is not None]
    fig, ax = plt.subplots(figsize=(9.5, 5.5), dpi=110)
    for r in rows:
        ax.scatter(r["latency_ms_median"], r[key], marker=MARKERS.get(r["runtime"], "o"),
                   color=COLOURS.get(r["precision"], "grey"), s=36, zorder=3)
    front = pareto_front(rows, key)
    ax.plot([r["latency_ms_median"] for r in front], [r[key] for r in front], "k--", lw=1, zorder=2,
            label="Pareto front")
    if key == PSNR:
        _references(ax, result)
    rec = result.get("recommended")
    if rec:
        ax.scatter(rec["latency_ms_median"], rec[key], s=220, facecolors="none", edgecolors="red", lw=1.5,
                   zorder=4, label=f"pick: stage {rec['stage']} {rec['runtime']} {rec['precision']}")
    _legend(ax, rows)
    if rows and min(r["latency_ms_median"] for r in rows) > 0:
        ax.set_xscale("log")  # torch rows are often 10x the exported ones: a linear axis squeezes those together
    m = result.get("machine", {})
    ylabel = "Y-PSNR (dB)" if key == PSNR else "fidelity to the teacher, Y-PSNR (dB)"
    ax.set(xlabel=f"median latency (ms), threads: {m.get('threads')}", ylabel=ylabel,
           title=f"{m.get('input_size')} input on {m.get('cpu', '?')}; labels = residual blocks")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    place_labels(ax, [(r["latency_ms_median"], r[key]) for r in rows], [str(r["n_blocks"]) for r in rows])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


OFFSETS = [(4, 4), (4, -11), (-11, 4), (-11, -11), (9, -3), (-16, -3), (-3, 9), (-3, -16), (14, 9), (14, -16),
           (-21, 9), (-21, -16), (4, 16), (4, -23), (20, -3), (-27, -3)]  # points, nearest first


def place_labels(ax, points: list[tuple[float, float]], texts: list[str], fontsize: int = 7) -> list:
    """Annotate each point with its text at the first offset in OFFSETS whose label box overlaps no label
    placed before it (the last offset when all collide); return the annotations."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed, boxes = [], []
    for (x, y), text in zip(points, texts):
        for dx, dy in OFFSETS:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize)
            box = ann.get_window_extent(renderer).expanded(1.1, 1.1)
            if not any(box.overlaps(b) for b in boxes) or (dx, dy) == OFFSETS[-1]:
                break
            ann.remove()
        placed.append(ann)
        boxes.append(box)
    return placed


def _references(ax, result: dict) -> None:
    t, b = result.get("teacher", {}).get("psnr_y"), result.get("bicubic", {}).get("psnr_y")
    if t is not None:
        ax.axhline(t, color="purple", lw=1, ls=":", label=f"teacher {t:.2f} dB")
    if b is not None:
        ax.axhline(b, color="grey", lw=1, ls=":", label=f"bicubic {b:.2f} dB")


def _legend(ax, rows: list[dict]) -> None:
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    for rt in dict.fromkeys(r["runtime"] for r in rows):
        handles.append(Line2D([], [], marker=MARKERS.get(rt, "o"), ls="", color="black", label=rt))
    for pr in dict.fromkeys(r["precision"] for r in rows):
        handles.append(Line2D([], [], marker="o", ls="", color=COLOURS.get(pr, "grey"), label=pr))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
