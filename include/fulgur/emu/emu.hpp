// SPDX-License-Identifier: Apache-2.0
// CUDA device built-ins for host compilers: the names kernel code uses (threadIdx, __syncthreads,
// __shfl_xor_sync, atomicAdd, __shared__, ...) mapped onto fulgur's emulation. Included by
// fulgur/detail/cuda.cuh when FULGUR_EMULATE is defined; never under nvcc.
//
// These are the only non-FULGUR_ names fulgur defines as macros: they must carry CUDA's own names
// so that one kernel source compiles under both compilers. Rules kernel code follows are in
// docs/emulation.md (write `__shared__` without `static`; dynamic shared memory only through
// FULGUR_DYNAMIC_SMEM; no raw <<<>>>; inline PTX only in include/fulgur/arch/).
#pragma once

#if defined(__CUDACC__)
#error "fulgur/emu/emu.hpp is for host compilers only"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_functions.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fulgur/emu/scheduler.hpp"

FULGUR_NAMESPACE_BEGIN
namespace emu {

/// The calling thread's lane (linear thread index % 32).
inline unsigned lane_id() { return detail::current().lane; }
/// The calling thread's warp within its block.
inline unsigned warp_id() { return detail::current().warp; }

/// Collective over all 32 lanes of the calling warp (each lane must call it, with the same
/// `bytes` <= 256). Returns 32 records of `bytes` each, lane-major; valid until the calling
/// lane's next warp collective. The arch layer's emulated mma/ldmatrix are built on it.
inline const void* warp_allgather(const void* mine, size_t bytes, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  detail::WarpRequest r;
  r.kind = detail::WarpOpKind::kGather;
  r.mask = 0xffffffffu;
  r.gather_src = mine;
  r.gather_bytes = bytes;
  return detail::warp_collective(r, file, line).gather_result;
}

/// Dynamic shared memory of the running block: exactly the launch's byte count, filled with
/// 0xFF bytes before the block starts.
inline unsigned char* dynamic_smem() { return detail::current().block->dynamic_smem; }
inline size_t dynamic_smem_bytes() { return detail::current().block->dynamic_smem_bytes; }

// cp.async: copies are queued per thread and performed when a wait retires their group (or at
// thread exit), so a kernel that reads shared memory before waiting sees the old contents, as
// it could on hardware.
inline void cp_async_enqueue(void* dst, const void* src, size_t bytes) {
  detail::current().cp_pending.push_back({dst, src, bytes});
}
inline void cp_async_commit() {
  detail::ThreadContext& t = detail::current();
  t.cp_group_ends.push_back(t.cp_pending.size());
}
/// Waits until at most `n` of the most recent committed groups are pending.
inline void cp_async_wait(int n) {
  detail::ThreadContext& t = detail::current();
  const size_t groups = t.cp_group_ends.size();
  const size_t retire = groups > static_cast<size_t>(n) ? groups - static_cast<size_t>(n) : 0;
  if (retire == 0) return;
  const size_t upto = t.cp_group_ends[retire - 1];
  for (size_t i = 0; i < upto; ++i) std::memcpy(t.cp_pending[i].dst, t.cp_pending[i].src, t.cp_pending[i].bytes);
  t.cp_pending.erase(t.cp_pending.begin(), t.cp_pending.begin() + static_cast<std::ptrdiff_t>(upto));
  t.cp_group_ends.erase(t.cp_group_ends.begin(), t.cp_group_ends.begin() + static_cast<std::ptrdiff_t>(retire));
  for (size_t& e : t.cp_group_ends) e -= upto;
}

namespace detail {

template <typename T>
inline uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle payloads are at most 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(static_cast<void*>(&v), &u, sizeof(T));
  return v;
}

template <typename T>
inline T shuffle(WarpOpKind kind, unsigned mask, T var, int param, int width, const char* file, int line) {
  WarpRequest r;
  r.kind = kind;
  r.mask = mask;
  r.value = to_bits(var);
  r.param = param;
  r.width = (width > 0 && width <= 32 && (width & (width - 1)) == 0) ? width : 32;
  return from_bits<T>(warp_collective(r, file, line).result);
}

inline unsigned vote(WarpOpKind kind, unsigned mask, uint64_t value, const char* file, int line) {
  WarpRequest r;
  r.kind = kind;
  r.mask = mask;
  r.value = value;
  return static_cast<unsigned>(warp_collective(r, file, line).result);
}

// Atomics: compare-and-swap loops on the object's bytes with GCC's __atomic builtins, so the
// thread backend (and ThreadSanitizer) see real atomic operations.
template <typename T, typename F>
inline T atomic_update(T* address, F op) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "atomic size");
  using U = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  U* p = reinterpret_cast<U*>(address);
  U expected = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T old = from_bits<T>(expected);
    T next = op(old);
    U desired = 0;
    std::memcpy(&desired, &next, sizeof(T));
    if (__atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old;
  }
}

}  // namespace detail
}  // namespace emu
FULGUR_NAMESPACE_END

