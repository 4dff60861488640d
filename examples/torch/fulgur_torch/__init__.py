# SPDX-License-Identifier: Apache-2.0
"""fulgur's kernels as PyTorch ops: torch.ops.fulgur.<name>, re-exported here.

    import fulgur_torch as ft
    o = ft.lightning_prefill(q, k, v, cu_seqlens, slopes, state, slot_ids)

The library (_C*.so, built by setup.py) registers the ops with TORCH_LIBRARY; it is loaded with
torch.ops.load_library, so importing this package needs no Python extension module. Ops run on
the current CUDA stream, allocate through PyTorch's caching allocator, never synchronize, and
raise RuntimeError with fulgur's reason when fulgur refuses the arguments. Shapes and arguments:
README.md next to this package.
"""
import glob
import math
import os

import torch

_here = os.path.dirname(os.path.abspath(__file__))


def _library_path():
    env = os.environ.get("FULGUR_TORCH_LIBRARY")
    if env:
        return env
    found = sorted(glob.glob(os.path.join(_here, "_C*.so")))
    if not found:
        raise ImportError(
            f"fulgur_torch: no compiled library in {_here}; build it with "
            "`python setup.py build_ext --inplace` in examples/torch (or set FULGUR_TORCH_LIBRARY)"
        )
    return found[0]


library_path = _library_path()
torch.ops.load_library(library_path)

_ops = torch.ops.fulgur
lightning_prefill = _ops.lightning_prefill
lightning_decode = _ops.lightning_decode
moe_route = _ops.moe_route
moe_permute = _ops.moe_permute
moe_gather = _ops.moe_gather
moe_combine = _ops.moe_combine
token_drop_score = _ops.token_drop_score
token_drop_select = _ops.token_drop_select
token_drop_compact = _ops.token_drop_compact

# token_drop_select's `rule` and token_drop_compact's `position_mode` (fulgur's enum values).
KEEP_FLOOR_RATIO = 0  # PyramidDrop: keep floor(N * ratio), ratio = kept fraction
KEEP_FASTV_ROUND = 1  # FastV: keep round(N * (1 - ratio)), ratio = dropped fraction
POSITIONS_RENUMBER = 0
POSITIONS_KEEP_ORIGINAL = 1


def keep_count(n, rule, ratio):
    """Kept tokens of a span of n original image tokens (fulgur::token_drop::keep_count)."""
    if rule == KEEP_FLOOR_RATIO:
        return int(math.floor(float(n) * ratio))
    return int(round(float(n) * (1.0 - ratio)))  # Python's round: half to even, as upstream


def alibi_slopes(num_heads):
    """Base ALiBi slopes 2^(-8 (h + 1) / H), fp32 on the CPU: MiniMax-01's decay before its per-layer
    factor (fulgur/lightning/slopes.hpp computes the full MiniMax / ALiBi conventions)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], dtype=torch.float32)
