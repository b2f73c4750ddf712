"""The ``sr-shrink`` command line: info, distill, export, bench, upscale and demo.

Every command turns an :class:`SRShrinkError` into one line on stderr and exit status 2 (no traceback).
"""

from __future__ import annotations

import math
import pathlib
import re
import sys

import click

from . import choices, progress
from .errors import OtherRankError, SRShrinkError, one_line

console = progress.stderr_console()  # notes and progress; remade per command for the streams it runs with


class Group(click.Group):
    """A click group that prints sr-shrink errors and bad options as one ``error:`` line (exit 2), no traceback."""

    def main(self, *args, **kwargs):
        """Run the command line; a usage error (bad option value, unknown option) becomes one ``error:`` line."""
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # a bare command: its help, as --help would
            click.echo(exc.format_message())
            sys.exit(0)
        except click.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx else "sr-shrink"
            argv = list(kwargs.get("args") or (args[0] if args else None) or sys.argv[1:])
            message = argument_message(exc.format_message(), exc.ctx) or exc.format_message()
            hint = comma_hint(message, argv)
            click.echo(f"error: {message}{hint} (see '{cmd} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code or 2)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        global console
        console = progress.stderr_console()
        try:
            return super().invoke(ctx)
        except SRShrinkError as exc:
            if not isinstance(exc, OtherRankError):  # rank 0 says it once for a distributed run
                click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(2)
        except OSError as exc:  # a path the command cannot read or write (exists as a file, no permission, disk full)
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}; check the path and its permissions.", err=True)
            sys.exit(2)
        except (MemoryError, RuntimeError) as exc:  # torch's failed allocation is a RuntimeError
            message = memory_message(exc, ctx.invoked_subcommand)
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # only distill and demo can --resume; bench, export and upscale start over
            sub = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            resumable = sub is not None and any(p.name == "resume" for p in sub.params)
            click.echo("interrupted; rerun with --resume to continue from the last checkpoint" if resumable
                       else "interrupted", err=True)
            sys.exit(130)
        finally:
            progress.disable()


MEMORY_ADVICE = {  # what to lower when a command runs out of memory
    "distill": "lower --batch or --lr-patch (or --channels)",
    "export": "lower --calib-samples or --input-size (Core ML: fewer or smaller --shapes)",
    "bench": "lower --input-size or --max-images",
    "upscale": "use a smaller --tile (0 runs each image whole)",
}
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")  # torch's allocators' words


def memory_message(exc: BaseException, command: str | None) -> str | None:
    """Return the error line for ``exc`` when it is a failed memory allocation (Python's MemoryError, torch's CPU
    or CUDA allocator), naming what ``command`` can lower; None for any other error."""
    text = str(exc)
    if not isinstance(exc, MemoryError) and not any(w in text.lower() for w in OUT_OF_MEMORY):
        return None
    m = re.search(r"tried to allocate (\d+) bytes", text, re.IGNORECASE)
    size = f" (one allocation of {int(m.group(1)) / 1e9:.1f} GB)" if m else ""
    m = re.search(r"tried to allocate ([\d.]+ [KMGT]iB)", text, re.IGNORECASE)  # CUDA's wording
    size = f" (one allocation of {m.group(1)})" if m else size
    advice = MEMORY_ADVICE.get(command or "", "close other programs or use a machine with more memory")  # demo, info
    return f"out of memory{size}: {advice}."


COMMA_LISTS = ("--synthetic", "--shapes", "--runtimes", "--precisions")  # options that take "a,b,c"


def comma_hint(message: str, argv: list[str]) -> str:
    """Return "; ..." telling how to write a list when click's ``message`` names extra arguments that follow the
    value of a comma-list option in ``argv`` (``--precisions fp32 int8``), else ""."""
    m = re.match(r"Got unexpected extra arguments? \((.*)\)$", message)
    if not m:
        return ""
    extras = m.group(1).split(" ")
    for i in range(2, len(argv) - len(extras) + 1):
        if argv[i:i + len(extras)] == extras and argv[i - 2] in COMMA_LISTS and not argv[i - 1].startswith("-"):
            opt = argv[i - 2]
            return f"; {opt} takes a comma list without spaces: {opt} {','.join([argv[i - 1], *extras])}"
    return ""


ARGUMENT_ALIASES = {  # options other tools take for what a command here reads as an argument
    "teacher": ("--teacher", "-t", "--model", "-m", "--input", "-i"),
    "run_dir": ("--run", "--run-dir", "--run_dir", "--input", "-i"),
    "model": ("--model", "-m"),
    "images": ("--input", "-i", "--images", "--image"),
    "path": ("--path", "--input", "-i"),
}


def argument_message(message: str, ctx: click.Context | None) -> str:
    """Return the usage error to show in place of click's ``message`` when it names an unknown option that other
    tools use for one of the command's arguments (``upscale --model m.onnx``): that it is an argument and the
    command's usage, without click's guesses at similar option names; else ""."""
    m = re.match(r"No such option '([^']+)'", message)
    if not m or ctx is None:
        return ""
    args = [p for p in ctx.command.params if isinstance(p, click.Argument)]
    for arg in args:
        if m.group(1) in ARGUMENT_ALIASES.get(arg.name, ()):
            names = " ".join(a.human_readable_name + ("..." if a.nargs == -1 else "") for a in args)
            return (f"No such option '{m.group(1)}': {arg.human_readable_name} is an argument, not an option: "
                    f"{ctx.command_path} {names} [OPTIONS]")
    return ""


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sr-shrink")
def main() -> None:
    """Shrink a super-resolution network into small, fast students for phones, without its data."""


