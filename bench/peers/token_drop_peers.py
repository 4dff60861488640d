# SPDX-License-Identifier: Apache-2.0
"""Visual token drop peers at bench_token_drop's shapes: plain PyTorch, the way PyramidDrop / FastV
ports compute a drop event (batched here, not per sample, which is the favourable case for them).

  score    bf16 q . k^T per head (GQA by grouping query heads), / sqrt(d), fp32 softmax over the
           causal row, mean over heads, the image span sliced out
  select   topk(keep) of each span's scores, indices sorted ascending
  compact  index_select of the kept rows of the hidden states, new positions (renumbered, or the
           original M-RoPE ids gathered), new cu_seqlens
  fused    the three in sequence

Checks: scores against an fp64 computation from the same bf16 inputs (relative RMSE below
peerlib.WRONG_RMSE); selection against a stable fp64 top-k of the same scores (identical index
sets, lower index first on ties); compaction bit-exact against an index built in Python.
"""
from __future__ import annotations

from peerlib import Case, record, rel_rmse, verdict

RATIO = 0.5
# model: (prefix, suffix, mrope) - must match bench_token_drop.cu
MODELS = {"llava15_7b": (35, 29, False), "llava_next": (35, 29, False), "qwen2vl_7b": (15, 29, True)}


def peers_for(case: Case) -> list[str]:
    return ["torch"] if case.op in ("score", "select", "compact", "fused") else []


def torch_score(torch, q, k, B, L, H, Hkv, d, prefix, N):
    G = H // Hkv
    qg = q.view(B, Hkv, G, d)
    kk = k.view(B, L, Hkv, d).permute(0, 2, 3, 1)  # [B, Hkv, d, L]
    logits = torch.matmul(qg, kk).float() * (d ** -0.5)  # [B, Hkv, G, L]
    p = logits.softmax(dim=-1)
    return p.mean(dim=(1, 2))[:, prefix : prefix + N].reshape(-1)


def torch_select(torch, scores, B, N, keep, prefix):
    idx = scores.view(B, N).topk(keep, dim=-1).indices.sort(dim=-1).values + prefix
    return idx.reshape(-1)


class CompactPlan:
    """Index pieces that do not depend on the selection (built once, like a port's setup)."""

    def __init__(self, torch, dev, B, L, N, prefix, keep):
        self.pre = torch.arange(prefix, device=dev)
        self.suf = torch.arange(prefix + N, L, device=dev)
        self.base = (torch.arange(B, device=dev) * L).view(B, 1)
        self.Lp = L - N + keep
        self.new_cu = torch.arange(B + 1, device=dev, dtype=torch.int64) * self.Lp
        self.renum = torch.arange(self.Lp, device=dev, dtype=torch.int64).repeat(B)


def torch_compact(torch, plan, hidden, kept, B, keep, pos=None):
    rows = torch.cat([plan.pre.expand(B, -1), kept.view(B, keep), plan.suf.expand(B, -1)], dim=1) + plan.base
    rows = rows.reshape(-1)
    h = hidden.index_select(0, rows)
    new_pos = pos.index_select(1, rows) if pos is not None else plan.renum
    return h, new_pos, plan.new_cu


