// SPDX-License-Identifier: Apache-2.0
// The second translation unit of test_token_drop_link: includes fulgur/token_drop.cuh and
// launches every token-drop kernel (score, select, compact, fused) from its own code.
#include "token_drop_link.hpp"

namespace td_link {

Outs run_event_in_other_unit(const Problem& pb) { return run_event<1>(pb); }

}  // namespace td_link