class Finite(click.FloatRange):
    """A float option in a range that also refuses nan and inf (click's FloatRange lets nan through)."""

    def convert(self, value, param, ctx):
        """Return the float, or fail with a usage error when it is not finite or out of range."""
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return v


def _is_float(text: str) -> bool:
    """Return True when ``text`` reads as a float (``30``, ``2.5``, ``1e3``, ``nan``)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


class Minutes(Finite):
    """A duration option in minutes: a plain number (``30``) or one with units, as ``timeout`` and ``sleep`` take
    them (``90s``, ``30m``, ``30min``, ``1.5h``, ``1h30m``)."""

    name = "duration"
    UNITS = {"s": 1 / 60, "sec": 1 / 60, "m": 1.0, "min": 1.0, "h": 60.0, "hr": 60.0}
    PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(sec|min|hr|s|m|h)")

    def convert(self, value, param, ctx):
        """Return the duration in minutes, or fail with a usage error naming the forms it takes."""
        if isinstance(value, str) and not _is_float(value):
            text = value.strip().lower().replace(" ", "")
            parts = self.PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                self.fail(f"{value!r} is not a duration; give minutes (30) or units: 90s, 30m, 1.5h, 1h30m.",
                          param, ctx)
            value = sum(float(n) * self.UNITS[u] for n, u in parts)
        return super().convert(value, param, ctx)


def _folder(ctx, param, value):
    """Refuse an empty folder option (e.g. ``--out "$RUN"`` with RUN unset), which would mean the current
    folder."""
    if value is not None and not str(value).strip():
        raise click.BadParameter("is empty; pass a folder (e.g. runs/x; '.' for the current one).", ctx, param)
    return value


POS = click.IntRange(min=1)
NONNEG = click.IntRange(min=0)
SCALE = click.IntRange(2, 16)
THREADS = click.IntRange(1, 1024)
SEED = click.IntRange(0, 2**63 - 1)


value_range_option = click.option(
    "--value-range", type=click.Choice(["1", "255"]),
    help="Teacher input/output range (1 or 255) [default: from the format, else probed].")
res_scale_option = click.option(
    "--res-scale", type=Finite(0, 10, min_open=True),
    help="EDSR residual scaling (0.1 for the papers' 256-feature EDSR) [default: from its width].")


def _parse_stages(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: use A:B, e.g. 1:8", param_hint="--stages") from None
    if a < 1 or b < a or b > 256:
        raise click.BadParameter(f"{text!r}: need 1 <= A <= B <= 256", param_hint="--stages")
    return a, b


@main.command()
@click.argument("teacher", required=False)
@click.option("--out", "run_dir", default="runs/distill", show_default=True, callback=_folder,
              help="Run folder (RUN_DIR).")
@click.option("--mode", type=click.Choice(choices.MODES), default="datafree", show_default=True,
              help="Input source for the students.")
@click.option("--data", "data_dir", help="Folder of training images (for --mode data).")
@click.option("--data-target", type=click.Choice(choices.DATA_TARGETS), default="teacher", show_default=True,
              help="--mode data: distill the teacher's output on real photos, or train on their HR ground truth.")
@click.option("--stages", default="1:4", show_default=True, help="Block counts A:B of the first and last stage.")
@click.option("--stage-step", default=1, type=click.IntRange(1, 256), show_default=True, help="Blocks added per stage.")
@click.option("--steps-per-stage", default=None, type=click.IntRange(1, 10**9),
              help="Student steps per stage [default: 500].")
@click.option("--time-budget", default=None, type=Minutes(0, 1e6, min_open=True), metavar="MINUTES",
              help="Fit the whole run into MINUTES (or a duration: 90s, 30m, 1.5h, 1h30m): the step cost is "
                   "measured first and the steps per stage are set from it (instead of --steps-per-stage); run.json "
                   "records the plan.")
@click.option("--channels", default=16, type=click.IntRange(1, 1024), show_default=True, help="Student width.")
@click.option("--block", type=click.Choice(choices.BLOCKS), default="rep", show_default=True,
              help="Student blocks while training: plain 3x3 convs, or rep (3x3 + 1x1 + identity + expand-squeeze "
                   "branches, collapsed exactly into plain 3x3 convs in every stage_XX.pt).")
@click.option("--batch", default=16, type=click.IntRange(1, 4096), show_default=True)
@click.option("--lr-patch", default=0, type=click.IntRange(0, 1024),
              help="LR patch size in px [default: chosen for the scale].")
@click.option("--lr", default=1e-3, type=Finite(0, 10), show_default=True,
              help="Student learning rate (cosine per stage).")
@click.option("--student-steps-per-g", default=None, type=click.IntRange(1, 10**9),
              help="Student steps per generator step.")
@click.option("--g-lr", default=None, type=Finite(0, 10, min_open=True), help="Generator learning rate.")
@click.option("--w-r", default=None, type=Finite(0, 1e6), help="Weight of the bicubic-consistency term of L_G.")
@click.option("--mix", default=None, type=Finite(0, 1),
              help="datafree: share of synthetic images per batch, the rest from the generator (1: no generator) "
                   "[default: 0.5; 1 under --time-budget for a perceptual teacher].")
@click.option("--synthetic", default=None, help="datafree: synthetic sources, e.g. deadleaves, texleaves or "
              "deadleaves,pink; grown-NAME: NAME's images upscaled by the teacher and downscaled back "
              "[default: auto: by the teacher's kind, see README].")
@click.option("--g-kind", type=click.Choice(choices.G_KINDS), default=None,
              help="Generator: refine (perturbs synthetic images, default) or latent (the paper's G(z)).")
@click.option("--kd-loss", type=click.Choice(choices.KD_LOSSES), default="l1", show_default=True)
@click.option("--reuse", default=None, type=click.IntRange(1, 10**6), help="Student steps per fresh teacher batch.")
@click.option("--teacher-dtype", type=click.Choice(choices.TEACHER_DTYPES), default="auto", show_default=True,
              help="Precision of the teacher's forwards (autocast); auto: bf16 on CUDA GPUs that support it, fp32 "
                   "elsewhere. --amp leaves the teacher alone.")
@click.option("--pool", default=512, type=click.IntRange(0, 10**7), show_default=True,
              help="Synthetic images labelled by the teacher once and shared by all stages (0: fresh ones for every "
                   "batch).")
@click.option("--targets", type=click.Choice(choices.KD_TARGETS), default="clamp", show_default=True,
              help="KD targets: the teacher's output clamped to its value range [0, 1], or raw as the network gave it.")
@click.option("--scale", type=SCALE, help="Upscaling factor (checked against the teacher).")
@click.option("--eval", "eval_dir", help="Eval images folder (default: bundled split; 'none' to skip).")
@click.option("--seed", default=0, type=SEED, show_default=True)
@click.option("--save-every", default=100, type=POS, show_default=True,
              help="Steps between resumable checkpoints (and one at least every 2 minutes).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Overwrite a run already in --out.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--amp", is_flag=True, help="bf16 autocast for the student on CUDA (the teacher: --teacher-dtype).")
@click.option("--channels-last", is_flag=True, help="channels_last memory format.")
@click.option("--threads", type=THREADS, help="CPU threads for torch.")
@click.option("--trust-pickle", is_flag=True, help="Allow a full pickled nn.Module teacher (runs its code).")
@value_range_option
@res_scale_option
@click.option("--quiet", is_flag=True, help="No progress bar or table.")
@click.pass_context
def distill(ctx: click.Context, **opts) -> None:
    """Distill TEACHER (default: the bundled x2 teacher) into one student per stage, without training data.

    With --resume, the teacher and the options left out are the run's own (run.json)."""
    import time

    started = time.time()  # --time-budget counts from here: before torch and the teacher load
    folder_given = _run_folder_as_teacher(ctx, opts)
    if opts["resume"]:
        taken = _recorded_options(ctx, opts["run_dir"], folder_given)
        if taken and not opts["quiet"]:
            _note(f"note: resuming {opts['run_dir']} with the teacher and options run.json records: "
                  f"{_as_flags(ctx, taken)}.")
        opts.update(taken)
    _distill(started=started, **opts)


