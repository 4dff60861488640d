# SPDX-License-Identifier: Apache-2.0
# SASS and resource check of the MoE kernels, run by CTest (test_moe_sass; needs nvcc, no GPU):
#   cmake -DNVCC=<nvcc> -DCUOBJDUMP=<cuobjdump> -DSOURCE=<sass_kernels.cu> -DINCLUDE_DIR=<include>
#         -DWORK_DIR=<scratch dir> -P check_sass.cmake
# For sm_80 and sm_90a it compiles every MoE kernel (instantiated through the launchers) with
# `-Xptxas -v` and fails unless
#   - ptxas reports a resource line for every kernel, each with a 0-byte stack frame and 0 bytes
#     of spill stores and loads (register arrays stayed in registers);
#   - every vector-path gather (row and token paths) and combine kernel (template flag
#     kVector = true, mangled "Lb1E") has 16-byte global loads and stores in its SASS (LDG.E.128
#     and STG.E.128), and all 27 of them are there (9 dtype pairs each).
include(${CMAKE_CURRENT_LIST_DIR}/../support/sass_check.cmake)

set(failures "")
foreach(arch IN ITEMS 80 90a)
  set(obj ${WORK_DIR}/moe_kernels_sm${arch}.o)
  fulgur_sass_compile(${arch} ${obj} log)
  fulgur_sass_resources(${arch} "${log}" failures n_entries n_usage n_regs)
  if(n_entries LESS 60 OR NOT n_entries EQUAL n_usage)
    string(APPEND failures "sm_${arch}: expected a resource line for each of >= 60 kernels, got ${n_entries} "
                           "kernels and ${n_usage} lines\n")
  endif()

  fulgur_sass_dump(${arch} ${obj} sass)
  set(n_vector 0)
  set(rest "${sass}")
  fulgur_sass_next(rest section)
  while(NOT section STREQUAL "")
    if(section MATCHES "^Function : ([^\n]*(gather|gather_by_token|combine)_kernel[^\n]*Lb1E[^\n]*)")
      set(name "${CMAKE_MATCH_1}")
      math(EXPR n_vector "${n_vector} + 1")
      foreach(op LDG STG)
        if(NOT section MATCHES "[ \t]${op}\\.E\\.128")
          string(APPEND failures "sm_${arch}: no ${op}.E.128 in ${name}\n")
        endif()
      endforeach()
    endif()
    fulgur_sass_next(rest section)
  endwhile()
  message(STATUS "sm_${arch}: ${n_vector} vector-path gather/combine kernels checked for LDG.E.128 / STG.E.128")
  if(NOT n_vector EQUAL 27)
    string(APPEND failures "sm_${arch}: expected 27 vector-path gather/combine kernels in the SASS, found ${n_vector}\n")
  endif()
endforeach()

if(failures)
  message(FATAL_ERROR "MoE SASS check failed:\n${failures}")
endif()
message(STATUS "MoE SASS check passed")
