// The check-in service end to end: the real binary on a real PostgreSQL, a stand-in consent
// service over real gRPC (its gates held or not as each test says), peer relationships seeded the
// way the matching service's events leave them.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"
#include "peerpath/consent/v1/events.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "peerpath/matching/v1/events.pb.h"
#include "services/checkin/store.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using namespace std::chrono_literals;
namespace v1 = peerpath::checkin::v1;

constexpr char kAgency[] = "agency-a";
constexpr char kSupporterId[] = "11111111-1111-4111-8111-111111111111";

// ConsentService.CheckGates answering from a set of held gates.
class FakeConsent final : public consent::v1::ConsentService::Service {
 public:
  grpc::Status CheckGates(grpc::ServerContext* context,
                          const consent::v1::CheckGatesRequest* request,
                          consent::v1::CheckGatesResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_;
    const auto auth = context->client_metadata().find("authorization");
    if (auth == context->client_metadata().end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no token");
    }
    bool all = true;
    for (const auto& gate : request->gates()) {
      auto* r = response->add_results();
      r->set_gate(gate);
      r->set_held(held_.contains(gate));
      if (r->held()) {
        r->add_consent_ids("c-" + gate);
      } else {
        r->set_message("no consent for care coordination is in effect");
        all = false;
      }
    }
    response->set_all_held(all);
    return grpc::Status::OK;
  }
  // Permits what Permit() named (subject of the actor); records each question.
  grpc::Status CheckAccess(grpc::ServerContext*, const consent::v1::CheckAccessRequest* request,
                           consent::v1::CheckAccessResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    access_questions_.push_back(*request);
    const bool permit = permitted_.contains(request->actor().subject());
    response->set_decision(permit ? consent::v1::ACCESS_DECISION_PERMIT
                                  : consent::v1::ACCESS_DECISION_DENY);
    if (!permit) response->set_message("no consent names this recipient");
    return grpc::Status::OK;
  }
  // The consent service's event log (what Publish added), for the check-in consumer.
  grpc::Status ListEvents(grpc::ServerContext*, const consent::v1::ListEventsRequest* request,
                          consent::v1::ListEventsResponse* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : events_) {
      if (e.position() > request->after_position()) *response->add_events() = e;
    }
    response->set_head_position(static_cast<int64_t>(events_.size()));
    return grpc::Status::OK;
  }
  void Hold(std::set<std::string> gates) {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = std::move(gates);
  }
  void Publish(const google::protobuf::Message& payload, const std::string& agency) {
    std::lock_guard<std::mutex> lock(mu_);
    common::v1::Event& e = events_.emplace_back();
    e.set_position(static_cast<int64_t>(events_.size()));
    e.set_event_id(absl::StrFormat("00000000-0000-4000-8000-%012d", events_.size()));
    e.set_agency_id(agency);
    e.set_type(std::string(payload.GetDescriptor()->full_name()));
    e.mutable_payload()->PackFrom(payload);
    *e.mutable_occurred_at() = ToProtoTimestamp(absl::Now());
  }
  void Permit(std::set<std::string> subjects) {
    std::lock_guard<std::mutex> lock(mu_);
    permitted_ = std::move(subjects);
  }
  std::vector<consent::v1::CheckAccessRequest> access_questions() {
    std::lock_guard<std::mutex> lock(mu_);
    return access_questions_;
  }
  int calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::set<std::string> held_;
  std::set<std::string> permitted_;
  std::vector<consent::v1::CheckAccessRequest> access_questions_;
  std::vector<common::v1::Event> events_;
  int calls_ = 0;
};

google::rpc::Status Details(const grpc::Status& status) {
  google::rpc::Status details;
  details.ParseFromString(status.error_details());
  return details;
}

std::set<std::string> BadFields(const grpc::Status& status) {
  std::set<std::string> out;
  const google::rpc::Status details = Details(status);
  for (const auto& any : details.details()) {
    google::rpc::BadRequest bad;
    if (any.UnpackTo(&bad)) {
      for (const auto& v : bad.field_violations()) out.insert(v.field());
    }
  }
  return out;
}

std::set<std::string> UnmetGates(const grpc::Status& status) {
  std::set<std::string> out;
  const google::rpc::Status details = Details(status);
  for (const auto& any : details.details()) {
    google::rpc::PreconditionFailure failure;
    if (any.UnpackTo(&failure)) {
      for (const auto& v : failure.violations()) out.insert(v.subject());
    }
  }
  return out;
}

v1::Answer Enum(const std::string& key, const std::string& value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_enum_value(value);
  return a;
}
v1::Answer Bool(const std::string& key, bool value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_bool_value(value);
  return a;
}
v1::Answer Text(const std::string& key, const std::string& value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_text_value(value);
  return a;
}
v1::Answer Scale(const std::string& key, int value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_scale_value(value);
  return a;
}
v1::Answer Date(const std::string& key) {
  v1::Answer a;
  a.set_field_key(key);
  a.mutable_date_value()->set_year(2026);
  a.mutable_date_value()->set_month(12);
  a.mutable_date_value()->set_day(1);
  return a;
}

// A complete, valid set of answers per default pathway.
std::vector<v1::Answer> ValidAnswers(const std::string& pathway) {
  if (pathway == "early_engagement") {
    return {Enum("peer_support_offer", "offered"),
            Enum("person_preference", "wants_peer_support"),
            Enum("engagement_barrier_identified", "unsure_what_to_expect"),
            Bool("peer_contact_completed", true),
            Bool("information_shared_with_consent", true),
            Enum("next_appointment_status", "scheduled"),
            Enum("follow_up_action", "support_first_appointment")};
  }
  if (pathway == "step_down") {
    return {Text("step_down_reason", "stable"),
            Text("peer_support_purpose", "routine"),
            Text("recovery_goals", "walks"),
            Text("warning_signs", "sleep"),
            Text("community_connection_plan", "group"),
            Date("clinical_review_date"),
            Text("escalation_route", "call the team")};
  }
  if (pathway == "crisis_transition") {
    return {Enum("transition_source", "crisis_stabilization"),
            Text("peer_role", "bridge"),
            Enum("consent_status", "full"),
            Date("first_appointment_date"),
            Enum("engagement_concern", "may_cancel"),
            Enum("peer_contact_outcome", "reached"),
            Enum("concerns_routed", "none"),
            Bool("receiving_clinician_notified", true)};
  }
  return {Text("opening_question", "How was the week?"), Scale("wellbeing", 4),
          Bool("encouragement_to_seek_support_given", true), Enum("concern_noticed", "none")};
}

class CheckInServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &consent_port_);
    builder.RegisterService(&consent_);
    consent_server_ = builder.BuildAndStart();
    ASSERT_NE(consent_server_, nullptr);
    token_file_ = std::make_unique<TokenFile>("peerpath", std::vector<std::string>{"service"},
                                              "peerpath-checkin");
    db_ = TestDatabase::Create();
    service_ = std::make_unique<ServiceProcess>(
        "checkin", db_->UrlFor("checkin"),
        std::vector<std::string>{"--consent_address=127.0.0.1:" + std::to_string(consent_port_),
                                 token_file_->Flag(), "--checkin_sweep_interval=300ms"});
    ASSERT_TRUE(service_->WaitListening()) << service_->Log();
    ASSERT_TRUE(service_->WaitHealth(true)) << service_->Log();
    stub_ = v1::CheckInService::NewStub(service_->Channel());
    // What the matching service's MatchStartedEvent leaves: peer-1 supports p-1 .. p-9.
    for (int i = 1; i <= 9; ++i) Match("p-" + std::to_string(i), "peer-1", kSupporterId);
  }

  void TearDown() override {
    if (consent_server_) consent_server_->Shutdown();
  }

  // An active match of `participant` with supporter `subject`, who `supervisor` supervises.
  void Match(const std::string& participant, const std::string& subject,
             const std::string& supporter_id, const std::string& supervisor = "supervisor-1") {
    db_->AdminQuery(
        "INSERT INTO checkin.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, started_at, supervisor_subject) VALUES ('" +
        std::string(kAgency) + "', gen_random_uuid(), '" + supporter_id + "', '" + subject +
        "', '" + participant + "', now(), '" + supervisor + "')");
  }

  static std::unique_ptr<grpc::ClientContext> As(const std::vector<std::string>& roles,
                                                 const std::string& subject = "staff-1",
                                                 const std::string& agency = kAgency) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 20s);
    context->AddMetadata("authorization", "Bearer " + TokenFor(agency, roles, subject));
    return context;
  }

  int Count(const std::string& sql) { return db_->AdminQuery(sql)[0][0].as<int>(); }
  int Events(const std::string& type) {
    return Count(
        "SELECT count(*) FROM checkin.outbox WHERE event_type = "
        "'peerpath.checkin.v1." +
        type + "'");
  }

  v1::CreateEnrollmentRequest Enrollment(const std::string& pathway,
                                         const std::string& participant) {
    v1::CreateEnrollmentRequest request;
    request.set_participant_id(participant);
    request.set_pathway_key(pathway);
    request.mutable_schedule()->mutable_every_n_days()->set_interval_days(1);
    auto* owners = request.mutable_owners();
    owners->set_appointment_owner("scheduling-team");
    owners->set_receiving_clinician("dr-lee");
    owners->set_receiving_team("east-team");
    owners->set_clinical_follow_up_owner("dr-lee");
    if (pathway == "step_down") {
      request.mutable_review_on()->set_year(2099);
      request.mutable_review_on()->set_month(1);
      request.mutable_review_on()->set_day(1);
    }
    request.set_idempotency_key("enroll-" + pathway + "-" + participant + "-" +
                                std::to_string(++keys_));
    return request;
  }

  grpc::Status Enroll(const v1::CreateEnrollmentRequest& request, v1::Enrollment* out = nullptr) {
    v1::CreateEnrollmentResponse response;
    grpc::Status status = stub_->CreateEnrollment(As({"case_manager"}).get(), request, &response);
    if (out != nullptr) *out = response.enrollment();
    return status;
  }

  // Enrolls with every gate held; returns the enrollment id.
  std::string Enrolled(const std::string& pathway, const std::string& participant) {
    consent_.Hold({"consent_information_sharing", "agreement_to_peer_involvement",
                   "consent_aligned_communication"});
    v1::Enrollment e;
    grpc::Status status = Enroll(Enrollment(pathway, participant), &e);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return e.enrollment_id();
  }

  v1::RecordCheckInRequest CheckIn(const std::string& enrollment_id,
                                   std::vector<v1::Answer> answers) {
    v1::RecordCheckInRequest request;
    request.set_enrollment_id(enrollment_id);
    *request.mutable_occurred_at() = ToProtoTimestamp(absl::Now());
    request.set_contact_mode(v1::CONTACT_MODE_PHONE);
    for (auto& a : answers) *request.add_answers() = std::move(a);
    request.set_idempotency_key("check-in-" + std::to_string(++keys_));
    return request;
  }

  v1::RecordContactAttemptRequest Attempt(const std::string& enrollment_id,
                                          v1::ContactChannel channel, v1::ContactOutcome outcome,
                                          const std::string& key) {
    v1::RecordContactAttemptRequest request;
    request.set_enrollment_id(enrollment_id);
    request.set_channel(channel);
    request.set_outcome(outcome);
    *request.mutable_attempted_at() = ToProtoTimestamp(absl::Now());
    request.set_idempotency_key(key);
    return request;
  }

  grpc::Status Record(const v1::RecordCheckInRequest& request, v1::RecordCheckInResponse* response,
                      const std::string& subject = "peer-1",
                      const std::string& role = "peer_supporter",
                      const std::string& agency = kAgency) {
    return stub_->RecordCheckIn(As({role}, subject, agency).get(), request, response);
  }

  // Enrolls p-1 in structured_checkin, then stops the service (nothing else reads the tables
  // while a test counts) and copies the enrollment `copies` times in the database, analysed: copy
  // g (from 1) has participant client-g, a new id and the columns `overrides` names (arguments of
  // jsonb_build_object, which may use g). Returns p-1's enrollment.
  std::string EnrolledWithCopies(int copies, const std::string& overrides) {
    const std::string enrollment = Enrolled("structured_checkin", "p-1");
    service_->Signal(SIGKILL);
    service_->WaitExit(5s);
    db_->AdminQuery(absl::StrCat(
        "SET session_replication_role = replica; INSERT INTO checkin.enrollments SELECT "
        "(jsonb_populate_record(e, jsonb_build_object('id', gen_random_uuid(), 'participant_id', "
        "'client-' || g, ",
        overrides, "))).* FROM checkin.enrollments e, generate_series(1, ", copies,
        ") g WHERE e.id = '", enrollment,
        "'; SET session_replication_role = DEFAULT; ANALYZE checkin.enrollments"));
    return enrollment;
  }

  // Sends every request at once, each from its own thread; the responses and statuses in order.
  std::vector<v1::RecordCheckInResponse> RecordAtOnce(
      const std::vector<v1::RecordCheckInRequest>& requests, std::vector<grpc::Status>& statuses) {
    statuses.assign(requests.size(), grpc::Status());
    std::vector<v1::RecordCheckInResponse> responses(requests.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < requests.size(); ++i) {
      threads.emplace_back([&, i] { statuses[i] = Record(requests[i], &responses[i]); });
    }
    for (auto& t : threads) t.join();
    return responses;
  }

  FakeConsent consent_;
  int consent_port_ = 0;
  std::unique_ptr<grpc::Server> consent_server_;
  std::unique_ptr<TokenFile> token_file_;
  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<ServiceProcess> service_;
  std::unique_ptr<v1::CheckInService::Stub> stub_;
  int keys_ = 0;
};

TEST_F(CheckInServiceTest, EarlyEngagementProceedsOnlyWhenEveryGateHolds) {
  consent_.Hold({});
  v1::CreateEnrollmentRequest request = Enrollment("early_engagement", "p-1");
  request.clear_owners();
  grpc::Status status = Enroll(request);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
  EXPECT_EQ(UnmetGates(status), (std::set<std::string>{"consent_information_sharing",
                                                       "appointment_owner", "escalation_route"}));
  EXPECT_NE(status.error_message().find("consent_information_sharing"), std::string::npos);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments"), 0);

  // Owners named, consent still missing: only the consent gate is unmet.
  request = Enrollment("early_engagement", "p-1");
  status = Enroll(request);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(UnmetGates(status), (std::set<std::string>{"consent_information_sharing"}));

  // The same key after consent was recorded: decided afresh, and it proceeds.
  consent_.Hold({"consent_information_sharing"});
  v1::Enrollment e;
  status = Enroll(request, &e);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(e.pathway_version(), 1);
  EXPECT_TRUE(e.routine());
  EXPECT_EQ(e.engagement_stage(), v1::ENGAGEMENT_STAGE_ENGAGED);
  ASSERT_EQ(e.gate_results_size(), 3);
  for (const auto& g : e.gate_results()) EXPECT_TRUE(g.held());
  EXPECT_EQ(e.gate_results(0).consent_ids(0), "c-consent_information_sharing");
  EXPECT_EQ(Events("EnrollmentStartedEvent"), 1);

  // A retry returns the same enrollment; a second active enrollment in the pathway is refused.
  v1::Enrollment again;
  ASSERT_TRUE(Enroll(request, &again).ok());
  EXPECT_EQ(again.enrollment_id(), e.enrollment_id());
  EXPECT_EQ(Enroll(Enrollment("early_engagement", "p-1")).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Events("EnrollmentStartedEvent"), 1);
}

