# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of fulgur's peer benchmarks (bench/peers/run_peers.py).

Timing follows bench/common.cuh: CUDA events around one call, the L2 flushed before every call (a
fill of a buffer twice the L2 size), inputs rotated over several copies, the same iteration count
as fulgur's benchmark of the same shape (capped in time for slow peers), and the same floor
(bytes / BW, FLOPs / peak, read from the fulgur binary's --fulgur_costs output, so both sides use
one count and one card rate).

torch is imported lazily: the dry run (CI, no torch) imports these modules, parses the costs and
lists the planned peers without it.
"""
from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import dataclass, field

# Relative RMSE above which a peer's output is reported WRONG (bf16 outputs: rounding alone gives
# about 2^-9 / sqrt(3) = 1.1e-3; a peer's fp32/bf16 arithmetic a few times that).
WRONG_RMSE = 1e-2


@dataclass
class Case:
    """One benchmark shape, as fulgur's binary registered it."""

    name: str  # e.g. "moe.route/model=qwen3/E=128/k=8/T=1024"
    bytes: float
    flops: float
    iterations: int
    floor_us: float
    extra: str = ""
    params: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def op(self) -> str:
        return self.name.split("/", 1)[0].split(".", 1)[1]


def parse_name(name: str) -> dict:
    """'fam.op/a=1/b=x' -> {'a': 1, 'b': 'x'} (ints where they parse)."""
    out = {}
    for part in name.split("/")[1:]:
        if "=" not in part:
            continue
        k, v = part.split("=", 1)
        try:
            out[k] = int(v)
        except ValueError:
            out[k] = v
    return out


def parse_costs(text: str) -> list[Case]:
    cases = []
    for line in text.splitlines():
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 5 or cols[0] == "name":
            continue
        extra = cols[5] if len(cols) > 5 else ""
        c = Case(cols[0], float(cols[1]), float(cols[2]), int(cols[3]), float(cols[4]), extra)
        c.params = parse_name(c.name)
        for kv in extra.split(";"):
            if "=" in kv:
                k, v = kv.split("=", 1)
                c.params[k] = v
        cases.append(c)
    return cases


def costs_from_binary(path: str) -> list[Case]:
    out = subprocess.run([path, "--fulgur_costs"], check=True, capture_output=True, text=True, timeout=120)
    return parse_costs(out.stdout)


def strip_suffixes(name: str) -> str:
    """Google Benchmark's run name -> the registered name."""
    return re.sub(r"(/iterations:\d+|/manual_time|/real_time)+$", "", name)


# ---- timing -------------------------------------------------------------------------------------


class Budget:
    """Wall-clock budget of the whole peer run; peers past it are reported as skipped."""

    def __init__(self, seconds: float):
        self.t0 = time.monotonic()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def exhausted(self) -> bool:
        return self.left() <= 0


class Timer:
    """CUDA-event timing with an L2 flush before every call (bench/common.cuh's rules)."""

    def __init__(self, torch, device, target_time: float = 0.05):
        self.torch = torch
        self.device = device
        self.target_time = target_time
        self.cuda = device.type == "cuda"
        if self.cuda:
            props = torch.cuda.get_device_properties(device)
            self.l2 = int(getattr(props, "L2_cache_size", 60 << 20)) or (60 << 20)
            self.flush_buf = torch.empty(2 * self.l2, dtype=torch.uint8, device=device)
        else:
            self.l2 = 32 << 20
            self.flush_buf = None
        self.flush_value = 0

    def copies(self, bytes_per_copy: float) -> int:
        n = math.ceil(2.0 * self.l2 / max(bytes_per_copy, 1.0))
        n = max(2, min(8, n))
        if self.cuda:
            free, _ = self.torch.cuda.mem_get_info(self.device)
            while n > 1 and n * bytes_per_copy > 0.4 * free:
                n -= 1
        return n

    def flush(self):
        if self.flush_buf is not None:
            self.flush_value = (self.flush_value + 1) & 0xFF
            self.flush_buf.fill_(self.flush_value)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(self, fn, copies: int, iterations: int, min_iterations: int = 3):
        """fn(copy) runs the peer once on input copy `copy`. Returns (mean_us, min_us, n). Stops
        early (after min_iterations) once the calls took 4x the target time: slow peers."""
        torch = self.torch
        fn(0)  # warm-up: JIT compiles, autotuning, allocator growth
        self.sync()
        times = []
        for i in range(iterations):
            self.flush()
            if self.cuda:
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record()
                fn(i % copies)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) * 1e3)
            else:
                t0 = time.perf_counter()
                fn(i % copies)
                times.append((time.perf_counter() - t0) * 1e6)
            if len(times) >= min_iterations and sum(times) * 1e-6 > 4 * self.target_time:
                break
        return sum(times) / len(times), min(times), len(times)


def rel_rmse(torch, x, ref) -> float:
    """sqrt(mean((x - ref)^2)) / sqrt(mean(ref^2)), in fp64."""
    x = x.double()
    ref = ref.double()
    den = ref.pow(2).mean().sqrt().item()
    num = (x - ref).pow(2).mean().sqrt().item()
    if not math.isfinite(num):
        return float("inf")
    return num / den if den > 0 else num


def verdict(err: float, limit: float = WRONG_RMSE) -> str:
    return "ok" if err <= limit else "WRONG"


def record(case: Case, peer: str, **kw) -> dict:
    r = {"family": case.family, "name": case.name, "peer": peer, "floor_us": case.floor_us}
    r.update(kw)
    if "time_us" in r and r["time_us"] and case.floor_us:
        r["floor_frac"] = case.floor_us / r["time_us"]
    return r
