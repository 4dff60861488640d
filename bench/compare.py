#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""fulgur vs peers, per benchmark shape: the GPU check's closing table.

  python3 bench/compare.py --bench BENCH.json [--peers PEERS.json] [--full OUT.md] [--short]
  python3 bench/compare.py --self-test

BENCH.json: Google Benchmark JSON output (one file), or the GPU check's merged file
{"runs": {"<family>": <Google Benchmark JSON>, ...}}. PEERS.json: bench/peers/run_peers.py's output.
--full writes the table with every peer in its own columns (markdown); stdout gets the short
table: per shape, fulgur's mean time and fraction of the floor, the fastest peer whose output was
checked correct, fulgur's speedup over it, and the peers whose output was WRONG.
Standard library only (runs in CI's dry run without torch).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile


def strip(name: str) -> str:
    return re.sub(r"(/iterations:\d+|/manual_time|/real_time)+$", "", name)


def load_bench(path: str) -> tuple[dict, dict]:
    """-> ({name: row}, {family: context})"""
    with open(path) as f:
        data = json.load(f)
    runs = data["runs"] if "runs" in data else {"?": data}
    rows, contexts = {}, {}
    for fam, run in runs.items():
        if not isinstance(run, dict):
            continue
        contexts[fam] = run.get("context", {})
        for b in run.get("benchmarks", []):
            rows[strip(b["name"])] = b
    return rows, contexts


def load_peers(path: str | None) -> tuple[dict, dict]:
    if not path or not os.path.exists(path):
        return {}, {}
    with open(path) as f:
        data = json.load(f)
    by_name: dict = {}
    for r in data.get("peers", []):
        by_name.setdefault(r["name"], []).append(r)
    return by_name, data.get("context", {})


def fmt_us(x) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_frac(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def fulgur_cell(b: dict | None):
    if b is None:
        return None, None, "not run"
    if b.get("error_occurred"):
        return None, None, "skipped: " + b.get("error_message", "")[:60]
    unit = b.get("time_unit", "us")
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[unit]
    t = b["real_time"] * scale
    return t, b.get("floor_frac"), ""


def build(bench_rows: dict, peers: dict):
    names = list(bench_rows) + [n for n in peers if n not in bench_rows]
    peer_names = sorted({r["peer"] for rs in peers.values() for r in rs})
    table = []
    for n in names:
        t, frac, why = fulgur_cell(bench_rows.get(n))
        floor = (bench_rows.get(n) or {}).get("floor_us")
        prs = {r["peer"]: r for r in peers.get(n, [])}
        if floor is None:
            floor = next((r.get("floor_us") for r in prs.values() if r.get("floor_us")), None)
        ok = [r for r in prs.values() if r.get("status") == "ok" and r.get("check") in ("ok", "unchecked")]
        best = min(ok, key=lambda r: r["time_us"]) if ok else None
        wrong = sorted(r["peer"] for r in prs.values() if r.get("check") == "WRONG")
        table.append(dict(name=n, floor=floor, t=t, frac=frac, why=why, peers=prs, best=best, wrong=wrong))
    return table, peer_names


def peer_cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "?") + (f" ({r.get('note', '')[:40]})" if r.get("note") else "")
    chk = r.get("check", "")
    err = r.get("rel_rmse")
    tag = chk if err is None or chk == "unchecked" else f"{chk} {err:.1e}"
    return f"{fmt_us(r['time_us'])} ({fmt_frac(r.get('floor_frac'))}, {tag})"


def full_markdown(table, peer_names, header: str = "") -> str:
    out = [header] if header else []
    cols = ["benchmark", "floor us", "fulgur us", "fulgur % floor"] + [f"{p} us (% floor, check)" for p in peer_names]
    out.append("| " + " | ".join(cols) + " |")
    out.append("|" + "---|" * len(cols))
    for row in table:
        cells = [row["name"], fmt_us(row["floor"]), fmt_us(row["t"]) if row["t"] else row["why"] or "-",
                 fmt_frac(row["frac"])]
        cells += [peer_cell(row["peers"].get(p)) for p in peer_names]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def short_lines(table) -> str:
    out = ["| benchmark | fulgur us | % floor | best correct peer | peer us | fulgur speedup | WRONG peers |",
           "|---|---|---|---|---|---|---|"]
    speedups: dict = {}
    for row in table:
        b = row["best"]
        sp = row["t"] and b and b["time_us"] / row["t"]
        if sp:
            speedups.setdefault(row["name"].split(".", 1)[0], []).append(sp)
        out.append("| " + " | ".join([
            row["name"], fmt_us(row["t"]) if row["t"] else (row["why"] or "-"), fmt_frac(row["frac"]),
            b["peer"] if b else "-", fmt_us(b["time_us"]) if b else "-", f"{sp:.2f}x" if sp else "-",
            ", ".join(row["wrong"]) or "-"]) + " |")
    for fam, s in speedups.items():
        g = math.exp(sum(math.log(x) for x in s) / len(s))
        out.append(f"\n{fam}: geometric-mean speedup of fulgur over the fastest correct peer: {g:.2f}x over "
                   f"{len(s)} shapes")
    wrong = sum(len(r["wrong"]) for r in table)
    out.append(f"peer results WRONG against the fp64 reference: {wrong}")
    return "\n".join(out) + "\n"


def self_test() -> int:
    gb = {"context": {"fulgur_device": "test"}, "benchmarks": [
        {"name": "moe.route/model=x/T=1/iterations:200/manual_time", "real_time": 4.0, "time_unit": "us",
         "floor_us": 0.1, "floor_frac": 0.025, "iterations": 200},
        {"name": "lightning.decode/H=8/B=1/iterations:200/manual_time", "error_occurred": True,
         "error_message": "no decode"}]}
    peers = {"context": {}, "peers": [
        {"family": "moe", "name": "moe.route/model=x/T=1", "peer": "torch", "status": "ok", "time_us": 40.0,
         "floor_us": 0.1, "floor_frac": 0.0025, "check": "ok", "rel_rmse": 0.0},
        {"family": "lightning", "name": "lightning.decode/H=8/B=1", "peer": "torch", "status": "ok",
         "time_us": 9.0, "floor_us": 0.3, "floor_frac": 0.033, "check": "ok", "rel_rmse": 1e-4},
        {"family": "lightning", "name": "lightning.decode/H=8/B=1", "peer": "fla.x", "status": "ok",
         "time_us": 5.0, "floor_us": 0.3, "check": "WRONG", "rel_rmse": 0.2}]}
    with tempfile.TemporaryDirectory() as d:
        bp, pp = os.path.join(d, "b.json"), os.path.join(d, "p.json")
        with open(bp, "w") as f:
            json.dump({"runs": {"moe": gb}}, f)
        with open(pp, "w") as f:
            json.dump(peers, f)
        rows, _ = load_bench(bp)
        pr, _ = load_peers(pp)
        table, names = build(rows, pr)
        short = short_lines(table)
        full = full_markdown(table, names)
    checks = [
        ("| moe.route/model=x/T=1 | 4.00 | 2% | torch | 40.0 | 10.00x | - |" in short, "speedup row"),
        ("| lightning.decode/H=8/B=1 | skipped: no decode | - | torch | 9.00 | - | fla.x |" in short, "skipped row"),
        ("WRONG 2.0e-01" in full, "WRONG peer cell"),
        ("peer results WRONG against the fp64 reference: 1" in short, "WRONG count"),
        ("geometric-mean speedup" in short, "aggregate"),
    ]
    failed = [w for ok, w in checks if not ok]
    for w in failed:
        print("FAILED:", w)
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(short)
        print(full)
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench")
    ap.add_argument("--peers")
    ap.add_argument("--full", help="write the full table (markdown) here")
    ap.add_argument("--header", default="")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.bench or not os.path.exists(args.bench):
        print("compare: no benchmark results", file=sys.stderr)
        rows, ctx = {}, {}
    else:
        rows, ctx = load_bench(args.bench)
    peers, pctx = load_peers(args.peers)
    table, names = build(rows, peers)
    if args.full:
        with open(args.full, "a") as f:
            f.write(full_markdown(table, names, args.header))
    sys.stdout.write(short_lines(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
