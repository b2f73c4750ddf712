"""Two runs of ``int8_panel.py`` on the same students compared file by file: two versions of the code, or two
variants.

Each ``--pair BASE NEW`` names the result files (JSON lines) of one seed's runs; records are matched by teacher,
stage, target and variant (``--across-variants``: whatever the variant). Prints, per variant and over every pair:
the mean Y-PSNR delta against the fp32 student of each side, the files whose delta and RGB PSNR against the student
are the same, the largest change of a delta, the files within ``--within`` dB on each side, and the export seconds
summed on each side (compare those only when both sides ran at once, one thread each, as BENCHMARKS.md says for
each use).

    python benchmarks/int8_files_paired.py --pair today_s0.jsonl first5_s0.jsonl --pair today_s1.jsonl first5_s1.jsonl
    python benchmarks/int8_files_paired.py --across-variants --pair today_s0.jsonl cs36_s0.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def read(path: Path, by_variant: bool = True) -> dict[tuple, dict]:
    """Return the records of an ``int8_panel.py`` result file keyed by (teacher, stage, target, variant), or by
    (teacher, stage, target) when ``by_variant`` is False."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["teacher"], r["stage"], r["target"], r["variant"] if by_variant else "")] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("BASE", "NEW"), type=Path)
    ap.add_argument("--within", type=float, default=0.03)
    ap.add_argument("--across-variants", action="store_true",
                    help="pair each BASE file with NEW's of the same teacher, stage and target, whatever the variant "
                         "(one code version, two variants)")
    args = ap.parse_args()
    by_variant: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for base_path, new_path in args.pair:
        base, new = read(base_path, not args.across_variants), read(new_path, not args.across_variants)
        for key in sorted(base.keys() & new.keys()):
            by_variant[f"{base[key]['variant']} -> {new[key]['variant']}"].append((base[key], new[key]))
    for variant, pairs in by_variant.items():
        n = len(pairs)
        same = sum(b["delta"] == w["delta"] and b["psnr_vs_torch"] == w["psnr_vs_torch"] for b, w in pairs)
        change = max(pairs, key=lambda p: abs(p[1]["delta"] - p[0]["delta"]))
        within = [sum(abs(p[i]["delta"]) <= args.within for p in pairs) for i in (0, 1)]
        better = sum(abs(w["delta"]) < abs(b["delta"]) for b, w in pairs)
        worse = sum(abs(w["delta"]) > abs(b["delta"]) for b, w in pairs)
        print(f"{variant} ({pairs[0][0]['target']}), {n} files")
        print(f"  mean delta: base {sum(b['delta'] for b, _ in pairs) / n:+.4f}  "
              f"new {sum(w['delta'] for _, w in pairs) / n:+.4f}")
        print(f"  worst delta: base {min(b['delta'] for b, _ in pairs):+.4f}  "
              f"new {min(w['delta'] for _, w in pairs):+.4f}")
        print(f"  mean RGB PSNR against the student: base {sum(b['psnr_vs_torch'] for b, _ in pairs) / n:.3f}  "
              f"new {sum(w['psnr_vs_torch'] for _, w in pairs) / n:.3f}")
        print(f"  identical files: {same}; loss smaller on {better}, larger on {worse}; largest change "
              f"{change[1]['delta'] - change[0]['delta']:+.4f} dB ({change[0]['teacher']} stage {change[0]['stage']}: "
              f"{change[0]['delta']:+.4f} -> {change[1]['delta']:+.4f})")
        print(f"  within {args.within} dB: base {within[0]}  new {within[1]}")
        print(f"  export seconds summed: base {sum(b['seconds'] for b, _ in pairs):.0f}  "
              f"new {sum(w['seconds'] for _, w in pairs):.0f}")
        teachers = sorted({b["teacher"] for b, _ in pairs})
        for t in teachers:
            rows = [(b, w) for b, w in pairs if b["teacher"] == t]
            print(f"    {t:<20} mean delta base {sum(b['delta'] for b, _ in rows) / len(rows):+.4f}  "
                  f"new {sum(w['delta'] for _, w in rows) / len(rows):+.4f}  ({len(rows)} files)")


if __name__ == "__main__":
    main()
