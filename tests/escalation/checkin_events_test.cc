// Concerns raised by the check-in service: a real peerpath-checkin binary serves its event log,
// rows are written into its outbox as its own transactions would, and the escalation binary
// consumes them through --checkin_address: exactly one concern per event, routed at once, also
// when the log is delivered again.
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using namespace std::chrono_literals;

class CheckInEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    checkin_ = std::make_unique<ServiceProcess>("checkin", db_->UrlFor("checkin"));
    ASSERT_TRUE(checkin_->WaitListening()) << checkin_->Log();
    ASSERT_TRUE(checkin_->WaitHealth(true)) << checkin_->Log();
    token_file_ = std::make_unique<TokenFile>("platform", std::vector<std::string>{"service"},
                                              "svc-escalation");
    escalation_ = StartEscalation();
  }

  std::unique_ptr<ServiceProcess> StartEscalation() {
    auto process = std::make_unique<ServiceProcess>(
        "escalation", db_->UrlFor("escalation"),
        std::vector<std::string>{
            absl::StrCat("--checkin_address=127.0.0.1:", checkin_->grpc_port()),
            token_file_->Flag()});
    EXPECT_TRUE(process->WaitListening()) << process->Log();
    EXPECT_TRUE(process->WaitHealth(true)) << process->Log();
    return process;
  }

  // Writes a committed check-in event the way the check-in service's transactions do.
  void Emit(const google::protobuf::Message& payload, const std::string& enrollment_id) {
    db_->WriteOutboxEvent("checkin", "agency-a", payload, enrollment_id);
  }
  void Emit(const checkin::v1::ConcernRaisedEvent& payload) {
    Emit(payload, payload.enrollment_id());
  }

  int Count(const std::string& sql) { return db_->AdminQuery(sql)[0][0].as<int>(); }

  // Waits until the consumer applied the check-in log through `position`.
  bool WaitApplied(int position) {
    for (int i = 0; i < 200; ++i) {
      if (Count("SELECT coalesce(max(position), 0) FROM escalation.consumer_positions WHERE "
                "source = 'checkin'") >= position) {
        return true;
      }
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  bool WaitForConcerns(int n) {
    for (int i = 0; i < 200; ++i) {
      if (Count("SELECT count(*) FROM escalation.concerns") >= n) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<TokenFile> token_file_;
  std::unique_ptr<ServiceProcess> checkin_;
  std::unique_ptr<ServiceProcess> escalation_;
};

checkin::v1::ConcernRaisedEvent Raised(common::v1::ConcernCategory category,
                                       common::v1::ConcernSeverity severity) {
  checkin::v1::ConcernRaisedEvent e;
  e.set_enrollment_id("5f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b");
  e.set_participant_id("client-7");
  e.set_supporter_id("peer-9");
  e.set_category(category);
  e.set_severity(severity);
  e.set_source(checkin::v1::CONCERN_SOURCE_ROUTING_RULE);
  e.set_check_in_id("0b7e2a41-3c6d-4f58-9e1a-2b3c4d5e6f70");
  e.set_receiving_clinician("dr-lee");
  *e.mutable_raised_at() = ToProtoTimestamp(absl::Now() - absl::Minutes(2));
  return e;
}

TEST_F(CheckInEventsTest, EachConcernRaisedEventOpensExactlyOneRoutedConcern) {
  Emit(
      Raised(common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY, common::v1::CONCERN_SEVERITY_CRITICAL));
  Emit(
      Raised(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING, common::v1::CONCERN_SEVERITY_URGENT));
  Emit(Raised(common::v1::CONCERN_CATEGORY_UNSPECIFIED, common::v1::CONCERN_SEVERITY_UNSPECIFIED));
  ASSERT_TRUE(WaitForConcerns(3)) << escalation_->Log();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE raised_by = 'system:checkin' "
                  "AND raised_by_role = 'service' AND source = 'check_in_rule' AND "
                  "source_check_in_id IS NOT NULL AND source_event_id IS NOT NULL"),
            3);
  // Critical safety: clinical on-call at once; the clock started when check-in raised it.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE category = 'immediate_safety' "
                  "AND target_kind = 'clinical_on_call' AND ack_deadline < now() + interval "
                  "'14 minutes'"),
            1);
  // Urgent clinical worsening: the enrollment's receiving clinician.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE category = "
                  "'clinical_worsening' AND severity = 'urgent' AND target_kind = "
                  "'receiving_clinician' AND target_id = 'dr-lee'"),
            1);
  // Never dropped: unspecified becomes critical clinical worsening.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE category = "
                  "'clinical_worsening' AND severity = 'critical'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE event_type = "
                  "'peerpath.escalation.v1.RoutineEngagementStoppedEvent'"),
            1);

  // The whole log delivered again (position lost, restart): still one concern per event.
  escalation_.reset();
  db_->AdminQuery("UPDATE escalation.consumer_positions SET position = 0");
  escalation_ = StartEscalation();
  Emit(Raised(common::v1::CONCERN_CATEGORY_DISENGAGEMENT, common::v1::CONCERN_SEVERITY_ROUTINE));
  ASSERT_TRUE(WaitForConcerns(4)) << escalation_->Log();
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 4);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions WHERE kind = 'opened'"), 4);
}

