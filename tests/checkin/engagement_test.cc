// Missed-contact counting and staged disengagement as pure functions.
#include "services/checkin/engagement.h"

#include <gtest/gtest.h>

namespace peerpath::checkin {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

TEST(MissedContact, ThirdFailedAttemptRaisesOneConcernPerRun) {
  EngagementState state;
  int raised = 0;
  for (int i = 0; i < 5; ++i) {
    auto r = ApplyContactAttempt(state, v1::CONTACT_OUTCOME_NO_ANSWER, kT0, kT0, 3);
    raised += r.missed_contact_raised;
    EXPECT_EQ(r.after.stage,
              i < 2 ? v1::ENGAGEMENT_STAGE_ENGAGED : v1::ENGAGEMENT_STAGE_MISSED_CONTACT);
    state = r.after;
  }
  EXPECT_EQ(raised, 1);
  EXPECT_EQ(state.failed_attempts_in_a_row, 5);
}

TEST(MissedContact, ReachedContactResetsTheRunAndIsAReconnection) {
  EngagementState state;
  for (auto outcome : {v1::CONTACT_OUTCOME_NO_ANSWER, v1::CONTACT_OUTCOME_LEFT_MESSAGE}) {
    state = ApplyContactAttempt(state, outcome, kT0, kT0, 2).after;
  }
  ASSERT_EQ(state.stage, v1::ENGAGEMENT_STAGE_MISSED_CONTACT);
  auto reached = ApplyContactAttempt(state, v1::CONTACT_OUTCOME_REACHED, kT0 + absl::Hours(1),
                                     kT0 + absl::Hours(1), 2);
  EXPECT_TRUE(reached.reconnection);
  EXPECT_EQ(reached.after.stage, v1::ENGAGEMENT_STAGE_ENGAGED);
  EXPECT_EQ(reached.after.failed_attempts_in_a_row, 0);
  EXPECT_EQ(reached.after.last_contact_at, kT0 + absl::Hours(1));
  // A new run raises again.
  state = reached.after;
  state = ApplyContactAttempt(state, v1::CONTACT_OUTCOME_WRONG_NUMBER, kT0, kT0, 2).after;
  EXPECT_TRUE(
      ApplyContactAttempt(state, v1::CONTACT_OUTCOME_NO_ANSWER, kT0, kT0, 2).missed_contact_raised);
  // Reaching an engaged participant is no reconnection.
  EXPECT_FALSE(ApplyContactAttempt({}, v1::CONTACT_OUTCOME_REACHED, kT0, kT0, 3).reconnection);
}

TEST(MissedContact, LaterStageIsNotMovedBackToMissedContact) {
  EngagementState state;
  state.stage = v1::ENGAGEMENT_STAGE_AT_RISK;
  state.failed_attempts_in_a_row = 2;
  auto r = ApplyContactAttempt(state, v1::CONTACT_OUTCOME_NO_ANSWER, kT0, kT0, 3);
  EXPECT_TRUE(r.missed_contact_raised);
  EXPECT_EQ(r.after.stage, v1::ENGAGEMENT_STAGE_AT_RISK);
}

TEST(Disengagement, StagesAt28And90DaysWithoutContact) {
  const auto at_risk = absl::Hours(24 * 28), lost = absl::Hours(24 * 90);
  EXPECT_TRUE(
      NoContactStages(v1::ENGAGEMENT_STAGE_ENGAGED, kT0, kT0 + absl::Hours(24 * 27), at_risk, lost)
          .empty());
  EXPECT_EQ(NoContactStages(v1::ENGAGEMENT_STAGE_MISSED_CONTACT, kT0, kT0 + absl::Hours(24 * 28),
                            at_risk, lost),
            std::vector<v1::EngagementStage>{v1::ENGAGEMENT_STAGE_AT_RISK});
  // A jump over a stage passes through it, in order.
  EXPECT_EQ(
      NoContactStages(v1::ENGAGEMENT_STAGE_ENGAGED, kT0, kT0 + absl::Hours(24 * 91), at_risk, lost),
      (std::vector<v1::EngagementStage>{v1::ENGAGEMENT_STAGE_AT_RISK,
                                        v1::ENGAGEMENT_STAGE_LOST_TO_FOLLOW_UP}));
  EXPECT_TRUE(NoContactStages(v1::ENGAGEMENT_STAGE_LOST_TO_FOLLOW_UP, kT0,
                              kT0 + absl::Hours(24 * 200), at_risk, lost)
                  .empty());
}

}  // namespace
}  // namespace peerpath::checkin
