# SPDX-License-Identifier: Apache-2.0
"""MoE routing and dispatch peers at bench_moe's shapes: plain PyTorch, what a user writes
without fused kernels (the torch paths of vLLM / SGLang / transformers).

  route    softmax -> topk -> renormalize (MiniMax, Qwen3); DeepSeek-V3: sigmoid, + bias, group
           score = sum of each group's top-2, keep 4 groups, topk inside them, weights from the
           unbiased sigmoid, renormalized (+1e-20), x 2.5 (vLLM's grouped_topk in torch)
  permute  stable torch.sort of the flat ids, bincount, cumsum, inverse by scatter
  align    the tile-padded view (vLLM moe_align_block_size) from the same sort, M = 64
  gather   hidden[token index of each permuted row] (index_select)
  combine  y[row of (t, j)] * w[t, j], summed over j in fp32, rounded to bf16

Checks: ids and maps must equal an independent stable-sort / fp64 reference exactly (routing on
tie-free fp32 normal logits); weights within 1e-5 relative of the fp64 reference; gather bit-exact;
combine relative RMSE against fp64 below peerlib.WRONG_RMSE.
"""
from __future__ import annotations

from peerlib import Case, record, rel_rmse, verdict

TILE_M = 64
MODELS = {
    # name: (score, n_group, topk_group, renormalize, eps, scale)
    "minimax": ("softmax", 1, 1, True, 0.0, 1.0),
    "qwen3": ("softmax", 1, 1, True, 0.0, 1.0),
    "deepseek_v3": ("sigmoid", 8, 4, True, 1e-20, 2.5),
}


def peers_for(case: Case) -> list[str]:
    return ["torch"] if case.op in ("route", "permute", "align", "gather", "gather_by_token", "combine") else []


