#include "services/checkin/engagement.h"

#include <algorithm>

namespace peerpath::checkin {

AttemptResult ApplyContactAttempt(const EngagementState& before, v1::ContactOutcome outcome,
                                  absl::Time at, absl::Time now, int failed_attempts_threshold) {
  AttemptResult result;
  result.after = before;
  if (outcome == v1::CONTACT_OUTCOME_REACHED) {
    result.after.failed_attempts_in_a_row = 0;
    result.after.last_contact_at =
        before.last_contact_at ? std::max(*before.last_contact_at, at) : at;
    if (before.stage != v1::ENGAGEMENT_STAGE_ENGAGED) {
      result.reconnection = true;
      result.after.stage = v1::ENGAGEMENT_STAGE_ENGAGED;
      result.after.stage_changed_at = now;
    }
    return result;
  }
  result.after.failed_attempts_in_a_row = before.failed_attempts_in_a_row + 1;
  if (result.after.failed_attempts_in_a_row == std::max(1, failed_attempts_threshold)) {
    result.missed_contact_raised = true;
    if (before.stage == v1::ENGAGEMENT_STAGE_ENGAGED) {
      result.after.stage = v1::ENGAGEMENT_STAGE_MISSED_CONTACT;
      result.after.stage_changed_at = now;
    }
  }
  return result;
}

std::vector<v1::EngagementStage> NoContactStages(v1::EngagementStage current, absl::Time since,
                                                 absl::Time now, absl::Duration at_risk_after,
                                                 absl::Duration lost_after) {
  std::vector<v1::EngagementStage> out;
  const absl::Duration silent = now - since;
  const bool before_at_risk =
      current == v1::ENGAGEMENT_STAGE_ENGAGED || current == v1::ENGAGEMENT_STAGE_MISSED_CONTACT;
  if (before_at_risk && silent >= at_risk_after) out.push_back(v1::ENGAGEMENT_STAGE_AT_RISK);
  if (current != v1::ENGAGEMENT_STAGE_LOST_TO_FOLLOW_UP && silent >= lost_after) {
    out.push_back(v1::ENGAGEMENT_STAGE_LOST_TO_FOLLOW_UP);
  }
  return out;
}

}  // namespace peerpath::checkin