// -------------------------------------------------------------------------------------------
// Qualifiers and built-in variables.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __launch_bounds__
#undef __forceinline__
#undef __noinline__
#undef __restrict__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
// Block scope: blocks of one launch run one after another on one OS thread, so a function-local
// static is exactly one block's shared memory. Write `__shared__ T x[N];` (never `static`).
#define __shared__ static
#define __constant__
#define __managed__
#define __launch_bounds__(...)
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __grid_constant__

#define threadIdx (::fulgur::emu::detail::current().thread_idx)
#define blockIdx (::fulgur::emu::detail::current().block->block_idx)
#define blockDim (::fulgur::emu::detail::current().block->block_dim)
#define gridDim (::fulgur::emu::detail::current().block->grid_dim)
#define warpSize 32

// -------------------------------------------------------------------------------------------
// Barriers and warp collectives. Function-like macros record the call site for the deadlock
// report.
#define __syncthreads() \
  ((void)::fulgur::emu::detail::block_barrier(::fulgur::emu::detail::BarrierKind::kPlain, 1, __FILE__, __LINE__))
#define __syncthreads_count(pred) \
  ::fulgur::emu::detail::block_barrier(::fulgur::emu::detail::BarrierKind::kCount, (pred), __FILE__, __LINE__)
#define __syncthreads_and(pred) \
  ::fulgur::emu::detail::block_barrier(::fulgur::emu::detail::BarrierKind::kAnd, (pred), __FILE__, __LINE__)
#define __syncthreads_or(pred) \
  ::fulgur::emu::detail::block_barrier(::fulgur::emu::detail::BarrierKind::kOr, (pred), __FILE__, __LINE__)

inline void fulgur_emu_syncwarp(const char* file, int line, unsigned mask = 0xffffffffu) {
  ::fulgur::emu::detail::vote(::fulgur::emu::detail::WarpOpKind::kSync, mask, 0, file, line);
}
#define __syncwarp(...) fulgur_emu_syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)