TEST_F(CheckInEventsTest, RoutingPoliciesFollowTheProgramPolicysTimeZoneUntilAnAdminSetsOne) {
  auto stub = escalation::v1::EscalationService::NewStub(escalation_->Channel());
  auto admin = [] {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 20s);
    context->AddMetadata("authorization",
                         "Bearer " + TokenFor("agency-a", {"program_admin"}, "admin-1"));
    return context;
  };
  auto current = [&] {
    escalation::v1::GetRoutingPolicyResponse response;
    const grpc::Status status =
        stub->GetRoutingPolicy(admin().get(), escalation::v1::GetRoutingPolicyRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.policy();
  };
  int emitted = 0;
  auto set_zone = [&](const std::string& zone) {
    checkin::v1::ProgramPolicyChangedEvent changed;
    changed.set_time_zone(zone);
    Emit(changed, "agency-a");
    return WaitApplied(++emitted);
  };
  // Named before the agency's policy exists: the built-in version 1 takes it.
  ASSERT_TRUE(set_zone("America/New_York")) << escalation_->Log();
  auto policy = current();
  EXPECT_EQ(policy.version(), 1);
  EXPECT_EQ(policy.time_zone(), "America/New_York");
  // A change publishes a version with the new zone (open concerns keep their deadlines).
  ASSERT_TRUE(set_zone("Europe/Paris")) << escalation_->Log();
  policy = current();
  EXPECT_EQ(policy.version(), 2);
  EXPECT_EQ(policy.time_zone(), "Europe/Paris");
  EXPECT_EQ(policy.created_by(), "system:program_policy");
  // The same zone again publishes nothing.
  ASSERT_TRUE(set_zone("Europe/Paris")) << escalation_->Log();
  EXPECT_EQ(current().version(), 2);

  // A program admin edits the rules only: the zone still follows the program policy.
  escalation::v1::UpdateRoutingPolicyRequest edit;
  *edit.mutable_policy() = policy;
  edit.mutable_update_mask()->add_paths("holidays");
  edit.set_base_version(2);
  edit.set_idempotency_key("edit-1");
  escalation::v1::UpdateRoutingPolicyResponse edited;
  grpc::Status status = stub->UpdateRoutingPolicy(admin().get(), edit, &edited);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(set_zone("Europe/Berlin")) << escalation_->Log();
  policy = current();
  EXPECT_EQ(policy.version(), 4);
  EXPECT_EQ(policy.time_zone(), "Europe/Berlin");
  // Once the admin sets the zone in the routing policy, theirs stays.
  edit.mutable_policy()->set_time_zone("Asia/Tokyo");
  edit.mutable_update_mask()->add_paths("time_zone");
  edit.set_base_version(4);
  edit.set_idempotency_key("edit-2");
  status = stub->UpdateRoutingPolicy(admin().get(), edit, &edited);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(set_zone("America/Chicago")) << escalation_->Log();
  policy = current();
  EXPECT_EQ(policy.version(), 5);
  EXPECT_EQ(policy.time_zone(), "Asia/Tokyo");
  // A zone the tz database does not know, or none, is set aside; nothing changes.
  ASSERT_TRUE(set_zone("Mars/Olympus")) << escalation_->Log();
  ASSERT_TRUE(set_zone("")) << escalation_->Log();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.consumer_failures WHERE source = 'checkin' "
                  "AND event_type = 'peerpath.checkin.v1.ProgramPolicyChangedEvent'"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.agency_time_zones WHERE time_zone = "
                  "'America/Chicago'"),
            1);
  EXPECT_EQ(current().version(), 5);
}

