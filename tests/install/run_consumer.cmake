# SPDX-License-Identifier: Apache-2.0
# cmake -DMODE=find_package|add_subdirectory -DSOURCE_DIR=... -DWORK_DIR=... -DCONSUMER_DIR=... -P
# Builds fulgur's small consumer project against a fresh install (find_package) or the source
# tree (add_subdirectory), then runs it.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()

if(MODE STREQUAL "find_package")
  # fulgur alone: no tests, examples or benchmarks; just its install rules.
  run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/fulgur-build -G ${GENERATOR}
      -DFULGUR_BUILD_TESTS=OFF -DFULGUR_BUILD_BENCH=OFF -DFULGUR_BUILD_EXAMPLES=OFF -DFULGUR_INSTALL=ON
      -DFULGUR_ENABLE_CUDA=OFF -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/prefix)
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/fulgur-build)
  run(${CMAKE_COMMAND} --install ${WORK_DIR}/fulgur-build)
  run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
      -DCONSUMER_MODE=find_package -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/consumer-build -G ${GENERATOR}
      -DCONSUMER_MODE=add_subdirectory -DFULGUR_SOURCE_DIR=${SOURCE_DIR})
endif()
run(${CMAKE_COMMAND} --build ${WORK_DIR}/consumer-build)
run(${WORK_DIR}/consumer-build/consumer)
