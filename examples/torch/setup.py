# SPDX-License-Identifier: Apache-2.0
"""Builds fulgur's PyTorch extension: the package fulgur_torch with its library fulgur_torch/_C*.so.

    cd examples/torch
    python setup.py build_ext --inplace            # or: pip install --no-build-isolation .

Environment:
    FULGUR_INCLUDE_DIR   fulgur's include/ (default: ../../include, this repository's)
    FULGUR_TORCH_ARCH    CUDA architectures, e.g. "90a" or "80;90a" (default: torch's own choice,
                         TORCH_CUDA_ARCH_LIST or the visible GPUs). fulgur needs sm_80 or newer.
    MAX_JOBS             parallel compile jobs (torch's BuildExtension, with ninja)

The CUDA sources (fulgur_ops_*.cu) include no torch header, the binding (fulgur_torch.cpp) no
kernel: see fulgur_ops.h.
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

here = os.path.dirname(os.path.abspath(__file__))
include = os.path.abspath(os.environ.get("FULGUR_INCLUDE_DIR") or os.path.join(here, "..", "..", "include"))
if not os.path.isfile(os.path.join(include, "fulgur", "lightning.cuh")):
    raise SystemExit(f"fulgur headers not found in {include}: set FULGUR_INCLUDE_DIR to fulgur's include/")

nvcc_flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]
arch = os.environ.get("FULGUR_TORCH_ARCH", "").replace(",", ";")
for a in filter(None, (x.strip() for x in arch.split(";"))):
    # An explicit -gencode makes torch add no architecture flags of its own.
    nvcc_flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")

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
            extra_compile_args={"cxx": ["-O2", "-std=c++17"], "nvcc": nvcc_flags},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
