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
#     LDG.E[.mod].128 (16-byte global loads of q, k, v);
#   - every decode kernel's SASS holds 16-byte global loads and stores of the state
#     (LDG.E.EF.128 / STG.E.EF.128: evict-first).
# The registers per kernel are printed (docs/lightning.md quotes them).
foreach(var NVCC CUOBJDUMP SOURCE INCLUDE_DIR WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "check_sass.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT EXISTS "${CUOBJDUMP}")
  message(FATAL_ERROR "cuobjdump not found (${CUOBJDUMP}): run scripts/fetch_cuda_tools.sh, then re-run cmake")
endif()
get_filename_component(tools_dir "${CUOBJDUMP}" DIRECTORY)
file(MAKE_DIRECTORY ${WORK_DIR})

set(failures "")
foreach(arch IN ITEMS 80 90a)
  set(obj ${WORK_DIR}/lightning_kernels_sm${arch}.o)
  execute_process(
    COMMAND ${NVCC} -std=c++17 -O3 -c -gencode=arch=compute_${arch},code=sm_${arch} -Xptxas -v -I${INCLUDE_DIR}
            ${SOURCE} -o ${obj}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: nvcc failed (${rc}):\n${out}\n${err}")
  endif()
  # ptxas -v prints, per kernel: "Compiling entry function '<name>' for 'sm_XX'", then
  # "<n> bytes stack frame, <s> bytes spill stores, <l> bytes spill loads" and "Used <r> registers".
  string(REGEX MATCHALL "Compiling entry function '[^']+'" entries "${out}${err}")
  string(REGEX MATCHALL "[0-9]+ bytes stack frame, [0-9]+ bytes spill stores, [0-9]+ bytes spill loads" usage
               "${out}${err}")
  string(REGEX MATCHALL "Used [0-9]+ registers" regs "${out}${err}")
  list(LENGTH entries n_entries)
  list(LENGTH usage n_usage)
  list(LENGTH regs n_regs)
  if(n_entries LESS 9 OR NOT n_entries EQUAL n_usage OR NOT n_entries EQUAL n_regs)
    string(APPEND failures "sm_${arch}: expected a resource line for each of >= 9 kernels, got ${n_entries} kernels, "
                           "${n_usage} usage and ${n_regs} register lines\n")
  else()
    math(EXPR last "${n_entries} - 1")
    foreach(i RANGE ${last})
      list(GET entries ${i} e)
      list(GET usage ${i} u)
      list(GET regs ${i} r)
      string(REGEX REPLACE "Compiling entry function '(.*)'" "\\1" name "${e}")
      message(STATUS "sm_${arch}: ${name}: ${r}, ${u}")
      if(NOT u MATCHES "^0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads$")
        string(APPEND failures "sm_${arch}: ${name}: ${u}\n")
      endif()
    endforeach()
  endif()

  execute_process(COMMAND ${CMAKE_COMMAND} -E env "PATH=${tools_dir}:$ENV{PATH}" ${CUOBJDUMP} -sass ${obj}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE sass ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: cuobjdump failed (${rc}): ${err}")
  endif()
  # Cut the listing at each "Function : <name>" header (by position: SASS text is full of ';').
  set(n_prefill 0)
  set(n_decode 0)
  set(rest "${sass}")
  string(FIND "${rest}" "Function : " pos)
  while(NOT pos EQUAL -1)
    string(SUBSTRING "${rest}" ${pos} -1 rest)
    string(SUBSTRING "${rest}" 11 -1 after)
    string(FIND "${after}" "Function : " next)
    if(next EQUAL -1)
      set(section "${rest}")
      set(rest "")
    else()
      math(EXPR len "${next} + 11")
      string(SUBSTRING "${rest}" 0 ${len} section)
      string(SUBSTRING "${rest}" ${len} -1 rest)
    endif()
    string(REGEX MATCH "^Function : [^\n]*" header "${section}")
    # Instruction patterns: 16-byte global accesses may carry cache modifiers, e.g.
    # LDG.E.128.CONSTANT (read-only path) or LDG.E.EF.128 / STG.E.EF.128 (evict-first).
    set(hmma "HMMA")
    set(ldsm "LDSM")
    set(ldg128 "LDG\\.E(\\.[A-Z]+)*\\.128")
    set(stg128 "STG\\.E(\\.[A-Z]+)*\\.128")
    set(required "")
    if(header MATCHES "prefill_kernel|prefill_segment_state_kernel")
      set(required hmma ldsm ldg128)
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
    string(FIND "${rest}" "Function : " pos)
  endwhile()
  message(STATUS "sm_${arch}: ${n_prefill} prefill kernels, ${n_decode} decode kernels checked")
  if(n_prefill LESS 16 OR n_decode LESS 24)
    string(APPEND failures "sm_${arch}: expected 16 prefill (8 main, 8 segment-state) and 24 decode kernels (one-token and multi-token) in the "
                           "SASS, found ${n_prefill} and ${n_decode}\n")
  endif()
endforeach()

if(failures)
  message(FATAL_ERROR "lightning SASS check failed:\n${failures}")
endif()
message(STATUS "lightning SASS check passed")
