// SPDX-License-Identifier: Apache-2.0
// The second translation unit of test_moe_link: includes fulgur/moe.cuh and launches every MoE
// kernel (route, both permute paths, gather, combine, route_permute) from its own code.
#include "moe_link.hpp"

namespace moe_link {

PipelineOut run_pipeline_in_other_unit(const PipelineIn& in) { return run_pipeline<1>(in); }

}  // namespace moe_link
