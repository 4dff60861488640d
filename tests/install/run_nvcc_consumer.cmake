# SPDX-License-Identifier: Apache-2.0
# cmake -DNVCC=... -DINCLUDE_DIR=... -DCONSUMER_DIR=... -DWORK_DIR=... -P run_nvcc_consumer.cmake
# Builds the vendored-headers consumer (nvcc_consumer/) the way an engine that copies fulgur's
# include/ into its tree does: plain nvcc, -I only, no CMake package, no fulgur target, no extra
# flags. Two translation units are compiled for sm_80 and linked into one executable, which is
# not run (see nvcc_consumer/launch_all.cuh).
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message("${ARGN}\n${out}${err}")
endfunction()

# nvcc finds CUDA 13's CCCL (include/cccl) by itself, so fulgur's include folder is the only -I.
# No --expt-relaxed-constexpr: the public headers compile without it, and an engine should not
# have to add flags for them (fulgur's own <test>_gpu binaries pass it; this test does not).
set(flags -std=c++17 -I${INCLUDE_DIR} -gencode=arch=compute_80,code=sm_80)
run(${NVCC} ${flags} -c ${CONSUMER_DIR}/first.cu -o ${WORK_DIR}/first.o)
run(${NVCC} ${flags} -c ${CONSUMER_DIR}/second.cu -o ${WORK_DIR}/second.o)
run(${NVCC} -gencode=arch=compute_80,code=sm_80 ${WORK_DIR}/first.o ${WORK_DIR}/second.o -o ${WORK_DIR}/consumer)