// ListDueCheckIns reads the occurrences it asks for by their key, as the service runs it (its
// role, under row-level security): with casts in the join clause it read every occurrence of the
// agency for each list.
TEST_F(CheckInServiceTest, ADueListReadsTheOccurrencesItAsksForByTheirKey) {
  // A year of daily occurrences for 100 enrollments of each of two agencies (the enrollments
  // themselves do not matter to the plan: foreign keys are not checked for this load).
  db_->AdminQuery(
      "SET session_replication_role = replica; INSERT INTO checkin.scheduled_check_ins "
      "(agency_id, enrollment_id, due_on, window_start, window_end) SELECT 'agency-' || "
      "(CASE WHEN e % 2 = 0 THEN 'a' ELSE 'b' END), ('00000000-0000-4000-8000-' || "
      "lpad(e::text, 12, '0'))::uuid, current_date - d, now() - d * interval '1 day', now() - d "
      "* interval '1 day' + interval '1 hour' FROM generate_series(1, 200) e, "
      "generate_series(0, 364) d; SET session_replication_role = DEFAULT; "
      "ANALYZE checkin.scheduled_check_ins");
  const std::string plan =
      db_->PlanAsService("checkin", "agency-a", "text, text", checkin::kAskedOccurrencesSql,
                         "'{00000000-0000-4000-8000-000000000002}', '{2026-11-20}'");
  EXPECT_NE(plan.find("Index Scan using scheduled_check_ins_agency_id_enrollment_id_due_on_key"),
            std::string::npos)
      << plan;
  EXPECT_EQ(plan.find("Seq Scan on scheduled_check_ins"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Bitmap Heap Scan on scheduled_check_ins"), std::string::npos) << plan;
}

// ListCheckIns by enrollment reads that enrollment's check-ins from its index, as the service
// runs it (its role, under row-level security): it compared the enrollment as text and read the
// whole table.
TEST_F(CheckInServiceTest, AListByEnrollmentReadsThatEnrollmentsCheckInsByItsIndex) {
  // A year of daily check-ins for 100 enrollments of each of two agencies (foreign keys are not
  // checked for this load: the plan is what is tested).
  db_->AdminQuery(
      "SET session_replication_role = replica; INSERT INTO checkin.check_ins (agency_id, "
      "enrollment_id, participant_id, recorded_by, recorded_by_role, pathway_key, "
      "pathway_version, answers, occurred_at) SELECT 'agency-' || (CASE WHEN e % 2 = 0 THEN 'a' "
      "ELSE 'b' END), ('00000000-0000-4000-8000-' || lpad(e::text, 12, '0'))::uuid, "
      "'client-' || e, 'peer-1', 'peer_supporter', 'structured_check_in', 1, '{}', now() - d * "
      "interval '1 day' FROM generate_series(1, 200) e, generate_series(0, 364) d; "
      "SET session_replication_role = DEFAULT; ANALYZE checkin.check_ins");
  const std::string plan = db_->PlanAsService(
      "checkin", "agency-a", "text, text, text, boolean, text, text, integer, text",
      checkin::ListCheckInsSql(),
      "'00000000-0000-4000-8000-000000000002', '', '', false, '', "
      "'00000000-0000-0000-0000-000000000000', 51, ''");
  EXPECT_NE(plan.find("Index Cond: ((agency_id = "), std::string::npos) << plan;
  EXPECT_NE(plan.find("check_ins_by_enrollment"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Seq Scan on check_ins"), std::string::npos) << plan;
}

// Whether an owner named for an enrollment or an appointment is a peer supporter is read by
// index, as the service runs it (its role, under row-level security): it matched every one of the
// agency's matches against each owner, by subject or by the supporter's id as text.
TEST_F(CheckInServiceTest, APeerOwnerCheckLooksTheOwnersUpByIndex) {
  db_->AdminQuery(
      "INSERT INTO checkin.supporter_matches (agency_id, match_id, supporter_id, "
      "supporter_subject, participant_id, active, ended_at) SELECT 'agency-' || (CASE WHEN g % 2 "
      "= 0 THEN 'a' ELSE 'b' END), gen_random_uuid(), ('00000000-0000-4000-8000-' || lpad((g % "
      "2000)::text, 12, '0'))::uuid, 'peer-' || (g % 2000), 'client-' || g, g % 3 <> 0, CASE "
      "WHEN g % 3 = 0 THEN now() END FROM generate_series(1, 20000) g; "
      "ANALYZE checkin.supporter_matches");
  const std::string plan =
      db_->PlanAsService("checkin", "agency-a", "text", checkin::kKnownPeerSupportersSql,
                         "'{peer-2,00000000-0000-4000-8000-000000000004,dr-a}'");
  EXPECT_NE(plan.find("supporter_matches_by_subject"), std::string::npos) << plan;
  EXPECT_NE(plan.find("supporter_matches_by_supporter"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Seq Scan on supporter_matches"), std::string::npos) << plan;
}

TEST_F(CheckInServiceTest, AnEnrollmentCarriesItsProgramIntoItsEvent) {
  consent_.Hold({"consent_information_sharing"});
  v1::CreateEnrollmentRequest request = Enrollment("early_engagement", "p-1");
  request.set_program_id("bad program");
  grpc::Status status = Enroll(request);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status), (std::set<std::string>{"program_id"}));
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments"), 0);

  request.set_program_id("east-county.2026");
  v1::Enrollment e;
  ASSERT_TRUE(Enroll(request, &e).ok());
  EXPECT_EQ(e.program_id(), "east-county.2026");
  v1::GetEnrollmentRequest get;
  get.set_enrollment_id(e.enrollment_id());
  v1::GetEnrollmentResponse got;
  ASSERT_TRUE(stub_->GetEnrollment(As({"clinician"}).get(), get, &got).ok());
  EXPECT_EQ(got.enrollment().program_id(), "east-county.2026");
  v1::Enrollment without;
  ASSERT_TRUE(Enroll(Enrollment("early_engagement", "p-2"), &without).ok());
  EXPECT_EQ(without.program_id(), "");

  // The event carries the program and the schedule's time zone (evaluation scopes reports by it).
  const auto payloads =
      db_->OutboxPayloads("checkin", "peerpath.checkin.v1.EnrollmentStartedEvent");
  ASSERT_EQ(payloads.size(), 2u);
  v1::EnrollmentStartedEvent started;
  ASSERT_TRUE(started.ParseFromString(payloads[0]));
  EXPECT_EQ(started.program_id(), "east-county.2026");
  EXPECT_EQ(started.time_zone(), e.time_zone());
  EXPECT_FALSE(started.time_zone().empty());
  ASSERT_TRUE(started.ParseFromString(payloads[1]));
  EXPECT_EQ(started.program_id(), "");
}

TEST_F(CheckInServiceTest, ParticipantFeedbackIsStoredOnceAndItsCommentNeverLeaves) {
  const std::string enrollment = Enrolled("early_engagement", "p-1");
  v1::RecordParticipantFeedbackRequest request;
  request.set_enrollment_id(enrollment);
  request.set_rating(4);
  request.set_comment("She listens without judging");
  *request.mutable_given_at() = ToProtoTimestamp(absl::Now());
  request.set_idempotency_key("feedback-1");
  auto record = [&](const v1::RecordParticipantFeedbackRequest& r,
                    const std::vector<std::string>& roles, const std::string& subject,
                    v1::RecordParticipantFeedbackResponse* out = nullptr,
                    const std::string& agency = kAgency) {
    v1::RecordParticipantFeedbackResponse ignored;
    return stub_->RecordParticipantFeedback(As(roles, subject, agency).get(), r,
                                            out != nullptr ? out : &ignored);
  };

  // Every bad field is named; nothing is stored.
  v1::RecordParticipantFeedbackRequest bad = request;
  bad.set_enrollment_id("not-a-uuid");
  bad.set_rating(6);
  bad.set_comment(std::string(2001, 'x'));
  bad.clear_given_at();
  bad.clear_idempotency_key();
  grpc::Status status = record(bad, {"peer_supporter"}, "peer-1");
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status), (std::set<std::string>{"enrollment_id", "rating", "comment",
                                                      "given_at", "idempotency_key"}));
  bad = request;
  bad.set_rating(0);
  *bad.mutable_given_at() = ToProtoTimestamp(absl::Now() + absl::Hours(1));
  EXPECT_EQ(BadFields(record(bad, {"peer_supporter"}, "peer-1")),
            (std::set<std::string>{"rating", "given_at"}));
  bad = request;
  bad.set_idempotency_key("feedback-early");
  *bad.mutable_given_at() = ToProtoTimestamp(absl::Now() - absl::Hours(24 * 400));
  EXPECT_EQ(BadFields(record(bad, {"peer_supporter"}, "peer-1")),
            (std::set<std::string>{"given_at"}));

  // Refusals: another peer supporter, operations, another agency.
  EXPECT_EQ(record(request, {"peer_supporter"}, "peer-2").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(record(request, {"operations"}, "ops-1").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(record(request, {"case_manager"}, "cm-9", nullptr, "other-agency").error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.participant_feedback"), 0);

  // The participant's supporter records it; a retry returns the same feedback and writes nothing.
  v1::RecordParticipantFeedbackResponse first, again;
  status = record(request, {"peer_supporter"}, "peer-1", &first);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(record(request, {"peer_supporter"}, "peer-1", &again).ok());
  EXPECT_EQ(first.feedback().feedback_id(), again.feedback().feedback_id());
  EXPECT_EQ(first.feedback().rating(), 4);
  EXPECT_EQ(first.feedback().recorded_by_role(), "peer_supporter");
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.participant_feedback"), 1);
  EXPECT_EQ(Events("FeedbackRecordedEvent"), 1);
  const auto payloads = db_->OutboxPayloads("checkin", "peerpath.checkin.v1.FeedbackRecordedEvent");
  ASSERT_EQ(payloads.size(), 1u);
  const std::string& payload = payloads[0];
  v1::FeedbackRecordedEvent event;
  ASSERT_TRUE(event.ParseFromString(payload));
  EXPECT_EQ(event.rating(), 4);
  EXPECT_EQ(event.enrollment_id(), enrollment);
  EXPECT_EQ(event.participant_id(), "p-1");
  EXPECT_EQ(event.supporter_id(), kSupporterId);
  EXPECT_EQ(event.pathway_key(), "early_engagement");
  EXPECT_EQ(payload.find("listens"), std::string::npos);

  // Staff read it, comment included; peer supporters do not read feedback about their support.
  v1::ListParticipantFeedbackRequest list;
  list.set_enrollment_id(enrollment);
  v1::ListParticipantFeedbackResponse listed;
  ASSERT_TRUE(stub_->ListParticipantFeedback(As({"case_manager"}).get(), list, &listed).ok());
  ASSERT_EQ(listed.feedback_size(), 1);
  EXPECT_EQ(listed.feedback(0).comment(), "She listens without judging");
  EXPECT_EQ(listed.feedback(0).recorded_by(), "peer-1");
  EXPECT_EQ(stub_->ListParticipantFeedback(As({"peer_supporter"}, "peer-1").get(), list, &listed)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(stub_
                ->ListParticipantFeedback(As({"case_manager"}, "cm-9", "other-agency").get(), list,
                                          &listed)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  // A supervisor reads it only for the participants of the supporters they supervise.
  EXPECT_TRUE(
      stub_->ListParticipantFeedback(As({"supervisor"}, "supervisor-1").get(), list, &listed).ok());
  EXPECT_EQ(stub_->ListParticipantFeedback(As({"supervisor"}, "supervisor-2").get(), list, &listed)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Pages: five more entries, three of them given at the same moment; pages of two list all six
  // once, newest first, and a token only continues its own list and enrollment.
  db_->AdminQuery(
      "INSERT INTO checkin.participant_feedback (id, agency_id, enrollment_id, participant_id, "
      "rating, given_at, recorded_by, recorded_by_role) SELECT gen_random_uuid(), 'agency-a', '" +
      enrollment +
      "', 'p-1', 3, now() - make_interval(days => least(k, 3)), 'cm-1', 'case_manager' FROM "
      "generate_series(1, 5) k");
  list.set_page_size(2);
  std::vector<std::string> ids;
  std::vector<int64_t> given;
  std::string first_token;
  for (int page = 0; page < 10; ++page) {
    listed.Clear();
    ASSERT_TRUE(stub_->ListParticipantFeedback(As({"case_manager"}).get(), list, &listed).ok());
    EXPECT_LE(listed.feedback_size(), 2);
    for (const auto& f : listed.feedback()) {
      ids.push_back(f.feedback_id());
      given.push_back(f.given_at().seconds());
    }
    if (first_token.empty()) first_token = listed.next_page_token();
    if (listed.next_page_token().empty()) break;
    list.set_page_token(listed.next_page_token());
  }
  EXPECT_EQ(ids.size(), 6u);
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 6u) << "none twice";
  EXPECT_TRUE(std::is_sorted(given.rbegin(), given.rend())) << "newest first";
  v1::ListParticipantFeedbackRequest other;
  other.set_enrollment_id(Enrolled("early_engagement", "p-2"));
  other.set_page_token(first_token);
  EXPECT_EQ(stub_->ListParticipantFeedback(As({"case_manager"}).get(), other, &listed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  other.set_page_token("");
  other.set_page_size(-1);
  EXPECT_EQ(stub_->ListParticipantFeedback(As({"case_manager"}).get(), other, &listed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CheckInServiceTest, ConsentEventsCheckTheGatesOfActiveEnrollmentsAgain) {
  const std::string enrollment = Enrolled("early_engagement", "p-1");
  Enrolled("early_engagement", "p-2");
  auto get = [&] {
    v1::GetEnrollmentRequest request;
    request.set_enrollment_id(enrollment);
    v1::GetEnrollmentResponse response;
    EXPECT_TRUE(stub_->GetEnrollment(As({"clinician"}).get(), request, &response).ok());
    return response.enrollment();
  };
  auto wait_changes = [&](int n) {
    for (int i = 0; i < 200; ++i) {
      if (Events("EnrollmentConsentGatesChangedEvent") >= n) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  };
  ASSERT_TRUE(get().consent_gates_held());

  // The participant revokes the information-sharing consent: the gate stops holding.
  consent_.Hold({"agreement_to_peer_involvement", "consent_aligned_communication"});
  consent::v1::ConsentRevokedEvent revoked;
  revoked.set_consent_id("c-consent_information_sharing");
  revoked.set_participant_id("p-1");
  consent_.Publish(revoked, kAgency);
  ASSERT_TRUE(wait_changes(1)) << service_->Log();
  v1::Enrollment e = get();
  EXPECT_FALSE(e.consent_gates_held());
  bool seen = false;
  for (const auto& g : e.gate_results()) {
    if (g.gate().consent_gate() == "consent_information_sharing") {
      seen = true;
      EXPECT_FALSE(g.held());
    }
  }
  EXPECT_TRUE(seen);
  EXPECT_EQ(Events("EnrollmentConsentGatesChangedEvent"), 1);  // p-2's enrollment unchanged.
  const auto payloads =
      db_->OutboxPayloads("checkin", "peerpath.checkin.v1.EnrollmentConsentGatesChangedEvent");
  ASSERT_EQ(payloads.size(), 1u);
  v1::EnrollmentConsentGatesChangedEvent changed;
  ASSERT_TRUE(changed.ParseFromString(payloads[0]));
  EXPECT_EQ(changed.enrollment_id(), enrollment);
  EXPECT_FALSE(changed.consent_gates_held());
  EXPECT_EQ(std::vector<std::string>(changed.unmet_gates().begin(), changed.unmet_gates().end()),
            std::vector<std::string>{"consent_information_sharing"});

  // Another consent event that changes nothing writes nothing; a new consent restores the gate.
  consent_.Publish(revoked, kAgency);
  consent::v1::ConsentGrantedEvent granted;
  granted.set_consent_id("c-2");
  granted.set_participant_id("p-1");
  consent_.Hold({"consent_information_sharing", "agreement_to_peer_involvement",
                 "consent_aligned_communication"});
  consent_.Publish(granted, kAgency);
  ASSERT_TRUE(wait_changes(2)) << service_->Log();
  EXPECT_TRUE(get().consent_gates_held());
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(Events("EnrollmentConsentGatesChangedEvent"), 2);
}

TEST_F(CheckInServiceTest, StepDownNeedsReviewDateAgreementAndReceivingTeam) {
  consent_.Hold({});
  v1::CreateEnrollmentRequest request = Enrollment("step_down", "p-2");
  request.clear_review_on();
  grpc::Status status = Enroll(request);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(BadFields(status).contains("ends_on"));

  request = Enrollment("step_down", "p-2");
  request.mutable_owners()->clear_receiving_team();
  status = Enroll(request);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(UnmetGates(status),
            (std::set<std::string>{"receiving_team_confirmed", "agreement_to_peer_involvement"}));

  consent_.Hold({"agreement_to_peer_involvement"});
  EXPECT_TRUE(Enroll(Enrollment("step_down", "p-2")).ok());
}

TEST_F(CheckInServiceTest, CrisisTransitionWithoutClinicalFollowUpOwnerIsRefused) {
  consent_.Hold({"consent_aligned_communication"});
  v1::CreateEnrollmentRequest request = Enrollment("crisis_transition", "p-3");
  request.mutable_owners()->clear_clinical_follow_up_owner();
  grpc::Status status = Enroll(request);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(UnmetGates(status), (std::set<std::string>{"clinical_follow_up_owner"}));
  // A peer supporter named as the clinical owner does not count.
  request.mutable_owners()->set_clinical_follow_up_owner("peer-1");
  EXPECT_EQ(UnmetGates(Enroll(request)), (std::set<std::string>{"clinical_follow_up_owner"}));
  consent_.Hold({});
  EXPECT_EQ(UnmetGates(Enroll(Enrollment("crisis_transition", "p-3"))),
            (std::set<std::string>{"consent_aligned_communication"}));
  consent_.Hold({"consent_aligned_communication"});
  EXPECT_TRUE(Enroll(Enrollment("crisis_transition", "p-3")).ok());
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments"), 1);
}

TEST_F(CheckInServiceTest, EachDefaultPathwayRecordsValidAndRefusesEachKindOfInvalidCheckIn) {
  int participant = 4;
  for (const std::string pathway :
       {"early_engagement", "step_down", "crisis_transition", "structured_checkin"}) {
    SCOPED_TRACE(pathway);
    const std::string id = Enrolled(pathway, "p-" + std::to_string(participant++));
    v1::RecordCheckInResponse response;
    grpc::Status status = Record(CheckIn(id, ValidAnswers(pathway)), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.check_in().pathway_key(), pathway);
    EXPECT_EQ(response.check_in().supporter_id(), kSupporterId);
    EXPECT_FALSE(response.check_in().scheduled_check_in_id().empty());  // Today's occurrence.
    EXPECT_FALSE(response.check_in().late());
    EXPECT_TRUE(response.raised_concerns().empty());

    // Missing every required field but one; an unknown field; a wrong type.
    std::vector<v1::Answer> answers = ValidAnswers(pathway);
    const std::string first = answers.front().field_key();
    std::vector<v1::Answer> bad = {Text("not_a_field", "x"), answers.back()};
    bad.push_back(Scale(first, 1));  // Wrong type for every pathway's first field.
    status = Record(CheckIn(id, bad), &response);
    ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    std::set<std::string> fields = BadFields(status);
    EXPECT_TRUE(fields.contains("answers.not_a_field"));
    EXPECT_TRUE(fields.contains("answers." + first));
    for (size_t i = 1; i + 1 < answers.size(); ++i) {
      if (pathway == "structured_checkin" && answers[i].has_text_value()) continue;
      EXPECT_TRUE(fields.contains("answers." + answers[i].field_key())) << answers[i].field_key();
    }
  }
  // Enum and scale values outside their options and bounds.
  const std::string id = Enrolled("structured_checkin", "p-9");
  std::vector<v1::Answer> answers = ValidAnswers("structured_checkin");
  answers[1] = Scale("wellbeing", 9);
  answers[3] = Enum("concern_noticed", "unheard_of");
  v1::RecordCheckInResponse response;
  grpc::Status status = Record(CheckIn(id, answers), &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status),
            (std::set<std::string>{"answers.wellbeing", "answers.concern_noticed"}));
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), 4);
  EXPECT_EQ(Events("CheckInRecordedEvent"), 4);
}

// RecordCheckIn's read (migration 0008) leaves out the pathway version's row, definition and all,
// when the service names it as held, and still gives its id; unnamed, the row comes whole.
TEST_F(CheckInServiceTest, TheReadLeavesOutPathwayVersionsTheServiceHolds) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  const std::string pathway =
      db_->AdminQuery(
             "SELECT p.id::text FROM checkin.enrollments e JOIN checkin.pathway_versions p ON "
             "p.agency_id = e.agency_id AND p.pathway_key = e.pathway_key AND p.version = "
             "e.pathway_version WHERE e.id = '" +
             id + "'")[0][0]
          .as<std::string>();
  auto read = [&](const std::string& known) {
    return db_->AdminQuery(
        "SET search_path TO checkin; "
        "SELECT c.pw_id::text, (c.pw).definition IS NULL, (c.en).id::text FROM "
        "checkin.check_in_context_2('" +
        std::string(kAgency) + "', '" + id + "', '', current_date, '', false, '" + known +
        "') c")[0];
  };
  const pqxx::row whole = read("{}");
  EXPECT_EQ(whole[0].as<std::string>(), pathway);
  EXPECT_FALSE(whole[1].as<bool>());
  const pqxx::row lean = read("{" + pathway + "}");
  EXPECT_EQ(lean[0].as<std::string>(), pathway);
  EXPECT_TRUE(lean[1].as<bool>());
  EXPECT_EQ(lean[2].as<std::string>(), id);
  // The service itself, holding the version after the first check-in, records the next ones.
  for (int i = 0; i < 3; ++i) {
    v1::RecordCheckInResponse response;
    const grpc::Status status = Record(CheckIn(id, ValidAnswers("structured_checkin")), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.check_in().pathway_version(), 1);
  }
}

// A check-in's update of its enrollment (migration 0009) may stay on its page (HOT) only while no
// index of enrollments covers a column it changes, in its key or its predicate.
TEST_F(CheckInServiceTest, NoIndexCoversTheContactStateACheckInUpdates) {
  const pqxx::result covered = db_->AdminQuery(
      "SELECT i.indexrelid::regclass::text, a.attname FROM pg_index i "
      "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum > 0 "
      " AND (a.attnum = ANY (i.indkey) OR pg_get_expr(i.indexprs, i.indrelid) ~ a.attname"
      "      OR pg_get_expr(i.indpred, i.indrelid) ~ a.attname) "
      "WHERE i.indrelid = 'checkin.enrollments'::regclass AND a.attname IN ('last_contact_at', "
      "'failed_attempts_in_a_row', 'engagement_stage', 'engagement_stage_changed_at', "
      "'routine', 'routine_stopped_at')");
  for (const auto& row : covered) {
    ADD_FAILURE() << row[0].as<std::string>() << " covers " << row[1].as<std::string>();
  }
  EXPECT_EQ(db_->AdminQuery("SELECT reloptions::text FROM pg_class WHERE oid = "
                            "'checkin.enrollments'::regclass")[0][0]
                .as<std::string>(),
            "{fillfactor=90}");
}

// Migration 0010 moved enrollments' single-column rules into domains: the database still refuses
// what they refuse, whoever writes.
TEST_F(CheckInServiceTest, TheDatabaseStillRefusesWhatTheEnrollmentRulesRefuse) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  for (const std::string set :
       {"participant_id = ''", "schedule_kind = 'monthly'", "time_zone = ''", "status = 'paused'",
        "engagement_stage = 'gone'", "failed_attempts_in_a_row = -1", "enrolled_by = ''",
        "check_in_window = interval '15 days'", "check_in_window = interval '0'",
        "gate_results = '{}'::jsonb"}) {
    EXPECT_THROW(
        db_->AdminQuery("UPDATE checkin.enrollments SET " + set + " WHERE id = '" + id + "'"),
        pqxx::check_violation)
        << set;
  }
  // What they allow still goes through.
  db_->AdminQuery(
      "UPDATE checkin.enrollments SET engagement_stage = 'at_risk', "
      "failed_attempts_in_a_row = 2 WHERE id = '" +
      id + "'");
}

TEST_F(CheckInServiceTest, ImmediateSafetyRuleFiresExactlyOnceAndStopsRoutineEngagement) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  std::vector<v1::Answer> answers = ValidAnswers("structured_checkin");
  answers[3] = Enum("concern_noticed", "immediate_safety");
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(CheckIn(id, answers), &response).ok());
  ASSERT_EQ(response.raised_concerns_size(), 1);
  EXPECT_EQ(response.raised_concerns(0).rule_id(), "immediate_safety");
  EXPECT_EQ(response.raised_concerns(0).severity(), common::v1::CONCERN_SEVERITY_CRITICAL);
  EXPECT_TRUE(response.routine_engagement_stopped());
  EXPECT_EQ(Events("ConcernRaisedEvent"), 1);
  EXPECT_EQ(Events("EnrollmentRoutineStoppedEvent"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.outbox WHERE event_id = '" +
                  response.raised_concerns(0).event_id() + "'"),
            1);
  // The events carry no free text.
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.outbox WHERE position(convert_to('How was the "
                  "week', 'UTF8') in payload) > 0"),
            0);

  v1::GetEnrollmentRequest get;
  get.set_enrollment_id(id);
  v1::GetEnrollmentResponse got;
  ASSERT_TRUE(stub_->GetEnrollment(As({"clinician"}).get(), get, &got).ok());
  EXPECT_FALSE(got.enrollment().routine());
  EXPECT_TRUE(got.enrollment().has_routine_stopped_at());

  // A second disclosure raises its own concern but does not stop what is already stopped.
  answers[1] = Scale("wellbeing", 4);
  ASSERT_TRUE(Record(CheckIn(id, answers), &response).ok());
  EXPECT_EQ(response.raised_concerns_size(), 1);
  EXPECT_FALSE(response.routine_engagement_stopped());
  EXPECT_EQ(Events("ConcernRaisedEvent"), 2);
  EXPECT_EQ(Events("EnrollmentRoutineStoppedEvent"), 1);

  // Only a clinician resumes routine engagement, after review.
  v1::ResumeRoutineEngagementRequest resume;
  resume.set_enrollment_id(id);
  v1::ResumeRoutineEngagementResponse resumed;
  EXPECT_EQ(stub_->ResumeRoutineEngagement(As({"peer_supporter"}, "peer-1").get(), resume, &resumed)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(stub_->ResumeRoutineEngagement(As({"clinician"}).get(), resume, &resumed).ok());
  EXPECT_TRUE(resumed.enrollment().routine());
  ASSERT_TRUE(stub_->ResumeRoutineEngagement(As({"clinician"}).get(), resume, &resumed).ok());
  EXPECT_EQ(Events("EnrollmentRoutineResumedEvent"), 1);
}

TEST_F(CheckInServiceTest, RetryWithSameKeyStoresOnce) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  std::vector<v1::Answer> answers = ValidAnswers("structured_checkin");
  answers[3] = Enum("concern_noticed", "basic_needs");
  const v1::RecordCheckInRequest request = CheckIn(id, answers);
  v1::RecordCheckInResponse first, second;
  ASSERT_TRUE(Record(request, &first).ok());
  ASSERT_TRUE(Record(request, &second).ok());
  EXPECT_EQ(first.check_in().check_in_id(), second.check_in().check_in_id());
  EXPECT_EQ(first.SerializeAsString(), second.SerializeAsString());
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), 1);
  EXPECT_EQ(Events("CheckInRecordedEvent"), 1);
  EXPECT_EQ(Events("ConcernRaisedEvent"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.audit_log WHERE action LIKE '%RecordCheckIn'"), 1);

  v1::RecordCheckInRequest changed = request;
  changed.set_contact_mode(v1::CONTACT_MODE_VIDEO);
  EXPECT_EQ(Record(changed, &second).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // The same request from another caller (the supervisor) is not theirs to replay.
  EXPECT_EQ(Record(request, &second, "supervisor-1", "supervisor").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // A key another RPC used first is refused, naming that RPC.
  const v1::RecordContactAttemptRequest attempt =
      Attempt(id, v1::CONTACT_CHANNEL_PHONE, v1::CONTACT_OUTCOME_NO_ANSWER, "shared-key");
  v1::RecordContactAttemptResponse attempted;
  ASSERT_TRUE(
      stub_->RecordContactAttempt(As({"peer_supporter"}, "peer-1").get(), attempt, &attempted)
          .ok());
  v1::RecordCheckInRequest reused = CheckIn(id, ValidAnswers("structured_checkin"));
  reused.set_idempotency_key("shared-key");
  const grpc::Status refused = Record(reused, &second);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("RecordContactAttempt"), std::string::npos)
      << refused.error_message();
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), 1);
}

// RecordCheckIn reads, decides and writes without holding a lock between; the write applies
// only to the enrollment version it read. Writers racing on one enrollment must all land (none
// lost, none doubled), and one key sent by several at once must land once.
TEST_F(CheckInServiceTest, ConcurrentCheckInsOfOneEnrollmentAllLandAndOneKeyLandsOnce) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  constexpr int kWriters = 8;
  auto record_all = [&](const std::vector<v1::RecordCheckInRequest>& requests) {
    std::vector<grpc::Status> statuses;
    auto responses = RecordAtOnce(requests, statuses);
    for (const auto& status : statuses) EXPECT_TRUE(status.ok()) << status.error_message();
    return responses;
  };

  // Each writer reads "at risk"; only the one that lands first reconnects the participant.
  db_->AdminQuery(
      "UPDATE checkin.enrollments SET engagement_stage = 'at_risk', engagement_stage_changed_at = "
      "now() - interval '30 days'");
  std::vector<v1::RecordCheckInRequest> distinct;
  for (int i = 0; i < kWriters; ++i)
    distinct.push_back(CheckIn(id, ValidAnswers("structured_checkin")));
  std::set<std::string> ids;
  for (const auto& r : record_all(distinct)) ids.insert(r.check_in().check_in_id());
  EXPECT_EQ(ids.size(), static_cast<size_t>(kWriters));
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), kWriters);
  EXPECT_EQ(Events("CheckInRecordedEvent"), kWriters);
  EXPECT_EQ(Events("ReconnectionRecordedEvent"), 1);
  EXPECT_EQ(Events("EngagementStageChangedEvent"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins WHERE is_reconnection"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.audit_log WHERE action LIKE '%RecordCheckIn'"),
            kWriters);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE last_contact_at = (SELECT "
                  "max(occurred_at) FROM checkin.check_ins)"),
            1);

  const std::vector<v1::RecordCheckInRequest> same(kWriters,
                                                   CheckIn(id, ValidAnswers("structured_checkin")));
  const auto responses = record_all(same);
  for (const auto& r : responses) {
    EXPECT_EQ(r.SerializeAsString(), responses[0].SerializeAsString());
  }
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), kWriters + 1);
  EXPECT_EQ(Events("CheckInRecordedEvent"), kWriters + 1);
}

