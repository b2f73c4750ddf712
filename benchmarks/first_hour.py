"""Profile one ``sr-shrink`` command by CPU time, for before/after comparisons on a shared machine.

Wall time means little on a machine other jobs are using; the CPU time of this process (cProfile with
``time.process_time`` as its clock, one thread) does not depend on them much. Prints the command's total CPU
seconds, then the cumulative CPU seconds and call counts of the functions named with ``--show`` (substrings of
``file:function``), and writes the profile to ``--prof``. Run it with the code to measure first on PYTHONPATH:

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/checkout python benchmarks/first_hour.py -- bench RUN --threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time


def main() -> None:
    """Parse the arguments, run the command under the profiler and print the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prof", default="/tmp/first_hour.prof", help="where to write the cProfile stats")
    ap.add_argument("--show", action="append", default=[], help="file:function substring to report (repeatable)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the sr-shrink command line")
    args = ap.parse_args()
    argv = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
    import torch

    torch.set_num_threads(1)
    from sr_shrink.cli import main as cli

    prof = cProfile.Profile(time.process_time)
    wall, cpu = time.perf_counter(), time.process_time()
    code = 0
    prof.enable()
    try:
        cli(argv)
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        prof.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    prof.dump_stats(args.prof)
    stats = pstats.Stats(args.prof)
    print(f"\n== sr-shrink {' '.join(argv)}: exit {code}, CPU {cpu:.1f} s, wall {wall:.1f} s", file=sys.stderr)
    rows = []
    for (file, line, func), (_cc, ncalls, _tt, ct, _callers) in stats.stats.items():
        name = f"{file}:{func}"
        for want in args.show:
            if want in name:
                rows.append((want, ct, ncalls, f"{file.split('site-packages/')[-1]}:{line}:{func}"))
    for want in args.show:
        best = max((r for r in rows if r[0] == want), key=lambda r: r[1], default=None)
        if best:
            print(f"   {want:40s} {best[1]:8.2f} s CPU  {best[2]:6d} calls  ({best[3]})", file=sys.stderr)
        else:
            print(f"   {want:40s} not called", file=sys.stderr)


if __name__ == "__main__":
    main()
