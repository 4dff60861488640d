# SPDX-License-Identifier: Apache-2.0
"""Builds fulgur's PyTorch extension: the package fulgur_torch with its library fulgur_torch/_C*.so.

    cd examples/torch
    python setup.py build_ext --inplace            # or: pip install --no-build-isolation .

Environment:
    FULGUR_INCLUDE_DIR   fulgur's include/ (default: ../../include, this repository's)
    FULGUR_TORCH_ARCH    CUDA architectures, e.g. "90a" or "80;90a" (default: TORCH_CUDA_ARCH_LIST
                         when set, else the visible GPUs', else 80;90a). fulgur needs sm_80 or newer.
    MAX_JOBS             parallel compile jobs (torch's BuildExtension, with ninja)

The CUDA sources (fulgur_ops_*.cu) include no torch header, the binding (fulgur_torch.cpp) no
kernel: see fulgur_ops.h.
"""
import os
import re
import subprocess
import warnings

import torch
import torch.utils.cpp_extension as cpp_extension
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

here = os.path.dirname(os.path.abspath(__file__))
include = os.path.abspath(os.environ.get("FULGUR_INCLUDE_DIR") or os.path.join(here, "..", "..", "include"))
if not os.path.isfile(os.path.join(include, "fulgur", "lightning.cuh")):
    raise SystemExit(f"fulgur headers not found in {include}: set FULGUR_INCLUDE_DIR to fulgur's include/")

def default_arch():
    """The visible GPUs' architectures (sm_90 as 90a, like fulgur's own builds), else fulgur's
    default 80;90a. Torch's own default would also target pre-sm_80 GPUs, which fulgur does not
    support. TORCH_CUDA_ARCH_LIST, when set, is left to torch."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return ""
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(sorted("90a" if c == (9, 0) else f"{c[0]}{c[1]}" for c in caps))
    return "80;90a"


nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]
arch = (os.environ.get("FULGUR_TORCH_ARCH") or default_arch()).replace(",", ";")
for a in filter(None, (x.strip() for x in arch.split(";"))):
    # An explicit -gencode makes torch add no architecture flags of its own.
    nvcc_flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")



def nvcc_major():
    try:
        out = subprocess.check_output([os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc"), "--version"], text=True)
        return int(re.search(r"release (\d+)\.", out).group(1))
    except Exception:
        return None


# torch refuses to build CUDA extensions with a toolkit of another major version than its own
# (e.g. nvcc 13 and a cu12x wheel). fulgur's CUDA units include no torch header, and a process can
# hold two CUDA runtimes when the driver supports both, so FULGUR_TORCH_ALLOW_CUDA_MISMATCH=1 skips
# that check (bench/gpu_check.sh sets it; the extension's tests then say whether it works).
torch_cuda = torch.version.cuda
if torch_cuda and nvcc_major() not in (None, int(torch_cuda.split(".")[0])):
    msg = f"nvcc {nvcc_major()}.x and torch built with CUDA {torch_cuda}"
    if os.environ.get("FULGUR_TORCH_ALLOW_CUDA_MISMATCH") == "1":
        warnings.warn(f"fulgur_torch: {msg}: building anyway (FULGUR_TORCH_ALLOW_CUDA_MISMATCH=1)")
        print(f"fulgur_torch: CUDA major mismatch allowed ({msg})")
        cpp_extension._check_cuda_version = lambda *args, **kwargs: None
    else:
        print(f"fulgur_torch: {msg}; torch will refuse the build (FULGUR_TORCH_ALLOW_CUDA_MISMATCH=1 lets it try)")

setup(
    name="fulgur_torch",
    version="0.1.0",
    description="PyTorch ops for fulgur's lightning attention, MoE routing/dispatch and visual token dropping",
    packages=["fulgur_torch"],
    ext_modules=[
        CUDAExtension(
            "fulgur_torch._C",
            sources=[
                "fulgur_torch.cpp",
                "fulgur_ops_lightning.cu",
                "fulgur_ops_moe.cu",
                "fulgur_ops_token_drop.cu",
            ],
            include_dirs=[include, here],
            # No -std for the binding: torch adds the standard its headers need (C++20 since
            # PyTorch 2.10, whose ATen.h stops a C++17 build with #error). The CUDA units include
            # no torch header and stay C++17 (nvcc_flags), like the rest of fulgur.
            extra_compile_args={"cxx": ["-O2"], "nvcc": nvcc_flags},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
