# SPDX-License-Identifier: Apache-2.0
# SASS and resource check for the arch layer, run by CTest (test_arch_sass; needs nvcc, no GPU):
#   cmake -DNVCC=<nvcc> -DCUOBJDUMP=<cuobjdump> -DSOURCE=<sass_kernels.cu> -DINCLUDE_DIR=<include>
#         -DWORK_DIR=<scratch dir> -P check_sass.cmake
# For sm_80 and sm_90a it compiles the arch test kernels with `-Xptxas -v` and fails unless
#   - ptxas reports a resource line for every kernel and each says 0 bytes spill stores and
#     0 bytes spill loads (and a 0-byte stack frame: register arrays stayed in registers);
#   - the SASS of the GEMM kernels contains HMMA (mma.sync), LDSM (ldmatrix) and LDGSTS (cp.async).
include(${CMAKE_CURRENT_LIST_DIR}/../support/sass_check.cmake)

set(failures "")
foreach(arch IN ITEMS 80 90a)
  set(obj ${WORK_DIR}/sass_kernels_sm${arch}.o)
  fulgur_sass_compile(${arch} ${obj} log)
  fulgur_sass_resources(${arch} "${log}" failures n_entries n_usage n_regs)
  if(n_entries LESS 6 OR NOT n_entries EQUAL n_usage)
    string(APPEND failures "sm_${arch}: expected a resource line for each of >= 6 kernels, got ${n_entries} kernels "
                           "and ${n_usage} lines\n")
  endif()

  fulgur_sass_dump(${arch} ${obj} sass)
  # Only the GEMM kernels' SASS.
  set(gemm_sass "")
  set(n_gemm 0)
  set(rest "${sass}")
  fulgur_sass_next(rest section)
  while(NOT section STREQUAL "")
    if(section MATCHES "^Function : [^\n]*gemm")
      string(APPEND gemm_sass "${section}")
      math(EXPR n_gemm "${n_gemm} + 1")
    endif()
    fulgur_sass_next(rest section)
  endwhile()
  if(NOT n_gemm EQUAL 3)
    string(APPEND failures "sm_${arch}: expected 3 GEMM kernels in the SASS, found ${n_gemm}\n")
  endif()
  foreach(op HMMA LDSM LDGSTS)
    string(REGEX MATCHALL "[ \t]${op}[.A-Z0-9_]*" hits "${gemm_sass}")
    list(LENGTH hits n)
    message(STATUS "sm_${arch}: ${op} x ${n} in the GEMM kernels")
    if(n EQUAL 0)
      string(APPEND failures "sm_${arch}: no ${op} instruction in the GEMM kernels' SASS\n")
    endif()
  endforeach()
endforeach()

if(failures)
  message(FATAL_ERROR "arch SASS check failed:\n${failures}")
endif()
message(STATUS "arch SASS check passed")