template <typename T>
inline T fulgur_emu_shfl(unsigned mask, T var, int src, int width, const char* file, int line) {
  return ::fulgur::emu::detail::shuffle(::fulgur::emu::detail::WarpOpKind::kShflIdx, mask, var, src, width, file, line);
}
template <typename T>
inline T fulgur_emu_shfl_up(unsigned mask, T var, unsigned delta, int width, const char* file, int line) {
  return ::fulgur::emu::detail::shuffle(::fulgur::emu::detail::WarpOpKind::kShflUp, mask, var,
                                        static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T fulgur_emu_shfl_down(unsigned mask, T var, unsigned delta, int width, const char* file, int line) {
  return ::fulgur::emu::detail::shuffle(::fulgur::emu::detail::WarpOpKind::kShflDown, mask, var,
                                        static_cast<int>(delta), width, file, line);
}
template <typename T>
inline T fulgur_emu_shfl_xor(unsigned mask, T var, int lane_mask, int width, const char* file, int line) {
  return ::fulgur::emu::detail::shuffle(::fulgur::emu::detail::WarpOpKind::kShflXor, mask, var, lane_mask, width, file,
                                        line);
}
// The optional width argument (default warpSize) is supplied through a trailing 32.
#define FULGUR_EMU_SHFL_PICK(a, b, c, d, NAME, ...) NAME
#define __shfl_sync(...) FULGUR_EMU_SHFL_DISPATCH(fulgur_emu_shfl, __VA_ARGS__)
#define __shfl_up_sync(...) FULGUR_EMU_SHFL_DISPATCH(fulgur_emu_shfl_up, __VA_ARGS__)
#define __shfl_down_sync(...) FULGUR_EMU_SHFL_DISPATCH(fulgur_emu_shfl_down, __VA_ARGS__)
#define __shfl_xor_sync(...) FULGUR_EMU_SHFL_DISPATCH(fulgur_emu_shfl_xor, __VA_ARGS__)
#define FULGUR_EMU_SHFL_DISPATCH(fn, ...) \
  FULGUR_EMU_SHFL_PICK(__VA_ARGS__, FULGUR_EMU_SHFL4, FULGUR_EMU_SHFL3, unused, unused)(fn, __VA_ARGS__)
#define FULGUR_EMU_SHFL4(fn, m, v, s, w) fn((m), (v), (s), (w), __FILE__, __LINE__)
#define FULGUR_EMU_SHFL3(fn, m, v, s) fn((m), (v), (s), 32, __FILE__, __LINE__)

#define __ballot_sync(mask, pred) \
  ::fulgur::emu::detail::vote(::fulgur::emu::detail::WarpOpKind::kBallot, (mask), (pred) != 0, __FILE__, __LINE__)
#define __any_sync(mask, pred)                                                                                    \
  static_cast<int>(::fulgur::emu::detail::vote(::fulgur::emu::detail::WarpOpKind::kAny, (mask), (pred) != 0, \
                                               __FILE__, __LINE__))
#define __all_sync(mask, pred)                                                                                    \
  static_cast<int>(::fulgur::emu::detail::vote(::fulgur::emu::detail::WarpOpKind::kAll, (mask), (pred) != 0, \
                                               __FILE__, __LINE__))
#define __match_any_sync(mask, value)                                                                       \
  ::fulgur::emu::detail::vote(::fulgur::emu::detail::WarpOpKind::kMatchAny, (mask),                         \
                              ::fulgur::emu::detail::to_bits(value), __FILE__, __LINE__)

/// Without convergence tracking the emulation reports every lane of the warp that has not exited.
inline unsigned __activemask() {
  auto& t = ::fulgur::emu::detail::current();
  auto& b = *t.block;
  unsigned m = 0;
  for (unsigned l = 0; l < 32; ++l) {
    unsigned i = t.warp * 32 + l;
    if (i < b.num_threads && b.threads[i]->state != ::fulgur::emu::detail::ThreadState::kDone) m |= 1u << l;
  }
  return m;
}
inline unsigned __lanemask_lt() { return (1u << ::fulgur::emu::lane_id()) - 1u; }

// -------------------------------------------------------------------------------------------
// Memory fences, loads.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcs(const T* p) {
  return *p;
}
template <typename T>
inline void __stcs(T* p, T v) {
  *p = v;
}

// -------------------------------------------------------------------------------------------
// Atomics.
#define FULGUR_EMU_ATOMIC_BINARY(NAME, EXPR)                                       \
  template <typename T>                                                            \
  inline T NAME(T* address, T val) {                                               \
    return ::fulgur::emu::detail::atomic_update(address, [&](T old) { (void)old; return EXPR; }); \
  }
FULGUR_EMU_ATOMIC_BINARY(atomicAdd, static_cast<T>(old + val))
FULGUR_EMU_ATOMIC_BINARY(atomicSub, static_cast<T>(old - val))
FULGUR_EMU_ATOMIC_BINARY(atomicExch, val)
FULGUR_EMU_ATOMIC_BINARY(atomicMin, (val < old ? val : old))
FULGUR_EMU_ATOMIC_BINARY(atomicMax, (old < val ? val : old))
FULGUR_EMU_ATOMIC_BINARY(atomicAnd, static_cast<T>(old & val))
FULGUR_EMU_ATOMIC_BINARY(atomicOr, static_cast<T>(old | val))
FULGUR_EMU_ATOMIC_BINARY(atomicXor, static_cast<T>(old ^ val))
#undef FULGUR_EMU_ATOMIC_BINARY
// 16-bit floating types: arithmetic in float, one rounding, as the hardware's atomicAdd.
inline __half atomicAdd(__half* address, __half val) {
  return ::fulgur::emu::detail::atomic_update(
      address, [&](__half old) { return __float2half_rn(__half2float(old) + __half2float(val)); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* address, __nv_bfloat16 val) {
  return ::fulgur::emu::detail::atomic_update(address, [&](__nv_bfloat16 old) {
    return __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(val));
  });
}
template <typename T>
inline T atomicCAS(T* address, T compare, T val) {
  return ::fulgur::emu::detail::atomic_update(address, [&](T old) { return old == compare ? val : old; });
}
inline unsigned atomicInc(unsigned* address, unsigned val) {
  return ::fulgur::emu::detail::atomic_update(address, [&](unsigned old) { return old >= val ? 0u : old + 1u; });
}
inline unsigned atomicDec(unsigned* address, unsigned val) {
  return ::fulgur::emu::detail::atomic_update(
      address, [&](unsigned old) { return (old == 0u || old > val) ? val : old - 1u; });
}

// -------------------------------------------------------------------------------------------
// Math and bit intrinsics missing on the host. Host math is more precise than the hardware's
// approximate intrinsics (__expf, __fdividef): tests compare with tolerances, never bits.
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : (x == x ? x : 0.f)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
// glibc declares these names (its internal aliases) without exporting them: define them here.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline int __float_as_int(float x) { return ::fulgur::emu::detail::from_bits<int>(::fulgur::emu::detail::to_bits(x)); }
inline unsigned __float_as_uint(float x) {
  return ::fulgur::emu::detail::from_bits<unsigned>(::fulgur::emu::detail::to_bits(x));
}
inline float __int_as_float(int x) { return ::fulgur::emu::detail::from_bits<float>(::fulgur::emu::detail::to_bits(x)); }
inline float __uint_as_float(unsigned x) {
  return ::fulgur::emu::detail::from_bits<float>(::fulgur::emu::detail::to_bits(x));
}
inline long long __double_as_longlong(double x) {
  return ::fulgur::emu::detail::from_bits<long long>(::fulgur::emu::detail::to_bits(x));
}
inline double __longlong_as_double(long long x) {
  return ::fulgur::emu::detail::from_bits<double>(::fulgur::emu::detail::to_bits(x));
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}
inline int __mul24(int a, int b) { return (a << 8 >> 8) * (b << 8 >> 8); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
// CUDA's device code has unqualified min/max overloads for integers and floats.
using std::max;
using std::min;
inline long long clock64() {
  return static_cast<long long>(std::chrono::steady_clock::now().time_since_epoch().count());
}
