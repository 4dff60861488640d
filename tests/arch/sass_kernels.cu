// SPDX-License-Identifier: Apache-2.0
// The arch test kernels as one nvcc translation unit for the SASS/resource check
// (check_sass.cmake): the templates are instantiated here for every type the tests use.
#include "arch_test_kernels.cuh"

template __global__ void arch_test::gemm16_kernel<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, float*,
                                                                 int, int, int);
template __global__ void arch_test::gemm16_kernel<__half>(const __half*, const __half*, float*, int, int, int);
template __global__ void arch_test::mma_once_kernel<arch_test::kMmaBF16>(const uint32_t*, const uint32_t*,
                                                                         const float*, float*);
template __global__ void arch_test::mma_once_kernel<arch_test::kMmaF16>(const uint32_t*, const uint32_t*,
                                                                        const float*, float*);
template __global__ void arch_test::mma_once_kernel<arch_test::kMmaTF32>(const uint32_t*, const uint32_t*,
                                                                         const float*, float*);
