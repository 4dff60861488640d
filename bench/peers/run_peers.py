#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Runs the peers of fulgur's benchmarks at the same shapes, on the GPU machine's PyTorch.

  python3 bench/peers/run_peers.py --bench-dir BUILD/bench --out peers.json [--budget S]
                                   [--filter REGEX] [--device cuda|cpu] [--dry-run]

Shapes, minimum bytes, FLOPs, iteration counts and floors come from each fulgur binary's
--fulgur_costs output (one count and one card rate for both sides). --dry-run (CI, any machine,
torch optional): reads the costs, lists the peers each shape would run and which peer packages
import, and, where torch is installed, checks the fp64 lightning reference against the per-token
recurrence on the CPU. Without a GPU (and without --device cpu) it stops there.

Output: JSON {"context": {...}, "peers": [record, ...]}, one record per (shape, peer): status
ok / skipped / error, time_us (mean of CUDA-event timings with an L2 flush before each call),
min_us, iterations, floor_us, floor_frac, check ok / WRONG / unchecked, rel_rmse, note.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peerlib import Budget, Timer, costs_from_binary  # noqa: E402

FAMILIES = ("lightning", "moe", "token_drop")
OPTIONAL = {
    "fla.chunk_simple_gla": "fla.ops.simple_gla",
    "fla.fused_recurrent_simple_gla": "fla.ops.simple_gla",
    "lightning_attn": "lightning_attn.ops",
}


class Context:
    def __init__(self, torch, device, timer, budget):
        self.torch = torch
        self.device = device
        self.timer = timer
        self.budget = budget
        self._avail = {}

    def probe(self):
        for peer, mod in OPTIONAL.items():
            try:
                importlib.import_module(mod)
                self._avail[peer] = None
            except Exception as e:  # ImportError, or a package that fails on import
                self._avail[peer] = f"{mod} not importable ({type(e).__name__}: {str(e)[:120]})"

    def prune_fla_autotune(self, keep: int) -> int:
        """fla's kernels autotune over up to ~50 configs each; on a fresh machine that alone can take
        minutes of the GPU check. Keep `keep` configs per kernel (num_warps 4 or 8, num_stages 2 or
        3, then the largest tiles), unless FULGUR_PEER_FLA_FULL_AUTOTUNE=1. Returns kernels pruned."""
        if keep <= 0:
            return 0
        try:
            from triton.runtime.autotuner import Autotuner
        except Exception:
            return 0
        pruned = 0
        for name, mod in list(sys.modules.items()):
            if not name.startswith("fla.ops") or mod is None:
                continue
            for top in list(vars(mod).values()):
                obj, depth = top, 0
                while obj is not None and not isinstance(obj, Autotuner) and depth < 4:  # under @heuristics
                    obj, depth = getattr(obj, "fn", None), depth + 1
                if isinstance(obj, Autotuner) and len(obj.configs) > keep:
                    def score(c):
                        tiles = sum(v for v in c.kwargs.values() if isinstance(v, int))
                        return (c.num_warps in (4, 8) and c.num_stages in (2, 3), tiles, -c.num_stages)
                    obj.configs = sorted(obj.configs, key=score, reverse=True)[:keep]
                    pruned += 1
        return pruned

    def available(self, peer: str) -> bool:
        return self._avail.get(peer) is None

    def why_not(self, peer: str) -> str:
        return self._avail.get(peer) or ""


# Shapes measured first, so a run cut short by its budget still covers every family at the
# shapes that matter most (MiniMax TP8 prefill and decode at batch 64, MoE at 8K tokens, token
# drop at batch 16); then the rest, families interleaved, cheapest first.
HEADLINE = (r"lightning\.prefill/H=64/d=128/N=32768/seqs=1$", r"lightning\.prefill/H=8/d=128/N=32768/seqs=1$",
            r"lightning\.decode/H=64/d=128/B=64$", r"moe\.[a-z]+/.*/T=8192$", r"token_drop\.[a-z]+/.*/B=16$")