def _run_folder_as_teacher(ctx: click.Context, opts: dict) -> bool:
    """Take a distill run folder given where the teacher goes (``distill --resume RUN``, as the Ctrl-C message's
    folder invites) as ``--out RUN`` and return True; without ``--resume``, or beside another ``--out``, refuse an
    unfinished run in one line that names the command that continues it. Return False for anything else (a teacher
    file, a finished run: the teacher loader names its students)."""
    from click.core import ParameterSource

    folder = opts["teacher"]
    if not folder or not pathlib.Path(folder).is_dir():
        return False
    from .distill.resume import nothing_to_resume, recorded_run, resume_command

    if nothing_to_resume(pathlib.Path(folder)):
        return False  # a folder of something else: the teacher loader names it
    out_given = ctx.get_parameter_source("run_dir") is not ParameterSource.DEFAULT
    if opts["resume"] and (not out_given or pathlib.Path(opts["run_dir"]).resolve() == pathlib.Path(folder).resolve()):
        opts["run_dir"], opts["teacher"] = folder, None
        return True
    if recorded_run(pathlib.Path(folder)).get("complete"):
        return False  # nothing to continue: the teacher loader names its students, one of which may be meant
    raise SRShrinkError(f"{folder}: is a distill run folder, not a teacher file; continue it with: "
                        f"{resume_command(pathlib.Path(folder))}")


def _recorded_options(ctx: click.Context, run_dir: str, folder_given: bool = False) -> dict:
    """Return the options of the run in ``run_dir`` (:func:`~sr_shrink.distill.resume.recorded_options`) that this
    command line leaves out and that differ from their defaults, by parameter name. An option given on the command
    line keeps its value (a resume then refuses it if it differs from the run's); ``--steps-per-stage`` given keeps
    the recorded ``--time-budget`` out, and the reverse, and ``--mode`` given keeps the recorded ``--data`` out.
    ``folder_given``: the run folder came where the teacher goes, so the teacher is the recorded one."""
    from click.core import ParameterSource

    from .distill.resume import recorded_options

    given = {p.name for p in ctx.command.params
             if ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)}
    if folder_given:
        given.discard("teacher")
    recorded = recorded_options(pathlib.Path(run_dir))
    if "steps_per_stage" in given or "time_budget" in given:
        recorded.pop("time_budget", None), recorded.pop("steps_per_stage", None)
    if "mode" in given:
        recorded.pop("data_dir", None), recorded.pop("data_target", None)
    return {k: v for k, v in recorded.items() if k not in given and v != ctx.params.get(k)}