// The write checks what the read saw: an occurrence of the day created meanwhile under another
// id (ListDueCheckIns creates them without touching the enrollment) makes it refuse with
// serialization_failure, so the call decides again instead of pointing at an id never stored.
TEST_F(CheckInServiceTest, TheWriteRefusesAnOccurrenceCreatedSinceTheRead) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  const std::string occurrence =
      db_->AdminQuery(
             "INSERT INTO checkin.scheduled_check_ins (agency_id, enrollment_id, due_on, "
             "window_start, window_end) VALUES ('agency-a', '" +
             id +
             "', current_date, now() - interval '1 hour', now() + interval '1 hour') "
             "RETURNING id")[0][0]
          .c_str();
  const std::string write =
      "SET search_path TO checkin; SELECT record_check_in('agency-a', gen_random_uuid(), '" + id +
      "', (SELECT xmin::text FROM enrollments WHERE id = '" + id +
      "'), gen_random_uuid()::text, 'p-1', '', 'peer-1', 'peer_supporter', 'structured_checkin', "
      "1, '{}', 0, 'phone', 0, 0, NULL, '{}', false, false, current_date::text, 0, 3600000000, "
      "'{}', '{}', '{}', 'race-key', 'RecordCheckIn', repeat('00', 32), '', 'peer-1', "
      "'peer_supporter', 'RecordCheckIn', 'request-1')";
  EXPECT_THROW(db_->AdminQuery(write), pqxx::serialization_failure);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.idempotency_keys WHERE idempotency_key = "
                  "'race-key'"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.scheduled_check_ins WHERE status = 'due'"), 1);
  // Through the RPC the same check-in completes the occurrence that exists.
  v1::RecordCheckInResponse response;
  v1::RecordCheckInRequest request = CheckIn(id, ValidAnswers("structured_checkin"));
  request.set_scheduled_check_in_id(occurrence);
  ASSERT_TRUE(Record(request, &response).ok());
  EXPECT_EQ(response.check_in().scheduled_check_in_id(), occurrence);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.scheduled_check_ins s JOIN checkin.check_ins c "
                  "ON c.scheduled_check_in_id = s.id WHERE s.status = 'completed'"),
            1);
}

