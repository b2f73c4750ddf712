"""Which row to ship: the PSNR/latency Pareto front, its knee, and picks under a latency budget or PSNR floor.

Rows are dicts with at least ``latency_ms_median`` and the quality ``key`` (``psnr_y``, or ``fidelity_psnr_y``
for a perceptual teacher: ``sr-shrink bench --metric``). A row is on the front when no other row
is at least as fast and at least as good with one of the two strictly better. The knee is the front point
farthest from the straight line joining the front's fastest and best points once both axes are scaled to
[0, 1] (the "Kneedle" idea): past it, each extra dB costs disproportionately more time. A two-point front
has no bend; there the slower point wins if it gains at least ``DB_PER_DOUBLING`` dB per doubling of latency.
"""

from __future__ import annotations

import math

from ..errors import SRShrinkError

LAT, PSNR = "latency_ms_median", "psnr_y"
DB_PER_DOUBLING = 0.3
LABELS = {"psnr_y": "Y-PSNR", "fidelity_psnr_y": "fidelity Y-PSNR"}


def metric_label(key: str) -> str:
    """Return how the quality ``key`` reads in messages: 'Y-PSNR' or 'fidelity Y-PSNR'."""
    return LABELS.get(key, key)


def describe(row: dict) -> str:
    """Return a short label such as 'stage 3 (6 blocks) onnxruntime int8'."""
    return f"stage {row.get('stage')} ({row.get('n_blocks')} blocks) {row.get('runtime')} {row.get('precision')}"


def _usable(rows: list[dict], key: str = PSNR) -> list[dict]:
    return [r for r in rows if r.get(LAT) is not None and r.get(key) is not None]


def pareto_front(rows: list[dict], key: str = PSNR) -> list[dict]:
    """Return the non-dominated rows (faster or better in ``key`` than every other), sorted by latency."""
    front: list[dict] = []
    best = float("-inf")
    for r in sorted(_usable(rows, key), key=lambda r: (r[LAT], -r[key])):
        if r[key] > best:
            front.append(r)
            best = r[key]
    return front


def knee(front: list[dict], key: str = PSNR) -> dict:
    """Return the knee of a Pareto ``front`` (sorted by latency); see the module docstring for two points."""
    if not front:
        raise SRShrinkError(f"no benchmark rows with both latency and {metric_label(key)}; nothing to choose from.")
    if len(front) == 1:
        return front[0]
    lat0, lat1 = front[0][LAT], front[-1][LAT]
    ps0, ps1 = front[0][key], front[-1][key]
    xs = [(r[LAT] - lat0) / ((lat1 - lat0) or 1.0) for r in front]
    ys = [(r[key] - ps0) / ((ps1 - ps0) or 1.0) for r in front]
    if len(front) == 2:  # no curve to bend
        doublings = math.log2(max(lat1, 1e-12) / max(lat0, 1e-12))
        worth = doublings <= 0 or (ps1 - ps0) / doublings >= DB_PER_DOUBLING
        return front[1] if worth else front[0]
    gaps = [y - x for x, y in zip(xs, ys)]  # distance above the chord y = x, up to a constant factor
    return front[max(range(len(front)), key=lambda i: (gaps[i], -xs[i]))]


def pick_within_budget(rows: list[dict], budget_ms: float, key: str = PSNR) -> dict:
    """Return the best row in ``key`` whose median latency is within ``budget_ms`` (ties: the faster)."""
    ok = [r for r in _usable(rows, key) if r[LAT] <= budget_ms]
    if not ok:
        fastest = min(_usable(rows, key), key=lambda r: r[LAT], default=None)
        hint = f" (fastest: {describe(fastest)} at {fastest[LAT]:.2f} ms)" if fastest else ""
        raise SRShrinkError(f"no row runs within --budget-ms {budget_ms:g}{hint}; raise the budget, measure at a "
                            "smaller --input-size or add runtimes/precisions.")
    best = max(ok, key=lambda r: (r[key], -r[LAT]))
    return {**best, "reason": f"highest {metric_label(key)} ({best[key]:.2f} dB) among {len(ok)} rows within "
                              f"{budget_ms:g} ms median latency"}


def pick_above_floor(rows: list[dict], min_psnr: float, key: str = PSNR) -> dict:
    """Return the fastest row whose ``key`` is at least ``min_psnr`` dB (ties: the higher one)."""
    ok = [r for r in _usable(rows, key) if r[key] >= min_psnr]
    if not ok:
        best = max(_usable(rows, key), key=lambda r: r[key], default=None)
        hint = f" (best: {describe(best)} at {best[key]:.2f} dB)" if best else ""
        raise SRShrinkError(f"no row reaches --min-psnr {min_psnr:g} dB{hint}; lower the floor or distill "
                            "more stages.")
    fast = min(ok, key=lambda r: (r[LAT], -r[key]))
    return {**fast, "reason": f"fastest ({fast[LAT]:.2f} ms median) among {len(ok)} rows with {metric_label(key)} "
                              f">= {min_psnr:g} dB"}


def pick_knee(rows: list[dict], key: str = PSNR) -> dict:
    """Return the knee row of the Pareto front of ``rows`` in ``key``, with a one-line reason."""
    front = pareto_front(rows, key)
    row = knee(front, key)
    if len(front) == 1:
        reason = f"the only row on the {metric_label(key)}/latency Pareto front: no other row is faster or better"
    elif len(front) == 2:
        verdict = "the slower: it gains at least" if row is front[1] else "the faster: the other gains under"
        reason = f"of the 2 Pareto-front rows, {verdict} {DB_PER_DOUBLING} dB per doubling of latency"
    else:
        reason = (f"knee of the {metric_label(key)}/latency Pareto front ({len(front)} points): beyond it each "
                  "extra dB costs disproportionately more latency")
    return {**row, "reason": reason}


def pick(rows: list[dict], budget_ms: float | None = None, min_psnr: float | None = None, key: str = PSNR) -> dict:
    """Return the recommended row (with ``reason``): by budget, by a floor on ``key``, or the Pareto knee."""
    if budget_ms is not None and min_psnr is not None:
        raise SRShrinkError("pass either --budget-ms or --min-psnr, not both.")
    if budget_ms is not None:
        return pick_within_budget(rows, budget_ms, key)
    if min_psnr is not None:
        return pick_above_floor(rows, min_psnr, key)
    return pick_knee(rows, key)
