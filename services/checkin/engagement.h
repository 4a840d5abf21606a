#pragma once
// Staged disengagement as plain functions (DESIGN.md 2.2): failed contact attempts make a missed
// contact, time without contact makes an enrollment at risk and then lost to follow-up, and the
// next contact is a reconnection.
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "peerpath/checkin/v1/checkin.pb.h"

namespace peerpath::checkin {

struct EngagementState {
  v1::EngagementStage stage = v1::ENGAGEMENT_STAGE_ENGAGED;
  int failed_attempts_in_a_row = 0;
  absl::Time stage_changed_at;
  std::optional<absl::Time> last_contact_at;
};

struct AttemptResult {
  EngagementState after;
  // The run of failed attempts just reached the threshold: one disengagement concern.
  bool missed_contact_raised = false;
  // A REACHED attempt that ended a missed-contact, at-risk or lost-to-follow-up stage.
  bool reconnection = false;
};

// Applies one contact attempt at `at` (recorded at `now`) with the program policy's threshold of
// failed attempts in a row. The concern is raised when the run reaches the threshold exactly, so
// once per run; the stage moves to MISSED_CONTACT only from ENGAGED (never back from a later
// stage).
AttemptResult ApplyContactAttempt(const EngagementState& before, v1::ContactOutcome outcome,
                                  absl::Time at, absl::Time now, int failed_attempts_threshold);

// The stages an enrollment passes through, in order, because nobody reached the participant since
// `since` (the last contact, or the start of the enrollment): AT_RISK after `at_risk_after`,
// LOST_TO_FOLLOW_UP after `lost_after`. Empty when nothing changes.
std::vector<v1::EngagementStage> NoContactStages(v1::EngagementStage current, absl::Time since,
                                                 absl::Time now, absl::Duration at_risk_after,
                                                 absl::Duration lost_after);

}  // namespace peerpath::checkin