// record_check_ins (migration 0011), the group commit of concurrent calls' check-ins: each item
// of a batch is written whole or not at all, and one item's refusal does not fail the others.
TEST_F(CheckInServiceTest, ABatchOfCheckInsWritesEachWholeOrNotAtAll) {
  std::vector<std::string> e;
  for (int i = 1; i <= 5; ++i) e.push_back(Enrolled("structured_checkin", absl::StrCat("p-", i)));
  db_->AdminQuery(
      "INSERT INTO checkin.idempotency_keys (agency_id, idempotency_key, method, request_hash, "
      "response) VALUES ('agency-a', 'batch-taken', 'RecordContactAttempt', "
      "decode(repeat('00', 32), 'hex'), '')");
  db_->AdminQuery(
      "INSERT INTO checkin.scheduled_check_ins (agency_id, enrollment_id, due_on, window_start, "
      "window_end) VALUES ('agency-a', '" +
      e[3] + "', current_date, now() - interval '1 hour', now() + interval '1 hour')");
  auto version_of = [&](int i) {
    return absl::StrCat("(SELECT xmin::text FROM enrollments WHERE id = '", e[i], "')");
  };
  // Item 4 also stops routine engagement, is documented late, reconnects and fires a rule.
  db_->AdminQuery(
      "INSERT INTO checkin.scheduled_check_ins (agency_id, enrollment_id, due_on, window_start, "
      "window_end) VALUES ('agency-a', '" +
      e[4] + "', current_date + 3, now() + interval '3 days', now() + interval '4 days')");
  // Times of now: a check-in of 1970 would leave a last contact the sweeper (every 300 ms here)
  // takes for decades of silence, and it would move the enrollment on to "at risk".
  const std::string now_us = "(date_part('epoch', now()) * 1000000)::bigint";
  auto item = [&](int n, const std::string& version, const std::string& key, bool occurrence) {
    const bool rich = n == 4;
    return absl::StrCat(
        "jsonb_build_object('n', ", n, ", 'check_in', gen_random_uuid(), 'enrollment', '", e[n],
        "', 'enrollment_version', ", version, ", 'scheduled', ",
        occurrence ? "gen_random_uuid()::text" : "''", ", 'participant', 'p-", n + 1,
        "', 'supporter', '', 'recorded_by', 'peer-1', 'recorded_by_role', 'peer_supporter', "
        "'pathway_key', 'structured_checkin', 'pathway_version', 1, 'answers', "
        "'{\"a\": 1}'::jsonb, 'contact_mode', 'phone', 'occurred_us', ",
        now_us, ", 'recorded_us', ", now_us, ", ",
        rich ? "'wellbeing', 2, 'late_us', 7200000000, 'fired_rule_ids', '[\"safety\"]'::jsonb, "
               "'reconnection', true, 'stops_routine', true, "
             : "'wellbeing', 0, 'fired_rule_ids', '[]'::jsonb, 'reconnection', false, "
               "'stops_routine', false, ",
        "'due_on', ", occurrence ? "current_date" : "NULL", ", 'window_start_us', ", now_us,
        " - 10800000000, 'window_end_us', ", now_us,
        " - 7200000000, 'event_types', "
        "'[\"peerpath.checkin.v1.CheckInRecordedEvent\", "
        "\"peerpath.checkin.v1.ConcernRaisedEvent\"]'::jsonb, 'event_payloads', '[\"\", "
        "\"\"]'::jsonb, 'event_ids', jsonb_build_array(gen_random_uuid(), gen_random_uuid()), "
        "'idempotency_key', '",
        key,
        "', 'method', 'RecordCheckIn', 'request_hash', repeat('00', 32), 'response', '', "
        "'actor', 'peer-1', 'actor_role', 'peer_supporter', 'action', 'RecordCheckIn', "
        "'request_id', 'request-",
        n, "')");
  };
  const pqxx::result outcomes = db_->AdminQuery(absl::StrCat(
      "SET search_path TO checkin; SELECT n, outcome FROM record_check_ins('agency-a', "
      "jsonb_build_array(",
      item(0, version_of(0), "batch-ok", false), ", ", item(1, "'1'", "batch-stale", false), ", ",
      item(2, version_of(2), "batch-taken", false), ", ",
      item(3, version_of(3), "batch-lost", true), ", ",
      item(4, version_of(4), "batch-occurrence", true), "))"));
  std::vector<std::string> answered;
  for (const auto& row : outcomes) answered.push_back(row[1].c_str());
  EXPECT_EQ(answered,
            (std::vector<std::string>{"recorded", "stale", "key_claimed", "stale", "recorded"}));

  // Only items 0 and 4: their check-ins, events (in order), audit rows, keys, contact state.
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), 2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins WHERE enrollment_id IN ('" + e[0] +
                  "', '" + e[4] + "')"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.outbox WHERE event_type LIKE '%CheckInRecorded%' "
                  "AND aggregate_id IN ('" +
                  e[0] + "', '" + e[4] + "')"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.outbox o JOIN checkin.outbox r ON r.aggregate_id "
                  "= o.aggregate_id AND r.event_type LIKE '%ConcernRaised%' AND r.id > o.id "
                  "WHERE o.event_type LIKE '%CheckInRecorded%'"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.audit_log WHERE action = 'RecordCheckIn'"), 2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.idempotency_keys WHERE idempotency_key LIKE "
                  "'batch-%'"),
            3);  // ok, occurrence, and the one taken before (still the other RPC's).
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.idempotency_keys WHERE idempotency_key = "
                  "'batch-taken' AND method = 'RecordContactAttempt'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE last_contact_at IS NOT NULL"), 2);
  // Rows of `table` of enrollment `i` that meet `condition`.
  auto rows_of = [&](const std::string& table, int i, const std::string& condition) {
    return Count("SELECT count(*) FROM checkin." + table + " WHERE enrollment_id = '" + e[i] +
                 "' AND " + condition);
  };
  // Item 4's occurrence was created completed; item 3's (another id) is untouched.
  EXPECT_EQ(rows_of("scheduled_check_ins", 4, "status = 'completed'"), 1);
  EXPECT_EQ(rows_of("scheduled_check_ins", 3, "status = 'due'"), 1);
  // Item 4's details as stored; its remaining due occurrence cancelled, its routine stopped.
  EXPECT_EQ(rows_of("check_ins", 4,
                    "wellbeing = 2 AND late_by = interval '2 hours' AND fired_rule_ids = "
                    "'{safety}' AND is_reconnection AND answers = '{\"a\": 1}'"),
            1);
  EXPECT_EQ(
      rows_of("check_ins", 0, "wellbeing IS NULL AND late_by IS NULL AND NOT is_reconnection"), 1);
  EXPECT_EQ(rows_of("scheduled_check_ins", 4, "due_on = current_date + 3 AND status = 'cancelled'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE id = '" + e[4] +
                  "' AND NOT routine AND routine_stopped_at IS NOT NULL AND engagement_stage = "
                  "'engaged'"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE routine"), 4);
}

// Many callers at once, each on their own enrollment, some sending one request twice: with the
// group commit their check-ins share transactions, and each still lands exactly once with its
// event and audit row, and a repeated request gets the first one's answer.
TEST_F(CheckInServiceTest, ConcurrentCheckInsOfManyEnrollmentsEachLandOnce) {
  constexpr int kEnrollments = 12;
  std::vector<v1::RecordCheckInRequest> requests;
  for (int i = 0; i < kEnrollments; ++i) {
    const std::string participant = absl::StrCat("p-", i + 1);
    const std::string id = Enrolled("structured_checkin", participant);
    if (i >= 9) Match(participant, "peer-1", kSupporterId);  // SetUp matched p-1 .. p-9.
    requests.push_back(CheckIn(id, ValidAnswers("structured_checkin")));
    if (i % 3 == 0) requests.push_back(requests.back());  // Sent twice.
  }
  std::vector<grpc::Status> statuses;
  const auto responses = RecordAtOnce(requests, statuses);
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    if (i > 0 && requests[i].idempotency_key() == requests[i - 1].idempotency_key()) {
      EXPECT_EQ(responses[i].SerializeAsString(), responses[i - 1].SerializeAsString());
    }
  }
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), kEnrollments);
  EXPECT_EQ(Count("SELECT count(DISTINCT enrollment_id) FROM checkin.check_ins"), kEnrollments);
  EXPECT_EQ(Events("CheckInRecordedEvent"), kEnrollments);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.audit_log WHERE action LIKE '%RecordCheckIn'"),
            kEnrollments);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE last_contact_at IS NULL"), 0);
}

// check_in_contexts (migration 0013) reads several check-ins at once: for each item it answers
// exactly what check_in_context_2 answers for that item alone (every column but the clock), in
// the items' order, also for an unknown enrollment, a used idempotency key, a named occurrence
// and a pathway version the caller holds; under the runtime role another agency's enrollment is
// not there, and arrays of different lengths are refused.
TEST_F(CheckInServiceTest, ReadingCheckInsTogetherAnswersEachAsItsOwnReadDoes) {
  const std::string first = Enrolled("structured_checkin", "p-1");
  const std::string second = Enrolled("early_engagement", "p-2");
  v1::RecordCheckInRequest recorded = CheckIn(first, ValidAnswers("structured_checkin"));
  recorded.set_idempotency_key("read-together-recorded");
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(recorded, &response).ok());
  ASSERT_EQ(Count("SELECT count(*) FROM checkin.scheduled_check_ins WHERE enrollment_id = '" +
                  first + "'"),
            1);
  const std::string occurrence =
      db_->AdminQuery("SELECT id FROM checkin.scheduled_check_ins WHERE enrollment_id = '" + first +
                      "' ORDER BY due_on LIMIT 1")[0][0]
          .c_str();
  const std::string pathway =
      db_->AdminQuery(
             "SELECT p.id FROM checkin.pathway_versions p JOIN checkin.enrollments e ON "
             "e.pathway_key = p.pathway_key AND e.pathway_version = p.version WHERE e.id = '" +
             first + "'")[0][0]
          .c_str();
  struct Item {
    std::string enrollment, scheduled, day, key;
  };
  const std::vector<Item> items = {
      {first, "", "current_date", "read-together-recorded"},
      {first, occurrence, "current_date - 30", "read-together-new"},
      {"8f0c3a52-4a53-4c1e-9a43-2d7f4b0e6a11", "", "current_date", "read-together-unknown"},
      {second, "", "current_date + 1", "read-together-other"},
      {second, "", "current_date", "read-together-recorded"},
      {first, "", "current_date + 16", "read-together-edge"},  // The window's first day.
  };
  pqxx::connection runtime(db_->UrlFor("checkin"));
  pqxx::nontransaction tx(runtime);
  tx.exec0("SET search_path TO checkin");
  auto array = [&](const std::string& type, auto field) {
    std::string out = "ARRAY[";
    for (size_t i = 0; i < items.size(); ++i) {
      absl::StrAppend(&out, i > 0 ? ", " : "", field(items[i]));
    }
    return absl::StrCat(out, "]::", type, "[]");
  };
  auto quoted = [](const std::string& v) { return "'" + v + "'"; };
  // A row as JSON without the clock and the item's number.
  constexpr char kRow[] = "(to_jsonb(c) - 'now_us' - 'n')::text";
  for (const std::string& known : std::vector<std::string>{"{}", "{" + pathway + "}"}) {
    const pqxx::result together = tx.exec(absl::StrCat(
        "SELECT ", kRow, ", c.n FROM check_in_contexts('agency-a', ",
        array("uuid", [&](const Item& i) { return quoted(i.enrollment); }), ", ",
        array("text", [&](const Item& i) { return quoted(i.scheduled); }), ", ",
        array("date", [&](const Item& i) { return i.day; }), ", ",
        array("text", [&](const Item& i) { return quoted(i.key); }), ", '", known, "') c"));
    ASSERT_EQ(together.size(), items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      EXPECT_EQ(together[i][1].as<int>(), static_cast<int>(i) + 1);
      const Item& item = items[i];
      const pqxx::row alone = tx.exec1(absl::StrCat(
          "SELECT ", kRow, " FROM check_in_context_2('agency-a', '", item.enrollment, "', '",
          item.scheduled, "', ", item.day, ", '", item.key, "', false, '", known, "') c"));
      EXPECT_EQ(std::string(together[i][0].c_str()), std::string(alone[0].c_str()))
          << "item " << i + 1 << ", known " << known;
    }
    // What makes the items differ is there: the earlier call, the occurrence, the unknown one.
    EXPECT_NE(
        std::string(together[0][0].c_str()).find("\"o_idempotency_method\": \"RecordCheckIn\""),
        std::string::npos)
        << together[0][0].c_str();
    EXPECT_NE(std::string(together[1][0].c_str()).find(occurrence), std::string::npos);
    EXPECT_NE(std::string(together[5][0].c_str()).find(occurrence), std::string::npos);
    EXPECT_NE(std::string(together[2][0].c_str()).find("\"en\": null"), std::string::npos);
    EXPECT_EQ(std::string(together[3][0].c_str()).find("RecordCheckIn"), std::string::npos);
  }
  // Another agency sees no enrollment of agency-a.
  const pqxx::row other = tx.exec1(absl::StrCat(
      "SELECT c.en IS NULL FROM check_in_contexts('agency-b', ARRAY['", first,
      "']::uuid[], ARRAY['']::text[], ARRAY[current_date], ARRAY['k']::text[], '{}') c"));
  EXPECT_TRUE(other[0].as<bool>());
  EXPECT_THROW(tx.exec(absl::StrCat("SELECT * FROM check_in_contexts('agency-a', ARRAY['", first,
                                    "']::uuid[], ARRAY[]::text[], ARRAY[current_date], "
                                    "ARRAY['k']::text[], '{}')")),
               pqxx::sql_error);
}