def _as_flags(ctx: click.Context, values: dict) -> str:
    """Return the recorded options ``values`` (parameter name -> value) as distill's command line would read: the
    teacher, then the options whose value is not the default (leaving out what the teacher file implies: the scale
    and EDSR's res_scale), e.g. ``teacher.pt --stages 2:4 --channels 32``."""
    from .distill import DistillConfig

    flags = {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option)}
    default = DistillConfig(scale=values.get("scale", 2)).to_dict()
    default.update(stages=f"{default['stage_start']}:{default['stage_end']}", value_range="1", eval_dir=None)
    words = [str(values["teacher"])] if "teacher" in values else []
    words += [f"{flag} {values[k]}" for k, flag in flags.items()  # in the order of distill --help
              if k in values and k not in ("scale", "res_scale") and values[k] != default.get(k)]
    return " ".join(words)


def _distill(teacher, run_dir, mode, data_dir, data_target, stages, stage_step, steps_per_stage, channels, block, batch,
             lr_patch, lr, student_steps_per_g, g_lr, w_r, mix, synthetic, g_kind, kd_loss, reuse, teacher_dtype, pool,
             targets, time_budget, scale, eval_dir, seed, save_every, resume, force, device, amp, channels_last,
             threads, trust_pickle, value_range, res_scale, quiet, started) -> None:
    """Run distill's command with its options (``started``: when the command began, for ``--time-budget``)."""
    from pathlib import Path

    import torch

    from .distill import DistillConfig
    from .distill import distill as run_distill
    from .distill.resume import saved_progress

    if threads:
        torch.set_num_threads(threads)
    if time_budget and steps_per_stage:
        raise SRShrinkError("pass --steps-per-stage or --time-budget, not both: the budget sets the steps.")
    if mode != "data" and (data_dir or data_target != "teacher"):  # else silently a run without the photos
        given = "--data DIR" if data_dir else f"--data-target {data_target}"
        raise SRShrinkError(f"{given} is for --mode data (training on your photos), not --mode {mode}; add --mode "
                            "data or drop it.")
    a, b = _parse_stages(stages)
    overrides = {k: v for k, v in dict(student_steps_per_g=student_steps_per_g, g_lr=g_lr, w_r=w_r, mix=mix,
                                         synthetic=synthetic, g_kind=g_kind, reuse=reuse).items() if v is not None}
    cfg = DistillConfig(scale=scale or 2, mode=mode, stage_start=a, stage_end=b, stage_step=stage_step,
                        steps_per_stage=steps_per_stage or 500, channels=channels, block=block, batch=batch,
                        lr_patch=lr_patch, lr=lr, kd_loss=kd_loss, data_dir=data_dir, data_target=data_target,
                        seed=seed, save_every=save_every, teacher_dtype=teacher_dtype, pool=pool,
                        targets=targets, time_budget=time_budget or 0.0, **overrides)
    if not quiet:  # the phases before and between the stages' bars (eval references, pool, step probe)
        progress.enable(console)
    try:
        run = run_distill(teacher, run_dir, cfg, eval_dir=eval_dir, resume=resume, force=force, device=device,
                          trust_pickle=trust_pickle, teacher_scale=scale, quiet=quiet, amp=amp,
                          channels_last=channels_last, value_range=float(value_range) if value_range else None,
                          res_scale=res_scale, started=started, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:  # say what a --resume would find
        click.echo(f"interrupted; {saved_progress(Path(run_dir))}", err=True)
        sys.exit(130)
    if run.get("value_range_guessed"):
        _note(f"note: the teacher's value range [0, {run['teacher']['value_range']:g}] was a guess (the probe could "
              "not tell 1 from 255); pass --value-range to be sure. run.json records value_range_guessed.")
    if not quiet:
        click.echo(f"students written to {run_dir}/stage_XX.pt; run summary in {run_dir}/run.json")


@main.command()
@click.argument("path", required=False)
@click.option("--scale", type=SCALE, help="Check (or, for pre-upsampling networks, set) the upscaling factor.")
@value_range_option
@res_scale_option
@click.option("--trust-pickle", is_flag=True, help="Allow a full pickled nn.Module (runs code from the file).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def info(path: str | None, scale: int | None, value_range: str | None, res_scale: float | None, trust_pickle: bool,
         as_json: bool) -> None:
    """Show what PATH holds (a teacher, a run's stage_XX.pt, an exported .onnx, .tflite or .mlpackage, or a
    distill run folder; default: the bundled x2 teacher): format, architecture, scale, size; for a run, its
    stages, exports and bench pick."""
    import json

    from rich.table import Table

    from .runtimes import SUFFIXES
    from .teachers import count_inference_params, count_macs, load_teacher

    if path is not None and pathlib.Path(path).suffix.lower() in SUFFIXES:
        _info_exported(path, scale, value_range, res_scale, as_json)
        return
    from .run import RunDir

    if path is not None and pathlib.Path(path).is_dir() and RunDir(pathlib.Path(path), {}, {}).holds_run():
        _info_run(path, scale, value_range, res_scale, trust_pickle, as_json)
        return
    teacher = load_teacher(path, scale=scale, trust_pickle=trust_pickle,
                           value_range=float(value_range) if value_range else None, res_scale=res_scale)
    d = teacher.info.to_dict()
    d["macs_256x256"] = count_macs(teacher)
    d["inference_params"] = count_inference_params(teacher)
    if d["value_range_guessed"]:
        click.echo(f"note: value range [0, {d['value_range']:g}] is a guess (the probe could not tell 1 from 255); "
                   "pass --value-range 1 or 255 if the outputs look wrong.", err=True)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    req = teacher.size_requirements
    arch = d["arch_name"] or d["arch"]
    rows = [("format", d["format"]), ("architecture", f"{arch} ({d['detected_by']})" if d["detected_by"] else arch),
            ("scale", f"x{d['scale']}"), ("tags", ", ".join(d["tags"]) or "-"),
            ("params", _params_row(d["params"], d["inference_params"])),
            ("MACs at 256x256", f"{d['macs_256x256'] / 1e9:.2f} G"),
            ("value range", f"[0, {d['value_range']:g}]" + (" (guessed)" if d["value_range_guessed"] else "")),
            ("input", "Y channel" if d["y_only"] else "RGB"), ("input size", req.describe()),
            ("pre-upsampling", "yes (bicubic)" if d["pre_upsample"] else "no"),
            ("config", json.dumps(d["config"]) if d["config"] else "-"), ("sha256", d["sha256"][:16] + "...")]
    table = Table(title=f"sr-shrink info: {d['path']}", show_header=False)
    for k, v in rows:
        table.add_row(k, str(v))
    progress.stdout_console().print(table)


def _info_exported(path: str, scale: int | None, value_range: str | None, res_scale: float | None,
                   as_json: bool) -> None:
    """``info`` on an exported file: its :class:`~sr_shrink.export.describe.ExportedInfo` as a table or JSON."""
    import json

    from rich.table import Table

    from .export.describe import describe_export, info_rows

    if value_range or res_scale is not None:
        flag = "--value-range" if value_range else "--res-scale"
        raise SRShrinkError(f"{flag} describes a teacher file; {path} is an exported student, whose input and "
                            "output are RGB in [0, 1] (drop the option).")
    info = describe_export(path)
    if scale is not None and scale != info.scale:
        raise SRShrinkError(f"{path} upscales x{info.scale}, not x{scale}.")
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2, default=str))
        return
    table = Table(title=f"sr-shrink info: {path}", show_header=False)
    for k, v in info_rows(info):
        table.add_row(k, v)
    progress.stdout_console().print(table)