// A page of the log is applied in runs (one read and one write of every table for a run of
// concerns), with the effect of applying its events one by one: each concern takes the routing
// policy of its place in the log and its own participant's supervisor; and a page holding an event
// that can never apply is redone one event at a time, the event set aside, the rest opened.
TEST_F(CheckInEventsTest, APageOfTheLogOpensItsConcernsAsOneByOneWould) {
  const auto raised = [](const std::string& participant, common::v1::ConcernCategory category) {
    checkin::v1::ConcernRaisedEvent e = Raised(category, common::v1::CONCERN_SEVERITY_URGENT);
    e.set_participant_id(participant);
    return e;
  };
  // client-4's active supporter is supervised by sup-4 (from the matching log); client-5 has none.
  db_->AdminQuery(
      "INSERT INTO escalation.supporter_matches (agency_id, match_id, supporter_id, "
      "supporter_subject, participant_id, started_at, supervisor_subject) VALUES ('agency-a', "
      "gen_random_uuid(), gen_random_uuid(), 'peer-4', 'client-4', now(), 'sup-4')");
  // The whole page is in the log before the consumer reads it.
  escalation_.reset();
  Emit(raised("client-1", common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING));
  checkin::v1::ProgramPolicyChangedEvent changed;
  changed.set_time_zone("Europe/Paris");
  Emit(changed, "agency-a");
  Emit(raised("client-4", common::v1::CONCERN_CATEGORY_ROLE_BOUNDARY));
  // Another agency's concern between them (a page's events are applied an agency at a time).
  db_->WriteOutboxEvent("checkin", "agency-b",
                        raised("client-4", common::v1::CONCERN_CATEGORY_ROLE_BOUNDARY),
                        "5f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b");
  Emit(raised("client-5", common::v1::CONCERN_CATEGORY_ROLE_BOUNDARY));
  escalation_ = StartEscalation();
  ASSERT_TRUE(WaitApplied(5)) << escalation_->Log();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.consumer_failures"), 0);
  // Opened before the zone changed: the built-in version 1, stored by this concern.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE participant_id = 'client-1' "
                  "AND policy_version = 1 AND target_kind = 'receiving_clinician'"),
            1);
  // After it: version 2 (Europe/Paris), each participant's own supervisor or, with none, the
  // chain's next level.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE participant_id = 'client-4' "
                  "AND policy_version = 2 AND target_kind = 'supervisor' AND "
                  "target_id = 'sup-4'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE participant_id = 'client-5' "
                  "AND policy_version = 2 AND target_kind = 'case_management_team'"),
            1);
  // agency-b's: its own built-in policy (in UTC), and no supervisor (client-4's match is
  // agency-a's).
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE agency_id = 'agency-b' AND "
                  "participant_id = 'client-4' AND policy_version = 1 AND target_kind = "
                  "'case_management_team'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.routing_policies WHERE agency_id = "
                  "'agency-b' AND time_zone = 'UTC'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions"), 8);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE event_type IN "
                  "('peerpath.escalation.v1.ConcernOpenedEvent', "
                  "'peerpath.escalation.v1.ConcernRoutedEvent')"),
            8);

  // A concern whose payload cannot be read, between two that can, in one page.
  escalation_.reset();
  Emit(raised("client-6", common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING));
  db_->AdminQuery(
      "INSERT INTO checkin.outbox (agency_id, event_type, aggregate_id, payload) VALUES "
      "('agency-a', 'peerpath.checkin.v1.ConcernRaisedEvent', 'unreadable', '\\xff'::bytea)");
  Emit(raised("client-7", common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING));
  escalation_ = StartEscalation();
  ASSERT_TRUE(WaitApplied(8)) << escalation_->Log();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.consumer_failures WHERE source = 'checkin' "
                  "AND event_type = 'peerpath.checkin.v1.ConcernRaisedEvent'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE participant_id IN "
                  "('client-6', 'client-7')"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 6);
}

TEST_F(CheckInEventsTest, ConcernsRaisedByHandUseTheEnrollmentTheCheckInLogDescribes) {
  const std::string enrollment = "6a1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4c";
  checkin::v1::EnrollmentStartedEvent started;
  started.set_enrollment_id(enrollment);
  started.set_participant_id("client-7");
  started.set_pathway_key("early_engagement");
  started.set_receiving_clinician("dr-okafor");
  Emit(started, enrollment);
  bool known = false;
  for (int i = 0; i < 200 && !known; ++i) {
    known = Count("SELECT count(*) FROM escalation.enrollments") == 1;
    if (!known) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(known) << escalation_->Log();

  auto stub = escalation::v1::EscalationService::NewStub(escalation_->Channel());
  auto raise = [&](const std::string& participant, const std::string& enrollment_id,
                   const std::string& key, escalation::v1::RaiseConcernResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 20s);
    context.AddMetadata("authorization",
                        "Bearer " + TokenFor("agency-a", {"case_manager"}, "cm-1"));
    escalation::v1::RaiseConcernRequest request;
    request.set_participant_id(participant);
    request.set_enrollment_id(enrollment_id);
    request.set_category(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING);
    request.set_severity(common::v1::CONCERN_SEVERITY_URGENT);
    request.set_idempotency_key(key);
    return stub->RaiseConcern(&context, request, response);
  };
  // The enrollment's receiving clinician holds an urgent clinical worsening concern.
  escalation::v1::RaiseConcernResponse response;
  grpc::Status status = raise("client-7", enrollment, "raise-1", &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE target_kind = "
                  "'receiving_clinician' AND target_id = 'dr-okafor'"),
            1);
  // Another participant's enrollment is refused, naming the field; nothing is stored.
  status = raise("client-8", enrollment, "raise-2", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(status.error_message().find("enrollment_id"), std::string::npos);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 1);
  // An enrollment the log has not shown yet never holds a concern back.
  status = raise("client-8", "7a1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4d", "raise-3", &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 2);
}

}  // namespace
}  // namespace peerpath::testing
