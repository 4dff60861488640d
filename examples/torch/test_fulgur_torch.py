# SPDX-License-Identifier: Apache-2.0
"""fulgur's torch ops against plain-PyTorch references written from the family specs
(shared/specs: lightning_attention.md, moe_routing.md, token_drop.md).

    cd examples/torch && python setup.py build_ext --inplace && python -m pytest -q test_fulgur_torch.py

Skips when torch or a CUDA device is missing. When the extension is not built the tests skip too,
unless FULGUR_TORCH_REQUIRE=1 (bench/gpu_check.sh sets it), which turns that into a failure.
FULGUR_TEST_SEED fixes the random seed (printed at the start of every test).

Tolerances come from the precision of each path (docs/lightning.md, docs/moe.md,
docs/token_drop.md): ids, maps and copies must be exact; floating outputs are compared with bounds
derived from fp32 accumulation and the output dtype's rounding, never with a loose constant.
"""
import itertools
import math
import os
import random

import pytest

torch = pytest.importorskip("torch")

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: fulgur's torch ops run on CUDA tensors only", allow_module_level=True)

try:
    import fulgur_torch as ft
except ImportError as e:  # the extension is not built
    if os.environ.get("FULGUR_TORCH_REQUIRE") == "1":
        raise
    pytest.skip(f"fulgur_torch is not built ({e})", allow_module_level=True)

DEV = torch.device("cuda")
U32 = 2.0**-24  # fp32 unit roundoff


@pytest.fixture
def gen(request):
    seed = int(os.environ.get("FULGUR_TEST_SEED", random.randrange(1 << 31)))
    print(f"\n{request.node.name}: seed {seed} (FULGUR_TEST_SEED={seed} reproduces it)")
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(gen, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEV)


def rel_rmse(got, ref):
    got, ref = got.double(), ref.double()
    den = ref.pow(2).sum().sqrt().item()
    return (got - ref).pow(2).sum().sqrt().item() / (den if den > 0 else 1.0)


# ---- lightning attention ---------------------------------------------------------------------------
# Spec: S_t = lambda S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t, lambda_h = exp(-slope_h), per
# sequence and head, fp32 state in a slot pool. The reference runs the per-token recurrence in fp64.

# Relative RMSE bounds against the fp64 reference rounded to the output dtype: the kernel is within
# ~1e-5 in fp32 (two-term bf16 operands, fp32 state), so the rest is at most one rounding step of
# the output on a fraction of the elements (the project's own tests use the same numbers).
O_TOL = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 2e-3}
STATE_TOL = 1e-4


def silu64(x):
    return x * torch.sigmoid(x)


def ref_lightning(q, k, v, cu, slopes, state, slots, scale, silu, has_init=None):
    """Per-token recurrence in fp64. Returns (o [T, H, dv], the pool after the call)."""
    q, k, v = (x.double() for x in (q, k, v))
    if silu:
        q, k, v = silu64(q), silu64(k), silu64(v)
    T, H, dv = v.shape
    dk = q.shape[2]
    lam = torch.exp(-slopes.double())[:, None, None]
    o = torch.zeros(T, H, dv, dtype=torch.float64, device=q.device)
    pool = state.double().clone()
    cu = cu.tolist()
    slots = slots.tolist()
    init = has_init.tolist() if has_init is not None else [1] * len(slots)
    for b, slot in enumerate(slots):
        if slot >= 0 and init[b]:
            S = pool[slot].clone()
        else:
            S = torch.zeros(H, dk, dv, dtype=torch.float64, device=q.device)
        for t in range(cu[b], cu[b + 1]):
            S = lam * S + k[t][:, :, None] * v[t][:, None, :]
            o[t] = scale * torch.einsum("hk,hkv->hv", q[t], S)
        if slot >= 0:
            pool[slot] = S
    return o, pool