def run_case(case: Case, ctx) -> list[dict]:
    torch = ctx.torch
    dev = ctx.device
    p = case.params
    model = p["model"]
    prefix, suffix, mrope = MODELS[model]
    H, Hkv, D, N, L, B = (int(p[x]) for x in ("H", "Hkv", "D", "N", "L", "B"))
    d = 128
    keep = int(N * RATIO)
    if ctx.budget.exhausted():
        return [record(case, "torch", status="skipped", note="peer time budget spent")]
    gen = torch.Generator(device=dev).manual_seed(5)
    copies = ctx.timer.copies(case.bytes)
    try:
        qs = [torch.randn(B, H, d, device=dev, generator=gen).to(torch.bfloat16) for _ in range(copies)]
        ks = [torch.randn(B * L, Hkv, d, device=dev, generator=gen).to(torch.bfloat16) for _ in range(copies)]
        hid = [torch.randn(B * L, D, device=dev, generator=gen).to(torch.bfloat16) for _ in range(copies)]
        pos = None
        if mrope:
            pos = (torch.arange(B * L, device=dev) % L).view(1, -1).repeat(3, 1) + torch.arange(3, device=dev).view(3, 1)
        plan = CompactPlan(torch, dev, B, L, N, prefix, keep)
        sc = [torch.rand(B * N, device=dev, generator=gen) / N for _ in range(copies)]

        # fp64 references on copy 0
        def ref_scores():
            G = H // Hkv
            qg = qs[0].double().view(B, Hkv, G, d)
            kk = ks[0].double().view(B, L, Hkv, d).permute(0, 2, 3, 1)
            pr = torch.softmax(torch.matmul(qg, kk) * d ** -0.5, dim=-1)
            return pr.mean(dim=(1, 2))[:, prefix : prefix + N].reshape(-1)

        def ref_select(scores):
            s = scores.view(B, N).double()
            idx = s.sort(dim=-1, descending=True, stable=True).indices[:, :keep].sort(dim=-1).values + prefix
            return idx.reshape(-1)

        def ref_rows(kept):
            rows = []
            kl = kept.view(B, keep).tolist()
            for b in range(B):
                rows += [b * L + i for i in list(range(prefix)) + kl[b] + list(range(prefix + N, L))]
            return torch.tensor(rows, dtype=torch.long, device=dev)

        res = [None]
        note = ""
        if case.op == "score":

            def fn(c):
                r = torch_score(torch, qs[c], ks[c], B, L, H, Hkv, d, prefix, N)
                if c == 0:
                    res[0] = r

            fn(0)
            err = rel_rmse(torch, res[0], ref_scores())
            chk = verdict(err)
        elif case.op == "select":

            def fn(c):
                r = torch_select(torch, sc[c], B, N, keep, prefix)
                if c == 0:
                    res[0] = r

            fn(0)
            same = bool(torch.equal(res[0], ref_select(sc[0])))
            err, chk = (0.0 if same else 1.0), ("ok" if same else "WRONG")
        elif case.op == "compact":
            kept = (torch.arange(keep, device=dev) * 2 + prefix).repeat(B)  # as bench_token_drop.cu

            def fn(c):
                r = torch_compact(torch, plan, hid[c], kept, B, keep, pos)
                if c == 0:
                    res[0] = r

            fn(0)
            rows = ref_rows(kept)
            h, np_, cu = res[0]
            same = bool(torch.equal(h, hid[0][rows]))
            same &= bool(torch.equal(np_, pos[:, rows])) if mrope else bool(
                torch.equal(np_, torch.arange(len(rows) // B, device=dev).repeat(B)))
            same &= cu.tolist() == [b * (L - N + keep) for b in range(B + 1)]
            err, chk = (0.0 if same else 1.0), ("ok" if same else "WRONG")
        else:  # fused

            def fn(c):
                s = torch_score(torch, qs[c], ks[c], B, L, H, Hkv, d, prefix, N)
                kept = torch_select(torch, s, B, N, keep, prefix)
                r = torch_compact(torch, plan, hid[c], kept, B, keep, pos)
                if c == 0:
                    res[0] = (s, kept, r)

            fn(0)
            s, kept, (h, _, _) = res[0]
            err = rel_rmse(torch, s, ref_scores())
            # The selection is checked on the peer's own scores (a different but correct rounding
            # may legitimately swap near-ties); the rows must follow that selection exactly.
            same = bool(torch.equal(kept, ref_select(s))) and bool(torch.equal(h, hid[0][ref_rows(kept)]))
            chk = "ok" if same and err <= 1e-2 else "WRONG"
            note = "" if same else "selection or rows differ"
        ctx.timer.sync()
        mean, mn, n_it = ctx.timer.time(fn, copies, case.iterations)
        return [record(case, "torch", status="ok", time_us=mean, min_us=mn, iterations=n_it, check=chk, rel_rmse=err,
                       note=note)]
    except Exception as e:
        return [record(case, "torch", status="error", note=f"{type(e).__name__}: {e}"[:300])]
