# SPDX-License-Identifier: Apache-2.0
# SASS and resource check of the token-drop kernels, run by CTest (test_token_drop_sass; needs
# nvcc, no GPU):
#   cmake -DNVCC=<nvcc> -DCUOBJDUMP=<cuobjdump> -DSOURCE=<sass_kernels.cu> -DINCLUDE_DIR=<include>
#         -DWORK_DIR=<scratch dir> -P check_sass.cmake
# For sm_80 and sm_90a it compiles every token-drop kernel with `-Xptxas -v` and fails unless
#   - ptxas reports a resource line for each of the 25 kernels (6 fused, 6 + 6 score, select,
#     compaction map, 5 gathers) and each says 0 bytes stack frame, 0 bytes spill stores and
#     0 bytes spill loads;
#   - the 16-byte gather (gather_rows_kernel<16>) moves rows with 16-byte global loads and stores
#     (LDG.E.128 / STG.E.128) and nothing narrower for the row data, and the 16-byte score
#     kernels load K rows with LDG.E.128.
include(${CMAKE_CURRENT_LIST_DIR}/../support/sass_check.cmake)

# The SASS of the functions whose name matches `pattern`, concatenated.
function(sass_of sass pattern out_var count_var)
  set(result "")
  set(n 0)
  set(rest "${sass}")
  fulgur_sass_next(rest section)
  while(NOT section STREQUAL "")
    if(section MATCHES "^Function : [^\n]*${pattern}")
      string(APPEND result "${section}")
      math(EXPR n "${n} + 1")
    endif()
    fulgur_sass_next(rest section)
  endwhile()
  set(${out_var} "${result}" PARENT_SCOPE)
  set(${count_var} ${n} PARENT_SCOPE)
endfunction()

set(failures "")
foreach(arch IN ITEMS 80 90a)
  set(obj ${WORK_DIR}/token_drop_sm${arch}.o)
  fulgur_sass_compile(${arch} ${obj} log)
  fulgur_sass_resources(${arch} "${log}" failures n_entries n_usage n_regs)
  if(NOT n_entries EQUAL 25 OR NOT n_entries EQUAL n_usage)
    string(APPEND failures "sm_${arch}: expected a resource line for each of 25 kernels, got ${n_entries} kernels "
                           "and ${n_usage} lines\n")
  endif()

  fulgur_sass_dump(${arch} ${obj} sass)
  sass_of("${sass}" "gather_rows_kernelILi16E" gather n_gather)
  if(NOT n_gather EQUAL 1)
    string(APPEND failures "sm_${arch}: expected one 16-byte gather kernel in the SASS, found ${n_gather}\n")
  endif()
  # Row data moves as 128-bit vectors; the only other global loads are the 8-byte row-map entries
  # and the 4-byte verdict flag.
  string(REGEX MATCHALL "[ \t](LDG|STG)[.A-Z0-9_]*" mem "${gather}")
  set(n128 0)
  foreach(op IN LISTS mem)
    string(STRIP "${op}" op)
    if(op MATCHES "\\.128")
      math(EXPR n128 "${n128} + 1")
    elseif(op MATCHES "^STG" OR (op MATCHES "^LDG" AND NOT op MATCHES "\\.64" AND NOT op STREQUAL "LDG.E"))
      string(APPEND failures "sm_${arch}: 16-byte gather has a narrower row access: ${op}\n")
    endif()
  endforeach()
  string(REGEX MATCHALL "LDG[.A-Z0-9_]*\\.128" loads128 "${gather}")
  string(REGEX MATCHALL "STG[.A-Z0-9_]*\\.128" stores128 "${gather}")
  list(LENGTH loads128 n_ld)
  list(LENGTH stores128 n_st)
  message(STATUS "sm_${arch}: 16-byte gather: ${n_ld} x LDG.128, ${n_st} x STG.128")
  if(n_ld EQUAL 0 OR n_st EQUAL 0)
    string(APPEND failures "sm_${arch}: the 16-byte gather has no 16-byte global load or store\n")
  endif()
  sass_of("${sass}" "score_partials_kernelI13__nv_bfloat16Li8E" score n_score)
  string(REGEX MATCHALL "LDG[.A-Z0-9_]*\\.128" score_loads "${score}")
  list(LENGTH score_loads n_score_ld)
  message(STATUS "sm_${arch}: bf16 score partials: ${n_score_ld} x LDG.128")
  if(NOT n_score EQUAL 1 OR n_score_ld EQUAL 0)
    string(APPEND failures "sm_${arch}: the 16-byte bf16 score kernel does not load K with LDG.128\n")
  endif()
endforeach()

if(failures)
  message(FATAL_ERROR "token_drop SASS check failed:\n${failures}")
endif()
message(STATUS "token_drop SASS check passed")
