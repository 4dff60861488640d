# SPDX-License-Identifier: Apache-2.0
# cmake -DNVCC=... -DPYTHON=... -DINCLUDE_DIR=... -DSOURCE_DIR=... -DWORK_DIR=... -DCUDA_INCLUDE_DIRS=...
#       -P check_compile.cmake
# The torch example's CI check (see CMakeLists.txt). Fails on any compile error; prints
# "SKIPPED: <why>" for each part this machine cannot check.
file(MAKE_DIRECTORY ${WORK_DIR})
set(compiled 0)
set(failed "")

# 1. The framework-free launch layer: nvcc, compile only, sm_80 (fulgur's lowest architecture).
#    The three units run concurrently (execute_process starts every COMMAND at once); the moe one
#    is the slowest (about 100 s on two cores). The -D flags are those torch's BuildExtension gives
#    nvcc (no implicit __half / __nv_bfloat16 conversions or operators): fulgur must build with them.
if(NVCC AND EXISTS "${NVCC}")
  set(cmds "")
  foreach(unit lightning moe token_drop)
    list(APPEND cmds COMMAND ${NVCC} -std=c++17 -c -arch=sm_80 --expt-relaxed-constexpr -Xcompiler -fPIC
         -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
         -D__CUDA_NO_HALF2_OPERATORS__ -I${INCLUDE_DIR} -I${SOURCE_DIR} ${SOURCE_DIR}/fulgur_ops_${unit}.cu -o ${WORK_DIR}/fulgur_ops_${unit}.o)
  endforeach()
  file(REMOVE ${WORK_DIR}/fulgur_ops_lightning.o ${WORK_DIR}/fulgur_ops_moe.o ${WORK_DIR}/fulgur_ops_token_drop.o)
  execute_process(${cmds} RESULTS_VARIABLE rcs ERROR_VARIABLE err OUTPUT_VARIABLE out)
  set(i 0)
  foreach(unit lightning moe token_drop)
    list(GET rcs ${i} rc)
    math(EXPR i "${i} + 1")
    if(rc EQUAL 0 AND EXISTS ${WORK_DIR}/fulgur_ops_${unit}.o)
      message(STATUS "ok: nvcc -c -arch=sm_80 fulgur_ops_${unit}.cu")
    else()
      list(APPEND failed "fulgur_ops_${unit}.cu (nvcc rc ${rc})")
    endif()
  endforeach()
  if(err)
    message(STATUS "nvcc output:\n${err}")
  endif()
  math(EXPR compiled "${compiled} + 1")
else()
  message(STATUS "SKIPPED: nvcc not found; the fulgur_ops_*.cu units were not compiled")
endif()

# 2. Python files: syntax only (importing them needs torch and the built extension).
if(PYTHON)
  execute_process(COMMAND ${PYTHON} -c
                  "import py_compile, sys; [py_compile.compile(f, cfile='${WORK_DIR}/x.pyc', doraise=True) for f in sys.argv[1:]]"
                  ${SOURCE_DIR}/test_fulgur_torch.py ${SOURCE_DIR}/setup.py ${SOURCE_DIR}/run_tests.py
                  ${SOURCE_DIR}/fulgur_torch/__init__.py
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(STATUS "ok: py_compile test_fulgur_torch.py setup.py run_tests.py fulgur_torch/__init__.py")
  else()
    list(APPEND failed "py_compile: ${err}")
  endif()
else()
  message(STATUS "SKIPPED: no python3; the Python files were not byte-compiled")
endif()

# 3. The torch binding: a syntax-only compile against torch's headers, where torch is installed.
set(torch_rc 1)
if(PYTHON)
  execute_process(COMMAND ${PYTHON} -c
                  "import torch, torch.utils.cpp_extension as c; print(';'.join(c.include_paths()) + '|' + str(int(torch._C._GLIBCXX_USE_CXX11_ABI)))"
                  RESULT_VARIABLE torch_rc OUTPUT_VARIABLE torch_out ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(torch_rc EQUAL 0)
  string(REPLACE "|" ";" parts "${torch_out}")
  list(GET parts -1 abi)
  list(REMOVE_AT parts -1)
  set(incs "")
  foreach(d ${parts} ${CUDA_INCLUDE_DIRS} ${INCLUDE_DIR} ${SOURCE_DIR})
    list(APPEND incs -I${d})
  endforeach()
  find_program(CXX NAMES c++ g++ clang++)
  execute_process(COMMAND ${CXX} -std=c++17 -fsyntax-only -D_GLIBCXX_USE_CXX11_ABI=${abi} ${incs}
                          ${SOURCE_DIR}/fulgur_torch.cpp
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(STATUS "ok: fulgur_torch.cpp compiles against torch's headers")
  else()
    list(APPEND failed "fulgur_torch.cpp against torch's headers:\n${err}")
  endif()
  math(EXPR compiled "${compiled} + 1")
else()
  message(STATUS "SKIPPED: torch is not importable here (PyTorch is not installed on CI: its wheel is "
                 "too large); fulgur_torch.cpp was not compiled. bench/gpu_check.sh builds and tests the "
                 "extension on the GPU machine.")
endif()

if(failed)
  string(REPLACE ";" "\n  " msg "${failed}")
  message(FATAL_ERROR "torch example compile check FAILED:\n  ${msg}")
endif()
if(compiled EQUAL 0)
  message(STATUS "fulgur torch example: nothing could be compiled (no nvcc, no torch)")
endif()