def _info_run(path: str, scale: int | None, value_range: str | None, res_scale: float | None, trust_pickle: bool,
              as_json: bool) -> None:
    """``info`` on a distill run folder: :func:`~sr_shrink.run_info.describe_run` as tables (the run, distill's
    stage table, the exported files) or JSON."""
    import json

    from rich.table import Table

    from .distill import summary_table
    from .run_info import describe_run, export_rows, run_rows

    given = [f for f, v in (("--value-range", value_range), ("--res-scale", res_scale is not None),
                            ("--trust-pickle", trust_pickle)) if v]
    if given:
        raise SRShrinkError(f"{', '.join(given)} describes a teacher file; {path} is a distill run, which records "
                            "its teacher's (drop the option).")
    desc = describe_run(path)
    run = desc["run"]
    if scale is not None and run.get("scale") not in (None, scale):
        raise SRShrinkError(f"{path} upscales x{run['scale']}, not x{scale}.")
    if as_json:
        click.echo(json.dumps(desc, indent=2, default=str))
        return
    out = progress.stdout_console()
    table = Table(title=f"sr-shrink info: {desc['path']}", show_header=False)
    for k, v in run_rows(desc):
        table.add_row(k, v)
    out.print(table)
    if run.get("stages"):
        out.print(summary_table(run))
    if desc["exports"]:
        files = Table(title="exported files")
        for col in ("file", "stage", "precision", "KiB", "verification"):
            files.add_column(col, justify="left" if col in ("file", "verification") else "right")
        for row in export_rows(desc):
            files.add_row(*row)
        out.print(files)


def _params_row(params: int, inference: int) -> str:
    """Return info's params cell: the count, and the share an eval forward uses when training-only branches
    (a re-parameterised network's) make it smaller."""
    if inference >= params:
        return f"{params:,}"
    return f"{params:,} ({inference:,} at inference; the rest are training-only branches)"


class OnePrecision(click.Choice):
    """export's ``--precision``: one of its choices; a comma list of them (bench's ``--precisions`` form) gets a
    usage error saying to export once per precision, into the same folder."""

    def convert(self, value, param, ctx):
        """Return the precision, or fail with a usage error naming one export per precision for a list."""
        items = [v.strip() for v in str(value).split(",")]
        if len(items) > 1 and all(v in self.choices for v in items):
            self.fail(f"{value!r}: export writes one precision per run; run it once for each ("
                      f"{', '.join(f'--precision {v}' for v in items)}) with the same --out: each adds its files to "
                      "export.json, and bench reads them all.", param, ctx)
        return super().convert(value, param, ctx)


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=str))
@click.option("--target", required=True, type=click.Choice(["onnx", "coreml", "tflite"]), help="Output format.")
@click.option("--stage", default="all", show_default=True, help="Stage number, 'last' or 'all'.")
@click.option("--precision", type=OnePrecision(["fp32", "fp16", "int8", "w8a16"]),
              help="Weights/compute precision; w8a16: int8 weights, 16-bit activations (onnx, tflite) "
                   "[default: fp16 for coreml, else fp32].")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), callback=_folder,
              help="Output folder [default: RUN_DIR/exports].")
@click.option("--input-size", metavar="HxW", help="Fix the LR input size (TFLite default 256x256; ONNX free; "
              "Core ML: see --shapes).")
