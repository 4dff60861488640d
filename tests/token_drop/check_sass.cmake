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

# The SASS of the functions whose name matches `pattern`, concatenated (cut at each
# "Function : <name>" header by position: SASS text is full of ';').
function(sass_of sass pattern out_var count_var)
  set(result "")
  set(n 0)
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
    if(section MATCHES "^Function : [^\n]*${pattern}")
      string(APPEND result "${section}")
      math(EXPR n "${n} + 1")
    endif()
    string(FIND "${rest}" "Function : " pos)
  endwhile()
  set(${out_var} "${result}" PARENT_SCOPE)
  set(${count_var} ${n} PARENT_SCOPE)
endfunction()

set(failures "")
foreach(arch IN ITEMS 80 90a)
  set(obj ${WORK_DIR}/token_drop_sm${arch}.o)
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
  message(STATUS "sm_${arch}: ${n_entries} kernels, resource lines: ${n_usage}")
  if(NOT n_entries EQUAL 25 OR NOT n_entries EQUAL n_usage)
    string(APPEND failures "sm_${arch}: expected a resource line for each of 25 kernels, got ${n_entries} kernels "
                           "and ${n_usage} lines\n")
  endif()
  set(i 0)
  foreach(entry IN LISTS entries)
    list(GET usage ${i} line)
    list(GET regs ${i} reg)
    string(REGEX REPLACE "Compiling entry function '_ZN6fulgur[0-9a-z_]*token_drop6detail[0-9]+" "" name "${entry}")
    message(STATUS "sm_${arch}: ${name}: ${reg}, ${line}")
    if(NOT line MATCHES "^0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads$")
      string(APPEND failures "sm_${arch}: ${name}: ${line}\n")
    endif()
    math(EXPR i "${i} + 1")
  endforeach()

  execute_process(COMMAND ${CMAKE_COMMAND} -E env "PATH=${tools_dir}:$ENV{PATH}" ${CUOBJDUMP} -sass ${obj}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE sass ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: cuobjdump failed (${rc}): ${err}")
  endif()
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
