// SPDX-License-Identifier: Apache-2.0
// The heart of fulgur's CPU emulation of the CUDA execution model (docs/emulation.md).
//
// A grid runs block after block on the calling OS thread. Inside a block every CUDA thread is
// a context with its own stack; contexts run until they reach a synchronization point
// (__syncthreads, a warp collective, exit) and then hand control back. Two backends:
//  - fibers (default): all CUDA threads of a block on one OS thread, switched by a small
//    hand-written x86-64 context switch (tens of ns per switch);
//  - threads (FULGUR_EMU_THREADS=1): one std::thread per CUDA thread, synchronized with a mutex
//    and condition variables, so ThreadSanitizer sees real threads and reports data races in
//    shared and global memory that a result check cannot see.
// Both run the same arrival/release logic below; only "wait until released" differs.
#pragma once

#include <cuda_runtime_api.h>
#include <vector_functions.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "fulgur/detail/config.hpp"

#if !defined(FULGUR_EMU_THREADS)
#define FULGUR_EMU_THREADS 0
#endif

#if !FULGUR_EMU_THREADS
#if defined(__x86_64__)
#include <sys/mman.h>
#else
#include <ucontext.h>
#endif
#endif

#if defined(__SANITIZE_ADDRESS__)
#define FULGUR_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FULGUR_EMU_ASAN 1
#endif
#endif
#if defined(FULGUR_EMU_ASAN) && !FULGUR_EMU_THREADS
#include <sanitizer/asan_interface.h>
#endif