def torch_route(torch, logits, bias, model, k):
    score, G, TG, renorm, eps, scale = MODELS[model]
    T, E = logits.shape
    if score == "softmax":
        s = logits.softmax(dim=-1)
        w, ids = s.topk(k, dim=-1)
    else:
        s = logits.sigmoid()
        sb = s + bias
        gs = sb.view(T, G, E // G).topk(2, dim=-1).values.sum(-1)
        gidx = gs.topk(TG, dim=-1).indices
        gmask = torch.zeros_like(gs).scatter_(1, gidx, 1.0)
        smask = gmask.unsqueeze(-1).expand(T, G, E // G).reshape(T, E)
        ids = sb.masked_fill(smask == 0, float("-inf")).topk(k, dim=-1).indices
        w = s.gather(1, ids)
    if renorm:
        w = w / (w.sum(-1, keepdim=True) + eps)
    return w * scale, ids.to(torch.int32)


def ref_route(torch, logits, bias, model, k):
    """fp64, stable ties (lower expert wins) by a stable descending sort of the keys."""
    score, G, TG, renorm, eps, scale = MODELS[model]
    x = logits.double()
    T, E = x.shape
    if score == "softmax":
        s = torch.softmax(x, dim=-1)
        key = s
    else:
        s = torch.sigmoid(x)
        key = s + bias.double()
        grp = key.view(T, G, E // G).sort(dim=-1, descending=True, stable=True).values[..., :2].sum(-1)
        keep = grp.sort(dim=-1, descending=True, stable=True).indices[:, :TG]
        gm = torch.zeros(T, G, dtype=torch.bool, device=x.device)
        gm.scatter_(1, keep, True)
        key = key.masked_fill(~gm.unsqueeze(-1).expand(T, G, E // G).reshape(T, E), float("-inf"))
    ids = key.sort(dim=-1, descending=True, stable=True).indices[:, :k]
    w = s.gather(1, ids)
    if renorm:
        w = w / (w.sum(-1, keepdim=True) + eps)
    return w * scale, ids.to(torch.int32)


def torch_permute(torch, ids, E):
    flat = ids.view(-1)
    sorted_ids, order = torch.sort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    offsets = torch.zeros(E + 1, dtype=torch.int64, device=ids.device)
    offsets[1:] = torch.cumsum(counts, 0)
    p2e = order.to(torch.int32)
    e2p = torch.empty_like(p2e)
    e2p[order] = torch.arange(flat.numel(), dtype=torch.int32, device=ids.device)
    return offsets, e2p, p2e


def torch_align(torch, ids, E, M):
    flat = ids.view(-1)
    Tk = flat.numel()
    sorted_ids, order = torch.sort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    off = torch.zeros(E + 1, dtype=torch.int64, device=ids.device)
    off[1:] = torch.cumsum(counts, 0)
    padded = (counts + M - 1) // M * M
    poff = torch.zeros(E + 1, dtype=torch.int64, device=ids.device)
    poff[1:] = torch.cumsum(padded, 0)
    cap = Tk + E * (M - 1)
    sorted_token_ids = torch.full((cap,), Tk, dtype=torch.int32, device=ids.device)
    pos = poff[sorted_ids] + (torch.arange(Tk, device=ids.device) - off[sorted_ids])
    sorted_token_ids[pos] = order.to(torch.int32)
    tiles = (cap + M - 1) // M
    tile_expert_ids = torch.full((tiles,), -1, dtype=torch.int32, device=ids.device)
    te = torch.repeat_interleave(torch.arange(E, dtype=torch.int32, device=ids.device), padded // M)
    tile_expert_ids[: te.numel()] = te
    post = padded.sum().to(torch.int32).view(1)
    return off, sorted_token_ids, tile_expert_ids, post


def ref_maps(ids, E, M):
    """Plain Python stable-sort oracle (CPU lists), independent of torch.sort."""
    flat = ids.view(-1).tolist()
    Tk = len(flat)
    order = sorted(range(Tk), key=lambda i: (flat[i], i))
    counts = [0] * E
    for e in flat:
        counts[e] += 1
    off = [0]
    for c in counts:
        off.append(off[-1] + c)
    e2p = [0] * Tk
    for r, i in enumerate(order):
        e2p[i] = r
    sti, tiles = [], []
    for e in range(E):
        rows = order[off[e] : off[e + 1]]
        padded = (len(rows) + M - 1) // M * M
        sti += rows + [Tk] * (padded - len(rows))
        tiles += [e] * (padded // M)
    post = len(sti)
    cap = Tk + E * (M - 1)
    sti += [Tk] * (cap - len(sti))
    tiles += [-1] * ((cap + M - 1) // M - len(tiles))
    return {"off": off, "e2p": e2p, "p2e": order, "sti": sti, "tiles": tiles, "post": [post]}


_MAPS_CACHE: dict = {}


def cached_ref_maps(key, ids, E, M):
    if key not in _MAPS_CACHE:
        _MAPS_CACHE.clear()  # one (model, T) at a time: cases come grouped by shape
        _MAPS_CACHE[key] = ref_maps(ids, E, M)
    return _MAPS_CACHE[key]


def combine_error(torch, out, y, e2p_ref, w, T, k, H, chunk=2048):
    """Relative RMSE of out against the fp64 combine, in token chunks (fp64 of all of y would not
    fit for the largest shapes)."""
    num = den = 0.0
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        rows = e2p_ref[t0 * k : t1 * k]
        ref = (y[rows].double().view(t1 - t0, k, H) * w[t0:t1].double().unsqueeze(-1)).sum(1)
        num += (out[t0:t1].double() - ref).pow(2).sum().item()
        den += ref.pow(2).sum().item()
    return (num / den) ** 0.5 if den > 0 else num ** 0.5


def run_case(case: Case, ctx) -> list[dict]:
    torch = ctx.torch
    dev = ctx.device
    p = case.params
    model, E, k, T = p["model"], int(p["E"]), int(p["k"]), int(p["T"])
    H = int(p.get("H", 0))
    out = []
    if ctx.budget.exhausted():
        return [record(case, "torch", status="skipped", note="peer time budget spent")]
    gen = torch.Generator(device=dev).manual_seed(99)
    copies = ctx.timer.copies(case.bytes)
    try:
        # bias and the first copy's logits first: ids0 (and the cached reference maps) must not
        # depend on the copy count, which differs between the ops of one (model, T)
        bias = torch.randn(E, device=dev, generator=gen) * 0.1 if model == "deepseek_v3" else None
        logits = [torch.randn(T, E, device=dev, generator=gen) for _ in range(copies)]
        w0, ids0 = torch_route(torch, logits[0], bias, model, k)
        ids = [torch_route(torch, lg, bias, model, k)[1] for lg in logits]
        note = ""
        if case.op == "route":
            res = [None]

            def fn(c):
                r = torch_route(torch, logits[c], bias, model, k)
                if c == 0:
                    res[0] = r

            fn(0)
            wr, idr = ref_route(torch, logits[0], bias, model, k)
            w, idp = res[0]
            same = bool(torch.equal(idp.cpu(), idr.cpu()))
            err = rel_rmse(torch, w, wr)
            chk = "ok" if same and err <= 1e-5 else "WRONG"
            note = "ids equal" if same else "ids differ from the stable reference"
        elif case.op in ("permute", "align"):
            ref = cached_ref_maps((model, T), ids[0].cpu(), E, TILE_M)
            res = [None]
            if case.op == "permute":

                def fn(c):
                    r = torch_permute(torch, ids[c], E)
                    if c == 0:
                        res[0] = r

                fn(0)
                off, e2p, p2e = res[0]
                same = off.tolist() == ref["off"] and e2p.tolist() == ref["e2p"] and p2e.tolist() == ref["p2e"]
            else:

                def fn(c):
                    r = torch_align(torch, ids[c], E, TILE_M)
                    if c == 0:
                        res[0] = r

                fn(0)
                off, sti, tiles, post = res[0]
                same = (off.tolist() == ref["off"] and sti.tolist() == ref["sti"] and tiles.tolist() == ref["tiles"]
                        and post.tolist() == ref["post"])
            err, chk = (0.0 if same else 1.0), ("ok" if same else "WRONG")
        elif case.op in ("gather", "gather_by_token"):  # the same rows, whichever way fulgur walks them
            _, e2p, p2e = torch_permute(torch, ids0, E)
            hidden = [torch.randn(T, H, device=dev, generator=gen).to(torch.bfloat16) for _ in range(copies)]
            res = [None]

            def fn(c):
                r = hidden[c].index_select(0, p2e.long() // k)
                if c == 0:
                    res[0] = r

            fn(0)
            ref_rows = torch.tensor(cached_ref_maps((model, T), ids0.cpu(), E, TILE_M)["p2e"], dtype=torch.long,
                                    device=dev) // k
            same = bool(torch.equal(res[0], hidden[0][ref_rows]))
            err, chk = (0.0 if same else 1.0), ("ok" if same else "WRONG")
        else:  # combine
            _, e2p, _ = torch_permute(torch, ids0, E)
            y = [torch.randn(T * k, H, device=dev, generator=gen).to(torch.bfloat16) for _ in range(copies)]
            res = [None]

            def fn(c):
                r = (y[c][e2p.long()].view(T, k, H).float() * w0.unsqueeze(-1)).sum(1).to(torch.bfloat16)
                if c == 0:
                    res[0] = r

            fn(0)
            e2p_ref = torch.tensor(cached_ref_maps((model, T), ids0.cpu(), E, TILE_M)["e2p"], dtype=torch.long,
                                   device=dev)
            err = combine_error(torch, res[0], y[0], e2p_ref, w0, T, k, H)
            chk = verdict(err)
        ctx.timer.sync()
        mean, mn, n_it = ctx.timer.time(fn, copies, case.iterations)
        out.append(record(case, "torch", status="ok", time_us=mean, min_us=mn, iterations=n_it, check=chk,
                          rel_rmse=err, note=note))
    except Exception as e:
        out.append(record(case, "torch", status="error", note=f"{type(e).__name__}: {e}"[:300]))
    return out
