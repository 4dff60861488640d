# SPDX-License-Identifier: Apache-2.0
# SASS and resource check for the arch layer, run by CTest (test_arch_sass; needs nvcc, no GPU):
#   cmake -DNVCC=<nvcc> -DCUOBJDUMP=<cuobjdump> -DSOURCE=<sass_kernels.cu> -DINCLUDE_DIR=<include>
#         -DWORK_DIR=<scratch dir> -P check_sass.cmake
# For sm_80 and sm_90a it compiles the arch test kernels with `-Xptxas -v` and fails unless
#   - ptxas reports a resource line for every kernel and each says 0 bytes spill stores and
#     0 bytes spill loads (and a 0-byte stack frame: register arrays stayed in registers);
#   - the SASS of the GEMM kernels contains HMMA (mma.sync), LDSM (ldmatrix) and LDGSTS (cp.async).
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
  set(obj ${WORK_DIR}/sass_kernels_sm${arch}.o)
  execute_process(
    COMMAND ${NVCC} -std=c++17 -O3 -c -gencode=arch=compute_${arch},code=sm_${arch} -Xptxas -v -I${INCLUDE_DIR}
            ${SOURCE} -o ${obj}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: nvcc failed (${rc}):\n${out}\n${err}")
  endif()
  # ptxas -v prints, per kernel: "Compiling entry function '<name>' for 'sm_XX'" and
  # "<n> bytes stack frame, <s> bytes spill stores, <l> bytes spill loads".
  string(REGEX MATCHALL "Compiling entry function '[^']+'" entries "${out}${err}")
  string(REGEX MATCHALL "[0-9]+ bytes stack frame, [0-9]+ bytes spill stores, [0-9]+ bytes spill loads" usage
               "${out}${err}")
  list(LENGTH entries n_entries)
  list(LENGTH usage n_usage)
  message(STATUS "sm_${arch}: ${n_entries} kernels, resource lines: ${n_usage}")
  if(n_entries LESS 6 OR NOT n_entries EQUAL n_usage)
    string(APPEND failures "sm_${arch}: expected a resource line for each of >= 6 kernels, got ${n_entries} kernels "
                           "and ${n_usage} lines\n")
  endif()
  foreach(line IN LISTS usage)
    if(NOT line MATCHES "^0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads$")
      string(APPEND failures "sm_${arch}: ${line}\n")
    endif()
  endforeach()

  # cuobjdump runs nvdisasm, found on PATH: look beside cuobjdump first.
  execute_process(COMMAND ${CMAKE_COMMAND} -E env "PATH=${tools_dir}:$ENV{PATH}" ${CUOBJDUMP} -sass ${obj}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE sass ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: cuobjdump failed (${rc}): ${err}")
  endif()
  # Only the GEMM kernels' SASS: cut the listing at each "Function : <name>" header (by position,
  # since SASS text is full of ';' and would not survive a CMake list) and keep the gemm ones.
  set(gemm_sass "")
  set(n_gemm 0)
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
    if(section MATCHES "^Function : [^\n]*gemm")
      string(APPEND gemm_sass "${section}")
      math(EXPR n_gemm "${n_gemm} + 1")
    endif()
    string(FIND "${rest}" "Function : " pos)
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
