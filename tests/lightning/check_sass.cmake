# SPDX-License-Identifier: Apache-2.0
# SASS and resource check for the lightning kernels, run by CTest (test_lightning_sass; needs
# nvcc, no GPU):
#   cmake -DNVCC=<nvcc> -DCUOBJDUMP=<cuobjdump> -DSOURCE=<sass_kernels.cu> -DINCLUDE_DIR=<include>
#         -DWORK_DIR=<scratch dir> -P check_sass.cmake
# For sm_80 and sm_90a it compiles every lightning kernel configuration with `-Xptxas -v` and
# fails unless
#   - ptxas reports a resource line for every kernel, each with a 0-byte stack frame and 0 bytes
#     of spill stores and loads;
#   - every prefill kernel's (main and segment-state) SASS holds HMMA (tensor-core mma.sync), LDSM (ldmatrix) and
#     LDG.E[.mod].128 or LDGSTS.E[.mod].128 (16-byte global loads of q, k, v, the latter cp.async);
#   - every decode kernel's SASS holds 16-byte global loads and stores of the state
#     (LDG.E.EF.128 / STG.E.EF.128: evict-first).
# The registers per kernel are printed (docs/lightning.md quotes them).
include(${CMAKE_CURRENT_LIST_DIR}/../support/sass_check.cmake)

set(failures "")
foreach(arch IN ITEMS 80 90a)
  set(obj ${WORK_DIR}/lightning_kernels_sm${arch}.o)
  fulgur_sass_compile(${arch} ${obj} log)
  fulgur_sass_resources(${arch} "${log}" failures n_entries n_usage n_regs)
  if(n_entries LESS 9 OR NOT n_entries EQUAL n_usage OR NOT n_entries EQUAL n_regs)
    string(APPEND failures "sm_${arch}: expected a resource line for each of >= 9 kernels, got ${n_entries} kernels, "
                           "${n_usage} usage and ${n_regs} register lines\n")
  endif()

  fulgur_sass_dump(${arch} ${obj} sass)
  set(n_prefill 0)
  set(n_decode 0)
  set(rest "${sass}")
  fulgur_sass_next(rest section)
  while(NOT section STREQUAL "")
    string(REGEX MATCH "^Function : [^\n]*" header "${section}")
    # Instruction patterns: 16-byte global accesses may carry cache modifiers, e.g.
    # LDG.E.128.CONSTANT (read-only path) or LDG.E.EF.128 / STG.E.EF.128 (evict-first).
    set(hmma "HMMA")
    set(ldsm "LDSM")
    set(ldg128 "LDG\\.E(\\.[A-Z]+)*\\.128")
    # The bf16 one-term prefill copies q, k, v with cp.async (LDGSTS.E.BYPASS.128), which counts.
    set(ldg128_or_cp "LDG(STS)?\\.E(\\.[A-Z]+)*\\.128")
    set(stg128 "STG\\.E(\\.[A-Z]+)*\\.128")
    set(required "")
    if(header MATCHES "prefill_kernel|prefill_segment_state_kernel")
      set(required hmma ldsm ldg128_or_cp)
      math(EXPR n_prefill "${n_prefill} + 1")
    elseif(header MATCHES "decode_kernel")
      set(required ldg128 stg128)
      math(EXPR n_decode "${n_decode} + 1")
    endif()
    foreach(op IN LISTS required)
      string(REGEX MATCHALL "[ \t]${${op}}" hits "${section}")
      list(LENGTH hits n)
      if(n EQUAL 0)
        string(APPEND failures "sm_${arch}: no ${${op}} in ${header}\n")
      endif()
    endforeach()
    fulgur_sass_next(rest section)
  endwhile()
  message(STATUS "sm_${arch}: ${n_prefill} prefill kernels, ${n_decode} decode kernels checked")
  if(n_prefill LESS 16 OR n_decode LESS 36)
    string(APPEND failures "sm_${arch}: expected 16 prefill (8 main, 8 segment-state) and 36 decode kernels (one-token, streaming and multi-token) in the "
                           "SASS, found ${n_prefill} and ${n_decode}\n")
  endif()
endforeach()

if(failures)
  message(FATAL_ERROR "lightning SASS check failed:\n${failures}")
endif()
message(STATUS "lightning SASS check passed")