@click.option("--shapes", metavar="HxW,...|default|any", help="Core ML: the LR sizes the model takes "
              "(EnumeratedShapes, which the Neural Engine runs at every listed size; each is verified); 'any': "
              "any size 8..2048 (RangeDim; the Neural Engine runs it only at 64x64, its default) "
              "[default: 256x256,512x512,360x640,540x960,720x1280].")
@click.option("--io", "io_kind", type=click.Choice(["tensor", "image"]), default="tensor", show_default=True,
              help="Core ML: 'image' gives an RGB image input and output (CVPixelBuffer), the 1/255 folded into "
                   "the first conv.")
@click.option("--layout", type=click.Choice(["nhwc", "nchw"]), help="I/O layout [default: nhwc for tflite].")
@click.option("--shuffle", type=click.Choice(["native", "convt"]),
              help="Pixel shuffle: the runtime's own op (DepthToSpace) [default], or convt: a one-hot transposed "
                   "conv with no reshape (for delegates that refuse rank-6 reshapes).")
@click.option("--palettize", type=click.Choice(["4", "6", "8"]), help="Core ML: n-bit palettized weights.")
@click.option("--calib", metavar="generator|synthetic|DIR", help="int8 calibration inputs: the run's generator.pt, "
              "its synthetic sources (data-free, for a run without a generator), or a folder of photos [default: "
              "generator.pt if the run has one, else the bundled eval images].")
@click.option("--calib-method", type=click.Choice(["histogram", "percentile"]),
              help="TFLite int8: activation ranges from PT2E's histogram observer [default] or the 99.99 percentile "
                   "of the same histograms (the ONNX export's rule).")
@click.option("--calib-samples", type=click.IntRange(1, 100000),
              help="Calibration inputs [default: about 1.2 M pixels' worth; at most 4 GB of them].")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for calibration sampling.")
@click.option("--eval", "eval_dir", type=click.Path(path_type=str),
              help="Folder of HR images for verification [default: the bundled eval split].")
@click.option("--native-io", is_flag=True, help="I/O in the model precision (fp16 / int8) instead of float32; "
              "TFLite int8 takes and returns int8 pixel values minus 128 (scale 1/255, zero point -128).")
@click.option("--qat", "qat_steps", type=NONNEG, default=0, metavar="STEPS",
              help="int8: fine-tune the student STEPS steps with fake quantization on the run's data-free inputs "
                   "before exporting (0: off).")
@click.option("--qat-target", type=click.Choice(["student", "teacher"]),
              help="--qat: fit the original fp32 student's output with the file's own ranges, or the teacher's "
                   "[default: student; teacher when --teacher is given].")
@click.option("--qat-lr", type=Finite(0, 1, min_open=True),
              help="--qat: Adam learning rate, cosine [default: 1e-5 student target, 1e-4 teacher target].")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=str),
              help="--qat-target teacher: teacher file [default: the one run.json names].")
@click.option("--trust-pickle", is_flag=True,
              help="--qat-target teacher: allow a full pickled nn.Module teacher (runs its code).")
@click.option("--bias-correction/--no-bias-correction", default=None,
              help="int8/w8a16: correct the biases for the mean error of the weights' rounding (calibration inputs) "
                   "[default: on for w8a16 and Core ML int8 (not after --qat), off for ONNX and TFLite int8].")
@click.option("--gptq/--no-gptq", default=None,
              help="int8/w8a16: choose each conv's int8 weights against the calibration inputs (GPTQ error feedback) "
                   "instead of rounding to nearest [default: on for w8a16, TFLite and Core ML int8 (not after --qat), "
                   "off for ONNX int8].")
@click.option("--equalize", is_flag=True, help="int8: rescale the residual stream and hidden channels towards equal "
              "ranges first (the same function).")
@click.option("--reduce-range/--no-reduce-range", default=None,
              help="ONNX int8: 7-bit weights, safe on every CPU [default], or full 8-bit weights, more accurate, for "
                   "ARM, x86 with VNNI and NPUs (on AVX2-only x86 they saturate).")
@click.option("--float-stream", is_flag=True, help="ONNX int8: keep the residual stream float between the int8 convs "
              "(more accurate, slower: BENCHMARKS.md section 19).")
@click.option("--float-first-conv", is_flag=True, help="ONNX int8: keep the first body conv float too, reading the "
              "head's output unrounded (more accurate, slower: BENCHMARKS.md section 33).")
@click.option("--tail-refit/--no-tail-refit", default=None,
              help="ONNX int8: refit the float tail conv by least squares to the stream the int8 body gives it "
                   "on the calibration inputs (not after --qat) [default: on].")