// check_in_contexts keeps to its indexes as the tables grow: its generic plan (migration 0014),
// cached on a connection while the agency had 60 idempotency keys, check-ins, occurrences,
// matches and enrollments in analysed tables, used in later transactions after 20,000 more of
// each: first as it was (no analyse in between, as until autovacuum catches up with a burst),
// then made again after a VACUUM, which tells the planner the tables' new sizes while their
// columns' statistics are still the old ones (as autovacuum's vacuum of a burst, before its
// analyse). A read of one check-in's context reads a few rows and index pages of each table,
// none whole.
TEST_F(CheckInServiceTest, ReadingACheckInsContextKeepsToItsIndexesAsTheTablesGrow) {
  const std::string enrollment = Enrolled("structured_checkin", "p-1");
  v1::RecordCheckInRequest recorded = CheckIn(enrollment, ValidAnswers("structured_checkin"));
  recorded.set_idempotency_key("context-recorded");
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(recorded, &response).ok());
  // Nothing else reads the tables while the test counts: the service stops, and autovacuum is
  // left out of them; the test does what it would (an analyse, a vacuum).
  service_->Signal(SIGKILL);
  service_->WaitExit(5s);
  const std::vector<std::string> tables = {"idempotency_keys", "check_ins", "scheduled_check_ins",
                                           "supporter_matches", "enrollments"};
  AutovacuumOff(*db_, "checkin", tables);
  // Rows `from` to `from + count - 1` of each table, other participants' (the enrollments are
  // copies of the one enrolled).
  const auto grow = [&](int from, int count) {
    const std::string series =
        absl::StrCat("generate_series(", from, ", ", from + count - 1, ") g");
    db_->AdminQuery(absl::StrCat(
        "SET session_replication_role = replica; "
        "INSERT INTO checkin.idempotency_keys (agency_id, idempotency_key, method, request_hash, "
        "response) SELECT 'agency-a', 'grown-' || g, 'RecordCheckIn', sha256(g::text::bytea), "
        "'\\x00' FROM ",
        series,
        "; INSERT INTO checkin.check_ins (agency_id, enrollment_id, participant_id, recorded_by, "
        "recorded_by_role, pathway_key, pathway_version, answers, occurred_at, wellbeing) SELECT "
        "'agency-a', ('00000000-0000-4000-8000-' || lpad((g % 500)::text, 12, '0'))::uuid, "
        "'client-' || (g % 500), 'peer-1', 'peer_supporter', 'structured_check_in', 1, '{}', "
        "now() - g * interval '1 minute', 3 FROM ",
        series,
        "; INSERT INTO checkin.scheduled_check_ins (agency_id, enrollment_id, due_on, "
        "window_start, window_end) SELECT 'agency-a', ('00000000-0000-4000-8000-' || "
        "lpad((g / 100)::text, 12, '0'))::uuid, current_date - g % 100, now() - (g % 100) * "
        "interval '1 day', now() - (g % 100) * interval '1 day' + interval '1 hour' FROM ",
        series,
        "; INSERT INTO checkin.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, active, ended_at) SELECT 'agency-a', "
        "gen_random_uuid(), gen_random_uuid(), 'peer-' || (g % 500), 'client-' || g, g % 3 <> 0, "
        "CASE WHEN g % 3 = 0 THEN now() END FROM ",
        series,
        "; INSERT INTO checkin.enrollments SELECT (jsonb_populate_record(e, jsonb_build_object("
        "'id', gen_random_uuid(), 'participant_id', 'client-' || g))).* FROM "
        "checkin.enrollments e, ",
        series, " WHERE e.id = '", enrollment, "'; SET session_replication_role = DEFAULT"));
  };
  grow(1, 60);
  for (const std::string& table : tables) db_->AdminQuery("ANALYZE checkin." + table);
  pqxx::connection runtime(db_->UrlFor("checkin"));
  pqxx::nontransaction(runtime).exec0("SET search_path TO checkin");
  // Reads of the context together and alone (check_in_context_2, its plan settled after five
  // calls), each in a transaction of its own.
  const std::string together = absl::StrCat(
      "SELECT * FROM check_in_contexts('agency-a', ARRAY['", enrollment,
      "']::uuid[], ARRAY['']::text[], ARRAY[current_date], ARRAY['context-next']::text[], '{}')");
  const std::string alone =
      absl::StrCat("SELECT * FROM check_in_context_2('agency-a', '", enrollment,
                   "', '', current_date, 'context-next', false, '{}')");
  pqxx::work(runtime).exec(together);  // Planned and cached.
  for (int i = 0; i < 6; ++i) pqxx::work(runtime).exec(alone);
  grow(61, 20000);
  const auto expect_few = [&](const std::string& plans) {
    for (const std::string& sql : {together, alone}) {
      ExpectFewReads(runtime, "checkin", sql, tables, 50, 15, plans);
    }
  };
  expect_few("on the plans made before");
  Vacuum(*db_, "checkin", tables);
  expect_few("on plans made again after a vacuum");
}

// An agency's reads of its enrollments read its own: listing them, the sweep's silent ones and a
// supporter's day read a few rows while another agency has 20,000 enrollments (analysed). The
// sweep's read policy on enrollments, ORed with the agency's, leaves the agency no index
// condition unless the query names it; these read every agency's enrollments.
TEST_F(CheckInServiceTest, AnAgencysReadsOfItsEnrollmentsReadOnlyItsOwn) {
  const std::string enrollment = EnrolledWithCopies(20000, "'agency_id', 'agency-b'");
  pqxx::connection runtime(db_->UrlFor("checkin"));
  pqxx::nontransaction(runtime).exec0("SET search_path TO checkin");
  // `read` in a transaction scoped to agency-a; what it returned and the rows it read.
  const auto reads_of = [&](const std::function<size_t(pqxx::work&)>& read) {
    pqxx::work tx(runtime);
    ScopeToAgency(tx, kAgency);
    const size_t returned = read(tx);
    const TableReads enrollments = ReadsInTransaction(tx, "checkin")["enrollments"];
    tx.commit();
    return std::make_pair(returned, enrollments);
  };
  const auto [listed, list_reads] = reads_of([](pqxx::work& tx) {
    checkin::EnrollmentFilter filter;
    return checkin::ListEnrollments(tx, filter).size();
  });
  EXPECT_EQ(listed, 1u);
  EXPECT_LT(list_reads.rows, 50);
  const auto [of_participant, participant_reads] = reads_of([](pqxx::work& tx) {
    checkin::EnrollmentFilter filter;
    filter.participant_id = "p-1";
    return checkin::ListEnrollments(tx, filter).size();
  });
  EXPECT_EQ(of_participant, 1u);
  EXPECT_LT(participant_reads.rows, 50);
  const auto [silent, silent_reads] = reads_of([](pqxx::work& tx) {
    return checkin::EnrollmentsSilentSince(tx, absl::Now() + absl::Hours(1)).size();
  });
  EXPECT_EQ(silent, 1u);
  EXPECT_LT(silent_reads.rows, 50);
  const auto [supported, supported_reads] = reads_of([](pqxx::work& tx) {
    return checkin::EnrollmentsOfSupporter(tx, "peer-1", kSupporterId, "").size();
  });
  EXPECT_EQ(supported, 1u);
  EXPECT_LT(supported_reads.rows, 50);
}

// The sweep finds the agencies with active enrollments by one index descent per agency: with
// 20,000 more enrollments in three other agencies, and an agency whose enrollments all ended, it
// reads a few index pages. With DISTINCT it read every enrollment (a sequential scan).
TEST_F(CheckInServiceTest, TheSweepFindsItsAgenciesWithoutReadingEveryEnrollment) {
  AutovacuumOff(*db_, "checkin", {"enrollments"});  // Its reads would count with the sweep's.
  const std::string ended = "g % 100 = 0";
  EnrolledWithCopies(
      20000,
      absl::StrCat("'agency_id', CASE WHEN ", ended,
                   " THEN 'agency-gone' ELSE 'agency-' || (ARRAY['x', 'y', 'z'])[1 + g % "
                   "3] END, 'status', CASE WHEN ",
                   ended, " THEN 'ended' ELSE 'active' END, 'ended_at', CASE WHEN ", ended,
                   " THEN now() END, 'ended_by', CASE WHEN ", ended,
                   " THEN 'staff-1' END, 'end_reason', CASE WHEN ", ended, " THEN 'moved' END"));
  ASSERT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE agency_id = 'agency-gone' AND "
                  "status = 'ended'"),
            200);
  pqxx::connection runtime(db_->UrlFor("checkin"));
  pqxx::nontransaction(runtime).exec0("SET search_path TO checkin");
  std::vector<std::string> agencies;
  TableReads rows;
  const std::map<std::string, int64_t> pages = IndexPagesRead(runtime, "checkin", [&] {
    pqxx::work tx(runtime);
    tx.exec0("SET LOCAL app.maintenance = 'on'");  // As the sweep's transaction.
    agencies = checkin::AgenciesWithActiveEnrollments(tx);
    rows = ReadsInTransaction(tx, "checkin")["enrollments"];
    tx.commit();
  });
  pqxx::work tx(runtime);
  tx.exec0("SET LOCAL app.maintenance = 'on'");
  std::string plan;
  for (const auto& row : tx.exec(std::string("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ") +
                                 checkin::kActiveAgenciesSql)) {
    plan += std::string(row[0].c_str()) + "\n";
  }
  EXPECT_EQ(agencies, (std::vector<std::string>{kAgency, "agency-x", "agency-y", "agency-z"}));
  EXPECT_EQ(rows.sequential_scans, 0) << plan;
  // The descents may pass ended enrollments (the planner takes the narrower (agency_id, id)
  // index and filters on status): here agency-gone's 200.
  EXPECT_LT(rows.rows, 300) << plan;
  ASSERT_TRUE(pages.contains("enrollments"));
  EXPECT_LT(pages.at("enrollments"), 30) << plan;
}

// Listing an agency's enrollments reads a page at a time: with 20,000 enrollments (analysed), the
// first page and one further on each read about a page of rows, newest first, the second
// starting after the first's last. They read every enrollment of the agency, sorted, for each
// page: paging through them all was quadratic.
TEST_F(CheckInServiceTest, ListingAnAgencysEnrollmentsReadsAPageAtATime) {
  const std::string enrollment =
      EnrolledWithCopies(20000, "'enrolled_at', now() - g * interval '1 minute'");
  pqxx::connection runtime(db_->UrlFor("checkin"));
  pqxx::nontransaction(runtime).exec0("SET search_path TO checkin");
  const auto page = [&](const checkin::EnrollmentFilter& filter) {
    pqxx::work tx(runtime);
    ScopeToAgency(tx, kAgency);
    std::vector<v1::Enrollment> listed = checkin::ListEnrollments(tx, filter);
    const TableReads reads = ReadsInTransaction(tx, "checkin")["enrollments"];
    tx.commit();
    return std::make_pair(listed, reads);
  };
  checkin::EnrollmentFilter filter;
  filter.limit = 51;  // A page of 50 and whether there is more, as the service asks.
  const auto [first, first_reads] = page(filter);
  ASSERT_EQ(first.size(), 51u);
  EXPECT_EQ(first[0].enrollment_id(), enrollment);  // Enrolled now; the copies before.
  EXPECT_EQ(first[1].participant_id(), "client-1");
  EXPECT_EQ(first_reads.sequential_scans, 0);
  EXPECT_LT(first_reads.rows, 200);
  filter.after_enrolled_micros = absl::ToUnixMicros(FromProtoTimestamp(first[49].enrolled_at()));
  filter.after_id = first[49].enrollment_id();
  const auto [second, second_reads] = page(filter);
  ASSERT_EQ(second.size(), 51u);
  EXPECT_EQ(second[0].participant_id(), "client-50");
  EXPECT_EQ(second_reads.sequential_scans, 0);
  EXPECT_LT(second_reads.rows, 200);
}

// Concurrent calls whose reads share statements each get the answer for their own enrollment:
// check-ins land on the enrollments they name, an unknown enrollment is NOT_FOUND and a
// participant outside the caller's matches is refused, while the others around them land. The
// service's read batch histogram shows reads were read together.
TEST_F(CheckInServiceTest, ConcurrentReadsAnswerEachCallForItsOwnEnrollment) {
  constexpr int kEnrollments = 9;
  std::vector<std::string> enrollments;
  for (int i = 1; i <= kEnrollments; ++i) {
    enrollments.push_back(Enrolled("structured_checkin", absl::StrCat("p-", i)));
  }
  const std::string unmatched = Enrolled("structured_checkin", "p-unmatched");
  // Reads per read statement, over the test: more than one once two reads shared a statement.
  auto read_batches = [&] {
    return ReadHistogram(service_->metrics_port(), "peerpath_checkin_read_batch_size");
  };
  auto shared = [](const HistogramTotals& h) { return h.sum > h.count; };
  int landed = 0;
  for (int round = 0; round < 5 && !shared(read_batches()); ++round) {
    std::vector<v1::RecordCheckInRequest> requests;
    for (int copy = 0; copy < 3; ++copy) {
      for (const std::string& e : enrollments) {
        requests.push_back(CheckIn(e, ValidAnswers("structured_checkin")));
      }
      requests.push_back(CheckIn(unmatched, ValidAnswers("structured_checkin")));
      requests.push_back(
          CheckIn("0e1c7a7e-5d0b-4f6e-8f3e-6a1d2c3b4a59", ValidAnswers("structured_checkin")));
    }
    std::vector<grpc::Status> statuses;
    const auto responses = RecordAtOnce(requests, statuses);
    for (size_t i = 0; i < requests.size(); ++i) {
      const std::string& asked = requests[i].enrollment_id();
      if (asked == unmatched) {
        EXPECT_EQ(statuses[i].error_code(), grpc::StatusCode::PERMISSION_DENIED) << i;
      } else if (asked == "0e1c7a7e-5d0b-4f6e-8f3e-6a1d2c3b4a59") {
        EXPECT_EQ(statuses[i].error_code(), grpc::StatusCode::NOT_FOUND) << i;
      } else {
        ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
        EXPECT_EQ(responses[i].check_in().enrollment_id(), asked) << i;
        ++landed;
      }
    }
  }
  const HistogramTotals reads = read_batches();
  EXPECT_GT(reads.sum, reads.count) << "no two reads shared a statement";
  // Every check-in is stored on the enrollment it named, for that enrollment's participant.
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), landed);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins c JOIN checkin.enrollments e ON e.id = "
                  "c.enrollment_id AND e.participant_id = c.participant_id"),
            landed);
  EXPECT_EQ(
      Count("SELECT count(*) FROM checkin.check_ins WHERE enrollment_id = '" + unmatched + "'"), 0);
}

