# SPDX-License-Identifier: Apache-2.0
"""Lightning attention peers at bench_lightning's shapes.

Peers:
  torch                 what a user writes without a kernel: the block form in fp32 with torch
                        matmuls, chunks of 256 tokens (MiniMax's block), a Python loop over chunks
                        (and over sequences for varlen); decode as gather / update / scatter.
  fla.chunk_simple_gla  fla's chunked kernel (prefill), g_gamma = -slope, scale = 1, initial and
                        final state, varlen through cu_seqlens; the final state copied back into
                        the pool (timed: an engine must do it).
  fla.fused_recurrent_simple_gla   fla's recurrent kernel (decode), same conventions.
  lightning_attn        OpenNLPLab's Triton kernel (prefill), native [b, h, n, d] layout
                        (transposed copies prepared untimed), equal-length batches only, and no
                        state in or out (its API has none).

Every peer's output is checked against an fp64 reference of the spec's math (the block form with
B = 64, itself checked against the per-token recurrence on a small case at start-up) on the same
inputs, with the peer's own initial state (zero for lightning_attn). Checks run where N * H is at
most FULGUR_PEER_CHECK_MAX token-heads (default 2^18, fp64 on the GPU is slow); larger shapes
report "unchecked".
"""
from __future__ import annotations

import os

from peerlib import Case, record, rel_rmse, verdict

D = 128
CHUNK_TORCH = 256
CHECK_MAX = int(os.environ.get("FULGUR_PEER_CHECK_MAX", str(1 << 18)))


def minimax_slopes(H: int) -> list[float]:
    """Layer 0 of 80, vLLM convention; H = 8 is tensor-parallel rank 0's slice of the 64 heads
    (bench_lightning.cu: lightning::fill_minimax_slopes)."""
    factor = 1.0 - 0.0 / 79.0 + 1e-5
    return [2.0 ** (-(h + 1) / 8.0) * factor for h in range(H)]