def check_o(o, ref, out_dtype, rows=None):
    if rows is not None:
        o, ref = o[rows], ref[rows]
    err = rel_rmse(o, ref.to(out_dtype))
    assert err <= O_TOL[out_dtype], f"o: relative RMSE {err:.3g} > {O_TOL[out_dtype]:.3g} ({out_dtype})"


@pytest.mark.parametrize(
    "d,qkv_dtype,out_dtype,silu",
    [
        (64, torch.bfloat16, torch.bfloat16, False),
        (128, torch.bfloat16, torch.float32, True),
        (64, torch.float16, torch.float16, False),
        (128, torch.float32, torch.float32, False),
    ],
)
def test_lightning_prefill(gen, d, qkv_dtype, out_dtype, silu):
    H = 4
    # Edge lengths around the 64-token block, an empty sequence, and one sequence longer than the
    # 1024-token segment (the segment-state and scan kernels run).
    lens = [1, 63, 0, 65, 130, 1100] if d == 64 else [1, 63, 0, 65, 130]
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=DEV)
    T, B = int(cu[-1]), len(lens)
    # MiniMax's fused projection [T, H, 3, d], read in place through strides.
    qkv = randn(gen, T, H, 3, d, dtype=qkv_dtype, scale=0.5)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    slopes = ft.alibi_slopes(H).to(DEV)
    num_slots = B + 2
    state = randn(gen, num_slots, H, d, d, scale=0.1)
    slots = torch.tensor([3, 0, 5, -1, 1, 2][:B], dtype=torch.int32, device=DEV)  # one stateless
    has_init = torch.tensor([1, 0, 1, 1, 1, 1][:B], dtype=torch.uint8, device=DEV)  # one fresh request
    scale = 1.0 / math.sqrt(d)
    state0 = state.clone()

    o = ft.lightning_prefill(q, k, v, cu, slopes, state, slots, scale=scale, silu=silu, out_dtype=out_dtype,
                             has_initial_state=has_init)
    torch.cuda.synchronize()
    ref_o, ref_pool = ref_lightning(q, k, v, cu, slopes, state0, slots, scale, silu, has_init)
    assert o.shape == (T, H, d) and o.dtype == out_dtype
    check_o(o, ref_o, out_dtype)
    used = [s for s in slots.tolist() if s >= 0]
    err = rel_rmse(state[used], ref_pool[used])
    assert err <= STATE_TOL, f"state: relative RMSE {err:.3g}"
    untouched = [s for s in range(num_slots) if s not in used]
    assert torch.equal(state[untouched], state0[untouched]), "slots outside the batch changed"

    # Determinism: the same call from the same pool gives the same bits.
    state2 = state0.clone()
    o2 = ft.lightning_prefill(q, k, v, cu, slopes, state2, slots, scale=scale, silu=silu, out_dtype=out_dtype,
                              has_initial_state=has_init)
    assert torch.equal(o, o2) and torch.equal(state, state2)


