"""``sr-shrink bench``: which stage to ship. Measures every stage x runtime x precision of a distill run.

Modules: ``artifacts`` (find or make exports; the target each runtime runs is :mod:`sr_shrink.export.targets`),
``measure`` (latency rounds, memory, quality), ``references`` (the teacher's score and the metric students are
ranked by), ``pareto`` (front, knee, picks), ``machine`` (what it ran on), ``report`` (table, JSON, plot) and
``pipeline`` (``run_bench``, which ties them together, and which runtimes and precisions it compares; the runners
are :mod:`sr_shrink.runtimes`).
"""

from .pipeline import BenchConfig, parse_size, run_bench

__all__ = ["BenchConfig", "parse_size", "run_bench"]
