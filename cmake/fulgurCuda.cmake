# SPDX-License-Identifier: Apache-2.0
# CUDA 13 keeps CCCL (cub/, thrust/, cuda/) under include/cccl. nvcc finds it by itself; a host
# compiler (the CPU emulation, host-only reference users) needs it on the include path.
function(fulgur_cccl_include_dir out_var)
  set(dir "")
  foreach(inc IN LISTS CUDAToolkit_INCLUDE_DIRS)
    if(EXISTS "${inc}/cccl/cub/cub.cuh")
      set(dir "${inc}/cccl")
      break()
    endif()
  endforeach()
  set(${out_var} "${dir}" PARENT_SCOPE)
endfunction()