def seq_lens(case: Case) -> list[int]:
    p = case.params
    if "lens" in p:
        return [int(x) for x in str(p["lens"]).split(",")]
    seqs = int(p["seqs"])
    return [p["N"] // seqs] * seqs


def peers_for(case: Case) -> list[str]:
    if "seg" in case.params:
        return []  # a fulgur tuning variant of the shape without /seg=: the peers run there
    if case.op == "prefill":
        out = ["torch", "fla.chunk_simple_gla"]
        if "lens" not in case.params:
            out.append("lightning_attn")
        return out
    if case.op == "decode":
        return ["torch", "fla.fused_recurrent_simple_gla"]
    return []


# ---- fp64 reference (the spec's block form, B = 64) ---------------------------------------------


def ref_block(torch, q, k, v, slopes, S0, block=64):
    """One sequence. q, k, v: [n, H, d] (any float dtype), S0: [H, d, d] or None. fp64 throughout.
    S_t = lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t, in the block form:
      O = ((Q K^T) * diag) V + (Q * lambda^{t+1}) S_prev,  S_next = lambda^m S_prev + (K * lambda^{m-1-j})^T V
    """
    n, H, d = q.shape
    dev = q.device
    s = slopes.double().to(dev).view(H, 1, 1)
    S = torch.zeros(H, d, v.shape[2], dtype=torch.float64, device=dev) if S0 is None else S0.double().clone()
    o = torch.empty(n, H, v.shape[2], dtype=torch.float64, device=dev)
    for b0 in range(0, n, block):
        m = min(block, n - b0)
        Q = q[b0 : b0 + m].double().transpose(0, 1)  # [H, m, d]
        K = k[b0 : b0 + m].double().transpose(0, 1)
        V = v[b0 : b0 + m].double().transpose(0, 1)
        t = torch.arange(m, dtype=torch.float64, device=dev)
        diff = t.view(m, 1) - t.view(1, m)
        diag = torch.where(diff >= 0, torch.exp(-s * diff.clamp(min=0)), torch.zeros((), dtype=torch.float64, device=dev))
        qd = torch.exp(-s * (t.view(1, m, 1) + 1))
        kd = torch.exp(-s * (m - 1 - t).view(1, m, 1))
        O = ((Q @ K.transpose(1, 2)) * diag) @ V + (Q * qd) @ S
        S = torch.exp(-s * m) * S + (K * kd).transpose(1, 2) @ V
        o[b0 : b0 + m] = O.transpose(0, 1)
    return o, S


def ref_recurrence(torch, q, k, v, slopes, S0):
    """The per-token recurrence itself (small cases only)."""
    n, H, d = q.shape
    lam = torch.exp(-slopes.double()).view(H, 1, 1)
    S = S0.double().clone()
    o = torch.empty(n, H, v.shape[2], dtype=torch.float64)
    for t in range(n):
        S = lam * S + k[t].double().unsqueeze(-1) * v[t].double().unsqueeze(-2)
        o[t] = torch.einsum("hd,hde->he", q[t].double(), S)
    return o, S


def self_check(torch) -> float:
    """Block reference vs recurrence on 150 tokens (crosses two block boundaries), CPU fp64."""
    g = torch.Generator().manual_seed(7)
    n, H, d = 150, 2, 8
    q, k, v = (torch.nn.functional.silu(torch.randn(n, H, d, generator=g, dtype=torch.float64)) for _ in range(3))
    slopes = torch.tensor([0.9, 0.05], dtype=torch.float64)
    S0 = torch.randn(H, d, d, generator=g, dtype=torch.float64)
    o1, s1 = ref_block(torch, q, k, v, slopes, S0)
    o2, s2 = ref_recurrence(torch, q, k, v, slopes, S0)
    return max(rel_rmse(torch, o1, o2), rel_rmse(torch, s1, s2))


# ---- peers --------------------------------------------------------------------------------------


class DecayCache:
    def __init__(self, torch, slopes):
        self.torch = torch
        self.s = slopes.float().view(-1, 1, 1)
        self.cache = {}

    def get(self, m):
        if m not in self.cache:
            torch = self.torch
            t = torch.arange(m, dtype=torch.float32, device=self.s.device)
            diff = t.view(m, 1) - t.view(1, m)
            diag = torch.where(diff >= 0, torch.exp(-self.s * diff.clamp(min=0)), torch.zeros((), device=self.s.device))
            qd = torch.exp(-self.s * (t.view(1, m, 1) + 1))
            kd = torch.exp(-self.s * (m - 1 - t).view(1, m, 1))
            self.cache[m] = (diag, qd, kd, torch.exp(-self.s * m))
        return self.cache[m]


def torch_prefill(torch, q, k, v, decay: DecayCache, state, lens, o):
    """Block form in fp32, chunks of 256, state pool [B, H, d, d] updated in place."""
    H = q.shape[1]
    equal = len(set(lens)) == 1
    groups = [(0, len(lens))] if equal else [(b, b + 1) for b in range(len(lens))]
    row = 0
    for b0, b1 in groups:
        nb, n = b1 - b0, lens[b0]
        qs = q[row : row + nb * n].view(nb, n, H, -1)
        ks = k[row : row + nb * n].view(nb, n, H, -1)
        vs = v[row : row + nb * n].view(nb, n, H, -1)
        os_ = o[row : row + nb * n].view(nb, n, H, -1)
        S = state[b0:b1].clone()
        for c0 in range(0, n, CHUNK_TORCH):
            m = min(CHUNK_TORCH, n - c0)
            diag, qd, kd, lm = decay.get(m)
            Q = qs[:, c0 : c0 + m].transpose(1, 2).float()  # [nb, H, m, d]
            K = ks[:, c0 : c0 + m].transpose(1, 2).float()
            V = vs[:, c0 : c0 + m].transpose(1, 2).float()
            O = ((Q @ K.transpose(-1, -2)) * diag) @ V + (Q * qd) @ S
            S = S * lm + (K * kd).transpose(-1, -2) @ V
            os_[:, c0 : c0 + m] = O.transpose(1, 2).to(o.dtype)
        state[b0:b1].copy_(S)
        row += nb * n
    return o


def torch_decode(torch, q, k, v, lam, state, slots):
    S = state.index_select(0, slots)
    S.mul_(lam).add_(k.float().unsqueeze(-1) * v.float().unsqueeze(-2))
    o = torch.einsum("bhd,bhde->bhe", q.float(), S).to(q.dtype)
    state.index_copy_(0, slots, S)
    return o


# ---- the driver for one case --------------------------------------------------------------------


def run_case(case: Case, ctx) -> list[dict]:
    torch = ctx.torch
    dev = ctx.device
    p = case.params
    H = int(p["H"])
    out = []
    slopes = torch.tensor(minimax_slopes(H), dtype=torch.float32, device=dev)
    gen = torch.Generator(device=dev).manual_seed(1234)

    def silu_bf16(*shape):
        return torch.nn.functional.silu(torch.randn(*shape, device=dev, generator=gen)).to(torch.bfloat16)

    if case.op == "prefill":
        lens = seq_lens(case)
        N, B = sum(lens), len(lens)
        equal = len(set(lens)) == 1
        copies = ctx.timer.copies(case.bytes)
        qkv = [tuple(silu_bf16(N, H, D) for _ in range(3)) for _ in range(copies)]
        state0 = torch.randn(B, H, D, D, device=dev, generator=gen) * 0.1
        check = N * H <= CHECK_MAX
        refs = {}

        def reference(with_state):
            if with_state not in refs:
                q, k, v = qkv[0]
                o_ref = torch.empty(N, H, D, dtype=torch.float64, device=dev)
                s_ref = torch.empty(B, H, D, D, dtype=torch.float64, device=dev)
                row = 0
                for b, n in enumerate(lens):
                    o_b, s_b = ref_block(torch, q[row : row + n], k[row : row + n], v[row : row + n], slopes,
                                         state0[b] if with_state else None)
                    o_ref[row : row + n] = o_b
                    s_ref[b] = s_b
                    row += n
                refs[with_state] = (o_ref, s_ref)
            return refs[with_state]

        for peer in peers_for(case):
            if ctx.budget.exhausted():
                out.append(record(case, peer, status="skipped", note="peer time budget spent"))
                continue
            if not ctx.available(peer):
                out.append(record(case, peer, status="skipped", note=ctx.why_not(peer)))
                continue
            try:
                if peer == "torch":
                    decay = DecayCache(torch, slopes)
                    states = [state0.clone() for _ in range(copies)]
                    outs = [torch.empty(N, H, D, dtype=torch.bfloat16, device=dev) for _ in range(copies)]

                    def fn(c):
                        q, k, v = qkv[c]
                        torch_prefill(torch, q, k, v, decay, states[c], lens, outs[c])

                    with_state, layout_note = True, "block form in fp32, chunk 256"
                    get_out = lambda: (outs[0], states[0])  # noqa: E731
                elif peer == "fla.chunk_simple_gla":
                    from fla.ops.simple_gla import chunk_simple_gla

                    cu = torch.tensor([0] + list(itertools_accumulate(lens)), dtype=torch.long, device=dev)
                    g_gamma = -slopes
                    states = [state0.clone() for _ in range(copies)]
                    res = [None]

                    def fn(c):
                        q, k, v = qkv[c]
                        if equal:
                            shp = (B, lens[0], H, D)
                            o, ht = chunk_simple_gla(q.view(shp), k.view(shp), v.view(shp), g_gamma=g_gamma, scale=1.0,
                                                     initial_state=states[c], output_final_state=True)
                        else:
                            shp = (1, N, H, D)
                            o, ht = chunk_simple_gla(q.view(shp), k.view(shp), v.view(shp), g_gamma=g_gamma, scale=1.0,
                                                     initial_state=states[c], output_final_state=True, cu_seqlens=cu)
                        states[c].copy_(ht)
                        if c == 0:
                            res[0] = o

                    with_state, layout_note = True, "state copied back into the pool"
                    get_out = lambda: (res[0].reshape(N, H, D), states[0])  # noqa: E731
                elif peer == "lightning_attn":
                    from lightning_attn.ops import lightning_attn_func

                    n = lens[0]
                    tq = [tuple(x.view(B, n, H, D).transpose(1, 2).contiguous() for x in qkv[c]) for c in range(copies)]
                    s_arg = slopes.view(H, 1, 1).contiguous()
                    res = [None]

                    def fn(c):
                        q, k, v = tq[c]
                        o = lightning_attn_func(q, k, v, s_arg)
                        if c == 0:
                            res[0] = o

                    with_state, layout_note = False, "native [b,h,n,d] layout, no state in/out"
                    get_out = lambda: (res[0].transpose(1, 2).reshape(N, H, D), None)  # noqa: E731
                else:
                    continue
                err, chk = None, "unchecked"
                if check:
                    if peer == "torch":
                        states[0].copy_(state0)
                    elif peer == "fla.chunk_simple_gla":
                        states[0].copy_(state0)
                    fn(0)
                    ctx.timer.sync()
                    o_p, s_p = get_out()
                    o_ref, s_ref = reference(with_state)
                    err = rel_rmse(torch, o_p, o_ref)
                    if s_p is not None:
                        err = max(err, rel_rmse(torch, s_p, s_ref))
                    chk = verdict(err)
                mean, mn, n_it = ctx.timer.time(fn, copies, case.iterations)
                out.append(record(case, peer, status="ok", time_us=mean, min_us=mn, iterations=n_it, check=chk,
                                  rel_rmse=err, note=layout_note))
            except Exception as e:  # a peer failing is a result, not a crash of the run
                out.append(record(case, peer, status="error", note=f"{type(e).__name__}: {e}"[:300]))
            finally:
                torch.cuda.empty_cache() if ctx.timer.cuda else None
        return out

    if case.op == "decode":
        Bsz = int(p["B"])
        copies = ctx.timer.copies(case.bytes)
        qkv = [tuple(silu_bf16(Bsz, H, D) for _ in range(3)) for _ in range(copies)]
        state0 = torch.randn(Bsz, H, D, D, device=dev, generator=gen) * 0.1
        slots = torch.arange(Bsz, device=dev)
        lam = torch.exp(-slopes).view(1, H, 1, 1)
        q0, k0, v0 = qkv[0]
        S_ref = torch.exp(-slopes.double()).view(1, H, 1, 1) * state0.double() + k0.double().unsqueeze(-1) * v0.double().unsqueeze(-2)
        o_ref = torch.einsum("bhd,bhde->bhe", q0.double(), S_ref)
        for peer in peers_for(case):
            if ctx.budget.exhausted():
                out.append(record(case, peer, status="skipped", note="peer time budget spent"))
                continue
            if not ctx.available(peer):
                out.append(record(case, peer, status="skipped", note=ctx.why_not(peer)))
                continue
            try:
                states = [state0.clone() for _ in range(copies)]
                res = [None]
                if peer == "torch":

                    def fn(c):
                        q, k, v = qkv[c]
                        o = torch_decode(torch, q, k, v, lam, states[c], slots)
                        if c == 0:
                            res[0] = o

                    note = "gather, update, scatter in fp32"
                else:
                    from fla.ops.simple_gla import fused_recurrent_simple_gla

                    g_gamma = -slopes

                    def fn(c):
                        q, k, v = qkv[c]
                        o, ht = fused_recurrent_simple_gla(q.view(Bsz, 1, H, D), k.view(Bsz, 1, H, D),
                                                           v.view(Bsz, 1, H, D), g_gamma=g_gamma, scale=1.0,
                                                           initial_state=states[c], output_final_state=True)
                        states[c].copy_(ht)
                        if c == 0:
                            res[0] = o.view(Bsz, H, D)

                    note = "state copied back into the pool"
                fn(0)
                ctx.timer.sync()
                err = max(rel_rmse(torch, res[0], o_ref), rel_rmse(torch, states[0], S_ref))
                mean, mn, n_it = ctx.timer.time(fn, copies, case.iterations)
                out.append(record(case, peer, status="ok", time_us=mean, min_us=mn, iterations=n_it,
                                  check=verdict(err), rel_rmse=err, note=note))
            except Exception as e:
                out.append(record(case, peer, status="error", note=f"{type(e).__name__}: {e}"[:300]))
        return out
    return out


def itertools_accumulate(xs):
    total = 0
    for x in xs:
        total += x
        yield total


def available_checks(torch) -> dict:
    """Start-up check of the reference itself (CPU fp64)."""
    err = self_check(torch)
    return {"lightning_reference_vs_recurrence_rel_rmse": err, "ok": err < 1e-12}