@pytest.mark.parametrize("d,qkv_dtype", [(64, torch.bfloat16), (128, torch.float16), (128, torch.float32)])
def test_lightning_decode_continues_prefill(gen, d, qkv_dtype):
    """Prefill then two decode steps equal the recurrence over the whole sequence."""
    H, lens = 8, [5, 64, 17]
    B = len(lens)
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=DEV)
    T = int(cu[-1])
    steps = 2
    q, k, v = (randn(gen, T, H, d, dtype=qkv_dtype, scale=0.5) for _ in range(3))
    dq, dk_, dv = (randn(gen, steps, B + 1, H, d, dtype=qkv_dtype, scale=0.5) for _ in range(3))
    slopes = ft.alibi_slopes(H).to(DEV)
    state = torch.zeros(B, H, d, d, device=DEV)
    slots = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEV)
    ft.lightning_prefill(q, k, v, cu, slopes, state, slots)
    dec_slots = torch.tensor([2, 0, -1, 1], dtype=torch.int32, device=DEV)  # row 2 is CUDA-graph padding
    outs = []
    for s in range(steps):
        outs.append(ft.lightning_decode(dq[s], dk_[s], dv[s], slopes, state, dec_slots, out_dtype=torch.float32))
    torch.cuda.synchronize()

    # Reference: each sequence's tokens followed by its decode tokens, in one recurrence.
    rows = [0, 1, 3]  # decode rows of sequences 0, 1, 2
    for b in range(B):
        t0, t1 = int(cu[b]), int(cu[b + 1])
        qs = torch.cat([q[t0:t1]] + [dq[s, rows[b]][None] for s in range(steps)])
        ks = torch.cat([k[t0:t1]] + [dk_[s, rows[b]][None] for s in range(steps)])
        vs = torch.cat([v[t0:t1]] + [dv[s, rows[b]][None] for s in range(steps)])
        n = qs.shape[0]
        cu_b = torch.tensor([0, n], dtype=torch.int32)
        ref_o, ref_pool = ref_lightning(qs, ks, vs, cu_b, slopes, torch.zeros(1, H, d, d, device=DEV),
                                        torch.tensor([0]), 1.0, False)
        for s in range(steps):
            check_o(outs[s][rows[b]], ref_o[n - steps + s], torch.float32)
        slot = int(slots[b])
        err = rel_rmse(state[slot], ref_pool[0])
        assert err <= STATE_TOL, f"sequence {b}: state relative RMSE {err:.3g}"
    for s in range(steps):
        assert torch.count_nonzero(outs[s][2]) == 0, "the padding row (slot -1) must stay zero"


def test_lightning_decode_in_cuda_graph(gen):
    H, d, B = 4, 64, 3
    q, k, v = (randn(gen, B, H, d, dtype=torch.bfloat16, scale=0.5) for _ in range(3))
    slopes = ft.alibi_slopes(H).to(DEV)
    state = randn(gen, B, H, d, d, scale=0.1)
    slots = torch.tensor([1, 2, 0], dtype=torch.int32, device=DEV)
    state_eager = state.clone()
    o_eager = ft.lightning_decode(q, k, v, slopes, state_eager, slots)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside the capture, as torch.cuda.graphs recommends
        ft.lightning_decode(q, k, v, slopes, state.clone(), slots)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_graph = ft.lightning_decode(q, k, v, slopes, state, slots)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_graph, o_eager) and torch.equal(state, state_eager)


def test_lightning_refusals_raise_with_fulgur_reason(gen):
    H, d = 2, 96  # head dim 96 is not compiled (64 and 128 are)
    q = randn(gen, 4, H, d, dtype=torch.bfloat16)
    cu = torch.tensor([0, 4], dtype=torch.int32, device=DEV)
    state = torch.zeros(1, H, d, d, device=DEV)
    slots = torch.tensor([0], dtype=torch.int32, device=DEV)
    with pytest.raises(RuntimeError, match="head dim"):
        ft.lightning_prefill(q, q, q, cu, ft.alibi_slopes(H).to(DEV), state, slots)
    with pytest.raises(RuntimeError, match="float32"):  # the binding's own check: fp32 state only
        ft.lightning_decode(q[:, :, :64], q[:, :, :64], q[:, :, :64], ft.alibi_slopes(H).to(DEV),
                            torch.zeros(1, H, 64, 64, device=DEV, dtype=torch.bfloat16), slots[:1].repeat(4))


# ---- MoE routing -----------------------------------------------------------------------------------
# Spec steps (moe/params.hpp, RoutePolicy): scores, + selection bias, group-limited selection
# (group score = sum of its top two keys), top-k by key with ties to the lower expert, weights from
# the unbiased scores, renormalize (+ eps), x scaling factor.