def export(run_dir: str, target: str, stage: str, precision: str | None, out: str | None,
           input_size: str | None, layout: str | None, shuffle: str | None, palettize: str | None,
           calib: str | None,
           calib_method: str | None, calib_samples: int | None, seed: int, eval_dir: str | None, native_io: bool,
           qat_steps: int, qat_target: str | None, qat_lr: float | None, teacher: str | None, trust_pickle: bool,
           shapes: str | None,
           io_kind: str, bias_correction: bool | None, gptq: bool | None, equalize: bool, reduce_range: bool | None,
           float_stream: bool, float_first_conv: bool, tail_refit: bool | None) -> None:
    """Export stage(s) of a distill RUN_DIR (or one stage_XX.pt) for phones, checked and verified."""
    from pathlib import Path

    from rich.table import Table

    from .export import export_run

    progress.enable(console)
    entries = export_run(run_dir, target, stage=stage, precision=precision, out=out, log=_note, input_size=input_size,
                         layout=layout, shuffle=shuffle, palettize=int(palettize) if palettize else None, calib=calib,
                         calib_method=calib_method, calib_samples=calib_samples, seed=seed, eval_dir=eval_dir,
                         native_io=native_io, qat_steps=qat_steps, qat_target=qat_target, qat_lr=qat_lr,
                         teacher=teacher, trust_pickle=trust_pickle, shapes=shapes, io=io_kind,
                         bias_correction=bias_correction, gptq=gptq, equalize=equalize, reduce_range=reduce_range,
                         float_stream=float_stream, float_first_conv=float_first_conv, tail_refit=tail_refit)
    table = Table(title=f"sr-shrink export -> {Path(entries[0]['path']).parent}")
    for col in ("file", "KiB", "PSNR-Y (torch)", "Δ dB (tolerance)", "verified"):
        table.add_column(col)
    for e in entries:
        v = e["verification"]
        ok = "yes" if e["verified"] else f"NO: {v.get('reason', 'outside the tolerance')}"
        delta = f"{v['delta_psnr_y']:+.4f} (±{v['tolerance_db']:g})" if "delta_psnr_y" in v else "-"
        table.add_row(e["file"], f"{e['size_bytes'] / 1024:.1f}",
                      f"{_db(v.get('psnr_y'))} ({_db(v.get('torch_psnr_y'))})", delta, ok)
    progress.stdout_console().print(table)
    from .export.coreml import input_note
    from .export.delegates import delegate_warning
    from .export.targets import get_target
    from .export.tflite import input_note as tflite_input_note
    from .export.verify import int8_notes, qat_note

    sizes: dict[str, list[str]] = {}  # what LR sizes a file takes -> the files: one line for the files alike
    for e in entries:
        warning = delegate_warning(e["file"], (e.get("delegates") or {}).get("gpu", {}))
        if warning:
            console.print(warning, style="yellow", markup=False, highlight=False, soft_wrap=True)
        if note := input_note(e) or tflite_input_note(e):
            sizes.setdefault(note.removeprefix(f"{e['file']}: "), []).append(e["file"])
    for text, files in sizes.items():
        _note(f"{files[0]}: {text}" if len(files) == 1 else f"{', '.join(files)}: each {text}")
    for e in entries:
        if note := qat_note(e):
            _note(note)
    for note in int8_notes(entries, lambda e: get_target(e["target"]).int8_closer):  # one line per advice
        _note(note)