def prioritized(cases):
    head = [c for c in cases if any(re.search(h, c.name) for h in HEADLINE)]
    rest = {}
    for c in cases:
        if c not in head:
            rest.setdefault(c.family, []).append(c)
    queues = [sorted(v, key=lambda c: c.bytes) for v in rest.values()]
    out = list(head)
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-dir", required=True, help="folder holding bench_<family> binaries")
    ap.add_argument("--out", help="JSON output file")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("FULGUR_PEER_BUDGET", "150")),
                    help="wall seconds for all timed peers (the rest are reported skipped)")
    ap.add_argument("--filter", default="", help="regex on the benchmark name")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--target-time", type=float, default=0.05)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()

    t_start = time.monotonic()
    cases = []
    for fam in FAMILIES:
        binary = os.path.join(args.bench_dir, f"bench_{fam}")
        if not os.path.exists(binary):
            print(f"peers: {binary} not built: no {fam} shapes", flush=True)
            continue
        fam_cases = costs_from_binary(binary)
        if args.filter:
            fam_cases = [c for c in fam_cases if re.search(args.filter, c.name)]
        cases += fam_cases
    modules = {fam: importlib.import_module(f"{fam}_peers") for fam in FAMILIES}
    planned = sum(len(modules[c.family].peers_for(c)) for c in cases)
    print(f"peers: {len(cases)} shapes, {planned} (shape, peer) runs planned", flush=True)

    try:
        import torch
    except ImportError:
        torch = None
    context = {"torch": getattr(torch, "__version__", None), "python": sys.version.split()[0]}
    if torch is not None:
        import lightning_peers

        chk = lightning_peers.available_checks(torch)
        context.update(chk)
        print(f"peers: fp64 lightning reference vs per-token recurrence: rel RMSE {chk['lightning_reference_vs_recurrence_rel_rmse']:.2e}",
              flush=True)
        if not chk["ok"]:
            print("peers: the fp64 lightning reference disagrees with the recurrence", file=sys.stderr)
            return 1

    if args.dry_run or torch is None or (args.device == "cuda" and not torch.cuda.is_available()):
        why = "dry run" if args.dry_run else ("torch not installed" if torch is None else "no CUDA device")
        for fam in FAMILIES:
            n = [c for c in cases if c.family == fam]
            peers = sorted({p for c in n for p in modules[fam].peers_for(c)})
            print(f"peers: {fam}: {len(n)} shapes, peers {', '.join(peers) or '-'}", flush=True)
        print(f"peers: {why}: nothing timed", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"context": dict(context, note=why), "peers": []}, f, indent=1)
        return 0

    device = torch.device(args.device)
    timer = Timer(torch, device, args.target_time)
    ctx = Context(torch, device, timer, Budget(args.budget))
    ctx.probe()
    for peer in OPTIONAL:
        print(f"peers: {peer}: {'available' if ctx.available(peer) else ctx.why_not(peer)}", flush=True)
    if os.environ.get("FULGUR_PEER_FLA_FULL_AUTOTUNE", "0") != "1":
        n = ctx.prune_fla_autotune(int(os.environ.get("FULGUR_PEER_FLA_CONFIGS", "4")))
        context["fla_autotune"] = f"pruned to {os.environ.get('FULGUR_PEER_FLA_CONFIGS', '4')} configs in {n} kernels"
        print(f"peers: fla autotune: {context['fla_autotune']} (FULGUR_PEER_FLA_FULL_AUTOTUNE=1 for all)", flush=True)
    cases = prioritized(cases)
    if device.type == "cuda":
        context["device"] = torch.cuda.get_device_name(device)
        context["triton"] = getattr(importlib.import_module("triton"), "__version__", None) if importlib.util.find_spec(
            "triton") else None
    for mod in ("fla", "lightning_attn"):
        try:
            m = importlib.import_module(mod)
            context[mod] = getattr(m, "__version__", "present")
        except Exception:
            context[mod] = None
    context["budget_s"] = args.budget
    records = []
    for i, case in enumerate(cases):
        t0 = time.monotonic()
        recs = modules[case.family].run_case(case, ctx)
        records += recs
        brief = "; ".join(
            f"{r['peer']} {r['time_us']:.1f} us {r.get('check', '')}" if r.get("status") == "ok"
            else f"{r['peer']} {r.get('status')}" for r in recs)
        print(f"peers [{i + 1}/{len(cases)}] {case.name}: {brief} ({time.monotonic() - t0:.1f} s)", flush=True)
        if args.out and (i % 10 == 9 or i + 1 == len(cases)):  # partial results survive a timeout
            with open(args.out, "w") as f:
                json.dump({"context": context, "peers": records}, f, indent=1)
    context["wall_s"] = time.monotonic() - t_start
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"context": context, "peers": records}, f, indent=1)
    wrong = [r for r in records if r.get("check") == "WRONG"]
    print(f"peers: {len(records)} records, {len(wrong)} WRONG, {time.monotonic() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