def ref_route(logits, k, score_func, renormalize, bias, n_group, topk_group, eps, scale, after_topk):
    x = logits.double()
    T, E = x.shape
    if after_topk:
        key = x + (bias.double() if bias is not None else 0.0)
        ids = key.sort(dim=-1, descending=True, stable=True).indices[:, :k]
        sel = x.gather(1, ids)
        w = torch.softmax(sel, -1) if score_func == "softmax" else (torch.sigmoid(sel) if score_func == "sigmoid" else sel)
    else:
        s = torch.softmax(x, -1) if score_func == "softmax" else (torch.sigmoid(x) if score_func == "sigmoid" else x)
        key = s + (bias.double() if bias is not None else 0.0)
        if n_group > 1:
            per = E // n_group
            grp = key.view(T, n_group, per).sort(dim=-1, descending=True).values[..., : min(2, per)].sum(-1)
            keep = grp.sort(dim=-1, descending=True, stable=True).indices[:, :topk_group]
            gm = torch.zeros(T, n_group, dtype=torch.bool, device=x.device).scatter_(1, keep, True)
            key = key.masked_fill(~gm.repeat_interleave(per, dim=1), float("-inf"))
        ids = key.sort(dim=-1, descending=True, stable=True).indices[:, :k]
        w = s.gather(1, ids)
    if renormalize:
        w = w / (w.sum(-1, keepdim=True) + eps)
    return ids.to(torch.int32), w * scale, key


def tie_free_logits(gen, T, E, k, policy, bias):
    """Logits whose every routing decision is separated by more than 1e-4 relative in fp64, so
    fp32 rounding cannot flip one: a random permutation of the experts per token scaled by 1/32
    (exact in bf16), redrawn where a decision is too close (as tests/moe does)."""
    x = torch.stack([torch.randperm(E, generator=gen) for _ in range(T)]).double() / 32.0
    for _ in range(50):
        score_func, renorm, G, TG, eps, scale, after = policy
        _, _, key = ref_route(x.to(DEV), k, score_func, renorm, bias, G, TG, eps, scale, after)
        top = key.sort(dim=-1, descending=True).values[:, : k + 1].cpu()
        finite = torch.isfinite(top)
        gaps = (top[:, :-1] - top[:, 1:]).abs() / top[:, :-1].abs().clamp_min(1e-30)
        bad = ((gaps <= 1e-4) & finite[:, 1:]).any(-1)
        if G > 1:  # the group decisions too
            s = torch.sigmoid(x) if score_func == "sigmoid" else torch.softmax(x, -1)
            kk = s + (bias.double().cpu() if bias is not None else 0.0)
            grp = kk.view(T, G, E // G).sort(dim=-1, descending=True).values[..., :2].sum(-1)
            gs = grp.sort(dim=-1, descending=True).values
            gap = (gs[:, TG - 1] - gs[:, TG]).abs() / gs[:, TG - 1].abs()
            bad |= gap <= 1e-4
        if not bad.any():
            break
        n = int(bad.sum())
        x[bad] = torch.stack([torch.randperm(E, generator=gen) for _ in range(n)]).double() / 32.0
    return x


# name: (E, k, (score_func, renormalize, n_group, topk_group, eps, scale, after_topk), with_bias)
ROUTES = {
    "mixtral": (8, 2, ("softmax", True, 1, 1, 0.0, 1.0, False), False),
    "qwen3_moe": (128, 8, ("softmax", True, 1, 1, 0.0, 1.0, False), False),
    "deepseek_v3_grouped": (256, 8, ("sigmoid", True, 8, 4, 1e-20, 2.5, False), True),
    "gpt_oss": (32, 4, ("softmax", False, 1, 1, 0.0, 1.0, True), False),
}


@pytest.mark.parametrize("model", list(ROUTES))
@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16])
def test_moe_route(gen, model, logits_dtype):
    E, k, policy, with_bias = ROUTES[model]
    score_func, renorm, G, TG, eps, scale, after = policy
    T = 67
    bias = None
    if with_bias:  # distinct small corrections, exact in fp32
        bias = (torch.randperm(E, generator=gen).float() / (8.0 * E)).to(DEV)
    x = tie_free_logits(gen, T, E, k, policy, bias)
    logits = x.to(logits_dtype).to(DEV)
    ids, w, counts = ft.moe_route(logits, k, score_func=score_func, renormalize=renorm, bias=bias, n_group=G,
                                  topk_group=TG, renorm_eps=eps, scaling_factor=scale, score_after_topk=after)
    ref_ids, ref_w, _ = ref_route(logits, k, score_func, renorm, bias, G, TG, eps, scale, after)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids, ref_ids), "expert ids differ from the fp64 reference"
    assert torch.equal(counts.long(), torch.bincount(ref_ids.view(-1).long(), minlength=E))
    # docs/moe.md: relative error <= 2 (2 spread + E/32 + 16) 2^-24 for fp32 weights.
    spread = (logits.double().max(-1).values - logits.double().min(-1).values)[:, None]
    bound = 2 * (2 * spread + E / 32 + 16) * U32 * ref_w.abs() + 1e-30
    assert ((w.double() - ref_w).abs() <= bound).all(), "weights outside the fp32 bound"


