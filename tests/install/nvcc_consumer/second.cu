// SPDX-License-Identifier: Apache-2.0
// Translation unit 2 of the vendored-headers consumer: the same launchers again, so each kernel
// is instantiated here too and the link must merge the two copies.
#include "launch_all.cuh"

cudaError_t second_translation_unit(unsigned char* scratch, void* workspace, size_t workspace_bytes,
                                    cudaStream_t stream) {
  return launch_every_family(scratch, workspace, workspace_bytes, stream);
}