def _db(value) -> str:
    """Return a PSNR for export's table with 4 decimals, as every row shows it ("-" when there is none)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _csv(text: str | None) -> tuple[str, ...] | None:
    """Return the non-empty items of a comma-separated option (an empty tuple for "" or ","; the command refuses
    that), or None when it was not given."""
    return tuple(t.strip().lower() for t in text.split(",") if t.strip()) if text is not None else None


def _note(msg: str) -> None:
    console.print(msg, style="dim", markup=False, highlight=False, soft_wrap=True)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--runtimes", help="Comma list of torch, onnxruntime, litert [default: all installed].")
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, help="For the exported runtimes.")
@click.option("--input-size", default="256x256", show_default=True, help="LR input HxW every row is timed on.")
@click.option("--threads", type=THREADS, help="Threads for every runtime [default: torch's, see OMP_NUM_THREADS].")
@click.option("--eval", "eval_dir", type=click.Path(file_okay=False), help="Folder of HR images [default: bundled].")
@click.option("--max-images", type=POS, help="Score on the first N eval images only.")
@click.option("--budget-ms", type=Finite(0, min_open=True), help="Pick the best Y-PSNR within this median latency.")
@click.option("--min-psnr", type=Finite(0, 200), help="Pick the fastest row with at least this (metric) PSNR.")
@click.option("--metric", type=click.Choice(["auto", "psnr", "fidelity"]), default="auto", show_default=True,
              help="What the pick and the Pareto plot rank by: Y-PSNR to the ground truth, or fidelity to the "
                   "teacher's output (auto: fidelity when the teacher is under 0.5 dB above bicubic).")
@click.option("--latency-from", type=click.Path(dir_okay=False), help="Rank by latencies measured on a device: "
              "LiteRT benchmark_model output, a 'file,ms' CSV or a JSON {file: ms}.")
@click.option("--adb", "adb_tool", metavar="BENCHMARK_MODEL", help="Run LiteRT's benchmark_model (a file here, "
              "pushed, or a path on the device) on the attached Android device via adb and rank by its latencies.")
@click.option("--adb-args", default="", help="Extra benchmark_model flags for --adb, e.g. '--use_gpu=true'.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="[default: RUN_DIR/bench.json]")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="[default: RUN_DIR/bench.png]")
@click.option("--repeats", type=click.IntRange(1, 100000), default=20, show_default=True, help="Timed calls per row.")
@click.option("--warmup", type=click.IntRange(0, 100000), default=3, show_default=True,
              help="Untimed calls per row first.")
@click.option("--rounds", type=click.IntRange(1, 100000), default=5, show_default=True,
              help="Interleaved rounds the repeats are split in.")
def bench(run_dir, device, runtimes, precisions, input_size, threads, eval_dir, max_images, budget_ms, min_psnr,
          metric, json_path, plot_path, repeats, warmup, rounds, latency_from, adb_tool, adb_args) -> None:
    """Which stage to ship: latency, size, memory and Y-PSNR of every stage x runtime x precision."""
    from pathlib import Path

    from .bench import BenchConfig, parse_size, run_bench
    from .bench.report import plot, print_report, write_json
    from .run import BENCH_JSON, BENCH_PLOT

    if Path(run_dir).is_file():  # click's own "Directory ... is a file" does not say what to pass
        from .run import RunDir

        run = RunDir.find(run_dir)  # a stage file's folder, an exported file's run (RUN/exports/x.tflite)
        folder = f"its folder {run.root}" if run is not None else "the folder 'sr-shrink distill' wrote"
        raise SRShrinkError(f"{run_dir}: bench compares the stages of a distill run; pass {folder}, not one file.")
    cfg = BenchConfig(device=device, runtimes=_csv(runtimes), precisions=_csv(precisions) or (),
                      input_size=parse_size(input_size), threads=threads, eval_dir=eval_dir, max_images=max_images,
                      budget_ms=budget_ms, min_psnr=min_psnr, repeats=repeats, warmup=warmup, rounds=rounds,
                      metric=metric, latency_from=latency_from, adb=adb_tool, adb_args=adb_args)
    progress.enable(console)
    result = run_bench(run_dir, cfg, log=_note)
    json_out = write_json(result, json_path or Path(run_dir) / BENCH_JSON)
    png_out = plot(result, plot_path or Path(run_dir) / BENCH_PLOT)
    print_report(result, progress.stdout_console())
    _note(f"wrote {json_out} and {png_out}")
    if result.get("pick_error"):
        raise SRShrinkError(f"{result['pick_error']} (measurements saved in {json_out})")


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", type=click.Path(file_okay=False), callback=_folder,
              help="Folder for NAME_x{s}.png [default: next to each input image].")
@click.option("--tile", type=click.IntRange(0, 65536), default=256, show_default=True,
              help="Tile size in input pixels (0: whole image).")
@click.option("--overlap", type=click.IntRange(0, 4096), default=16, show_default=True,
              help="Tile overlap in input pixels (raised to the model's receptive field radius).")
@click.option("--compare", is_flag=True, help="Also write NAME_x{s}_compare.png: bicubic | student | teacher on the "
              "windows where the teacher differs most from bicubic.")
@click.option("--crops", type=click.IntRange(1, 16), default=1, show_default=True,
              help="--compare: how many windows (one row of 256 px panels each).")
@click.option("--teacher", type=click.Path(), help="Teacher for --compare [default: the run's, else bundled].")
@click.option("--scale", type=SCALE, help="Fail unless the model upscales by this factor.")
@click.option("--threads", type=THREADS, help="Threads for the model [default: torch's].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--ext", type=click.Choice(choices.UPSCALE_EXTS), default="png", show_default=True,
              help="Result format: NAME_x{s}.png (lossless), .jpg or .webp (a fraction of the size for photos; 8 bits, "
                   "JPEG without alpha). --compare strips stay PNG.")
@click.option("--quality", type=click.IntRange(1, 100), help="--ext jpg/webp: encoder quality [default: 95].")
@value_range_option
@res_scale_option
def upscale(model, images, out, tile, overlap, compare, crops, teacher, scale, threads, device, value_range,
            res_scale, ext, quality) -> None:
    """Upscale IMAGES (files, or folders: the images in them) with MODEL (stage_XX.pt, .onnx, .tflite or
    .mlpackage) into NAME_x{s}.png files (--ext jpg or webp for smaller ones).

    Images are turned upright by their EXIF orientation. Grey images come back grey (16-bit grey as 16-bit;
    16-bit colour comes back 8-bit), an alpha channel is upscaled with bicubic, and of an animation only the
    first frame is upscaled (a note says so)."""
    from .upscale import upscale_files

    progress.enable(console)
    upscale_files(model, list(images), out, tile=tile or None, overlap=overlap, compare=compare, crops=crops,
                  teacher=teacher,
                  scale=scale, threads=threads, device=device, log=_note,
                  value_range=float(value_range) if value_range else None, res_scale=res_scale, ext=ext,
                  quality=quality)


@main.command()
@click.option("--out", default="runs/demo", show_default=True, callback=_folder, help="Run folder.")
@click.option("--steps-per-stage", default=300, type=click.IntRange(1, 10**9), show_default=True,
              help="Student steps per stage.")
@click.option("--resume", is_flag=True, help="Continue an interrupted demo run instead of starting over.")
@click.option("--scale", type=click.Choice(["2", "4"]), default="2", show_default=True,
              help="Which bundled teacher to distill.")
def demo(out: str, steps_per_stage: int, resume: bool, scale: str) -> None:
    """Distill the bundled teacher, export the last stage, bench every stage (about 3 min on 2 cores)."""
    import shlex
    from pathlib import Path

    from .bench.report import plot, print_report, write_json
    from .demo import run_demo

    progress.enable(console)
    try:
        result = run_demo(out, steps_per_stage, log=_note, force=not resume, scale=int(scale))
    except KeyboardInterrupt:  # the command that goes on, with the options this one was given
        again = (["--out", out] + (["--scale", scale] if scale != "2" else [])
                 + (["--steps-per-stage", str(steps_per_stage)] if steps_per_stage != 300 else []))
        click.echo(f"interrupted; continue with: sr-shrink demo {shlex.join(again)} --resume", err=True)
        sys.exit(130)
    json_out = write_json(result, Path(out) / "bench.json")
    png_out = plot(result, Path(out) / "bench.png")
    print_report(result, progress.stdout_console())
    _note(f"wrote {json_out} and {png_out}")


if __name__ == "__main__":
    main()