FULGUR_NAMESPACE_BEGIN
namespace emu {

/// The order in which runnable CUDA threads are resumed after each synchronization point.
/// A kernel whose result depends on it has a race; CI runs the tests in two orders.
enum class ResumeOrder { kForward, kReverse, kShuffled };

struct Options {
  ResumeOrder order = ResumeOrder::kForward;
  uint64_t shuffle_seed = 1;
  /// Stack per CUDA thread (fiber backend). Kernels keep their register arrays on it.
  size_t stack_bytes = 256 * 1024;
};

namespace detail {

/// FULGUR_EMU_ORDER = forward | reverse | shuffle[:seed]; FULGUR_EMU_STACK_KB = stack size.
inline Options options_from_env() {
  Options o;
  if (const char* s = std::getenv("FULGUR_EMU_ORDER")) {
    std::string v(s);
    if (v == "reverse") {
      o.order = ResumeOrder::kReverse;
    } else if (v.rfind("shuffle", 0) == 0) {
      o.order = ResumeOrder::kShuffled;
      auto colon = v.find(':');
      if (colon != std::string::npos) o.shuffle_seed = std::strtoull(v.c_str() + colon + 1, nullptr, 0);
    }
  }
  if (const char* s = std::getenv("FULGUR_EMU_STACK_KB")) {
    size_t kb = std::strtoull(s, nullptr, 0);
    if (kb >= 16) o.stack_bytes = kb * 1024;
  }
  return o;
}

inline Options& options() {
  static Options o = options_from_env();
  return o;
}

enum class ThreadState : uint8_t { kReady, kBlockBarrier, kWarpOp, kDone };
enum class WarpOpKind : uint8_t { kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kMatchAny, kGather };
enum class BarrierKind : uint8_t { kPlain, kCount, kAnd, kOr };

struct WarpRequest {
  WarpOpKind kind = WarpOpKind::kSync;
  unsigned mask = 0;
  uint64_t value = 0;  // shuffle payload / predicate / match value
  int param = 0;       // src lane, delta or lane mask
  int width = 32;
  const void* gather_src = nullptr;
  size_t gather_bytes = 0;
  uint64_t result = 0;
  const void* gather_result = nullptr;
};

struct CpAsyncCopy {
  void* dst;
  const void* src;
  size_t bytes;
};

struct BlockContext;

/// One emulated CUDA thread.
struct ThreadContext {
  uint3 thread_idx{};
  unsigned linear = 0;  // x + y*bx + z*bx*by
  unsigned lane = 0;
  unsigned warp = 0;
  BlockContext* block = nullptr;
  ThreadState state = ThreadState::kReady;
  const char* wait_file = "";
  int wait_line = 0;
  BarrierKind barrier_kind = BarrierKind::kPlain;
  int barrier_pred = 0;
  int barrier_result = 0;
  WarpRequest warp_req;
  // cp.async groups: pending copies, and the index in `pending` where each committed group ends.
  std::vector<CpAsyncCopy> cp_pending;
  std::vector<size_t> cp_group_ends;
  size_t cp_committed = 0;  // copies [0, cp_committed) belong to committed groups
#if !FULGUR_EMU_THREADS
  void* sp = nullptr;  // saved stack pointer while switched out
#if !defined(__x86_64__)
  ucontext_t uctx;
#endif
#else
  std::condition_variable cv;
#endif
};

struct WarpContext {
  // Gather buffer: filled at release while every lane is suspended; valid until the lane's next
  // warp collective (the next full-warp gather cannot release before every lane has arrived).
  alignas(16) unsigned char gather[32 * 256];
};

struct BlockContext {
  dim3 block_idx, grid_dim, block_dim;
  unsigned num_threads = 0;
  unsigned num_warps = 0;
  std::vector<ThreadContext*> threads;
  std::vector<WarpContext> warps;
  unsigned char* dynamic_smem = nullptr;
  size_t dynamic_smem_bytes = 0;
  unsigned done = 0;
  unsigned at_barrier = 0;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  bool failed = false;
  std::string error;
  const std::function<void()>* body = nullptr;
#if FULGUR_EMU_THREADS
  std::mutex mu;
#endif
};

inline thread_local ThreadContext* t_current = nullptr;

inline ThreadContext& current() {
  if (!t_current) {
    std::fprintf(stderr, "fulgur emu: a CUDA built-in was used outside an emulated kernel launch\n");
    std::abort();
  }
  return *t_current;
}

/// Lanes of warp w that exist in this block (the last warp may be partial).
inline unsigned existing_lanes(const BlockContext& b, unsigned w) {
  unsigned n = std::min(32u, b.num_threads - w * 32);
  return n == 32 ? 0xffffffffu : ((1u << n) - 1u);
}

inline void fail(BlockContext& b, std::string msg) {
  if (!b.failed) {
    b.failed = true;
    b.error = std::move(msg);
  }
}

inline std::string describe_waits(const BlockContext& b) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "block (%u,%u,%u): ", b.block_idx.x, b.block_idx.y, b.block_idx.z);
  out += line;
  // Group consecutive threads that wait at the same place, so 1024 threads print a few lines.
  unsigned i = 0;
  while (i < b.threads.size()) {
    const ThreadContext* t = b.threads[i];
    unsigned j = i + 1;
    auto same = [&](const ThreadContext* u) {
      return u->state == t->state && u->wait_line == t->wait_line && std::strcmp(u->wait_file, t->wait_file) == 0 &&
             (t->state != ThreadState::kWarpOp || u->warp_req.mask == t->warp_req.mask);
    };
    while (j < b.threads.size() && same(b.threads[j])) ++j;
    const char* what = t->state == ThreadState::kDone          ? "exited"
                       : t->state == ThreadState::kBlockBarrier ? "wait at __syncthreads"
                       : t->state == ThreadState::kWarpOp       ? "wait at a warp collective"
                                                                : "runnable";
    if (t->state == ThreadState::kWarpOp) {
      std::snprintf(line, sizeof line, "\n  threads %u..%u %s (mask 0x%08x) at %s:%d", i, j - 1, what,
                    t->warp_req.mask, t->wait_file, t->wait_line);
    } else if (t->state == ThreadState::kDone || t->state == ThreadState::kReady) {
      std::snprintf(line, sizeof line, "\n  threads %u..%u %s", i, j - 1, what);
    } else {
      std::snprintf(line, sizeof line, "\n  threads %u..%u %s at %s:%d", i, j - 1, what, t->wait_file, t->wait_line);
    }
    out += line;
    i = j;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Release logic, shared by both backends (called with the block lock held in the thread backend).

/// Source lane of a shuffle per the CUDA programming guide's __shfl*_sync semantics; -1 means
/// "the caller's own value".
inline int shuffle_source(const WarpRequest& r, unsigned lane) {
  const int width = r.width;
  const int base = static_cast<int>(lane) & ~(width - 1);
  const int in_seg = static_cast<int>(lane) - base;
  switch (r.kind) {
    case WarpOpKind::kShflIdx: return base + (r.param & (width - 1));
    case WarpOpKind::kShflUp: return in_seg >= r.param ? static_cast<int>(lane) - r.param : -1;
    case WarpOpKind::kShflDown: return in_seg + r.param < width ? static_cast<int>(lane) + r.param : -1;
    case WarpOpKind::kShflXor: {
      int src = static_cast<int>(lane) ^ r.param;
      return src < base + width ? src : -1;  // later segments are out of reach: own value
    }
    default: return -1;
  }
}

/// Called after `t` arrived at a warp collective. Returns true when t's group was released
/// (every lane named in the mask is waiting at a warp collective with the same mask).
inline bool try_release_warp(BlockContext& b, ThreadContext& t) {
  const unsigned mask = t.warp_req.mask;
  ThreadContext* lanes[32] = {};
  const unsigned first = t.warp * 32;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    ThreadContext* u = b.threads[first + l];
    if (u->state == ThreadState::kDone) {
      char msg[256];
      std::snprintf(msg, sizeof msg,
                    "warp collective at %s:%d names lane %u (thread %u), which has exited: the mask "
                    "must name only threads that execute the collective\n",
                    t.wait_file, t.wait_line, l, first + l);
      fail(b, msg + describe_waits(b));
      return false;
    }
    if (u->state != ThreadState::kWarpOp || u->warp_req.mask != mask) return false;
    lanes[l] = u;
  }
  // Everyone named is here: compute each lane's result from the arrivals.
  unsigned ballot = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (lanes[l] && lanes[l]->warp_req.value) ballot |= 1u << l;
  WarpContext& w = b.warps[t.warp];
  for (unsigned l = 0; l < 32; ++l) {
    ThreadContext* u = lanes[l];
    if (!u) continue;
    WarpRequest& r = u->warp_req;
    switch (r.kind) {
      case WarpOpKind::kSync: break;
      case WarpOpKind::kShflIdx:
      case WarpOpKind::kShflUp:
      case WarpOpKind::kShflDown:
      case WarpOpKind::kShflXor: {
        int src = shuffle_source(r, l);
        // A source outside the mask is undefined in CUDA; the emulation returns the own value.
        r.result = (src >= 0 && lanes[src]) ? lanes[src]->warp_req.value : r.value;
        break;
      }
      case WarpOpKind::kBallot: r.result = ballot; break;
      case WarpOpKind::kAny: r.result = ballot != 0; break;
      case WarpOpKind::kAll: r.result = ballot == mask; break;
      case WarpOpKind::kMatchAny: {
        unsigned m = 0;
        for (unsigned s = 0; s < 32; ++s)
          if (lanes[s] && lanes[s]->warp_req.value == r.value) m |= 1u << s;
        r.result = m;
        break;
      }
      case WarpOpKind::kGather: {
        if (r.gather_bytes > 256) {
          fail(b, "warp_allgather: more than 256 bytes per lane\n" + describe_waits(b));
          return false;
        }
        std::memcpy(w.gather + l * r.gather_bytes, r.gather_src, r.gather_bytes);
        r.gather_result = w.gather;
        break;
      }
    }
  }
  for (unsigned l = 0; l < 32; ++l)
    if (lanes[l]) lanes[l]->state = ThreadState::kReady;
  return true;
}

/// Called after a thread arrived at __syncthreads or exited. Releases the block barrier when
/// every thread that has not exited is waiting at it (exited threads count as arrived).
inline bool try_release_block(BlockContext& b) {
  if (b.at_barrier == 0 || b.at_barrier + b.done != b.num_threads) return false;
  int count = 0;
  for (ThreadContext* u : b.threads)
    if (u->state == ThreadState::kBlockBarrier && u->barrier_pred) ++count;
  const int waiting = static_cast<int>(b.at_barrier);
  for (ThreadContext* u : b.threads) {
    if (u->state != ThreadState::kBlockBarrier) continue;
    switch (u->barrier_kind) {
      case BarrierKind::kPlain: u->barrier_result = 0; break;
      case BarrierKind::kCount: u->barrier_result = count; break;
      case BarrierKind::kAnd: u->barrier_result = count == waiting; break;
      case BarrierKind::kOr: u->barrier_result = count != 0; break;
    }
    u->state = ThreadState::kReady;
  }
  b.at_barrier = 0;
  b.barrier_file = nullptr;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Backends: how a thread waits until released, and how a block runs.

/// Thrown through a CUDA thread's own stack (thread backend) to abandon a failed block.
struct BlockAborted {};

#if !FULGUR_EMU_THREADS

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *from, switches to `to` and restores the same from there. In a COMDAT
// section so that every translation unit that includes this header shares one copy.
extern "C" void fulgur_emu_switch_v0_1(void** from, void* to);
extern "C" void fulgur_emu_entry_v0_1();
asm(R"(
  .pushsection .text.fulgur_emu_switch_v0_1,"axG",@progbits,fulgur_emu_switch_v0_1,comdat
  .globl fulgur_emu_switch_v0_1
  .hidden fulgur_emu_switch_v0_1
  .type fulgur_emu_switch_v0_1,@function
fulgur_emu_switch_v0_1:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fulgur_emu_switch_v0_1, .-fulgur_emu_switch_v0_1
  .popsection
  .pushsection .text.fulgur_emu_entry_v0_1,"axG",@progbits,fulgur_emu_entry_v0_1,comdat
  .globl fulgur_emu_entry_v0_1
  .hidden fulgur_emu_entry_v0_1
  .type fulgur_emu_entry_v0_1,@function
fulgur_emu_entry_v0_1:
  movq %r12, %rdi
  andq $-16, %rsp
  callq *%r13
  ud2
  .size fulgur_emu_entry_v0_1, .-fulgur_emu_entry_v0_1
  .popsection
)");
#endif

/// Per-OS-thread state of the fiber backend: the scheduler's own context and a stack pool.
struct FiberHost {
  void* scheduler_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t scheduler_uctx;
#endif
  std::vector<unsigned char*> stacks;
  size_t stack_bytes = 0;
  std::vector<ThreadContext> contexts;
  // The scheduler's own stack, learned when the first fiber starts (AddressSanitizer needs it).
  const void* asan_main_bottom = nullptr;
  size_t asan_main_size = 0;
  ~FiberHost() { release_stacks(); }
  void release_stacks() {
    for (unsigned char* s : stacks) {
#if defined(__x86_64__)
      munmap(s, stack_bytes);
#else
      std::free(s);
#endif
    }
    stacks.clear();
  }
  unsigned char* stack(size_t i, size_t bytes) {
    if (bytes != stack_bytes) {
      release_stacks();
      stack_bytes = bytes;
    }
    while (stacks.size() <= i) {
#if defined(__x86_64__)
      // mmap: pages are committed only when touched, so 1024 x 256 KiB costs what is used.
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      stacks.push_back(static_cast<unsigned char*>(p));
#else
      stacks.push_back(static_cast<unsigned char*>(std::malloc(bytes)));
#endif
    }
    return stacks[i];
  }
};

inline FiberHost& fiber_host() {
  static thread_local FiberHost h;
  return h;
}

inline void thread_body(ThreadContext* t);

inline void fiber_main(ThreadContext* t) {
  FiberHost& h = fiber_host();
#if defined(FULGUR_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &h.asan_main_bottom, &h.asan_main_size);
#endif
  thread_body(t);
  // Never resumed again: the scheduler sees the thread as finished.
#if defined(FULGUR_EMU_ASAN)
  __sanitizer_start_switch_fiber(nullptr, h.asan_main_bottom, h.asan_main_size);
#endif
#if defined(__x86_64__)
  fulgur_emu_switch_v0_1(&t->sp, h.scheduler_sp);
#else
  swapcontext(&t->uctx, &h.scheduler_uctx);
#endif
  __builtin_unreachable();
}

#if !defined(__x86_64__)
inline void fiber_main_ucontext(unsigned hi, unsigned lo) {
  fiber_main(reinterpret_cast<ThreadContext*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

/// Suspend the calling CUDA thread until the scheduler resumes it (after its release).
inline void wait_released(ThreadContext& t) {
  FiberHost& h = fiber_host();
#if defined(FULGUR_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, h.asan_main_bottom, h.asan_main_size);
#endif
#if defined(__x86_64__)
  fulgur_emu_switch_v0_1(&t.sp, h.scheduler_sp);
#else
  swapcontext(&t.uctx, &h.scheduler_uctx);
#endif
#if defined(FULGUR_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, &h.asan_main_bottom, &h.asan_main_size);
#endif
  t_current = &t;
}

struct BlockLock {
  explicit BlockLock(BlockContext&) {}
  void unlock() {}
  void lock() {}
};

#else  // FULGUR_EMU_THREADS

using BlockLock = std::unique_lock<std::mutex>;

/// True when no thread of the block can run again: every thread has exited or waits, and none
/// has been released. Exact, since every state change happens under the block's mutex.
inline bool block_stuck(const BlockContext& b) {
  if (b.done == b.num_threads) return false;
  for (const ThreadContext* u : b.threads)
    if (u->state == ThreadState::kReady) return false;
  return true;
}

inline void wait_released(ThreadContext& t, BlockLock& lock) {
  BlockContext& b = *t.block;
  if (block_stuck(b)) {
    fail(b, "deadlock: no thread can make progress\n" + describe_waits(b));
    for (ThreadContext* u : b.threads) u->cv.notify_all();
    return;
  }
  while (t.state != ThreadState::kReady && !b.failed) t.cv.wait(lock);
}

inline void notify_released(BlockContext& b) {
  for (ThreadContext* u : b.threads)
    if (u->state == ThreadState::kReady) u->cv.notify_all();
}

#endif

// ---------------------------------------------------------------------------------------------
// Synchronization entry points used by the CUDA built-ins in emu.hpp.

#if FULGUR_EMU_THREADS
inline BlockLock lock_block(BlockContext& b) {
  BlockLock lock(b.mu);
  if (b.failed) throw BlockAborted{};
  return lock;
}
#else
inline BlockLock lock_block(BlockContext& b) { return BlockLock(b); }
#endif

/// After t's arrival at a barrier or collective: go on at once when the arrival released its
/// group, else wait for the release (or, in the thread backend, for the block to fail).
inline void finish_arrival(ThreadContext& t, bool released, BlockLock& lock) {
#if FULGUR_EMU_THREADS
  BlockContext& b = *t.block;
  if (released) {
    notify_released(b);
    return;
  }
  if (!b.failed) wait_released(t, lock);
  if (b.failed) {
    for (ThreadContext* u : b.threads) u->cv.notify_all();
    throw BlockAborted{};
  }
#else
  (void)lock;
  if (!released) wait_released(t);
#endif
}

inline int block_barrier(BarrierKind kind, int pred, const char* file, int line) {
  ThreadContext& t = current();
  BlockContext& b = *t.block;
  BlockLock lock = lock_block(b);
  if (b.barrier_file && (b.barrier_line != line || (b.barrier_file != file && std::strcmp(b.barrier_file, file) != 0))) {
    char msg[512];
    std::snprintf(msg, sizeof msg,
                  "__syncthreads reached at different places in one block (%s:%d and %s:%d): "
                  "divergent barriers are undefined behaviour\n",
                  b.barrier_file, b.barrier_line, file, line);
    fail(b, msg + describe_waits(b));
  }
  b.barrier_file = file;
  b.barrier_line = line;
  t.state = ThreadState::kBlockBarrier;
  t.wait_file = file;
  t.wait_line = line;
  t.barrier_kind = kind;
  t.barrier_pred = pred != 0;
  ++b.at_barrier;
  finish_arrival(t, try_release_block(b), lock);
  return t.barrier_result;
}

inline WarpRequest& warp_collective(WarpRequest req, const char* file, int line) {
  ThreadContext& t = current();
  BlockContext& b = *t.block;
  BlockLock lock = lock_block(b);
  req.mask &= existing_lanes(b, t.warp);
  if (!(req.mask >> t.lane & 1u)) {
    char msg[256];
    std::snprintf(msg, sizeof msg, "warp collective at %s:%d: calling lane %u is not in mask 0x%08x\n", file, line,
                  t.lane, req.mask);
    fail(b, msg);
  }
  t.warp_req = req;
  t.state = ThreadState::kWarpOp;
  t.wait_file = file;
  t.wait_line = line;
  finish_arrival(t, try_release_warp(b, t), lock);
  return t.warp_req;
}

inline void thread_exit(ThreadContext& t) {
  BlockContext& b = *t.block;
  t.state = ThreadState::kDone;
  ++b.done;
  // An exit can complete a block barrier; it can also strand a warp collective naming this lane,
  // which the scheduler reports as a deadlock.
  try_release_block(b);
}

inline void thread_body(ThreadContext* t) {
  t_current = t;
  (*t->block->body)();
  // Copies still pending at exit are performed, as the hardware completes them.
  for (const CpAsyncCopy& c : t->cp_pending) std::memcpy(c.dst, c.src, c.bytes);
  t->cp_pending.clear();
  t->cp_group_ends.clear();
  t->cp_committed = 0;
}

// ---------------------------------------------------------------------------------------------
// Running one block.

inline void order_threads(std::vector<unsigned>& order, unsigned n, std::mt19937_64& rng) {
  order.resize(n);
  for (unsigned i = 0; i < n; ++i) order[i] = i;
  switch (options().order) {
    case ResumeOrder::kForward: break;
    case ResumeOrder::kReverse: std::reverse(order.begin(), order.end()); break;
    case ResumeOrder::kShuffled: std::shuffle(order.begin(), order.end(), rng); break;
  }
}

inline void setup_block(BlockContext& b, ThreadContext* ctx) {
  const unsigned n = b.num_threads;
  b.threads.resize(n);
  b.warps.resize(b.num_warps);
  for (unsigned i = 0; i < n; ++i) {
    ThreadContext& t = ctx[i];
    t.linear = i;
    t.thread_idx = make_uint3(i % b.block_dim.x, (i / b.block_dim.x) % b.block_dim.y, i / (b.block_dim.x * b.block_dim.y));
    t.lane = i % 32;
    t.warp = i / 32;
    t.block = &b;
    t.state = ThreadState::kReady;
    t.wait_file = "";
    t.wait_line = 0;
    t.cp_pending.clear();
    t.cp_group_ends.clear();
    t.cp_committed = 0;
    b.threads[i] = &t;
  }
}

#if !FULGUR_EMU_THREADS

inline bool run_block(BlockContext& b) {
  FiberHost& h = fiber_host();
  const unsigned n = b.num_threads;
  if (h.contexts.size() < n) h.contexts.resize(n);
  setup_block(b, h.contexts.data());
  const size_t stack_bytes = options().stack_bytes;
  for (unsigned i = 0; i < n; ++i) {
    ThreadContext& t = h.contexts[i];
    unsigned char* stack = h.stack(i, stack_bytes);
    if (!stack) {
      fail(b, "could not map fiber stacks");
      return false;
    }
#if defined(FULGUR_EMU_ASAN)
    // A reused stack may hold the redzones of an earlier fiber that never returned.
    __asan_unpoison_memory_region(stack, stack_bytes);
#endif
#if defined(__x86_64__)
    // Initial frame popped by fulgur_emu_switch: [mxcsr|fpucw][r15][r14][r13][r12][rbx][rbp][ret].
    // Stack colouring: stacks are mapped at large power-of-two strides, so their tops would all
    // fall into the same cache sets; shifting each by i * 64 bytes (mod 32 KiB) spreads them.
    auto* top = reinterpret_cast<uint64_t*>(stack + stack_bytes - (i % 512u) * 64u);
    top -= 2;  // keep 16-byte alignment and a zero "return address" above the entry frame
    top[0] = top[1] = 0;
    uint64_t* sp = top - 8;
    uint32_t csr[2] = {__builtin_ia32_stmxcsr(), 0x037F};
    std::memcpy(&sp[0], csr, 8);
    sp[1] = 0;                                                  // r15
    sp[2] = 0;                                                  // r14
    sp[3] = reinterpret_cast<uint64_t>(&fiber_main);            // r13: called by the entry stub
    sp[4] = reinterpret_cast<uint64_t>(&t);                     // r12: its argument
    sp[5] = 0;                                                  // rbx
    sp[6] = 0;                                                  // rbp
    sp[7] = reinterpret_cast<uint64_t>(&fulgur_emu_entry_v0_1);  // "return" into the stub
    t.sp = sp;
#else
    getcontext(&t.uctx);
    t.uctx.uc_stack.ss_sp = stack;
    t.uctx.uc_stack.ss_size = stack_bytes;
    t.uctx.uc_link = nullptr;
    uintptr_t p = reinterpret_cast<uintptr_t>(&t);
    makecontext(&t.uctx, reinterpret_cast<void (*)()>(&fiber_main_ucontext), 2, static_cast<unsigned>(p >> 32),
                static_cast<unsigned>(p & 0xffffffffu));
#endif
  }
  std::mt19937_64 rng(options().shuffle_seed ^ (uint64_t{b.block_idx.x} << 20) ^ (uint64_t{b.block_idx.y} << 40) ^
                      b.block_idx.z);
  std::vector<unsigned> order;
  order_threads(order, n, rng);
  ThreadContext* const saved = t_current;
  while (!b.failed) {
    bool progressed = false;
    for (unsigned idx : order) {
      ThreadContext& t = h.contexts[idx];
      if (t.state != ThreadState::kReady) continue;
      progressed = true;
      t_current = &t;
#if defined(FULGUR_EMU_ASAN)
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, h.stacks[idx], stack_bytes);
#endif
#if defined(__x86_64__)
      fulgur_emu_switch_v0_1(&h.scheduler_sp, t.sp);
#else
      swapcontext(&h.scheduler_uctx, &t.uctx);
#endif
#if defined(FULGUR_EMU_ASAN)
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      if (t.state == ThreadState::kReady) thread_exit(t);  // returned from the kernel body
      if (b.failed) break;
    }
    if (b.done == n) break;
    if (!progressed && !b.failed) fail(b, "deadlock: no thread can make progress\n" + describe_waits(b));
    if (options().order == ResumeOrder::kShuffled) std::shuffle(order.begin(), order.end(), rng);
  }
  t_current = saved;
  return !b.failed;
}

#else  // FULGUR_EMU_THREADS

inline bool run_block(BlockContext& b) {
  // condition_variable is not movable: a fresh array for each block.
  std::unique_ptr<ThreadContext[]> ctx(new ThreadContext[b.num_threads]);
  setup_block(b, ctx.get());
  std::mt19937_64 rng(options().shuffle_seed ^ b.block_idx.x);
  std::vector<unsigned> order;
  order_threads(order, b.num_threads, rng);
  std::vector<std::thread> workers;
  workers.reserve(b.num_threads);
  for (unsigned idx : order) {
    ThreadContext* t = &ctx[idx];
    workers.emplace_back([t, &b] {
      try {
        thread_body(t);
      } catch (BlockAborted&) {
      }
      BlockLock lock(b.mu);
      thread_exit(*t);
      if (!b.failed && block_stuck(b)) fail(b, "deadlock: no thread can make progress\n" + describe_waits(b));
      if (b.failed) {
        for (ThreadContext* u : b.threads) u->cv.notify_all();
      } else {
        notify_released(b);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  if (!b.failed && b.done != b.num_threads) fail(b, "deadlock\n" + describe_waits(b));
  return !b.failed;
}

#endif

/// The message of the last failed emulated launch on this OS thread ("" after a success).
inline std::string& last_error_message() {
  static thread_local std::string msg;
  return msg;
}

/// Runs `body` as a kernel over the grid. Blocks run one after another in launch order.
inline cudaError_t run_grid(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body) {
  last_error_message().clear();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
    last_error_message() = "invalid launch configuration";
    return cudaErrorInvalidConfiguration;
  }
  // The largest opt-in shared memory per block of the architectures fulgur targets (sm_90: 227 KB).
  if (dynamic_smem_bytes > 227 * 1024) {
    last_error_message() = "dynamic shared memory above 227 KB";
    return cudaErrorInvalidValue;
  }
  std::vector<unsigned char> smem_storage;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        BlockContext b;
        b.block_idx = dim3(x, y, z);
        b.grid_dim = grid;
        b.block_dim = block;
        b.num_threads = static_cast<unsigned>(threads);
        b.num_warps = (b.num_threads + 31) / 32;
        b.body = &body;
        // Exactly the requested size (AddressSanitizer catches overruns), poisoned with 0xFF
        // bytes (NaN as floats) so kernels that read before writing show it.
        unsigned char* dyn = nullptr;
        if (dynamic_smem_bytes) {
          dyn = static_cast<unsigned char*>(std::malloc(dynamic_smem_bytes));
          std::memset(dyn, 0xFF, dynamic_smem_bytes);
        }
        b.dynamic_smem = dyn;
        b.dynamic_smem_bytes = dynamic_smem_bytes;
        const bool ok = run_block(b);
        std::free(dyn);
        if (!ok) {
          last_error_message() = "fulgur emu: kernel failed: " + b.error;
          std::fprintf(stderr, "%s\n", last_error_message().c_str());
          return cudaErrorLaunchFailure;
        }
      }
    }
  }
  return cudaSuccess;
}

}  // namespace detail

using detail::last_error_message;

/// Set the resume order programmatically (tests); FULGUR_EMU_ORDER sets it from the environment.
inline void set_resume_order(ResumeOrder order, uint64_t seed = 1) {
  detail::options().order = order;
  detail::options().shuffle_seed = seed;
}
inline ResumeOrder resume_order() { return detail::options().order; }

}  // namespace emu
FULGUR_NAMESPACE_END
