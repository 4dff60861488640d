#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# cuobjdump and nvdisasm (for the SASS checks) are not in every CUDA toolkit install. When the
# toolkit lacks them, fetch NVIDIA's wheels from PyPI into .deps/cuda-tools (ignored by git).
# Prints the folder holding the binaries; prints nothing if they cannot be had.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if command -v cuobjdump >/dev/null 2>&1 && command -v nvdisasm >/dev/null 2>&1; then
  dirname "$(command -v cuobjdump)"
  exit 0
fi
tools="$root/.deps/cuda-tools"
if [ -x "$tools/nvidia/cu13/bin/cuobjdump" ] && [ -x "$tools/nvidia/cu13/bin/nvdisasm" ]; then
  echo "$tools/nvidia/cu13/bin"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# 13.2 is the oldest 13.x on PyPI; it reads what nvcc 13.0 writes.
if python3 -m pip download -q --no-deps -d "$tmp" "nvidia-cuda-cuobjdump==13.2.*" "nvidia-cuda-nvdisasm==13.2.*" >&2; then
  mkdir -p "$tools"
  for w in "$tmp"/*.whl; do python3 -m zipfile -e "$w" "$tools"; done
  chmod +x "$tools"/nvidia/cu13/bin/* 2>/dev/null || true
  echo "$tools/nvidia/cu13/bin"
fi