TEST_F(CheckInServiceTest, AMaxWriteBatchOutOfRangeIsRefusedAtStart) {
  for (const std::string bad : {"0", "257", "many"}) {
    ServiceProcess refused("checkin", db_->UrlFor("checkin"), {"--checkin_max_write_batch=" + bad});
    EXPECT_EQ(refused.WaitExit(30s), std::optional<int>(2)) << refused.Log();
    EXPECT_NE(refused.Log().find("--checkin_max_write_batch '" + bad + "'"), std::string::npos)
        << refused.Log();
  }
}

TEST_F(CheckInServiceTest, WrongSupporterOtherAgencyAndWrongRoleAreRefused) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  const v1::RecordCheckInRequest request = CheckIn(id, ValidAnswers("structured_checkin"));
  v1::RecordCheckInResponse response;
  // Another peer supporter (matched with someone else, not with p-1).
  Match("p-20", "peer-2", "22222222-2222-4222-8222-222222222222");
  EXPECT_EQ(Record(request, &response, "peer-2").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.audit_log WHERE decision = 'denied' AND "
                  "participant_id = 'p-1'"),
            1);
  // A match that ended no longer lets its supporter record.
  db_->AdminQuery(
      "UPDATE checkin.supporter_matches SET active = false, ended_at = now() WHERE "
      "participant_id = 'p-1'");
  EXPECT_EQ(Record(request, &response).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Staff of another agency do not even learn it exists.
  EXPECT_EQ(Record(request, &response, "staff-9", "clinician", "agency-b").error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Record(request, &response, "ops", "operations").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), 0);
  // Staff of the agency may record.
  EXPECT_TRUE(Record(request, &response, "staff-1", "case_manager").ok());
  EXPECT_TRUE(response.check_in().supporter_id().empty());
}

TEST_F(CheckInServiceTest, WellbeingFallOfTwoOverThreeCheckInsRaisesOneConcern) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  int raised = 0;
  for (int score : {4, 3, 2, 2}) {
    std::vector<v1::Answer> answers = ValidAnswers("structured_checkin");
    answers[1] = Scale("wellbeing", score);
    v1::RecordCheckInResponse response;
    ASSERT_TRUE(Record(CheckIn(id, answers), &response).ok());
    for (const auto& c : response.raised_concerns()) {
      EXPECT_EQ(c.source(), v1::CONCERN_SOURCE_WELLBEING_DECLINE);
      EXPECT_EQ(score, 2);
      ++raised;
    }
  }
  EXPECT_EQ(raised, 1);
  EXPECT_EQ(Events("ConcernRaisedEvent"), 1);
}

TEST_F(CheckInServiceTest, LateDocumentationIsAcceptedAndFlaggedWithItsDelay) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  db_->AdminQuery("UPDATE checkin.enrollments SET starts_on = starts_on - 7");
  v1::RecordCheckInRequest request = CheckIn(id, ValidAnswers("structured_checkin"));
  request.mutable_occurred_at()->set_seconds(request.occurred_at().seconds() - 3 * 86400);
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(request, &response).ok());
  EXPECT_TRUE(response.check_in().late());
  // Its occurrence's window closed at the end of that local (UTC) day: 2 to 3 days ago.
  EXPECT_GT(response.check_in().late_by().seconds(), 2 * 86400 - 60);
  EXPECT_LE(response.check_in().late_by().seconds(), 3 * 86400);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins WHERE late_by > interval '1 day'"), 1);

  v1::ListCheckInsRequest list;
  list.set_late_only(true);
  v1::ListCheckInsResponse listed;
  ASSERT_TRUE(stub_->ListCheckIns(As({"supervisor"}, "supervisor-1").get(), list, &listed).ok());
  ASSERT_EQ(listed.check_ins_size(), 1);
  EXPECT_TRUE(listed.check_ins(0).late());
}

TEST_F(CheckInServiceTest, DueCheckInsListTheSupportersOccurrencesOfTheDay) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  v1::ListDueCheckInsRequest due;
  v1::ListDueCheckInsResponse listed;
  ASSERT_TRUE(stub_->ListDueCheckIns(As({"peer_supporter"}, "peer-1").get(), due, &listed).ok());
  ASSERT_EQ(listed.scheduled_check_ins_size(), 1);
  EXPECT_EQ(listed.scheduled_check_ins(0).status(), v1::SCHEDULED_CHECK_IN_STATUS_DUE);
  v1::RecordCheckInRequest request = CheckIn(id, ValidAnswers("structured_checkin"));
  request.set_scheduled_check_in_id(listed.scheduled_check_ins(0).scheduled_check_in_id());
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(request, &response).ok());
  listed.Clear();
  ASSERT_TRUE(stub_->ListDueCheckIns(As({"peer_supporter"}, "peer-1").get(), due, &listed).ok());
  ASSERT_EQ(listed.scheduled_check_ins_size(), 1);
  EXPECT_EQ(listed.scheduled_check_ins(0).status(), v1::SCHEDULED_CHECK_IN_STATUS_COMPLETED);
  EXPECT_EQ(listed.scheduled_check_ins(0).check_in_id(), response.check_in().check_in_id());
  // Completing it twice is refused.
  request.set_idempotency_key("another-key");
  EXPECT_EQ(Record(request, &response).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // Another supporter sees nothing of it.
  listed.Clear();
  ASSERT_TRUE(stub_->ListDueCheckIns(As({"peer_supporter"}, "peer-2").get(), due, &listed).ok());
  EXPECT_EQ(listed.scheduled_check_ins_size(), 0);
}

TEST_F(CheckInServiceTest, EndedEnrollmentKeepsItsHistoryAndRefusesLaterCheckIns) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  v1::RecordCheckInResponse recorded;
  ASSERT_TRUE(Record(CheckIn(id, ValidAnswers("structured_checkin")), &recorded).ok());
  v1::EndEnrollmentRequest end;
  end.set_enrollment_id(id);
  end.set_reason(v1::ENROLLMENT_END_REASON_COMPLETED);
  v1::EndEnrollmentResponse ended;
  ASSERT_TRUE(stub_->EndEnrollment(As({"case_manager"}).get(), end, &ended).ok());
  EXPECT_EQ(ended.enrollment().status(), v1::ENROLLMENT_STATUS_ENDED);
  ASSERT_TRUE(stub_->EndEnrollment(As({"case_manager"}).get(), end, &ended).ok());  // Retry.
  EXPECT_EQ(Events("EnrollmentEndedEvent"), 1);
  v1::RecordCheckInRequest later = CheckIn(id, ValidAnswers("structured_checkin"));
  later.mutable_occurred_at()->set_seconds(later.occurred_at().seconds() + 120);
  v1::RecordCheckInResponse response;
  EXPECT_EQ(Record(later, &response).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::ListEnrollmentsRequest list;
  v1::ListEnrollmentsResponse listed;
  ASSERT_TRUE(stub_->ListEnrollments(As({"peer_supporter"}, "peer-1").get(), list, &listed).ok());
  EXPECT_EQ(listed.enrollments_size(), 1);
  listed.Clear();
  ASSERT_TRUE(stub_->ListEnrollments(As({"peer_supporter"}, "peer-2").get(), list, &listed).ok());
  EXPECT_EQ(listed.enrollments_size(), 0);
}

