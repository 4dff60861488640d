#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Prints docs/performance.md's per-shape tables from the benchmark binaries' own counts.

  python3 bench/perf_tables.py BUILD/bench > tables.md

For every benchmark registered by bench_<family> (read with --fulgur_costs, no GPU needed): FLOPs,
minimum bytes, and the floor max(bytes / BW, FLOPs / peak) on the H100 and the H200 from the rates
measured on this workplace's cards (device-to-device copy, 8192^3 bf16 matrix product), plus the
bound (memory or compute) and an empty results table. Standard library only.
"""
from __future__ import annotations

import os
import subprocess
import sys

CARDS = {"H100": (3.0e12, 7.98e14), "H200": (4.3e12, 7.9e14)}


def human(x: float, unit: str) -> str:
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}"


def floor_us(b: float, f: float, card: str) -> str:
    bw, peak = CARDS[card]
    x = max(b / bw, f / peak) * 1e6
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def main() -> int:
    bdir = sys.argv[1] if len(sys.argv) > 1 else "build/bench"
    for fam in ("lightning", "moe", "token_drop"):
        path = os.path.join(bdir, f"bench_{fam}")
        if not os.path.exists(path):
            print(f"<!-- bench_{fam} not built -->\n")
            continue
        rows = subprocess.run([path, "--fulgur_costs"], check=True, capture_output=True, text=True).stdout
        rows = [r.split("\t") for r in rows.splitlines()[1:] if r.strip()]
        print(f"#### bench_{fam}: counts and floors\n")
        print("| benchmark | FLOPs | minimum bytes | floor H100 (us) | floor H200 (us) | bound |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            name, b, f = r[0], float(r[1]), float(r[2])
            bound = "memory" if b / CARDS["H200"][0] >= f / CARDS["H200"][1] else "compute"
            print(f"| `{name}` | {human(f, 'FLOP') if f else '-'} | {human(b, 'B')} | "
                  f"{floor_us(b, f, 'H100')} | {floor_us(b, f, 'H200')} | {bound} |")
        print()
        print(f"#### bench_{fam}: results\n")
        print("| benchmark | card | date | commit | fulgur us (% floor) | fastest correct peer: us (% floor) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r[0]}` | - | - | - | not yet measured | not yet measured |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