def test_moe_route_refusal_reason(gen):
    logits = randn(gen, 4, 8)
    with pytest.raises(RuntimeError, match="top_k must not exceed num_experts"):
        ft.moe_route(logits, 9)


def test_moe_route_in_cuda_graph(gen):
    E, k, policy, _ = ROUTES["qwen3_moe"]
    logits = tie_free_logits(gen, 16, E, k, policy, None).float().to(DEV)
    ids0, w0, _ = ft.moe_route(logits, k, renormalize=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ids, w, _ = ft.moe_route(logits, k, renormalize=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(ids, ids0) and torch.equal(w, w0)


# ---- MoE permute / gather / combine ---------------------------------------------------------------

def ref_permute(ids, E):
    """Stable-sort oracle: rows grouped by expert, increasing expanded index t*k + j inside one."""
    flat = ids.view(-1).long()
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=E)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return offsets, inverse.to(torch.int32), order.to(torch.int32)


@pytest.mark.parametrize("T,k,E", [(0, 2, 8), (1, 1, 4), (37, 2, 32), (3000, 8, 128), (257, 6, 60)])
def test_moe_permute(gen, T, k, E):
    # Skewed ids (a hot expert), as real routers produce; T*k = 24,000 takes the multi-block path.
    ids = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(T)]) if T else torch.zeros(0, k)
    ids[: T // 3, 0] = E // 2  # a third of the tokens also on one hot expert (repeats allowed)
    ids = ids.to(torch.int32).to(DEV)
    off, e2p, p2e = ft.moe_permute(ids, E)
    ref_off, ref_e2p, ref_p2e = ref_permute(ids, E)
    assert torch.equal(off, ref_off)
    assert torch.equal(e2p, ref_e2p)
    assert torch.equal(p2e, ref_p2e)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_moe_gather_and_combine(gen, dtype):
    T, k, E, H = 45, 4, 16, 256
    ids = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(T)]).to(torch.int32).to(DEV)
    hidden = randn(gen, T, H, dtype=dtype)
    w = torch.rand(T, k, generator=gen).to(DEV)
    off, e2p, p2e = ft.moe_permute(ids, E)

    # gather: plain copies are bit-exact; a sentinel (T*k) row is zero.
    row_map = torch.cat([p2e, torch.tensor([T * k], dtype=torch.int32, device=DEV)])
    g = ft.moe_gather(hidden, row_map, k)
    tok = row_map.long() // k
    ref = torch.zeros(row_map.numel(), H, dtype=dtype, device=DEV)
    real = row_map < T * k
    ref[real] = hidden.index_select(0, tok[real])
    assert torch.equal(g, ref)

    # gather with the routing weight (Llama-4 style) into fp32: the fp32 product rounded once.
    gs = ft.moe_gather(hidden, p2e, k, topk_weights=w, out_dtype=torch.float32)
    rows = p2e.long()
    ref_s = (hidden.double().index_select(0, rows // k) * w.view(-1).double()[rows][:, None]).float()
    assert torch.equal(gs, ref_s)

    # token by token (expanded_to_row = e2p, each hidden row read once): the row path's bits,
    # alone (compact view) and beside a row map with a sentinel row (zeroed).
    assert torch.equal(ft.moe_gather(hidden, None, k, expanded_to_row=e2p), g[:-1])
    assert torch.equal(ft.moe_gather(hidden, row_map, k, expanded_to_row=e2p), g)
    gts = ft.moe_gather(hidden, None, k, topk_weights=w, out_dtype=torch.float32, expanded_to_row=e2p)
    assert torch.equal(gts, gs)

    # combine: out[t] = sum_j w[t, j] y[e2p[t k + j]] + residual, fp32 in the fixed order j = 0..k-1.
    y = randn(gen, T * k, H, dtype=dtype)  # expert outputs in permuted order
    res = randn(gen, T, H, dtype=torch.bfloat16)
    out = ft.moe_combine(y, k, expanded_to_row=e2p, topk_weights=w, residual=res, residual_scale=0.5)
    terms = y.double().index_select(0, e2p.long()).view(T, k, H) * w.double()[:, :, None]
    ref_c = torch.zeros(T, H, dtype=torch.float64, device=DEV)
    ref_c.index_add_(0, torch.arange(T, device=DEV).repeat_interleave(k), terms.view(T * k, H))
    ref_c += 0.5 * res.double()
    abs_sum = terms.abs().sum(1) + 0.5 * res.double().abs()
    # docs/moe.md: |got - ref| <= (k + 2) 2^-24 sum |terms| + one rounding to the output dtype.
    eps = torch.finfo(dtype).eps  # the output rounding: at most half an ulp, <= eps |value|
    bound = (k + 2) * U32 * abs_sum * (1 + eps) + eps * ref_c.abs() + torch.finfo(dtype).tiny
    assert out.dtype == dtype
    assert ((out.double() - ref_c).abs() <= bound).all(), "combine outside its fp32 bound"


def test_moe_pipeline_route_to_combine(gen):
    """route -> permute -> gather -> per-expert scaling (a stand-in expert) -> combine, as an engine
    chains them, against the same computation written with torch.sort / index_select."""
    E, k, policy, _ = ROUTES["qwen3_moe"]
    T, H = 33, 128
    logits = tie_free_logits(gen, T, E, k, policy, None).float().to(DEV)
    hidden = randn(gen, T, H)
    ids, w, _ = ft.moe_route(logits, k, renormalize=True)
    off, e2p, p2e = ft.moe_permute(ids, E)
    x = ft.moe_gather(hidden, p2e, k)
    expert_scale = torch.linspace(0.5, 1.5, E, device=DEV)
    row_expert = torch.repeat_interleave(torch.arange(E, device=DEV), off[1:] - off[:-1])
    y = x * expert_scale[row_expert][:, None]
    out = ft.moe_combine(y, k, expanded_to_row=e2p, topk_weights=w)
    ref = (hidden.double()[:, None, :] * expert_scale.double()[ids.long()][:, :, None] *
           w.double()[:, :, None]).sum(1)
    # The k terms of an element share the sign of hidden[t] (positive scales and weights): no
    # cancellation, so each element is within (k + 3) fp32 roundings; doubled.
    err = rel_rmse(out, ref)
    assert err <= 2 * (k + 3) * U32, f"pipeline relative RMSE {err:.3g}"


# ---- visual token dropping -------------------------------------------------------------------------
# Spec (token_drop.md): score_j = mean over heads of softmax over the query's whole causal row of
# q_h . k_{g(h), j} / sqrt(d), for the image tokens j; keep the top keep_s of each span (ties to the
# lower index), ascending; compact the rows; position ids renumbered or kept.

class DropBatch:
    """Host description of a packed batch with image spans, and its device tensors."""

    def __init__(self, seqlens, spans):  # spans[b] = [(start, length), ...]
        self.seqlens, self.spans = seqlens, spans
        self.B = len(seqlens)
        self.L = sum(seqlens)
        self.cu = [0]
        for n in seqlens:
            self.cu.append(self.cu[-1] + n)
        self.flat = [s for per in spans for s in per]
        self.N = sum(n for _, n in self.flat)
        cu_spans = [0]
        for per in spans:
            cu_spans.append(cu_spans[-1] + len(per))
        i64 = dict(dtype=torch.int64, device=DEV)
        self.t_cu = torch.tensor(self.cu, **i64)
        self.t_cu_spans = torch.tensor(cu_spans, **i64)
        self.t_start = torch.tensor([s for s, _ in self.flat], **i64)
        self.t_length = torch.tensor([n for _, n in self.flat], **i64)

    def meta(self):
        return self.t_cu, self.t_cu_spans, self.t_start, self.t_length


def ref_scores(q, k, batch, scale):
    """fp64: per sequence, the last token's query row over its causal keys, softmax per head,
    mean over heads, restricted to the image tokens (span order)."""
    Hq, Hkv = q.shape[1], k.shape[1]
    out = []
    for b in range(batch.B):
        if not batch.spans[b]:
            continue
        t0, n = batch.cu[b], batch.seqlens[b]
        qb = q[b].double()  # [Hq, d], query of sequence b
        kb = k[t0 : t0 + n].double()[:, torch.arange(Hq, device=DEV) // (Hq // Hkv)]  # [n, Hq, d]
        logits = torch.einsum("hd,nhd->hn", qb, kb) * scale
        p = torch.softmax(logits, dim=-1).mean(0)
        for s, length in batch.spans[b]:
            out.append(p[s : s + length])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=DEV)


def score_bound(q, k, batch, scale, Hq):
    """docs/token_drop.md: per-logit error E = scale gamma_d max sum_i |q_i k_i| + 2u max|logit|,
    probability error 2E + (n + 16) u relative, plus H + 1 roundings of the means; doubled."""
    d = q.shape[2]
    kx = k.double()[:, torch.arange(Hq, device=DEV) // (Hq // k.shape[1])]
    bounds = []
    for b in range(batch.B):
        if not batch.spans[b]:
            continue
        t0, n = batch.cu[b], batch.seqlens[b]
        prod = (q[b].double()[None] * kx[t0 : t0 + n]).abs().sum(-1)  # [n, Hq]
        logit = torch.einsum("hd,nhd->nh", q[b].double(), kx[t0 : t0 + n]).abs() * scale
        E = scale * d * U32 * prod.max().item() + 2 * U32 * logit.max().item()
        rel = 2 * (2 * E + (n + 16 + Hq + 1) * U32)
        for _, length in batch.spans[b]:
            bounds.append(torch.full((length,), rel, dtype=torch.float64, device=DEV))
    return torch.cat(bounds) if bounds else torch.zeros(0, dtype=torch.float64, device=DEV)


def ref_select(scores, batch, rule, ratio):
    kept, off = [], 0
    for s, n in batch.flat:
        keep = ft.keep_count(n, rule, ratio)
        sc = scores[off : off + n].double()
        order = torch.sort(-sc, stable=True).indices[:keep]  # ties: lower index first
        kept.append(torch.sort(order).values + s)
        off += n
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64, device=DEV)


def ref_compact(hidden, pos, batch, kept, position_mode):
    """Prefix text, kept image tokens, text between spans, ..., per sequence."""
    kept = kept.tolist()
    rows, new_cu, new_start, new_len, positions, ki = [], [0], [], [], [], 0
    for b in range(batch.B):
        t0, n = batch.cu[b], batch.seqlens[b]
        keep_pos = set(range(n))
        for s, length in batch.spans[b]:
            k_s = ft.keep_count(length, ft.KEEP_FLOOR_RATIO, batch.ratio)
            ks = kept[ki : ki + k_s]
            ki += k_s
            keep_pos -= set(range(s, s + length)) - set(ks)
        ordered = sorted(keep_pos)
        for s, length in batch.spans[b]:
            new_start.append(sum(1 for p in ordered if p < s))  # the start minus the tokens dropped before it
            new_len.append(sum(1 for p in ordered if s <= p < s + length))
        rows += [t0 + p for p in ordered]
        positions += list(range(len(ordered)))
        new_cu.append(new_cu[-1] + len(ordered))
    row_map = torch.tensor(rows, dtype=torch.int64, device=DEV)
    pos_out = (torch.tensor(positions, dtype=torch.int64, device=DEV)[None].expand(pos.shape[0], -1)
               if position_mode == ft.POSITIONS_RENUMBER else pos[:, row_map])
    return hidden[row_map], new_cu, row_map, new_start, new_len, pos_out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("position_mode", [0, 1])
def test_token_drop_pipeline(gen, dtype, position_mode):
    # Sequence 0: an image inside text; 1: text only (passes through); 2: two images, the first at
    # position 0 (multi-image); 3: an image ending right before the query token.
    batch = DropBatch([40, 10, 50, 30], [[(5, 24)], [], [(0, 16), (20, 20)], [(1, 28)]])
    batch.ratio = 0.5
    Hq, Hkv, d, D = 8, 2, 64, 96  # GQA: 4 query heads per kv head
    q = randn(gen, batch.B, Hq, d, dtype=dtype)  # one query row per sequence (its last token)
    k = randn(gen, batch.L, Hkv, d, dtype=dtype)
    scale = 1.0 / math.sqrt(d)
    scores = ft.token_drop_score(q, k, *batch.meta(), batch.N)
    ref = ref_scores(q, k, batch, scale)
    bound = score_bound(q, k, batch, scale, Hq)
    assert scores.shape == (batch.N,)
    assert ((scores.double() - ref).abs() <= bound * ref + 1e-30).all(), "scores outside the derived bound"

    num_kept = sum(ft.keep_count(n, ft.KEEP_FLOOR_RATIO, batch.ratio) for _, n in batch.flat)
    kept, cu_kept = ft.token_drop_select(scores, *batch.meta(), batch.L, num_kept, batch.ratio)
    assert torch.equal(kept, ref_select(scores, batch, ft.KEEP_FLOOR_RATIO, batch.ratio))
    counts = [ft.keep_count(n, ft.KEEP_FLOOR_RATIO, batch.ratio) for _, n in batch.flat]
    assert cu_kept.tolist() == [0] + list(torch.tensor(counts).cumsum(0).tolist())

    hidden = randn(gen, batch.L, D, dtype=dtype)
    pos = torch.stack([torch.arange(batch.L, device=DEV) + 1000 * r for r in range(3)])  # M-RoPE [3, L]
    out = ft.token_drop_compact(hidden, *batch.meta(), batch.N, kept, cu_kept, position_mode=position_mode,
                                position_ids=pos)
    h, new_cu, row_map, new_start, new_len, pos_out = out
    r_h, r_cu, r_map, r_start, r_len, r_pos = ref_compact(hidden, pos, batch, kept, position_mode)
    assert torch.equal(row_map, r_map)
    assert torch.equal(h, r_h)
    assert new_cu.tolist() == r_cu
    assert new_start.tolist() == r_start and new_len.tolist() == r_len
    assert torch.equal(pos_out, r_pos)


def test_token_drop_select_ties_and_fastv(gen):
    """Tied scores go to the lower index; FastV's round(N (1 - R)) keep count."""
    batch = DropBatch([300, 20], [[(10, 257)], [(2, 3)]])
    scores = (torch.randint(0, 4, (batch.N,), generator=gen).float() / 4).to(DEV)  # many ties
    for rule, ratio in [(ft.KEEP_FASTV_ROUND, 0.75), (ft.KEEP_FLOOR_RATIO, 1.0), (ft.KEEP_FLOOR_RATIO, 0.0)]:
        num_kept = sum(ft.keep_count(n, rule, ratio) for _, n in batch.flat)
        kept, _ = ft.token_drop_select(scores, *batch.meta(), batch.L, num_kept, ratio, rule=rule)
        assert torch.equal(kept, ref_select(scores, batch, rule, ratio)), (rule, ratio)
