#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Downloads the peer packages of the GPU check's benchmarks into the ignored folder .whl/, on a
# machine with PyPI, for the GPU machine's Python (3.12, manylinux x86_64), without dependencies
# (its image already has torch, triton and einops). bench/gpu_check.sh installs whatever it finds
# there into a temporary folder on PYTHONPATH; the GPU tool's call must carry ".whl".
#   fla-core        fla's kernels (fla.ops.simple_gla: chunk_simple_gla, fused_recurrent_simple_gla);
#                   pure Python + Triton
#   lightning-attn  OpenNLPLab's lightning_attn (Triton), the Lightning Attention-2 kernel
# Versions are pinned so every GPU check measures the same peers; change them here, deliberately.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.whl"
mkdir -p "$dest"
for spec in fla-core==0.6.0 lightning-attn==0.0.5; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dest" "$spec"
done
ls -l "$dest"
echo "peer wheels in $dest ($(du -sh "$dest" | cut -f1)); carry .whl in the GPU call"