TEST_F(CheckInServiceTest, DefaultPathwaysAreSeededPerAgencyOnFirstUse) {
  v1::GetPathwayVersionRequest request;
  request.set_pathway_key("crisis_transition");
  v1::GetPathwayVersionResponse response;
  ASSERT_TRUE(stub_
                  ->GetPathwayVersion(As({"peer_supporter"}, "peer-1", "agency-c").get(), request,
                                      &response)
                  .ok());
  EXPECT_EQ(response.pathway().version(), 1);
  EXPECT_EQ(response.pathway().fields_size(), 8);
  EXPECT_EQ(response.pathway().agency_id(), "agency-c");
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.pathway_versions WHERE agency_id = 'agency-c'"), 4);
  request.set_pathway_key("no_such_pathway");
  EXPECT_EQ(stub_->GetPathwayVersion(As({"clinician"}).get(), request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(CheckInServiceTest, ThirdFailedAttemptRaisesOneMissedContactConcernAndReachedReconnects) {
  const std::string id = Enrolled("crisis_transition", "p-1");
  int raised = 0;
  v1::RecordContactAttemptResponse response;
  for (int i = 0; i < 4; ++i) {
    const v1::RecordContactAttemptRequest request =
        Attempt(id, v1::CONTACT_CHANNEL_PHONE,
                i == 1 ? v1::CONTACT_OUTCOME_LEFT_MESSAGE : v1::CONTACT_OUTCOME_NO_ANSWER,
                "attempt-" + std::to_string(i));
    ASSERT_TRUE(
        stub_->RecordContactAttempt(As({"peer_supporter"}, "peer-1").get(), request, &response)
            .ok());
    EXPECT_EQ(response.failed_attempts_in_a_row(), i + 1);
    if (response.missed_contact_raised()) {
      ++raised;
      EXPECT_EQ(i, 2);
      ASSERT_EQ(response.raised_concerns_size(), 1);
      // Crisis transitions raise missed contacts as urgent.
      EXPECT_EQ(response.raised_concerns(0).severity(), common::v1::CONCERN_SEVERITY_URGENT);
    }
    // A retry of the same attempt changes nothing.
    ASSERT_TRUE(
        stub_->RecordContactAttempt(As({"peer_supporter"}, "peer-1").get(), request, &response)
            .ok());
    EXPECT_EQ(response.failed_attempts_in_a_row(), i + 1);
  }
  EXPECT_EQ(raised, 1);
  EXPECT_EQ(response.engagement_stage(), v1::ENGAGEMENT_STAGE_MISSED_CONTACT);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.contact_attempts"), 4);
  EXPECT_EQ(Events("ConcernRaisedEvent"), 1);
  EXPECT_EQ(Events("ContactAttemptRecordedEvent"), 4);

  // A check-in is a contact: the reconnection.
  v1::RecordCheckInResponse checked_in;
  ASSERT_TRUE(Record(CheckIn(id, ValidAnswers("crisis_transition")), &checked_in).ok());
  EXPECT_TRUE(checked_in.reconnection());
  EXPECT_EQ(Events("ReconnectionRecordedEvent"), 1);
  v1::GetEnrollmentRequest get;
  get.set_enrollment_id(id);
  v1::GetEnrollmentResponse got;
  ASSERT_TRUE(stub_->GetEnrollment(As({"case_manager"}).get(), get, &got).ok());
  EXPECT_EQ(got.enrollment().engagement_stage(), v1::ENGAGEMENT_STAGE_ENGAGED);
  EXPECT_EQ(got.enrollment().failed_attempts_in_a_row(), 0);
}

TEST_F(CheckInServiceTest, ProgramPolicyThresholdIsPerAgency) {
  v1::UpdateProgramPolicyRequest update;
  update.mutable_policy()->set_missed_contact_failed_attempts(1);
  update.mutable_update_mask()->add_paths("missed_contact_failed_attempts");
  v1::UpdateProgramPolicyResponse updated;
  EXPECT_EQ(stub_->UpdateProgramPolicy(As({"supervisor"}).get(), update, &updated).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Events("ProgramPolicyChangedEvent"), 0);
  ASSERT_TRUE(stub_->UpdateProgramPolicy(As({"program_admin"}).get(), update, &updated).ok());
  EXPECT_EQ(updated.policy().missed_contact_failed_attempts(), 1);
  EXPECT_EQ(updated.policy().at_risk_after().seconds(), 28 * 86400);
  // The change is an event with the whole policy after it (the evaluation service dates reports
  // in its time zone).
  const pqxx::result changed = db_->AdminQuery(
      "SELECT payload, aggregate_id FROM checkin.outbox "
      "WHERE event_type = 'peerpath.checkin.v1.ProgramPolicyChangedEvent'");
  ASSERT_EQ(changed.size(), 1u);
  EXPECT_EQ(changed[0][1].as<std::string>(), kAgency);
  const pqxx::binarystring payload(changed[0][0]);
  v1::ProgramPolicyChangedEvent event;
  ASSERT_TRUE(event.ParseFromArray(payload.data(), static_cast<int>(payload.size())));
  EXPECT_EQ(event.time_zone(), updated.policy().time_zone());
  EXPECT_EQ(event.missed_contact_failed_attempts(), 1);
  EXPECT_EQ(event.at_risk_after().seconds(), 28 * 86400);
  EXPECT_EQ(std::vector<std::string>(event.changed_fields().begin(), event.changed_fields().end()),
            std::vector<std::string>{"missed_contact_failed_attempts"});
  EXPECT_EQ(event.changed_by_role(), "program_admin");

  v1::UpdateProgramPolicyRequest bad;
  bad.mutable_policy()->set_time_zone("Mars/Olympus");
  bad.mutable_policy()->set_wellbeing_drop_points(9);
  bad.mutable_update_mask()->add_paths("time_zone");
  bad.mutable_update_mask()->add_paths("wellbeing_drop_points");
  bad.mutable_update_mask()->add_paths("colour");
  grpc::Status status = stub_->UpdateProgramPolicy(As({"program_admin"}).get(), bad, &updated);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      BadFields(status),
      (std::set<std::string>{"policy.time_zone", "policy.wellbeing_drop_points", "update_mask"}));
  // An empty mask sets all five: every field of the policy is read and checked.
  v1::UpdateProgramPolicyRequest whole;
  whole.mutable_policy()->set_time_zone("America/Chicago");
  whole.mutable_policy()->set_missed_contact_failed_attempts(1);
  whole.mutable_policy()->mutable_at_risk_after()->set_seconds(14 * 86400);
  whole.mutable_policy()->mutable_lost_to_follow_up_after()->set_seconds(60 * 86400);
  status = stub_->UpdateProgramPolicy(As({"program_admin"}).get(), whole, &updated);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status), (std::set<std::string>{"policy.wellbeing_drop_points"}));
  EXPECT_EQ(Events("ProgramPolicyChangedEvent"), 1);  // Refused changes write none.
  whole.mutable_policy()->set_wellbeing_drop_points(3);
  ASSERT_TRUE(stub_->UpdateProgramPolicy(As({"program_admin"}).get(), whole, &updated).ok());
  EXPECT_EQ(updated.policy().time_zone(), "America/Chicago");
  EXPECT_EQ(updated.policy().at_risk_after().seconds(), 14 * 86400);
  EXPECT_EQ(updated.policy().wellbeing_drop_points(), 3);
  EXPECT_EQ(Events("ProgramPolicyChangedEvent"), 2);

  const std::string id = Enrolled("structured_checkin", "p-1");
  v1::RecordContactAttemptRequest request =
      Attempt(id, v1::CONTACT_CHANNEL_MESSAGE, v1::CONTACT_OUTCOME_WRONG_NUMBER, "attempt-1");
  v1::RecordContactAttemptResponse response;
  ASSERT_TRUE(stub_->RecordContactAttempt(As({"case_manager"}).get(), request, &response).ok());
  EXPECT_TRUE(response.missed_contact_raised());
  // Another agency keeps the default of three.
  v1::GetProgramPolicyResponse other;
  ASSERT_TRUE(stub_
                  ->GetProgramPolicy(As({"operations"}, "ops", "agency-b").get(),
                                     v1::GetProgramPolicyRequest(), &other)
                  .ok());
  EXPECT_EQ(other.policy().missed_contact_failed_attempts(), 3);
  // A wrong supporter may not record attempts either.
  Match("p-20", "peer-2", "22222222-2222-4222-8222-222222222222");
  request.set_idempotency_key("attempt-2");
  EXPECT_EQ(stub_->RecordContactAttempt(As({"peer_supporter"}, "peer-2").get(), request, &response)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(CheckInServiceTest, MatchingEventsFeedWhoMayRecord) {
  // The real matching binary's log, as its own transactions leave it.
  auto matching = std::make_unique<ServiceProcess>("matching", db_->UrlFor("matching"));
  ASSERT_TRUE(matching->WaitHealth(true)) << matching->Log();
  const std::string match_id = "33333333-3333-4333-8333-333333333333";
  const std::string supporter_id = "44444444-4444-4444-8444-444444444444";
  auto emit = [&](const google::protobuf::Message& payload) {
    db_->WriteOutboxEvent("matching", kAgency, payload, match_id);
  };
  matching::v1::MatchStartedEvent started;
  started.set_match_id(match_id);
  started.set_supporter_id(supporter_id);
  started.set_supporter_subject("peer-7");
  started.set_participant_id("p-70");
  started.set_supervisor_subject("supervisor-7");
  emit(started);

  const TokenFile token_file("peerpath", {"service"}, "peerpath-checkin");
  ServiceProcess consumer(
      "checkin", db_->UrlFor("checkin"),
      {"--matching_address=127.0.0.1:" + std::to_string(matching->grpc_port()),
       "--consent_address=127.0.0.1:" + std::to_string(consent_port_), token_file.Flag()});
  ASSERT_TRUE(consumer.WaitHealth(true)) << consumer.Log();
  auto wait_for = [&](const std::string& sql, int expected) {
    for (int i = 0; i < 100 && Count(sql) != expected; ++i) std::this_thread::sleep_for(100ms);
    return Count(sql);
  };
  EXPECT_EQ(wait_for("SELECT count(*) FROM checkin.supporter_matches WHERE supporter_subject = "
                     "'peer-7' AND active",
                     1),
            1);
  const std::string id = Enrolled("structured_checkin", "p-70");
  v1::RecordCheckInResponse response;
  auto stub = v1::CheckInService::NewStub(consumer.Channel());
  v1::RecordCheckInRequest request = CheckIn(id, ValidAnswers("structured_checkin"));
  ASSERT_TRUE(stub->RecordCheckIn(As({"peer_supporter"}, "peer-7").get(), request, &response).ok());
  EXPECT_EQ(response.check_in().supporter_id(), supporter_id);
  v1::GetEnrollmentRequest get;
  get.set_enrollment_id(id);
  v1::GetEnrollmentResponse got;
  EXPECT_TRUE(stub->GetEnrollment(As({"supervisor"}, "supervisor-7").get(), get, &got).ok());
  EXPECT_EQ(stub->GetEnrollment(As({"supervisor"}, "supervisor-8").get(), get, &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // The supporter's supervisor changes: the new one takes over, the old one loses access.
  matching::v1::SupporterSupervisionChangedEvent supervision;
  supervision.set_supporter_id(supporter_id);
  supervision.set_supporter_subject("peer-7");
  supervision.set_previous_supervisor_subject("supervisor-7");
  supervision.set_supervisor_subject("supervisor-8");
  emit(supervision);
  EXPECT_EQ(wait_for("SELECT count(*) FROM checkin.supporter_matches WHERE supervisor_subject = "
                     "'supervisor-8' AND active",
                     1),
            1);
  EXPECT_TRUE(stub->GetEnrollment(As({"supervisor"}, "supervisor-8").get(), get, &got).ok());
  EXPECT_EQ(stub->GetEnrollment(As({"supervisor"}, "supervisor-7").get(), get, &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  matching::v1::MatchEndedEvent ended;
  ended.set_match_id(match_id);
  ended.set_supporter_id(supporter_id);
  ended.set_supporter_subject("peer-7");
  ended.set_participant_id("p-70");
  emit(ended);
  EXPECT_EQ(wait_for("SELECT count(*) FROM checkin.supporter_matches WHERE supporter_subject = "
                     "'peer-7' AND active",
                     0),
            0);
  request.set_idempotency_key("after-the-match-ended");
  EXPECT_EQ(
      stub->RecordCheckIn(As({"peer_supporter"}, "peer-7").get(), request, &response).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(CheckInServiceTest, SupervisorsSeeAndRecordOnlyForTheirSupportersParticipants) {
  // p-1 is supported by peer-1 (supervised by supervisor-1), p-20 by peer-2 (supervisor-2).
  Match("p-20", "peer-2", "22222222-2222-4222-8222-222222222222", "supervisor-2");
  const std::string mine = Enrolled("structured_checkin", "p-20");
  const std::string theirs = Enrolled("structured_checkin", "p-1");
  v1::RecordCheckInResponse recorded;
  ASSERT_TRUE(Record(CheckIn(theirs, ValidAnswers("structured_checkin")), &recorded).ok());
  ASSERT_TRUE(Record(CheckIn(mine, ValidAnswers("structured_checkin")), &recorded, "peer-2").ok());

  auto as_supervisor_2 = [] { return As({"supervisor"}, "supervisor-2"); };
  // Lists hold only the supervised supporters' participants.
  v1::ListEnrollmentsResponse enrollments;
  ASSERT_TRUE(
      stub_->ListEnrollments(as_supervisor_2().get(), v1::ListEnrollmentsRequest(), &enrollments)
          .ok());
  ASSERT_EQ(enrollments.enrollments_size(), 1);
  EXPECT_EQ(enrollments.enrollments(0).participant_id(), "p-20");
  v1::ListCheckInsResponse check_ins;
  ASSERT_TRUE(
      stub_->ListCheckIns(as_supervisor_2().get(), v1::ListCheckInsRequest(), &check_ins).ok());
  ASSERT_EQ(check_ins.check_ins_size(), 1);
  EXPECT_EQ(check_ins.check_ins(0).participant_id(), "p-20");
  // Staff roles other than supervisors see the whole agency.
  check_ins.Clear();
  ASSERT_TRUE(
      stub_->ListCheckIns(As({"clinician"}).get(), v1::ListCheckInsRequest(), &check_ins).ok());
  EXPECT_EQ(check_ins.check_ins_size(), 2);

  // Reading, recording and ending for another supervisor's participant are refused and audited.
  v1::GetEnrollmentRequest get;
  get.set_enrollment_id(theirs);
  v1::GetEnrollmentResponse got;
  EXPECT_EQ(stub_->GetEnrollment(as_supervisor_2().get(), get, &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  const int refusals_before = Count(
      "SELECT count(*) FROM checkin.audit_log WHERE decision = 'denied' AND actor = "
      "'supervisor-2'");
  EXPECT_EQ(refusals_before, 1);
  grpc::Status refused = Record(CheckIn(theirs, ValidAnswers("structured_checkin")), &recorded,
                                "supervisor-2", "supervisor");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(refused.error_message().find("not one you supervise"), std::string::npos)
      << refused.error_message();
  v1::EndEnrollmentRequest end;
  end.set_enrollment_id(theirs);
  end.set_reason(v1::ENROLLMENT_END_REASON_COMPLETED);
  v1::EndEnrollmentResponse ended;
  EXPECT_EQ(stub_->EndEnrollment(as_supervisor_2().get(), end, &ended).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.audit_log WHERE decision = 'denied' AND actor = "
                  "'supervisor-2'"),
            3);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.check_ins"), 2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE status = 'ended'"), 0);

  // Their own supporter's participant: allowed.
  EXPECT_TRUE(stub_->GetEnrollment(As({"supervisor"}, "supervisor-1").get(), get, &got).ok());
  EXPECT_TRUE(Record(CheckIn(theirs, ValidAnswers("structured_checkin")), &recorded, "supervisor-1",
                     "supervisor")
                  .ok());
}

TEST_F(CheckInServiceTest, PublishedVersionAppliesToNewEnrollmentsOnly) {
  const std::string old_id = Enrolled("structured_checkin", "p-1");
  v1::GetPathwayVersionRequest get;
  get.set_pathway_key("structured_checkin");
  v1::GetPathwayVersionResponse current;
  ASSERT_TRUE(stub_->GetPathwayVersion(As({"program_admin"}).get(), get, &current).ok());
  v1::PublishPathwayVersionRequest publish;
  *publish.mutable_pathway() = current.pathway();
  auto* field = publish.mutable_pathway()->add_fields();
  field->set_key("housing_stable");
  field->set_label("Housing stable");
  field->set_required(true);
  field->mutable_bool_field();
  publish.set_base_version(1);
  publish.set_idempotency_key("publish-v2");
  v1::PublishPathwayVersionResponse published;
  EXPECT_EQ(
      stub_->PublishPathwayVersion(As({"supervisor"}).get(), publish, &published).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  grpc::Status status =
      stub_->PublishPathwayVersion(As({"program_admin"}).get(), publish, &published);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(published.pathway().version(), 2);
  // A stale edit is refused; a retry is not.
  publish.set_idempotency_key("publish-again");
  EXPECT_EQ(
      stub_->PublishPathwayVersion(As({"program_admin"}).get(), publish, &published).error_code(),
      grpc::StatusCode::ABORTED);
  publish.set_idempotency_key("publish-v2");
  ASSERT_TRUE(stub_->PublishPathwayVersion(As({"program_admin"}).get(), publish, &published).ok());
  EXPECT_EQ(published.pathway().version(), 2);
  v1::PublishPathwayVersionRequest bad = publish;
  bad.mutable_pathway()->mutable_fields(0)->clear_spec();
  bad.set_idempotency_key("publish-bad");
  status = stub_->PublishPathwayVersion(As({"program_admin"}).get(), bad, &published);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(BadFields(status).contains("pathway.fields[0]"));

  // The enrollment made before keeps version 1: the new field is not asked of it.
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(CheckIn(old_id, ValidAnswers("structured_checkin")), &response).ok());
  EXPECT_EQ(response.check_in().pathway_version(), 1);
  const std::string new_id = Enrolled("structured_checkin", "p-2");
  status = Record(CheckIn(new_id, ValidAnswers("structured_checkin")), &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status), (std::set<std::string>{"answers.housing_stable"}));
  std::vector<v1::Answer> answers = ValidAnswers("structured_checkin");
  answers.push_back(Bool("housing_stable", true));
  ASSERT_TRUE(Record(CheckIn(new_id, answers), &response).ok());
  EXPECT_EQ(response.check_in().pathway_version(), 2);
  v1::ListPathwayVersionsRequest list;
  list.set_pathway_key("structured_checkin");
  v1::ListPathwayVersionsResponse listed;
  ASSERT_TRUE(stub_->ListPathwayVersions(As({"clinician"}).get(), list, &listed).ok());
  ASSERT_EQ(listed.pathways_size(), 2);
  EXPECT_EQ(listed.pathways(0).version(), 2);
}

TEST_F(CheckInServiceTest, MissedFirstAppointmentInEarlyEngagementRaisesDisengagementConcern) {
  const std::string id = Enrolled("early_engagement", "p-1");
  v1::ScheduleAppointmentRequest schedule;
  schedule.set_enrollment_id(id);
  schedule.set_kind(v1::APPOINTMENT_KIND_FIRST_APPOINTMENT);
  *schedule.mutable_scheduled_at() = ToProtoTimestamp(absl::Now() + absl::Hours(48));
  schedule.set_idempotency_key("first-appointment");
  v1::ScheduleAppointmentResponse scheduled;
  EXPECT_EQ(stub_->ScheduleAppointment(As({"peer_supporter"}, "peer-1").get(), schedule, &scheduled)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(stub_->ScheduleAppointment(As({"case_manager"}).get(), schedule, &scheduled).ok());
  EXPECT_EQ(scheduled.appointment().owner_id(), "scheduling-team");  // The enrollment's owner.
  EXPECT_EQ(scheduled.appointment().outcome(), v1::APPOINTMENT_OUTCOME_PENDING);
  v1::ScheduleAppointmentRequest peer_owned = schedule;
  peer_owned.set_owner_id("peer-1");
  peer_owned.set_idempotency_key("peer-owned");
  EXPECT_EQ(
      stub_->ScheduleAppointment(As({"case_manager"}).get(), peer_owned, &scheduled).error_code(),
      grpc::StatusCode::FAILED_PRECONDITION);

  v1::RecordAppointmentOutcomeRequest outcome;
  outcome.set_appointment_id(scheduled.appointment().appointment_id());
  outcome.set_outcome(v1::APPOINTMENT_OUTCOME_MISSED);
  outcome.set_idempotency_key("missed");
  v1::RecordAppointmentOutcomeResponse recorded;
  ASSERT_TRUE(stub_->RecordAppointmentOutcome(As({"clinician"}).get(), outcome, &recorded).ok());
  ASSERT_EQ(recorded.raised_concerns_size(), 1);
  EXPECT_EQ(recorded.raised_concerns(0).category(), common::v1::CONCERN_CATEGORY_DISENGAGEMENT);
  EXPECT_EQ(recorded.raised_concerns(0).source(), v1::CONCERN_SOURCE_MISSED_APPOINTMENT);
  EXPECT_EQ(recorded.appointment().outcome(), v1::APPOINTMENT_OUTCOME_MISSED);
  ASSERT_TRUE(
      stub_->RecordAppointmentOutcome(As({"clinician"}).get(), outcome, &recorded).ok());  // Retry.
  EXPECT_EQ(Events("ConcernRaisedEvent"), 1);
  EXPECT_EQ(Events("AppointmentOutcomeRecordedEvent"), 1);
  outcome.set_idempotency_key("missed-again");
  EXPECT_EQ(
      stub_->RecordAppointmentOutcome(As({"clinician"}).get(), outcome, &recorded).error_code(),
      grpc::StatusCode::FAILED_PRECONDITION);

  // Rescheduling creates the replacement; attending raises nothing.
  schedule.set_idempotency_key("second-appointment");
  ASSERT_TRUE(stub_->ScheduleAppointment(As({"case_manager"}).get(), schedule, &scheduled).ok());
  outcome.set_appointment_id(scheduled.appointment().appointment_id());
  outcome.set_outcome(v1::APPOINTMENT_OUTCOME_RESCHEDULED);
  *outcome.mutable_rescheduled_to() = ToProtoTimestamp(absl::Now() + absl::Hours(96));
  outcome.set_idempotency_key("rescheduled");
  ASSERT_TRUE(stub_->RecordAppointmentOutcome(As({"clinician"}).get(), outcome, &recorded).ok());
  EXPECT_EQ(recorded.appointment().rescheduled_to_appointment_id(),
            recorded.replacement().appointment_id());
  EXPECT_EQ(recorded.replacement().rescheduled_from_appointment_id(),
            recorded.appointment().appointment_id());
  EXPECT_EQ(recorded.replacement().owner_id(), "scheduling-team");
  EXPECT_TRUE(recorded.raised_concerns().empty());
}

TEST_F(CheckInServiceTest, SweeperMarksMissedWindowsAndStagesDisengagement) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  db_->AdminQuery(
      "INSERT INTO checkin.scheduled_check_ins (agency_id, enrollment_id, due_on, window_start, "
      "window_end) VALUES ('agency-a', '" +
      id + "', current_date - 2, now() - interval '2 days', now() - interval '1 day')");
  db_->AdminQuery("UPDATE checkin.enrollments SET enrolled_at = now() - interval '100 days'");
  auto wait_for = [&](const std::string& type, int expected) {
    for (int i = 0; i < 100 && Events(type) < expected; ++i) std::this_thread::sleep_for(100ms);
    return Events(type);
  };
  EXPECT_EQ(wait_for("CheckInMissedEvent", 1), 1);
  EXPECT_EQ(wait_for("EngagementStageChangedEvent", 2), 2);  // At risk, then lost.
  std::this_thread::sleep_for(700ms);                        // Further sweeps change nothing.
  EXPECT_EQ(Events("CheckInMissedEvent"), 1);
  EXPECT_EQ(Events("EngagementStageChangedEvent"), 2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.scheduled_check_ins WHERE status = 'missed'"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE engagement_stage = "
                  "'lost_to_follow_up'"),
            1);
  // The next contact is a reconnection.
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(CheckIn(id, ValidAnswers("structured_checkin")), &response).ok());
  EXPECT_TRUE(response.reconnection());
  EXPECT_EQ(Events("ReconnectionRecordedEvent"), 1);
}

TEST_F(CheckInServiceTest, EscalationSafetyConcernStopsRoutineEngagement) {
  auto escalation = std::make_unique<ServiceProcess>("escalation", db_->UrlFor("escalation"));
  ASSERT_TRUE(escalation->WaitHealth(true)) << escalation->Log();
  const TokenFile token_file("peerpath", {"service"}, "peerpath-checkin");
  ServiceProcess consumer(
      "checkin", db_->UrlFor("checkin"),
      {"--escalation_address=127.0.0.1:" + std::to_string(escalation->grpc_port()),
       "--consent_address=127.0.0.1:" + std::to_string(consent_port_), token_file.Flag(),
       "--checkin_sweep_interval=0s"});
  ASSERT_TRUE(consumer.WaitHealth(true)) << consumer.Log();
  const std::string first = Enrolled("structured_checkin", "p-1");
  const std::string second = Enrolled("early_engagement", "p-1");
  escalation::v1::RoutineEngagementStoppedEvent stopped;
  stopped.set_concern_id("55555555-5555-4555-8555-555555555555");
  stopped.set_participant_id("p-1");  // No enrollment named: every active one of p-1.
  stopped.set_category(common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  *stopped.mutable_stopped_at() = ToProtoTimestamp(absl::Now());
  db_->WriteOutboxEvent("escalation", kAgency, stopped, "c-1");
  for (int i = 0; i < 100 && Events("EnrollmentRoutineStoppedEvent") < 2; ++i) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(Events("EnrollmentRoutineStoppedEvent"), 2);
  EXPECT_EQ(Count("SELECT count(*) FROM checkin.enrollments WHERE NOT routine AND "
                  "routine_stopped_at IS NOT NULL"),
            2);
  // Recording stays possible; the schedule no longer offers due check-ins.
  v1::RecordCheckInResponse response;
  ASSERT_TRUE(Record(CheckIn(first, ValidAnswers("structured_checkin")), &response).ok());
  EXPECT_TRUE(response.check_in().scheduled_check_in_id().empty());
  v1::ListDueCheckInsResponse due;
  ASSERT_TRUE(stub_
                  ->ListDueCheckIns(As({"peer_supporter"}, "peer-1").get(),
                                    v1::ListDueCheckInsRequest(), &due)
                  .ok());
  EXPECT_EQ(due.scheduled_check_ins_size(), 0);
  (void)second;
}

TEST_F(CheckInServiceTest, ListAppointmentsShowsEachRoleOnlyWhatItMaySee) {
  Match("p-10", "peer-2", "22222222-2222-4222-8222-222222222222", "supervisor-2");
  const std::string mine = Enrolled("early_engagement", "p-1");
  const std::string theirs = Enrolled("early_engagement", "p-10");
  auto schedule = [&](const std::string& enrollment, v1::AppointmentKind kind, int hours) {
    v1::ScheduleAppointmentRequest r;
    r.set_enrollment_id(enrollment);
    r.set_kind(kind);
    *r.mutable_scheduled_at() = ToProtoTimestamp(absl::Now() + absl::Hours(hours));
    r.set_idempotency_key("appointment-" + std::to_string(++keys_));
    v1::ScheduleAppointmentResponse out;
    EXPECT_TRUE(stub_->ScheduleAppointment(As({"case_manager"}).get(), r, &out).ok());
    return out.appointment().appointment_id();
  };
  const std::string later = schedule(mine, v1::APPOINTMENT_KIND_CLINICAL_REVIEW, 72);
  const std::string first = schedule(mine, v1::APPOINTMENT_KIND_FIRST_APPOINTMENT, 24);
  const std::string middle = schedule(mine, v1::APPOINTMENT_KIND_THERAPY, 48);
  const std::string other = schedule(theirs, v1::APPOINTMENT_KIND_FIRST_APPOINTMENT, 30);
  auto list = [&](const v1::ListAppointmentsRequest& r, const std::string& role,
                  const std::string& subject, v1::ListAppointmentsResponse* out,
                  const std::string& agency = kAgency) {
    out->Clear();
    return stub_->ListAppointments(As({role}, subject, agency).get(), r, out);
  };
  auto ids = [](const v1::ListAppointmentsResponse& r) {
    std::vector<std::string> out;
    for (const auto& a : r.appointments()) out.push_back(a.appointment_id());
    return out;
  };
  v1::ListAppointmentsRequest all;
  v1::ListAppointmentsResponse got;
  ASSERT_TRUE(list(all, "clinician", "dr-lee", &got).ok());
  EXPECT_EQ(ids(got), (std::vector<std::string>{first, other, middle, later}));  // By time.
  ASSERT_TRUE(list(all, "peer_supporter", "peer-1", &got).ok());
  EXPECT_EQ(ids(got), (std::vector<std::string>{first, middle, later}));
  ASSERT_TRUE(list(all, "supervisor", "supervisor-2", &got).ok());
  EXPECT_EQ(ids(got), (std::vector<std::string>{other}));
  ASSERT_TRUE(list(all, "clinician", "dr-other", &got, "agency-b").ok());
  EXPECT_TRUE(got.appointments().empty());
  EXPECT_EQ(list(all, "operations", "ops-1", &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::ListAppointmentsRequest outside;
  outside.set_participant_id("p-10");
  EXPECT_EQ(list(outside, "peer_supporter", "peer-1", &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Filters, and pages whose token is bound to them.
  v1::ListAppointmentsRequest firsts;
  firsts.add_kinds(v1::APPOINTMENT_KIND_FIRST_APPOINTMENT);
  ASSERT_TRUE(list(firsts, "clinician", "dr-lee", &got).ok());
  EXPECT_EQ(ids(got), (std::vector<std::string>{first, other}));
  v1::ListAppointmentsRequest page;
  page.set_enrollment_id(mine);
  page.set_page_size(2);
  ASSERT_TRUE(list(page, "clinician", "dr-lee", &got).ok());
  EXPECT_EQ(ids(got), (std::vector<std::string>{first, middle}));
  ASSERT_FALSE(got.next_page_token().empty());
  page.set_page_token(got.next_page_token());
  v1::ListAppointmentsRequest changed = page;
  changed.add_outcomes(v1::APPOINTMENT_OUTCOME_PENDING);
  ASSERT_TRUE(list(page, "clinician", "dr-lee", &got).ok());
  EXPECT_EQ(ids(got), (std::vector<std::string>{later}));
  EXPECT_TRUE(got.next_page_token().empty());
  grpc::Status status = list(changed, "clinician", "dr-lee", &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status), (std::set<std::string>{"page_token"}));

  v1::ListAppointmentsRequest bad;
  bad.set_enrollment_id("nope");
  bad.add_kinds(v1::APPOINTMENT_KIND_UNSPECIFIED);
  bad.add_outcomes(static_cast<v1::AppointmentOutcome>(99));
  *bad.mutable_scheduled()->mutable_start_time() = ToProtoTimestamp(absl::Now());
  *bad.mutable_scheduled()->mutable_end_time() = ToProtoTimestamp(absl::Now() - absl::Hours(1));
  bad.set_page_size(-1);
  status = list(bad, "clinician", "dr-lee", &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status), (std::set<std::string>{"enrollment_id", "kinds[0]", "outcomes[0]",
                                                      "scheduled.end_time", "page_size"}));
}

TEST_F(CheckInServiceTest, WellbeingTrendFollowsTheRelationshipAndTheParticipantsConsent) {
  const std::string id = Enrolled("structured_checkin", "p-1");
  int seconds = 40;
  for (int score : {5, 4, 2}) {
    std::vector<v1::Answer> answers = ValidAnswers("structured_checkin");
    answers[1] = Scale("wellbeing", score);
    v1::RecordCheckInRequest request = CheckIn(id, answers);
    *request.mutable_occurred_at() = ToProtoTimestamp(absl::Now() - absl::Seconds(seconds));
    seconds -= 10;
    v1::RecordCheckInResponse recorded;
    ASSERT_TRUE(Record(request, &recorded).ok());
  }
  auto trend = [&](const v1::GetWellbeingTrendRequest& r, const std::string& role,
                   const std::string& subject, v1::GetWellbeingTrendResponse* out) {
    out->Clear();
    return stub_->GetWellbeingTrend(As({role}, subject).get(), r, out);
  };
  auto scores = [](const v1::GetWellbeingTrendResponse& r) {
    std::vector<int> out;
    for (const auto& p : r.points()) out.push_back(p.score());
    return out;
  };
  v1::GetWellbeingTrendRequest request;
  request.set_participant_id("p-1");
  v1::GetWellbeingTrendResponse got;
  ASSERT_TRUE(trend(request, "peer_supporter", "peer-1", &got).ok());
  EXPECT_EQ(scores(got), (std::vector<int>{5, 4, 2}));  // Oldest first.
  EXPECT_TRUE(got.declining());                         // 5 -> 2: a fall of 3 >= 2.
  EXPECT_EQ(got.drop_points(), 2);
  EXPECT_EQ(got.points(0).enrollment_id(), id);
  request.set_max_points(2);
  ASSERT_TRUE(trend(request, "supervisor", "supervisor-1", &got).ok());
  EXPECT_EQ(scores(got), (std::vector<int>{4, 2}));
  EXPECT_TRUE(got.declining());  // Whatever the filters: the last three.

  // Outside the relationship, and staff without the participant's consent, see nothing.
  EXPECT_EQ(trend(request, "peer_supporter", "peer-2", &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(trend(request, "supervisor", "supervisor-2", &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  consent_.Permit({});
  EXPECT_EQ(trend(request, "clinician", "dr-lee", &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(got.points().empty());
  consent_.Permit({"dr-lee"});
  ASSERT_TRUE(trend(request, "clinician", "dr-lee", &got).ok());
  EXPECT_EQ(scores(got), (std::vector<int>{4, 2}));
  const auto questions = consent_.access_questions();
  ASSERT_EQ(questions.size(), 2u);
  EXPECT_EQ(questions[1].participant_id(), "p-1");
  EXPECT_EQ(questions[1].data_category(), consent::v1::DATA_CATEGORY_CHECK_IN_SUMMARIES);
  EXPECT_EQ(questions[1].purpose(), consent::v1::PURPOSE_TREATMENT);
  EXPECT_EQ(questions[1].actor().roles(0), "clinician");
  EXPECT_EQ(trend(request, "operations", "ops-1", &got).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Another participant's enrollment; bad fields named.
  const std::string other = Enrolled("structured_checkin", "p-2");
  request.set_enrollment_id(other);
  EXPECT_EQ(trend(request, "peer_supporter", "peer-1", &got).error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::GetWellbeingTrendRequest bad;
  bad.set_max_points(101);
  bad.set_enrollment_id("x");
  grpc::Status status = trend(bad, "peer_supporter", "peer-1", &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(BadFields(status),
            (std::set<std::string>{"participant_id", "enrollment_id", "max_points"}));
}

TEST_F(CheckInServiceTest, StaffSeeAnswersOnlyWithTheParticipantsConsent) {
  const std::string one = Enrolled("structured_checkin", "p-1");
  const std::string two = Enrolled("structured_checkin", "p-2");
  v1::RecordCheckInResponse first, second;
  ASSERT_TRUE(Record(CheckIn(one, ValidAnswers("structured_checkin")), &first).ok());
  ASSERT_TRUE(Record(CheckIn(two, ValidAnswers("structured_checkin")), &second).ok());
  v1::GetCheckInRequest get;
  get.set_check_in_id(first.check_in().check_in_id());
  v1::GetCheckInResponse got;
  // The supporter sees the answers without asking anyone.
  ASSERT_TRUE(stub_->GetCheckIn(As({"peer_supporter"}, "peer-1").get(), get, &got).ok());
  EXPECT_FALSE(got.check_in().answers_withheld());
  EXPECT_EQ(got.check_in().wellbeing_score(), 4);
  EXPECT_TRUE(consent_.access_questions().empty());
  // A clinician without the participant's consent: the check-in, without its answers.
  consent_.Permit({});
  ASSERT_TRUE(stub_->GetCheckIn(As({"clinician"}, "dr-lee").get(), get, &got).ok());
  EXPECT_TRUE(got.check_in().answers_withheld());
  EXPECT_TRUE(got.check_in().answers().empty());
  EXPECT_EQ(got.check_in().wellbeing_score(), 0);
  consent_.Permit({"dr-lee"});
  ASSERT_TRUE(stub_->GetCheckIn(As({"clinician"}, "dr-lee").get(), get, &got).ok());
  EXPECT_FALSE(got.check_in().answers_withheld());
  EXPECT_EQ(got.check_in().answers_size(), 4);
  EXPECT_EQ(consent_.access_questions().back().purpose(), consent::v1::PURPOSE_TREATMENT);

  // A list asks once per participant; a case manager asks for care coordination.
  consent_.Permit({"cm-1"});
  const size_t asked = consent_.access_questions().size();
  v1::ListCheckInsRequest list;
  v1::ListCheckInsResponse listed;
  ASSERT_TRUE(stub_->ListCheckIns(As({"case_manager"}, "cm-1").get(), list, &listed).ok());
  ASSERT_EQ(listed.check_ins_size(), 2);
  for (const auto& c : listed.check_ins()) EXPECT_FALSE(c.answers_withheld());
  EXPECT_EQ(consent_.access_questions().size(), asked + 2);
  EXPECT_EQ(consent_.access_questions().back().purpose(), consent::v1::PURPOSE_CARE_COORDINATION);
  ASSERT_TRUE(stub_->ListCheckIns(As({"case_manager"}, "cm-2").get(), list, &listed).ok());
  for (const auto& c : listed.check_ins()) EXPECT_TRUE(c.answers_withheld());

  // The consent service gone: nothing is shown, the caller is told to retry.
  consent_server_->Shutdown();
  consent_server_.reset();
  got.Clear();
  listed.Clear();
  grpc::Status status = stub_->GetCheckIn(As({"clinician"}, "dr-lee").get(), get, &got);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_FALSE(got.has_check_in());
  status = stub_->ListCheckIns(As({"case_manager"}, "cm-1").get(), list, &listed);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(listed.check_ins().empty());
}

}  // namespace
}  // namespace peerpath::testing
