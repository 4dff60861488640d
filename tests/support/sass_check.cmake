# SPDX-License-Identifier: Apache-2.0
# What every tests/<area>/check_sass.cmake script shares (they run as `cmake -P`, no GPU needed):
# including this file checks the -D arguments every script takes,
#   -DNVCC=<nvcc> -DCUOBJDUMP=<cuobjdump> -DSOURCE=<sass_kernels.cu> -DINCLUDE_DIR=<include>
#   -DWORK_DIR=<scratch dir>
# and defines
#   fulgur_sass_compile(<arch> <obj> <log_var>)   nvcc -O3 -Xptxas -v for sm_<arch>; fatal on failure
#   fulgur_sass_resources(<arch> <log> <failures_var> <entries_var> <usage_var> <regs_var>)
#       the counts of ptxas's per-kernel lines ("Compiling entry function", "<n> bytes stack frame,
#       <s> bytes spill stores, <l> bytes spill loads", "Used <r> registers"); each kernel printed,
#       and one with a stack frame or spills appended to the failures
#   fulgur_sass_dump(<arch> <obj> <sass_var>)     cuobjdump -sass (nvdisasm looked up beside it)
#   fulgur_sass_next(<rest_var> <section_var>)    pops the next "Function : <name>" section of the
#       listing in rest_var (empty when none is left); cut by position, since SASS text is full of
#       ';' and would not survive a CMake list
foreach(var NVCC CUOBJDUMP SOURCE INCLUDE_DIR WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "check_sass.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT EXISTS "${CUOBJDUMP}")
  message(FATAL_ERROR "cuobjdump not found (${CUOBJDUMP}): run scripts/fetch_cuda_tools.sh, then re-run cmake")
endif()
file(MAKE_DIRECTORY ${WORK_DIR})

function(fulgur_sass_compile arch obj log_var)
  execute_process(
    COMMAND ${NVCC} -std=c++17 -O3 -c -gencode=arch=compute_${arch},code=sm_${arch} -Xptxas -v -I${INCLUDE_DIR}
            ${SOURCE} -o ${obj}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: nvcc failed (${rc}):\n${out}\n${err}")
  endif()
  set(${log_var} "${out}${err}" PARENT_SCOPE)
endfunction()

function(fulgur_sass_resources arch log failures_var entries_var usage_var regs_var)
  string(REGEX MATCHALL "Compiling entry function '[^']+'" entries "${log}")
  string(REGEX MATCHALL "[0-9]+ bytes stack frame, [0-9]+ bytes spill stores, [0-9]+ bytes spill loads" usage "${log}")
  string(REGEX MATCHALL "Used [0-9]+ registers" regs "${log}")
  list(LENGTH entries n_entries)
  list(LENGTH usage n_usage)
  list(LENGTH regs n_regs)
  message(STATUS "sm_${arch}: ${n_entries} kernels, resource lines: ${n_usage}")
  set(failures "${${failures_var}}")
  if(n_usage GREATER 0)
    math(EXPR last "${n_usage} - 1")
    foreach(i RANGE ${last})
      list(GET usage ${i} u)
      set(name "kernel ${i}")
      if(i LESS n_entries)
        list(GET entries ${i} e)
        string(REGEX REPLACE "Compiling entry function '(.*)'" "\\1" name "${e}")
      endif()
      set(r "")
      if(i LESS n_regs)
        list(GET regs ${i} r)
        set(r "${r}, ")
      endif()
      message(STATUS "sm_${arch}: ${name}: ${r}${u}")
      if(NOT u MATCHES "^0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads$")
        string(APPEND failures "sm_${arch}: ${name}: ${u}\n")
      endif()
    endforeach()
  endif()
  set(${failures_var} "${failures}" PARENT_SCOPE)
  set(${entries_var} ${n_entries} PARENT_SCOPE)
  set(${usage_var} ${n_usage} PARENT_SCOPE)
  set(${regs_var} ${n_regs} PARENT_SCOPE)
endfunction()

function(fulgur_sass_dump arch obj sass_var)
  get_filename_component(tools_dir "${CUOBJDUMP}" DIRECTORY)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env "PATH=${tools_dir}:$ENV{PATH}" ${CUOBJDUMP} -sass ${obj}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE sass ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sm_${arch}: cuobjdump failed (${rc}): ${err}")
  endif()
  set(${sass_var} "${sass}" PARENT_SCOPE)
endfunction()

function(fulgur_sass_next rest_var section_var)
  set(rest "${${rest_var}}")
  set(section "")
  string(FIND "${rest}" "Function : " pos)
  if(NOT pos EQUAL -1)
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
  endif()
  set(${rest_var} "${rest}" PARENT_SCOPE)
  set(${section_var} "${section}" PARENT_SCOPE)
endfunction()
