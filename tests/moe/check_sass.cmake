# SPDX-License-Identifier: Apache-2.0
# SASS and resource check of the MoE kernels, run by CTest (test_moe_sass; needs nvcc, no GPU):
#   cmake -DNVCC=<nvcc> -DCUOBJDUMP=<cuobjdump> -DSOURCE=<sass_kernels.cu> -DINCLUDE_DIR=<include>
#         -DWORK_DIR=<scratch dir> -P check_sass.cmake
# For sm_80 and sm_90a it compiles every MoE kernel (instantiated through the launchers) with
# `-Xptxas -v` and fails unless
#   - ptxas reports a resource line for every kernel, each with a 0-byte stack frame and 0 bytes
#     of spill stores and loads (register arrays stayed in registers);
#   - every vector-path gather and combine kernel (template flag kVector = true, mangled "Lb1E")
#     has 16-byte global loads and stores in its SASS (LDG.E.128 and STG.E.128), and all 18 of
#     them are there.
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
  set(obj ${WORK_DIR}/moe_kernels_sm${arch}.o)
  execute_process(
    COMMAND ${NVCC} -std=c++17 -O3 -c -gencode=arch=compute_${arch},code=sm_${arch} -Xptxas -v -I${INCLUDE_DIR}
            ${SOURCE} -o ${obj}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: nvcc failed (${rc}):\n${out}\n${err}")
  endif()
  string(REGEX MATCHALL "Compiling entry function '[^']+'" entries "${out}${err}")
  string(REGEX MATCHALL "[0-9]+ bytes stack frame, [0-9]+ bytes spill stores, [0-9]+ bytes spill loads" usage
               "${out}${err}")
  list(LENGTH entries n_entries)
  list(LENGTH usage n_usage)
  message(STATUS "sm_${arch}: ${n_entries} kernels, resource lines: ${n_usage}")
  if(n_entries LESS 60 OR NOT n_entries EQUAL n_usage)
    string(APPEND failures "sm_${arch}: expected a resource line for each of >= 60 kernels, got ${n_entries} "
                           "kernels and ${n_usage} lines\n")
  endif()
  foreach(line IN LISTS usage)
    if(NOT line MATCHES "^0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads$")
      string(APPEND failures "sm_${arch}: ${line}\n")
    endif()
  endforeach()

  execute_process(COMMAND ${CMAKE_COMMAND} -E env "PATH=${tools_dir}:$ENV{PATH}" ${CUOBJDUMP} -sass ${obj}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE sass ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: cuobjdump failed (${rc}): ${err}")
  endif()
  # Cut the listing at each "Function : <name>" header (by position: SASS text is full of ';').
  set(n_vector 0)
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
    if(section MATCHES "^Function : ([^\n]*(gather|combine)_kernel[^\n]*Lb1E[^\n]*)")
      set(name "${CMAKE_MATCH_1}")
      math(EXPR n_vector "${n_vector} + 1")
      foreach(op LDG STG)
        if(NOT section MATCHES "[ \t]${op}\\.E\\.128")
          string(APPEND failures "sm_${arch}: no ${op}.E.128 in ${name}\n")
        endif()
      endforeach()
    endif()
    string(FIND "${rest}" "Function : " pos)
  endwhile()
  message(STATUS "sm_${arch}: ${n_vector} vector-path gather/combine kernels checked for LDG.E.128 / STG.E.128")
  if(NOT n_vector EQUAL 18)
    string(APPEND failures "sm_${arch}: expected 18 vector-path gather/combine kernels in the SASS, found ${n_vector}\n")
  endif()
endforeach()

if(failures)
  message(FATAL_ERROR "MoE SASS check failed:\n${failures}")
endif()
message(STATUS "MoE SASS check passed")
