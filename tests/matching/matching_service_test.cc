// The matching service over real gRPC, against the real binary and a real PostgreSQL: the
// roster, proposals that never name an ineligible supporter, accepts that never exceed a
// supporter's capacity (also concurrently), re-matching, follow-ups, batch assignment, the
// relationship check other services rely on, events exactly once, and the refusals.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/identifiers.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "peerpath/matching/v1/events.pb.h"
#include "peerpath/matching/v1/matching.grpc.pb.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using namespace std::chrono_literals;
namespace v1 = ::peerpath::matching::v1;

constexpr char kAgency[] = "agency-a";

// A producer's event log as the consumer sees it (ListEvents), served in-process: the check-in
// and escalation services' own binaries are built by their issues.
template <typename Base, typename Request, typename Response>
class FakeLog final : public Base {
 public:
  void Add(const std::string& agency, const google::protobuf::Message& payload,
           absl::Time occurred_at) {
    std::lock_guard<std::mutex> lock(mu_);
    common::v1::Event event;
    event.set_position(static_cast<int64_t>(events_.size()) + 1);
    event.set_event_id(absl::StrCat("e-", events_.size() + 1));
    event.set_type(payload.GetDescriptor()->full_name());
    event.set_agency_id(agency);
    *event.mutable_occurred_at() = ToProtoTimestamp(occurred_at);
    event.mutable_payload()->PackFrom(payload);
    events_.push_back(std::move(event));
  }
  grpc::Status ListEvents(grpc::ServerContext*, const Request* request,
                          Response* response) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& event : events_) {
      if (event.position() > request->after_position()) *response->add_events() = event;
    }
    response->set_head_position(static_cast<int64_t>(events_.size()));
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::vector<common::v1::Event> events_;
};

class MatchingServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    service_ = std::make_unique<ServiceProcess>("matching", db_->UrlFor("matching"));
    ASSERT_TRUE(service_->WaitListening()) << service_->Log();
    ASSERT_TRUE(service_->WaitHealth(true)) << service_->Log();
    stub_ = v1::MatchingService::NewStub(service_->Channel());
  }

  static std::unique_ptr<grpc::ClientContext> As(const std::vector<std::string>& roles,
                                                 const std::string& subject = "coordinator-1",
                                                 const std::string& agency = kAgency) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 20s);
    context->AddMetadata("authorization", "Bearer " + TokenFor(agency, roles, subject));
    return context;
  }
  static std::unique_ptr<grpc::ClientContext> Admin() { return As({"program_admin"}, "admin-1"); }

  static std::string Key() {
    static std::atomic<int> next{0};
    return absl::StrCat("key-", absl::ToUnixNanos(absl::Now()), "-", next++);
  }

  static v1::Supporter Profile(const std::string& subject, int capacity = 4) {
    v1::Supporter s;
    s.set_subject(subject);
    s.set_display_name("Supporter " + subject);
    s.add_languages("en");
    s.add_languages("es-MX");
    s.add_lived_experience_areas("postpartum_depression");
    s.add_meeting_modes(v1::MEETING_MODE_PHONE);
    s.set_capacity_units(capacity);
    s.set_training_status(v1::TRAINING_STATUS_CERTIFIED);
    s.mutable_training_expires_on()->set_year(2099);
    s.mutable_training_expires_on()->set_month(12);
    s.mutable_training_expires_on()->set_day(31);
    s.set_supervisor_subject("supervisor-1");
    return s;
  }

  v1::Supporter CreateSupporter(const v1::Supporter& profile) {
    v1::CreateSupporterRequest request;
    *request.mutable_supporter() = profile;
    request.set_idempotency_key(Key());
    v1::CreateSupporterResponse response;
    grpc::Status status = stub_->CreateSupporter(Admin().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.supporter();
  }

  v1::MatchRequest CreateRequest(const std::string& participant,
                                 const std::function<void(v1::MatchRequest&)>& edit = {}) {
    v1::CreateMatchRequestRequest request;
    request.mutable_match_request()->set_participant_id(participant);
    if (edit) edit(*request.mutable_match_request());
    request.set_idempotency_key(Key());
    v1::CreateMatchRequestResponse response;
    grpc::Status status = stub_->CreateMatchRequest(As({"supervisor"}).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.match_request();
  }

  v1::ProposeMatchesResponse Propose(const std::string& request_id, int max = 0) {
    v1::ProposeMatchesRequest request;
    request.set_match_request_id(request_id);
    request.set_max_candidates(max);
    request.set_idempotency_key(Key());
    v1::ProposeMatchesResponse response;
    grpc::Status status = stub_->ProposeMatches(As({"supervisor"}).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status Accept(const std::string& match_id, v1::AcceptProposalResponse* response) {
    v1::AcceptProposalRequest request;
    request.set_match_id(match_id);
    return stub_->AcceptProposal(As({"supervisor"}).get(), request, response);
  }

  // Starts an ACTIVE match for `participant` with `supporter` (the only candidate proposed).
  v1::Match StartMatch(const std::string& participant, const v1::Supporter& supporter) {
    const v1::MatchRequest r = CreateRequest(participant, [&](v1::MatchRequest& m) {
      m.mutable_preferences()->mutable_continuity()->set_supporter_id(supporter.supporter_id());
    });
    const auto proposed = Propose(r.match_request_id(), 1);
    EXPECT_EQ(proposed.candidates_size(), 1);
    if (proposed.candidates_size() == 0) return {};
    EXPECT_EQ(proposed.candidates(0).match().supporter_id(), supporter.supporter_id());
    v1::AcceptProposalResponse accepted;
    grpc::Status status = Accept(proposed.candidates(0).match().match_id(), &accepted);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return accepted.match();
  }

  // A program admin puts `supporter` on a planned break.
  void PutOnPlannedBreak(const v1::Supporter& supporter) {
    v1::SetSupporterStatusRequest pause;
    pause.set_supporter_id(supporter.supporter_id());
    pause.set_status(v1::SUPPORTER_STATUS_ON_BREAK);
    pause.set_reason(v1::SUPPORTER_STATUS_REASON_PLANNED_BREAK);
    v1::SetSupporterStatusResponse paused;
    const grpc::Status status = stub_->SetSupporterStatus(Admin().get(), pause, &paused);
    EXPECT_TRUE(status.ok()) << status.error_message();
  }

  int Events(const std::string& type) {
    return db_
        ->AdminQuery(
            "SELECT count(*) FROM matching.outbox WHERE event_type = "
            "'peerpath.matching.v1." +
            type + "'")[0][0]
        .as<int>();
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<ServiceProcess> service_;
  std::unique_ptr<v1::MatchingService::Stub> stub_;
};

TEST_F(MatchingServiceTest, RosterCreateGetUpdateListAndTakeABreak) {
  const v1::Supporter created = CreateSupporter(Profile("sup-a"));
  EXPECT_EQ(created.status(), v1::SUPPORTER_STATUS_ACTIVE);
  EXPECT_EQ(created.version(), 1);
  EXPECT_EQ(created.languages_size(), 2);

  // Her supervisor changes the capacity; the history starts with JOINED.
  v1::UpdateSupporterRequest update;
  update.mutable_supporter()->set_supporter_id(created.supporter_id());
  update.mutable_supporter()->set_capacity_units(6);
  update.mutable_supporter()->set_version(1);
  update.mutable_update_mask()->add_paths("capacity_units");
  v1::UpdateSupporterResponse updated;
  ASSERT_TRUE(
      stub_->UpdateSupporter(As({"supervisor"}, "supervisor-1").get(), update, &updated).ok());
  EXPECT_EQ(updated.supporter().capacity_units(), 6);
  EXPECT_EQ(updated.supporter().version(), 2);
  EXPECT_EQ(updated.supporter().languages_size(), 2) << "fields outside the mask are kept";
  // A stale version is refused; another supervisor may not change her profile.
  EXPECT_EQ(stub_->UpdateSupporter(As({"supervisor"}, "supervisor-1").get(), update, &updated)
                .error_code(),
            grpc::StatusCode::ABORTED);
  update.mutable_supporter()->set_version(0);
  EXPECT_EQ(stub_->UpdateSupporter(As({"supervisor"}, "supervisor-2").get(), update, &updated)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Events("SupporterSupervisionChangedEvent"), 0) << "capacity is not supervision";
  // A program admin moves her to another supervisor: one event says so.
  v1::UpdateSupporterRequest move;
  move.mutable_supporter()->set_supporter_id(created.supporter_id());
  move.mutable_supporter()->set_supervisor_subject("supervisor-2");
  move.mutable_update_mask()->add_paths("supervisor_subject");
  ASSERT_TRUE(stub_->UpdateSupporter(Admin().get(), move, &updated).ok());
  EXPECT_EQ(updated.supporter().supervisor_subject(), "supervisor-2");
  EXPECT_EQ(Events("SupporterSupervisionChangedEvent"), 1);
  move.mutable_supporter()->set_supervisor_subject("supervisor-1");
  ASSERT_TRUE(stub_->UpdateSupporter(Admin().get(), move, &updated).ok());
  EXPECT_EQ(Events("SupporterSupervisionChangedEvent"), 2);

  // She takes a break herself: history kept, event published, no new matches.
  v1::SetSupporterStatusRequest pause;
  pause.set_supporter_id(created.supporter_id());
  pause.set_status(v1::SUPPORTER_STATUS_ON_BREAK);
  pause.set_reason(v1::SUPPORTER_STATUS_REASON_WELLBEING_BREAK);
  v1::SetSupporterStatusResponse paused;
  ASSERT_TRUE(
      stub_->SetSupporterStatus(As({"peer_supporter"}, "sup-a").get(), pause, &paused).ok());
  EXPECT_EQ(paused.supporter().status(), v1::SUPPORTER_STATUS_ON_BREAK);
  EXPECT_TRUE(paused.supporter().has_last_break_started_at());
  // A retry writes nothing; leaving the program is not hers to set.
  ASSERT_TRUE(
      stub_->SetSupporterStatus(As({"peer_supporter"}, "sup-a").get(), pause, &paused).ok());
  EXPECT_FALSE(paused.has_change());
  pause.set_status(v1::SUPPORTER_STATUS_INACTIVE);
  pause.set_reason(v1::SUPPORTER_STATUS_REASON_LEFT_PROGRAM);
  EXPECT_EQ(
      stub_->SetSupporterStatus(As({"peer_supporter"}, "sup-a").get(), pause, &paused).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Events("SupporterStatusChangedEvent"), 1);

  v1::GetSupporterRequest get;
  get.set_supporter_id(created.supporter_id());
  v1::GetSupporterResponse got;
  ASSERT_TRUE(stub_->GetSupporter(As({"peer_supporter"}, "sup-a").get(), get, &got).ok());
  ASSERT_EQ(got.status_history_size(), 2);
  EXPECT_EQ(got.status_history(0).status(), v1::SUPPORTER_STATUS_ON_BREAK);
  EXPECT_EQ(got.status_history(1).reason(), v1::SUPPORTER_STATUS_REASON_JOINED);

  // A supporter lists only herself; a coordinator lists the roster.
  CreateSupporter(Profile("sup-b"));
  v1::ListSupportersResponse listed;
  ASSERT_TRUE(stub_
                  ->ListSupporters(As({"peer_supporter"}, "sup-a").get(),
                                   v1::ListSupportersRequest(), &listed)
                  .ok());
  ASSERT_EQ(listed.supporters_size(), 1);
  EXPECT_EQ(listed.supporters(0).subject(), "sup-a");
  v1::ListSupportersRequest page;
  page.set_page_size(1);
  ASSERT_TRUE(stub_->ListSupporters(As({"supervisor"}).get(), page, &listed).ok());
  ASSERT_EQ(listed.supporters_size(), 1);
  ASSERT_FALSE(listed.next_page_token().empty());
  page.set_page_token(listed.next_page_token());
  ASSERT_TRUE(stub_->ListSupporters(As({"supervisor"}).get(), page, &listed).ok());
  ASSERT_EQ(listed.supporters_size(), 1);
  EXPECT_EQ(listed.supporters(0).subject(), "sup-b");
  EXPECT_TRUE(listed.next_page_token().empty());
}

TEST_F(MatchingServiceTest, RefusesWrongRolesOtherAgenciesBadFieldsAndReplaysRetries) {
  const v1::Supporter created = CreateSupporter(Profile("sup-a"));
  v1::GetSupporterRequest get;
  get.set_supporter_id(created.supporter_id());
  v1::GetSupporterResponse got;
  for (const char* role : {"integration", "operations", "clinician", "case_manager"}) {
    EXPECT_EQ(stub_->GetSupporter(As({role}).get(), get, &got).error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << role;
  }
  EXPECT_EQ(stub_->GetSupporter(As({"program_admin"}, "admin-b", "agency-b").get(), get, &got)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stub_->GetSupporter(As({"peer_supporter"}, "sup-other").get(), get, &got).error_code(),
            grpc::StatusCode::NOT_FOUND)
      << "another supporter's profile is as if it did not exist";
  EXPECT_FALSE(got.has_supporter());

  // Every bad field is named.
  v1::CreateSupporterRequest bad;
  bad.mutable_supporter()->set_capacity_units(-1);
  bad.set_idempotency_key("bad key!");
  v1::CreateSupporterResponse response;
  grpc::Status status = stub_->CreateSupporter(Admin().get(), bad, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  for (const char* field : {"supporter.display_name", "supporter.capacity_units",
                            "supporter.training_status", "idempotency_key"}) {
    EXPECT_NE(status.error_details().find(field), std::string::npos) << field;
  }
  // A supervisor may not add supporters.
  v1::CreateSupporterRequest create;
  *create.mutable_supporter() = Profile("sup-c");
  create.set_idempotency_key(Key());
  EXPECT_EQ(stub_->CreateSupporter(As({"supervisor"}).get(), create, &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Idempotent retry: the same supporter, not a second one; a different body is refused.
  v1::CreateSupporterResponse first, again;
  ASSERT_TRUE(stub_->CreateSupporter(Admin().get(), create, &first).ok());
  ASSERT_TRUE(stub_->CreateSupporter(Admin().get(), create, &again).ok());
  EXPECT_EQ(first.supporter().supporter_id(), again.supporter().supporter_id());
  create.mutable_supporter()->set_display_name("Someone else");
  EXPECT_EQ(stub_->CreateSupporter(Admin().get(), create, &again).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // The same subject twice in one agency.
  create.set_idempotency_key(Key());
  EXPECT_EQ(stub_->CreateSupporter(Admin().get(), create, &again).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // Integration never learns who supports whom.
  v1::IsActiveSupporterRequest check;
  check.set_supporter_subject("sup-a");
  check.set_participant_id("p-1");
  v1::IsActiveSupporterResponse answer;
  EXPECT_EQ(stub_->IsActiveSupporter(As({"integration"}).get(), check, &answer).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_GE(
      db_->AdminQuery("SELECT count(*) FROM matching.audit_log WHERE decision = 'denied'")[0][0]
          .as<int>(),
      6);
}

TEST_F(MatchingServiceTest, ProposalsNeverNameIneligibleSupportersAndExplainThemselves) {
  const v1::Supporter good = CreateSupporter(Profile("sup-good"));
  v1::Supporter lapsed_profile = Profile("sup-lapsed");
  lapsed_profile.set_training_status(v1::TRAINING_STATUS_LAPSED);
  lapsed_profile.clear_training_expires_on();
  CreateSupporter(lapsed_profile);
  const v1::Supporter full = CreateSupporter(Profile("sup-full", 0));
  const v1::Supporter excluded = CreateSupporter(Profile("sup-excluded"));
  const v1::Supporter resting = CreateSupporter(Profile("sup-resting"));
  PutOnPlannedBreak(resting);
  v1::Supporter english_only = Profile("sup-en");
  english_only.clear_languages();
  english_only.add_languages("en");
  CreateSupporter(english_only);

  const v1::MatchRequest request = CreateRequest("p-1", [&](v1::MatchRequest& r) {
    r.set_pathway_key("crisis_transition");
    r.mutable_hard_constraints()->add_languages("es");
    r.mutable_hard_constraints()->add_excluded_supporter_ids(excluded.supporter_id());
    r.mutable_preferences()->mutable_lived_experience()->add_areas("postpartum_depression");
  });
  EXPECT_EQ(request.acuity_units(), 3) << "crisis transition weighs 3 units";
  const auto proposed = Propose(request.match_request_id());
  ASSERT_EQ(proposed.candidates_size(), 1);
  EXPECT_EQ(proposed.eligible_count(), 1);
  const v1::Match& match = proposed.candidates(0).match();
  EXPECT_EQ(match.supporter_id(), good.supporter_id());
  EXPECT_EQ(match.status(), v1::MATCH_STATUS_PROPOSED);
  EXPECT_EQ(match.rank(), 1);
  EXPECT_DOUBLE_EQ(match.score(), 100);
  std::vector<std::string> lines;
  for (const auto& line : match.explanation()) lines.push_back(line.text());
  EXPECT_EQ(lines, (std::vector<std::string>{
                       "speaks es", "shares lived experience: postpartum depression (1 of 1)",
                       "4 of 4 units free (needs 3)"}));
  EXPECT_EQ(proposed.match_request().status(), v1::MATCH_REQUEST_STATUS_PROPOSED);
  EXPECT_EQ(Events("MatchProposedEvent"), 1);
  (void)full;

  // Nobody speaks Tagalog: nothing stored, and the funnel says why.
  const v1::MatchRequest other = CreateRequest(
      "p-2", [](v1::MatchRequest& r) { r.mutable_hard_constraints()->add_languages("tl"); });
  const auto none = Propose(other.match_request_id());
  EXPECT_EQ(none.candidates_size(), 0);
  EXPECT_EQ(none.no_candidate().reason(), v1::UNMATCHED_REASON_NO_CANDIDATE_SPEAKS_LANGUAGE);
  EXPECT_EQ(none.match_request().status(), v1::MATCH_REQUEST_STATUS_OPEN);

  // A second request for the same participant is refused while one is in progress.
  v1::CreateMatchRequestRequest twice;
  twice.mutable_match_request()->set_participant_id("p-1");
  twice.set_idempotency_key(Key());
  v1::CreateMatchRequestResponse refused;
  EXPECT_EQ(stub_->CreateMatchRequest(As({"supervisor"}).get(), twice, &refused).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // Peer supporters and integration do not match.
  v1::ProposeMatchesRequest propose;
  propose.set_match_request_id(request.match_request_id());
  propose.set_idempotency_key(Key());
  v1::ProposeMatchesResponse denied;
  for (const char* role : {"peer_supporter", "integration", "operations", "case_manager"}) {
    EXPECT_EQ(stub_->ProposeMatches(As({role}).get(), propose, &denied).error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << role;
  }
}

// A stored match keeps its whole explanation (since migration 0006 as protobuf binary): GetMatch
// gives back exactly what ProposeMatches answered. A match stored before that step, with a jsonb
// explanation, is still read; and the database refuses a match with both forms or neither.
TEST_F(MatchingServiceTest, StoredExplanationsReadBackWholeInBothStoredForms) {
  CreateSupporter(Profile("sup-a"));
  const v1::MatchRequest request = CreateRequest("p-1", [](v1::MatchRequest& r) {
    r.mutable_hard_constraints()->add_languages("es");
    r.mutable_preferences()->mutable_lived_experience()->add_areas("postpartum_depression");
  });
  const auto proposed = Propose(request.match_request_id());
  ASSERT_EQ(proposed.candidates_size(), 1);
  const v1::Match& answered = proposed.candidates(0).match();
  ASSERT_GE(answered.explanation_size(), 2);
  const std::string id = answered.match_id();
  auto get = [&] {
    v1::GetMatchRequest get;
    get.set_match_id(id);
    v1::GetMatchResponse got;
    const grpc::Status status = stub_->GetMatch(As({"supervisor"}).get(), get, &got);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return got.match();
  };
  const v1::Match stored = get();
  ASSERT_EQ(stored.explanation_size(), answered.explanation_size());
  for (int i = 0; i < answered.explanation_size(); ++i) {
    EXPECT_EQ(stored.explanation(i).SerializeAsString(),
              answered.explanation(i).SerializeAsString())
        << "line " << i << ": " << stored.explanation(i).ShortDebugString();
  }
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.matches WHERE id = '" + id +
                            "' AND explanation IS NULL AND explanation_pb IS NOT NULL")[0][0]
                .as<int>(),
            1);

  // The form written before migration 0006.
  db_->AdminQuery(
      "UPDATE matching.matches SET explanation_pb = NULL, explanation = '["
      "{\"criterion\": \"MATCH_CRITERION_LANGUAGE\", \"hard_constraint\": true,"
      " \"outcome\": \"CRITERION_OUTCOME_MET\", \"text\": \"speaks es\"},"
      "{\"criterion\": \"MATCH_CRITERION_LIVED_EXPERIENCE\", \"outcome\": "
      "\"CRITERION_OUTCOME_PARTIAL\", \"weight\": 5, \"satisfaction\": 0.5, \"points\": 25,"
      " \"text\": \"shares lived experience: grief (1 of 2)\"}]' WHERE id = '" +
      id + "'");
  const v1::Match legacy = get();
  ASSERT_EQ(legacy.explanation_size(), 2);
  EXPECT_EQ(legacy.explanation(0).criterion(), v1::MATCH_CRITERION_LANGUAGE);
  EXPECT_TRUE(legacy.explanation(0).hard_constraint());
  EXPECT_EQ(legacy.explanation(0).text(), "speaks es");
  EXPECT_EQ(legacy.explanation(1).outcome(), v1::CRITERION_OUTCOME_PARTIAL);
  EXPECT_EQ(legacy.explanation(1).weight(), 5);
  EXPECT_DOUBLE_EQ(legacy.explanation(1).satisfaction(), 0.5);
  EXPECT_DOUBLE_EQ(legacy.explanation(1).points(), 25);
  EXPECT_EQ(legacy.explanation(1).text(), "shares lived experience: grief (1 of 2)");

  for (const char* both_or_neither :
       {"explanation_pb = '\\x'::bytea", "explanation = NULL, explanation_pb = NULL"}) {
    EXPECT_THROW(db_->AdminQuery(absl::StrCat("UPDATE matching.matches SET ", both_or_neither,
                                              " WHERE id = '", id, "'")),
                 pqxx::check_violation)
        << both_or_neither;
  }
}

// ProposeMatches writes its proposals, events, request status and stored response together: a
// retry replays them without a second write, another body under the key is refused, and another
// agency's supervisor finds no such request and writes nothing.
TEST_F(MatchingServiceTest, ProposalsAreReplayedOnRetryAndRefusedToOtherAgencies) {
  CreateSupporter(Profile("sup-a"));
  CreateSupporter(Profile("sup-b"));
  const v1::MatchRequest request = CreateRequest("p-1");
  auto count = [&](const std::string& sql) { return db_->AdminQuery(sql)[0][0].as<int>(); };
  const std::string proposed = "SELECT count(*) FROM matching.matches WHERE status = 'proposed'";
  const std::string events =
      "SELECT count(*) FROM matching.outbox WHERE event_type LIKE '%MatchProposedEvent'";

  v1::ProposeMatchesRequest propose;
  propose.set_match_request_id(request.match_request_id());
  propose.set_idempotency_key(Key());
  v1::ProposeMatchesResponse elsewhere;
  EXPECT_EQ(stub_
                ->ProposeMatches(As({"supervisor"}, "coordinator-b", "agency-b").get(), propose,
                                 &elsewhere)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(count(proposed), 0);
  EXPECT_EQ(count(events), 0);

  v1::ProposeMatchesResponse first, again;
  ASSERT_TRUE(stub_->ProposeMatches(As({"supervisor"}).get(), propose, &first).ok());
  ASSERT_EQ(first.candidates_size(), 2);
  EXPECT_EQ(first.match_request().status(), v1::MATCH_REQUEST_STATUS_PROPOSED);
  ASSERT_TRUE(stub_->ProposeMatches(As({"supervisor"}).get(), propose, &again).ok());
  ASSERT_EQ(again.candidates_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(again.candidates(i).match().match_id(), first.candidates(i).match().match_id());
  }
  EXPECT_EQ(count(proposed), 2);
  EXPECT_EQ(count(events), 2);
  // What the response said is what was stored.
  const v1::Match& best = first.candidates(0).match();
  EXPECT_EQ(count("SELECT count(*) FROM matching.matches WHERE id = '" + best.match_id() +
                  "' AND rank = 1 AND supporter_id = '" + best.supporter_id() + "'"),
            1);
  EXPECT_EQ(count("SELECT count(*) FROM matching.match_requests WHERE id = '" +
                  request.match_request_id() + "' AND status = 'proposed'"),
            1);

  propose.set_max_candidates(1);
  EXPECT_EQ(stub_->ProposeMatches(As({"supervisor"}).get(), propose, &again).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(count(proposed), 2);
}

TEST_F(MatchingServiceTest, AcceptStartsTheRelationshipAndEndingStopsIt) {
  const v1::Supporter supporter = CreateSupporter(Profile("sup-a"));
  const v1::Match match = StartMatch("p-1", supporter);
  ASSERT_EQ(match.status(), v1::MATCH_STATUS_ACTIVE);
  EXPECT_EQ(match.origin(), v1::MATCH_ORIGIN_PROPOSAL_ACCEPTED);
  EXPECT_EQ(match.supporter_subject(), "sup-a");

  v1::IsActiveSupporterRequest check;
  check.set_supporter_subject("sup-a");
  check.set_participant_id("p-1");
  v1::IsActiveSupporterResponse answer;
  ASSERT_TRUE(stub_->IsActiveSupporter(As({"service"}, "svc-checkin").get(), check, &answer).ok());
  EXPECT_TRUE(answer.active());
  EXPECT_EQ(answer.match_id(), match.match_id());
  check.set_supporter_subject("sup-b");
  ASSERT_TRUE(stub_->IsActiveSupporter(As({"service"}, "svc-checkin").get(), check, &answer).ok());
  EXPECT_FALSE(answer.active());
  // Another agency's service token sees no relationship.
  check.set_supporter_subject("sup-a");
  ASSERT_TRUE(
      stub_->IsActiveSupporter(As({"service"}, "svc", "agency-b").get(), check, &answer).ok());
  EXPECT_FALSE(answer.active());

  // The started event carries the supporter's subject for consent and check-in.
  const auto payload = db_->AdminQuery(
      "SELECT encode(payload, 'hex') FROM matching.outbox WHERE event_type = "
      "'peerpath.matching.v1.MatchStartedEvent'");
  ASSERT_EQ(payload.size(), 1u);
  v1::MatchStartedEvent started;
  std::string bytes;
  const std::string hex = payload[0][0].c_str();
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  ASSERT_TRUE(started.ParseFromString(bytes));
  EXPECT_EQ(started.supporter_subject(), "sup-a");
  EXPECT_EQ(started.participant_id(), "p-1");
  EXPECT_TRUE(started.continuity());
  // And the supervisor, whom check-in lets see this participant.
  EXPECT_EQ(started.supervisor_subject(), "supervisor-1");

  // Accepting again is a safe retry.
  v1::AcceptProposalResponse again;
  ASSERT_TRUE(Accept(match.match_id(), &again).ok());
  EXPECT_EQ(Events("MatchStartedEvent"), 1);

  v1::EndMatchRequest end;
  end.set_match_id(match.match_id());
  v1::EndMatchResponse ended;
  EXPECT_EQ(stub_->EndMatch(As({"supervisor"}).get(), end, &ended).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  end.set_reason(v1::MATCH_END_REASON_COMPLETED);
  EXPECT_EQ(stub_->EndMatch(As({"peer_supporter"}, "sup-a").get(), end, &ended).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(stub_->EndMatch(As({"supervisor"}).get(), end, &ended).ok());
  EXPECT_EQ(ended.match().status(), v1::MATCH_STATUS_ENDED);
  ASSERT_TRUE(stub_->EndMatch(As({"supervisor"}).get(), end, &ended).ok()) << "safe retry";
  end.set_reason(v1::MATCH_END_REASON_POOR_FIT);
  EXPECT_EQ(stub_->EndMatch(As({"supervisor"}).get(), end, &ended).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Events("MatchEndedEvent"), 1);
  ASSERT_TRUE(stub_->IsActiveSupporter(As({"service"}, "svc-checkin").get(), check, &answer).ok());
  EXPECT_FALSE(answer.active());

  // The supporter sees her ended match; another supporter does not.
  v1::GetMatchRequest get;
  get.set_match_id(match.match_id());
  v1::GetMatchResponse got;
  EXPECT_TRUE(stub_->GetMatch(As({"peer_supporter"}, "sup-a").get(), get, &got).ok());
  EXPECT_EQ(stub_->GetMatch(As({"peer_supporter"}, "sup-b").get(), get, &got).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(MatchingServiceTest, ConcurrentAcceptsNeverExceedCapacity) {
  // Capacity 5 units; eight participants of 2 units each are proposed to the one supporter at
  // once: at most two accepts may win.
  const v1::Supporter supporter = CreateSupporter(Profile("sup-a", 5));
  std::vector<std::string> proposals;
  for (int i = 0; i < 8; ++i) {
    const v1::MatchRequest r = CreateRequest(
        absl::StrCat("p-", i), [](v1::MatchRequest& m) { m.set_pathway_key("step_down"); });
    const auto proposed = Propose(r.match_request_id(), 1);
    ASSERT_EQ(proposed.candidates_size(), 1);
    proposals.push_back(proposed.candidates(0).match().match_id());
  }
  std::atomic<int> accepted{0}, refused{0}, other{0};
  std::vector<std::thread> threads;
  for (const auto& id : proposals) {
    threads.emplace_back([&, id] {
      v1::AcceptProposalResponse response;
      const grpc::Status status = Accept(id, &response);
      if (status.ok()) {
        ++accepted;
      } else if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        ++refused;
      } else {
        ++other;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(accepted.load(), 2);
  EXPECT_EQ(refused.load(), 6);
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(db_->AdminQuery("SELECT coalesce(sum(units), 0) FROM matching.matches WHERE status = "
                            "'active'")[0][0]
                .as<int>(),
            4);
  EXPECT_EQ(Events("MatchStartedEvent"), 2);
}

TEST_F(MatchingServiceTest, ConcurrentAcceptsOfOneRequestStartExactlyOneMatch) {
  CreateSupporter(Profile("sup-a"));
  CreateSupporter(Profile("sup-b"));
  CreateSupporter(Profile("sup-c"));
  const v1::MatchRequest r = CreateRequest("p-1");
  const auto proposed = Propose(r.match_request_id());
  ASSERT_EQ(proposed.candidates_size(), 3);
  std::atomic<int> accepted{0}, refused{0};
  std::vector<std::thread> threads;
  for (const auto& candidate : proposed.candidates()) {
    threads.emplace_back([&, id = candidate.match().match_id()] {
      v1::AcceptProposalResponse response;
      const grpc::Status status = Accept(id, &response);
      if (status.ok()) ++accepted;
      if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) ++refused;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(accepted.load(), 1);
  EXPECT_EQ(refused.load(), 2);
  EXPECT_EQ(Events("MatchStartedEvent"), 1);
}

TEST_F(MatchingServiceTest, RematchEndsTheMatchAndExcludesThePreviousSupporter) {
  const v1::Supporter first = CreateSupporter(Profile("sup-a"));
  const v1::Supporter second = CreateSupporter(Profile("sup-b"));
  const v1::Match match = StartMatch("p-1", first);
  v1::RematchRequest rematch;
  rematch.set_match_id(match.match_id());
  rematch.set_end_reason(v1::MATCH_END_REASON_POOR_FIT);
  rematch.set_idempotency_key(Key());
  v1::RematchResponse response;
  ASSERT_TRUE(stub_->Rematch(As({"supervisor"}).get(), rematch, &response).ok());
  EXPECT_EQ(response.ended_match().status(), v1::MATCH_STATUS_ENDED);
  EXPECT_EQ(response.ended_match().end_reason(), v1::MATCH_END_REASON_POOR_FIT);
  const v1::MatchRequest& next = response.match_request();
  EXPECT_EQ(next.status(), v1::MATCH_REQUEST_STATUS_OPEN);
  EXPECT_EQ(next.previous_match_id(), match.match_id());
  ASSERT_EQ(next.hard_constraints().excluded_supporter_ids_size(), 1);
  EXPECT_EQ(next.hard_constraints().excluded_supporter_ids(0), first.supporter_id());
  EXPECT_TRUE(next.preferences().continuity().supporter_id().empty());
  // Retry with the same key: the same answer, nothing written again.
  v1::RematchResponse again;
  ASSERT_TRUE(stub_->Rematch(As({"supervisor"}).get(), rematch, &again).ok());
  EXPECT_EQ(again.match_request().match_request_id(), next.match_request_id());
  EXPECT_EQ(Events("MatchEndedEvent"), 1);

  const auto proposed = Propose(next.match_request_id());
  ASSERT_EQ(proposed.candidates_size(), 1);
  EXPECT_EQ(proposed.candidates(0).match().supporter_id(), second.supporter_id());
}

TEST_F(MatchingServiceTest, LowFollowUpRatingOpensARematchSuggestion) {
  const v1::Supporter supporter = CreateSupporter(Profile("sup-a"));
  const v1::Match match = StartMatch("p-1", supporter);
  // Due fourteen days after the start.
  v1::ListDueFollowUpsRequest due;
  v1::ListDueFollowUpsResponse listed;
  ASSERT_TRUE(stub_->ListDueFollowUps(As({"supervisor"}).get(), due, &listed).ok());
  EXPECT_EQ(listed.follow_ups_size(), 0) << "not due today";
  const absl::CivilDay later = absl::ToCivilDay(absl::Now(), absl::UTCTimeZone()) + 14;
  due.mutable_due_on_or_before()->set_year(static_cast<int>(later.year()));
  due.mutable_due_on_or_before()->set_month(later.month());
  due.mutable_due_on_or_before()->set_day(later.day());
  ASSERT_TRUE(stub_->ListDueFollowUps(As({"supervisor"}).get(), due, &listed).ok());
  ASSERT_EQ(listed.follow_ups_size(), 1);
  EXPECT_EQ(listed.follow_ups(0).match_id(), match.match_id());

  // The supporter may record only her own side.
  v1::RecordFollowUpRequest record;
  record.set_match_id(match.match_id());
  record.set_side(v1::FOLLOW_UP_SIDE_PARTICIPANT);
  record.set_rating(2);
  record.set_comment("does not feel heard");
  record.set_idempotency_key(Key());
  v1::RecordFollowUpResponse recorded;
  EXPECT_EQ(
      stub_->RecordFollowUp(As({"peer_supporter"}, "sup-a").get(), record, &recorded).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(stub_->RecordFollowUp(As({"supervisor"}).get(), record, &recorded).ok());
  EXPECT_TRUE(recorded.rematch_suggested());
  EXPECT_TRUE(recorded.follow_up().has_rematch_suggested_at());
  // Each side once.
  record.set_idempotency_key(Key());
  EXPECT_EQ(stub_->RecordFollowUp(As({"supervisor"}).get(), record, &recorded).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  record.set_side(v1::FOLLOW_UP_SIDE_SUPPORTER);
  record.set_rating(1);
  record.set_idempotency_key(Key());
  ASSERT_TRUE(stub_->RecordFollowUp(As({"peer_supporter"}, "sup-a").get(), record, &recorded).ok());
  EXPECT_FALSE(recorded.rematch_suggested()) << "one suggestion per follow-up";
  EXPECT_FALSE(recorded.follow_up().has_participant_answer())
      << "a supporter never sees the participant's side";
  EXPECT_EQ(Events("FollowUpRecordedEvent"), 2);
  EXPECT_EQ(Events("RematchSuggestedEvent"), 1);
  // Comments stay in this service: never in an event.
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.outbox WHERE position('does not feel' "
                            "in convert_from(payload, 'LATIN1')) > 0")[0][0]
                .as<int>(),
            0);

  v1::GetSupporterWorkloadRequest workload;
  workload.set_supporter_id(supporter.supporter_id());
  v1::GetSupporterWorkloadResponse load;
  ASSERT_TRUE(
      stub_->GetSupporterWorkload(As({"supervisor"}, "supervisor-1").get(), workload, &load).ok());
  EXPECT_EQ(load.workload().active_matches(), 1);
  EXPECT_EQ(load.workload().units_in_use(), 1);
  EXPECT_EQ(stub_->GetSupporterWorkload(As({"supervisor"}, "supervisor-2").get(), workload, &load)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(MatchingServiceTest, AssignBatchMaximisesTotalValueAndSaysWhyOthersWait) {
  // Values: p-1/a 100, p-1/b 200, p-2/b 200, p-3/b 100. Greedy takes p-1/b first (200) and
  // leaves p-2 (who only fits b) unmatched; the optimum gives p-1 "a" and p-2 "b" (300).
  v1::Supporter a_profile = Profile("sup-a", 1);
  a_profile.clear_lived_experience_areas();
  const v1::Supporter a = CreateSupporter(a_profile);
  v1::Supporter b_profile = Profile("sup-b", 1);
  b_profile.add_languages("tl");
  const v1::Supporter b = CreateSupporter(b_profile);
  CreateRequest("p-1", [](v1::MatchRequest& r) {
    r.mutable_preferences()->mutable_lived_experience()->add_areas("postpartum_depression");
  });
  CreateRequest("p-2", [](v1::MatchRequest& r) {
    r.mutable_hard_constraints()->add_languages("tl");
    r.mutable_preferences()->mutable_lived_experience()->add_areas("postpartum_depression");
  });
  CreateRequest("p-3",
                [](v1::MatchRequest& r) { r.mutable_hard_constraints()->add_languages("tl"); });
  CreateRequest("p-4",
                [](v1::MatchRequest& r) { r.mutable_hard_constraints()->add_languages("fr"); });

  v1::AssignBatchRequest dry;
  dry.set_dry_run(true);
  v1::AssignBatchResponse preview;
  ASSERT_TRUE(stub_->AssignBatch(As({"supervisor"}).get(), dry, &preview).ok());
  EXPECT_EQ(preview.assignments_size(), 2);
  EXPECT_EQ(Events("MatchStartedEvent"), 0) << "a dry run writes nothing";

  v1::AssignBatchRequest run;
  run.set_idempotency_key(Key());
  v1::AssignBatchResponse result;
  ASSERT_TRUE(stub_->AssignBatch(As({"supervisor"}).get(), run, &result).ok());
  EXPECT_EQ(result.requests_considered(), 4);
  ASSERT_EQ(result.assignments_size(), 2);
  std::map<std::string, std::string> assigned;
  for (const auto& x : result.assignments()) {
    assigned[x.participant_id()] = x.supporter_id();
    EXPECT_FALSE(x.match_id().empty());
  }
  EXPECT_EQ(assigned["p-1"], a.supporter_id());
  EXPECT_EQ(assigned["p-2"], b.supporter_id());
  EXPECT_DOUBLE_EQ(result.objective_value(), 300);
  EXPECT_TRUE(result.proven_optimal()) << "every request takes one unit: exact";
  EXPECT_DOUBLE_EQ(result.objective_upper_bound(), 300);
  ASSERT_EQ(result.unmatched_size(), 2);
  std::map<std::string, v1::UnmatchedReason> why;
  for (const auto& u : result.unmatched()) why[u.participant_id()] = u.no_candidate().reason();
  EXPECT_EQ(why["p-3"], v1::UNMATCHED_REASON_CAPACITY_GIVEN_TO_OTHER_REQUESTS);
  EXPECT_EQ(why["p-4"], v1::UNMATCHED_REASON_NO_CANDIDATE_SPEAKS_LANGUAGE);
  EXPECT_EQ(Events("MatchStartedEvent"), 2);

  // Replayed with the same key: nothing assigned twice.
  v1::AssignBatchResponse replay;
  ASSERT_TRUE(stub_->AssignBatch(As({"supervisor"}).get(), run, &replay).ok());
  EXPECT_EQ(replay.batch_id(), result.batch_id());
  EXPECT_EQ(Events("MatchStartedEvent"), 2);
  // Without a key (and not a dry run): refused; peer supporters may not run batches.
  v1::AssignBatchRequest keyless;
  EXPECT_EQ(stub_->AssignBatch(As({"supervisor"}).get(), keyless, &replay).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(stub_->AssignBatch(As({"peer_supporter"}).get(), run, &replay).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(MatchingServiceTest, ADryRunReadsPastLockedRequestsABatchWaitsForThem) {
  CreateSupporter(Profile("sup-a", 2));
  const v1::MatchRequest r = CreateRequest("p-1");
  // Another transaction holds the request's row (as an accept or a cancel would).
  auto holder = db_->Admin();
  pqxx::work held(*holder);
  held.exec("SELECT 1 FROM matching.match_requests WHERE id = '" + r.match_request_id() +
            "' FOR UPDATE");

  v1::AssignBatchRequest dry;
  dry.set_dry_run(true);
  v1::AssignBatchResponse preview;
  const grpc::Status previewed = stub_->AssignBatch(As({"supervisor"}).get(), dry, &preview);
  ASSERT_TRUE(previewed.ok()) << previewed.error_message();
  EXPECT_EQ(preview.assignments_size(), 1) << "a dry run only reads: it waits for no lock";

  v1::AssignBatchRequest run;
  run.set_idempotency_key(Key());
  v1::AssignBatchResponse result;
  auto waiting = As({"supervisor"});
  waiting->set_deadline(std::chrono::system_clock::now() + 1500ms);
  EXPECT_EQ(stub_->AssignBatch(waiting.get(), run, &result).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED)
      << "a batch that assigns the request waits until the other transaction is done";
  EXPECT_EQ(Events("MatchStartedEvent"), 0) << "nothing started while the request was held";
  held.abort();
}

TEST_F(MatchingServiceTest, AssignBatchWritesEveryMatchFollowUpEventAndAuditRowInOneGo) {
  // The batch's writes are set-based: every assigned request gets an ACTIVE match with its
  // explanation and follow-up, its other proposals declined, one MatchStartedEvent (naming the
  // supervisor) and one audit row each. Participant ids are the agency's own text: quotes,
  // backslashes, commas and braces must survive the bulk statements unchanged.
  for (int i = 0; i < 3; ++i) CreateSupporter(Profile(absl::StrCat("sup-", i), 2));
  const std::vector<std::string> participants = {
      "p-plain", "p-\"quoted\"", "p-back\\slash", "p-comma,{brace}", "p-5", "p-6", "p-7"};
  // Each request wishes for a different number of areas, so each match's explanation differs:
  // one stored in another match's place would show.
  std::map<std::string, std::string> explained;
  for (size_t i = 0; i < participants.size(); ++i) {
    CreateRequest(participants[i], [&](v1::MatchRequest& r) {
      auto* areas = r.mutable_preferences()->mutable_lived_experience();
      areas->add_areas("postpartum_depression");
      for (size_t k = 0; k < i; ++k) areas->add_areas(absl::StrCat("other_area_", k));
    });
    explained[participants[i]] =
        absl::StrCat("shares lived experience: postpartum depression (1 of ", i + 1, ")");
  }
  // One request already has proposals: the batch assigns it and declines them.
  const std::string proposed_request =
      db_->AdminQuery(
             "SELECT id FROM matching.match_requests WHERE participant_id = 'p-plain'")[0][0]
          .c_str();
  ASSERT_EQ(Propose(proposed_request, 3).candidates_size(), 3);

  v1::AssignBatchRequest run;
  run.set_include_proposed(true);
  run.set_idempotency_key(Key());
  v1::AssignBatchResponse result;
  ASSERT_TRUE(stub_->AssignBatch(As({"supervisor"}).get(), run, &result).ok());
  EXPECT_EQ(result.requests_considered(), 7);
  ASSERT_EQ(result.assignments_size(), 6) << "three supporters with two units each";
  ASSERT_EQ(result.unmatched_size(), 1);
  EXPECT_EQ(result.unmatched(0).no_candidate().reason(),
            v1::UNMATCHED_REASON_CAPACITY_GIVEN_TO_OTHER_REQUESTS);
  std::set<std::string> assigned_participants;
  for (const auto& a : result.assignments()) {
    assigned_participants.insert(a.participant_id());
    v1::GetMatchRequest get;
    get.set_match_id(a.match_id());
    v1::GetMatchResponse got;
    ASSERT_TRUE(stub_->GetMatch(As({"supervisor"}).get(), get, &got).ok()) << a.participant_id();
    EXPECT_EQ(got.match().status(), v1::MATCH_STATUS_ACTIVE);
    EXPECT_EQ(got.match().origin(), v1::MATCH_ORIGIN_BATCH_ASSIGNMENT);
    EXPECT_EQ(got.match().batch_id(), result.batch_id());
    EXPECT_EQ(got.match().participant_id(), a.participant_id()) << "stored unchanged";
    EXPECT_EQ(got.match().supporter_id(), a.supporter_id());
    EXPECT_DOUBLE_EQ(got.match().score(), a.score());
    ASSERT_FALSE(got.match().explanation().empty());
    EXPECT_EQ(got.match().explanation(0).text(), explained[a.participant_id()]);
    EXPECT_FALSE(got.follow_up().follow_up_id().empty()) << "the two-week follow-up is due";
    EXPECT_EQ(got.follow_up().match_id(), a.match_id());
  }
  EXPECT_EQ(assigned_participants.size(), 6u);
  for (const char* tricky : {"p-\"quoted\"", "p-back\\slash", "p-comma,{brace}"}) {
    EXPECT_EQ(assigned_participants.count(tricky) +
                  (result.unmatched(0).participant_id() == tricky ? 1 : 0),
              1u)
        << tricky;
  }
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.match_requests WHERE status = "
                            "'assigned'")[0][0]
                .as<int>(),
            6);
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.follow_ups")[0][0].as<int>(), 6);
  if (assigned_participants.count("p-plain") > 0) {
    EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.matches WHERE request_id = '" +
                              proposed_request + "' AND status = 'declined'")[0][0]
                  .as<int>(),
              3)
        << "the request's proposals are declined";
  }
  // Listed by batch: its six matches, over pages; another batch's id lists none.
  v1::ListMatchesRequest by_batch;
  by_batch.set_batch_id(result.batch_id());
  by_batch.set_page_size(4);
  std::set<std::string> listed_ids;
  for (int page = 0; page < 3; ++page) {
    v1::ListMatchesResponse listed;
    ASSERT_TRUE(stub_->ListMatches(As({"supervisor"}).get(), by_batch, &listed).ok());
    for (const auto& m : listed.matches()) {
      EXPECT_EQ(m.batch_id(), result.batch_id());
      listed_ids.insert(m.match_id());
    }
    if (listed.next_page_token().empty()) break;
    by_batch.set_page_token(listed.next_page_token());
  }
  std::set<std::string> assigned_ids;
  for (const auto& a : result.assignments()) assigned_ids.insert(a.match_id());
  EXPECT_EQ(listed_ids, assigned_ids);
  // Another agency's supervisor finds none of them, by batch or by request.
  by_batch.clear_page_token();
  v1::ListMatchesResponse none;
  ASSERT_TRUE(
      stub_->ListMatches(As({"supervisor"}, "coordinator-1", "agency-b").get(), by_batch, &none)
          .ok());
  EXPECT_EQ(none.matches_size(), 0);
  v1::ListMatchesRequest other_request;
  other_request.set_match_request_id(proposed_request);
  ASSERT_TRUE(
      stub_
          ->ListMatches(As({"supervisor"}, "coordinator-1", "agency-b").get(), other_request, &none)
          .ok());
  EXPECT_EQ(none.matches_size(), 0);
  by_batch.Clear();
  by_batch.set_batch_id(RandomUuid());
  ASSERT_TRUE(stub_->ListMatches(As({"supervisor"}).get(), by_batch, &none).ok());
  EXPECT_EQ(none.matches_size(), 0);
  // Listed by request: the proposed request's three proposals, and its match if it was assigned.
  v1::ListMatchesRequest by_request;
  by_request.set_match_request_id(proposed_request);
  v1::ListMatchesResponse of_request;
  ASSERT_TRUE(stub_->ListMatches(As({"supervisor"}).get(), by_request, &of_request).ok());
  EXPECT_EQ(of_request.matches_size(),
            3 + static_cast<int>(assigned_participants.count("p-plain")));
  for (const auto& m : of_request.matches()) {
    EXPECT_EQ(m.match_request_id(), proposed_request);
    EXPECT_EQ(m.participant_id(), "p-plain");
  }
  // One event per match, each naming its match, participant and the supervisor.
  ASSERT_EQ(Events("MatchStartedEvent"), 6);
  std::set<std::string> event_participants;
  for (const auto& row : db_->AdminQuery(
           "SELECT aggregate_id, encode(payload, 'hex') FROM matching.outbox WHERE event_type = "
           "'peerpath.matching.v1.MatchStartedEvent'")) {
    std::string bytes;
    const std::string hex = row[1].c_str();
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
      bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
    v1::MatchStartedEvent event;
    ASSERT_TRUE(event.ParseFromString(bytes));
    EXPECT_EQ(event.match_id(), row[0].c_str());
    EXPECT_EQ(event.supervisor_subject(), "supervisor-1");
    EXPECT_FALSE(event.follow_up_due_on().year() == 0);
    event_participants.insert(event.participant_id());
  }
  EXPECT_EQ(event_participants, assigned_participants);
  // One audit row per match (and one for the batch), with the participant.
  std::set<std::string> audited;
  for (const auto& row : db_->AdminQuery(
           "SELECT participant_id FROM matching.audit_log WHERE action = 'matching.AssignBatch' "
           "AND object_type = 'match' AND actor = 'coordinator-1' AND actor_role = 'supervisor'")) {
    audited.insert(row[0].c_str());
  }
  EXPECT_EQ(audited, assigned_participants);
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.audit_log WHERE action = "
                            "'matching.AssignBatch' AND object_type = 'batch'")[0][0]
                .as<int>(),
            1);
}

// A batch of more than the first statement's 1,000 rows is written in two statements (the second
// encoded while the first runs): every match of both is stored with its own explanation (each
// request wishes for 1 to 5 areas, so neighbours differ), follow-up, event and audit row.
TEST_F(MatchingServiceTest, ABatchWrittenInTwoStatementsStoresEveryMatchWhole) {
  db_->AdminQuery(
      "INSERT INTO matching.supporters (agency_id, subject, display_name, lived_experience,"
      "  languages, capacity_units, training_status, training_expires_on, created_by, updated_by)"
      " SELECT 'agency-a', 'sup-' || i, 'Supporter ' || i, ARRAY['postpartum_depression'],"
      "  ARRAY['en'], 8, 'certified', DATE '2099-12-31', 'test', 'test'"
      " FROM generate_series(1, 200) i");
  db_->AdminQuery(
      "INSERT INTO matching.match_requests (agency_id, participant_id, preferences, requested_by)"
      " SELECT 'agency-a', 'p-' || j, jsonb_build_object('lived_experience', jsonb_build_object("
      "   'areas', ARRAY['postpartum_depression'] || (SELECT coalesce(array_agg('other_' || k),"
      "   '{}') FROM generate_series(1, j % 5) k))), 'test'"
      " FROM generate_series(1, 1500) j");
  v1::AssignBatchRequest run;
  run.set_idempotency_key(Key());
  v1::AssignBatchResponse result;
  const grpc::Status status = stub_->AssignBatch(As({"supervisor"}).get(), run, &result);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(result.assignments_size(), 1500) << "1,600 units for 1,500 requests of one unit";
  const std::string batch = "'" + result.batch_id() + "'";
  auto count = [&](const std::string& sql) { return db_->AdminQuery(sql)[0][0].as<int>(); };
  EXPECT_EQ(
      count("SELECT count(*) FROM matching.matches m WHERE m.batch_id = " + batch +
            " AND m.status = 'active' AND position(convert_to('postpartum depression (1 of ' ||"
            " 1 + substring(m.participant_id FROM 3)::int % 5 || ')', 'UTF8') IN"
            " m.explanation_pb) > 0"),
      1500)
      << "each match stored with its own request's explanation";
  EXPECT_EQ(count("SELECT count(*) FROM matching.follow_ups f JOIN matching.matches m ON"
                  " m.id = f.match_id WHERE m.batch_id = " +
                  batch),
            1500);
  EXPECT_EQ(count("SELECT count(*) FROM matching.match_requests WHERE status = 'assigned'"), 1500);
  EXPECT_EQ(Events("MatchStartedEvent"), 1500);
  EXPECT_EQ(
      count("SELECT count(*) FROM matching.audit_log WHERE action = 'matching.AssignBatch' AND"
            " object_type = 'match'"),
      1500);
}

TEST_F(MatchingServiceTest, AssignBatchAndConcurrentAcceptsNeverExceedCapacity) {
  // One supporter with 3 units; six participants (1 unit each) proposed to her. A batch (that
  // may also assign PROPOSED requests) and six accepts race: at most 3 units end up in use and
  // no participant has two matches.
  const v1::Supporter supporter = CreateSupporter(Profile("sup-a", 3));
  std::vector<std::string> proposals;
  for (int i = 0; i < 6; ++i) {
    const v1::MatchRequest r = CreateRequest(absl::StrCat("p-", i));
    const auto proposed = Propose(r.match_request_id(), 1);
    ASSERT_EQ(proposed.candidates_size(), 1);
    proposals.push_back(proposed.candidates(0).match().match_id());
  }
  std::atomic<int> failed_other{0};
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    v1::AssignBatchRequest run;
    run.set_include_proposed(true);
    run.set_idempotency_key(Key());
    v1::AssignBatchResponse result;
    const grpc::Status status = stub_->AssignBatch(As({"supervisor"}).get(), run, &result);
    if (!status.ok() && status.error_code() != grpc::StatusCode::ABORTED) ++failed_other;
  });
  for (const auto& id : proposals) {
    threads.emplace_back([&, id] {
      v1::AcceptProposalResponse response;
      const grpc::Status status = Accept(id, &response);
      if (!status.ok() && status.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
        ++failed_other;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed_other.load(), 0);
  EXPECT_EQ(db_->AdminQuery("SELECT coalesce(sum(units), 0) FROM matching.matches WHERE status = "
                            "'active'")[0][0]
                .as<int>(),
            3)
      << "every unit taken once, none twice";
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM (SELECT participant_id FROM matching.matches "
                            "WHERE status = 'active' GROUP BY participant_id HAVING count(*) > "
                            "1) twice")[0][0]
                .as<int>(),
            0);
  EXPECT_EQ(Events("MatchStartedEvent"), 3);
  (void)supporter;
}

TEST_F(MatchingServiceTest, SupporterOnBreakOrLapsedCannotTakeAPendingProposal) {
  const v1::Supporter supporter = CreateSupporter(Profile("sup-a"));
  const v1::MatchRequest r = CreateRequest("p-1");
  const auto proposed = Propose(r.match_request_id());
  ASSERT_EQ(proposed.candidates_size(), 1);
  v1::SetSupporterStatusRequest pause;
  pause.set_supporter_id(supporter.supporter_id());
  pause.set_status(v1::SUPPORTER_STATUS_ON_BREAK);
  pause.set_reason(v1::SUPPORTER_STATUS_REASON_WELLBEING_BREAK);
  v1::SetSupporterStatusResponse paused;
  ASSERT_TRUE(
      stub_->SetSupporterStatus(As({"peer_supporter"}, "sup-a").get(), pause, &paused).ok());
  v1::AcceptProposalResponse accepted;
  grpc::Status status = Accept(proposed.candidates(0).match().match_id(), &accepted);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("on break"), std::string::npos) << status.error_message();

  // Back, but her certification lapsed meanwhile.
  pause.set_status(v1::SUPPORTER_STATUS_ACTIVE);
  pause.set_reason(v1::SUPPORTER_STATUS_REASON_RETURNED);
  ASSERT_TRUE(
      stub_->SetSupporterStatus(As({"peer_supporter"}, "sup-a").get(), pause, &paused).ok());
  v1::UpdateSupporterRequest lapse;
  lapse.mutable_supporter()->set_supporter_id(supporter.supporter_id());
  lapse.mutable_supporter()->set_training_status(v1::TRAINING_STATUS_LAPSED);
  lapse.mutable_update_mask()->add_paths("training_status");
  lapse.mutable_update_mask()->add_paths("training_expires_on");
  v1::UpdateSupporterResponse lapsed;
  ASSERT_TRUE(stub_->UpdateSupporter(Admin().get(), lapse, &lapsed).ok());
  status = Accept(proposed.candidates(0).match().match_id(), &accepted);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("training"), std::string::npos) << status.error_message();
  EXPECT_EQ(Propose(r.match_request_id()).no_candidate().reason(),
            v1::UNMATCHED_REASON_NO_TRAINED_SUPPORTER);
  EXPECT_EQ(Events("MatchStartedEvent"), 0);
  EXPECT_EQ(Events("SupporterStatusChangedEvent"), 2);

  // Re-certified: matched again, and only the fields named were written.
  v1::UpdateSupporterRequest recertify;
  recertify.mutable_supporter()->set_supporter_id(supporter.supporter_id());
  recertify.mutable_supporter()->set_training_status(v1::TRAINING_STATUS_CERTIFIED);
  recertify.mutable_supporter()->mutable_training_expires_on()->set_year(2099);
  recertify.mutable_supporter()->mutable_training_expires_on()->set_month(1);
  recertify.mutable_supporter()->mutable_training_expires_on()->set_day(1);
  recertify.mutable_supporter()->set_display_name("ignored: not in the mask");
  recertify.mutable_update_mask()->add_paths("training_status");
  recertify.mutable_update_mask()->add_paths("training_expires_on");
  ASSERT_TRUE(stub_->UpdateSupporter(Admin().get(), recertify, &lapsed).ok());
  EXPECT_EQ(lapsed.supporter().display_name(), "Supporter sup-a");
  const auto again = Propose(r.match_request_id());
  ASSERT_EQ(again.candidates_size(), 1);
  ASSERT_TRUE(Accept(again.candidates(0).match().match_id(), &accepted).ok());
  EXPECT_EQ(Events("MatchStartedEvent"), 1);
}

TEST_F(MatchingServiceTest, ReturningParticipantIsOfferedThePreviousSupporterFirst) {
  const v1::Supporter previous = CreateSupporter(Profile("sup-a"));
  v1::Supporter better_profile = Profile("sup-b");
  better_profile.add_lived_experience_areas("grief");
  CreateSupporter(better_profile);
  const v1::Match first = StartMatch("p-1", previous);
  v1::EndMatchRequest end;
  end.set_match_id(first.match_id());
  end.set_reason(v1::MATCH_END_REASON_COMPLETED);
  v1::EndMatchResponse ended;
  ASSERT_TRUE(stub_->EndMatch(As({"supervisor"}).get(), end, &ended).ok());

  const v1::MatchRequest back = CreateRequest("p-1", [](v1::MatchRequest& r) {
    r.mutable_preferences()->mutable_continuity()->set_prefer_previous_supporter(true);
    r.mutable_preferences()->mutable_lived_experience()->add_areas("grief");
  });
  EXPECT_EQ(back.preferences().continuity().supporter_id(), previous.supporter_id());
  const auto proposed = Propose(back.match_request_id());
  ASSERT_EQ(proposed.candidates_size(), 2);
  EXPECT_EQ(proposed.candidates(0).match().supporter_id(), previous.supporter_id())
      << "ranked first although her score is lower";
  EXPECT_LT(proposed.candidates(0).match().score(), proposed.candidates(1).match().score());
}

TEST_F(MatchingServiceTest, SupporterSeesOnlyHerOwnCaseload) {
  const v1::Supporter a = CreateSupporter(Profile("sup-a"));
  const v1::Supporter b = CreateSupporter(Profile("sup-b"));
  StartMatch("p-1", a);
  StartMatch("p-2", b);
  // An open proposal to her is not hers to see yet.
  const v1::MatchRequest pending = CreateRequest("p-3", [&](v1::MatchRequest& r) {
    r.mutable_hard_constraints()->add_excluded_supporter_ids(b.supporter_id());
  });
  ASSERT_EQ(Propose(pending.match_request_id()).candidates_size(), 1);

  v1::ListMatchesRequest mine;
  v1::ListMatchesResponse listed;
  ASSERT_TRUE(stub_->ListMatches(As({"peer_supporter"}, "sup-a").get(), mine, &listed).ok());
  ASSERT_EQ(listed.matches_size(), 1);
  EXPECT_EQ(listed.matches(0).participant_id(), "p-1");
  mine.set_supporter_id(b.supporter_id());  // Asking for someone else's changes nothing.
  ASSERT_TRUE(stub_->ListMatches(As({"peer_supporter"}, "sup-a").get(), mine, &listed).ok());
  EXPECT_EQ(listed.matches_size(), 0);

  v1::ListMatchesRequest all;
  all.set_page_size(2);
  ASSERT_TRUE(stub_->ListMatches(As({"supervisor"}).get(), all, &listed).ok());
  ASSERT_EQ(listed.matches_size(), 2);
  all.set_page_token(listed.next_page_token());
  ASSERT_TRUE(stub_->ListMatches(As({"supervisor"}).get(), all, &listed).ok());
  EXPECT_EQ(listed.matches_size(), 1);
  EXPECT_TRUE(listed.next_page_token().empty());
  all.clear_page_token();
  all.add_statuses(v1::MATCH_STATUS_ACTIVE);
  all.set_page_token(listed.next_page_token());
  ASSERT_TRUE(stub_->ListMatches(As({"supervisor"}).get(), all, &listed).ok());
  EXPECT_EQ(listed.matches_size(), 2) << "only the active ones";
  for (const char* role : {"integration", "operations", "case_manager"}) {
    EXPECT_EQ(stub_->ListMatches(As({role}).get(), all, &listed).error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << role;
  }
}

TEST_F(MatchingServiceTest, WorkloadCountsCheckInsAndOpenConcernsFromOtherServicesEvents) {
  const v1::Supporter supporter = CreateSupporter(Profile("sup-a"));
  FakeLog<checkin::v1::CheckInService::Service, checkin::v1::ListEventsRequest,
          checkin::v1::ListEventsResponse>
      checkins;
  FakeLog<escalation::v1::EscalationService::Service, escalation::v1::ListEventsRequest,
          escalation::v1::ListEventsResponse>
      concerns;
  int checkin_port = 0, escalation_port = 0;
  grpc::ServerBuilder checkin_builder, escalation_builder;
  checkin_builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &checkin_port);
  checkin_builder.RegisterService(&checkins);
  escalation_builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                                      &escalation_port);
  escalation_builder.RegisterService(&concerns);
  auto checkin_server = checkin_builder.BuildAndStart();
  auto escalation_server = escalation_builder.BuildAndStart();
  ASSERT_NE(checkin_port, 0);
  ASSERT_NE(escalation_port, 0);

  const absl::Time now = absl::Now();
  for (const auto& [id, when] : {std::pair{"c-1", now - absl::Hours(1)},
                                 {"c-2", now - absl::Hours(30)},
                                 {"c-old", now - absl::Hours(24 * 10)}}) {
    checkin::v1::CheckInRecordedEvent recorded;
    recorded.set_check_in_id(id);
    recorded.set_participant_id("p-1");
    recorded.set_supporter_id(supporter.supporter_id());
    *recorded.mutable_occurred_at() = ToProtoTimestamp(when);
    checkins.Add(kAgency, recorded, when);
  }
  checkin::v1::CheckInRecordedEvent other_agency;
  other_agency.set_check_in_id("c-b");
  other_agency.set_supporter_id(supporter.supporter_id());
  *other_agency.mutable_occurred_at() = ToProtoTimestamp(now);
  checkins.Add("agency-b", other_agency, now);
  for (const char* id : {"k-1", "k-2"}) {
    escalation::v1::ConcernOpenedEvent opened;
    opened.set_concern_id(id);
    opened.set_participant_id("p-1");
    opened.set_raised_by("sup-a");
    concerns.Add(kAgency, opened, now);
  }
  escalation::v1::ConcernResolvedEvent resolved;
  resolved.set_concern_id("k-2");
  resolved.set_participant_id("p-1");
  concerns.Add(kAgency, resolved, now);

  const TokenFile token_file("platform", {"service"}, "svc-matching");
  ServiceProcess consuming(
      "matching", db_->UrlFor("matching"),
      {"--checkin_address=127.0.0.1:" + std::to_string(checkin_port),
       "--escalation_address=127.0.0.1:" + std::to_string(escalation_port), token_file.Flag()});
  ASSERT_TRUE(consuming.WaitHealth(true)) << consuming.Log();
  auto stub = v1::MatchingService::NewStub(consuming.Channel());
  v1::GetSupporterWorkloadRequest request;
  request.set_supporter_id(supporter.supporter_id());
  v1::GetSupporterWorkloadResponse response;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(stub->GetSupporterWorkload(Admin().get(), request, &response).ok());
    if (response.workload().has_activity_as_of() &&
        response.workload().open_concerns_raised() == 1 &&
        response.workload().check_ins_last_7_days() == 2) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(response.workload().check_ins_last_7_days(), 2) << consuming.Log();
  EXPECT_EQ(response.workload().open_concerns_raised(), 1);
  EXPECT_TRUE(response.workload().has_activity_as_of());
  // Each event applied once (the other agency's in its own rows).
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.supporter_check_ins")[0][0].as<int>(),
            4);
  checkin_server->Shutdown();
  escalation_server->Shutdown();
}

TEST_F(MatchingServiceTest, ProposalsFollowEveryRosterChangeAtOnce) {
  // ProposeMatches keeps the parsed roster between calls: a break, a new supporter and a full
  // caseload after it was read must each show in the very next proposal.
  const v1::Supporter first = CreateSupporter(Profile("sup-first"));
  const v1::Supporter second = CreateSupporter(Profile("sup-second"));
  auto proposed_ids = [&](const std::string& participant) {
    const v1::MatchRequest request = CreateRequest(participant, [](v1::MatchRequest&) {});
    std::set<std::string> ids;
    const v1::ProposeMatchesResponse proposed = Propose(request.match_request_id(), 10);
    for (const auto& c : proposed.candidates()) ids.insert(c.match().supporter_id());
    return std::make_pair(request, ids);
  };
  auto [r1, ids1] = proposed_ids("p-1");
  EXPECT_EQ(ids1, (std::set<std::string>{first.supporter_id(), second.supporter_id()}));

  PutOnPlannedBreak(second);
  const v1::Supporter third = CreateSupporter(Profile("sup-third"));
  auto [r2, ids2] = proposed_ids("p-2");
  EXPECT_EQ(ids2, (std::set<std::string>{first.supporter_id(), third.supporter_id()}));

  // sup-third fills up (a supporter of 1 unit taking p-2): no longer proposed.
  const v1::Supporter small = CreateSupporter(Profile("sup-small", 1));
  auto [r3, ids3] = proposed_ids("p-3");
  ASSERT_TRUE(ids3.contains(small.supporter_id()));
  v1::AcceptProposalRequest accept;
  const v1::ProposeMatchesResponse again = Propose(r3.match_request_id(), 10);
  for (const auto& c : again.candidates()) {
    if (c.match().supporter_id() == small.supporter_id()) accept.set_match_id(c.match().match_id());
  }
  v1::AcceptProposalResponse accepted;
  ASSERT_TRUE(stub_->AcceptProposal(As({"supervisor"}).get(), accept, &accepted).ok());
  auto [r4, ids4] = proposed_ids("p-4");
  EXPECT_FALSE(ids4.contains(small.supporter_id()));
  EXPECT_TRUE(ids4.contains(first.supporter_id()));
}

TEST_F(MatchingServiceTest, AssignBatchFollowsEveryRosterChangeAtOnce) {
  // AssignBatch takes the parsed roster from memory while its version stays (as ProposeMatches
  // does): a break, a full caseload and a new supporter after a dry run read it must each show
  // in the batch that follows.
  const v1::Supporter full = CreateSupporter(Profile("sup-full", 1));
  const v1::Supporter paused = CreateSupporter(Profile("sup-paused", 1));
  // Ids with what an array literal must quote: they are stored as given.
  for (const char* participant : {"p-1, \"quoted\"", "p-2 {braced}", "p-3 back\\slash"}) {
    CreateRequest(participant);
  }
  v1::AssignBatchRequest dry;
  dry.set_dry_run(true);
  v1::AssignBatchResponse preview;
  ASSERT_TRUE(stub_->AssignBatch(As({"supervisor"}).get(), dry, &preview).ok());
  ASSERT_EQ(preview.assignments_size(), 2);

  StartMatch("p-9", full);  // Its one unit taken by an accepted proposal.
  PutOnPlannedBreak(paused);
  const v1::Supporter added = CreateSupporter(Profile("sup-added", 2));

  v1::AssignBatchRequest run;
  run.set_idempotency_key(Key());
  v1::AssignBatchResponse result;
  ASSERT_TRUE(stub_->AssignBatch(As({"supervisor"}).get(), run, &result).ok());
  ASSERT_EQ(result.assignments_size(), 2);
  for (const auto& a : result.assignments()) {
    EXPECT_EQ(a.supporter_id(), added.supporter_id()) << a.participant_id();
    v1::GetMatchRequest get;
    get.set_match_id(a.match_id());
    v1::GetMatchResponse got;
    ASSERT_TRUE(stub_->GetMatch(As({"supervisor"}).get(), get, &got).ok());
    EXPECT_EQ(got.match().participant_id(), a.participant_id());
    EXPECT_EQ(got.match().participant_id().substr(0, 2), "p-");
  }
}

TEST_F(MatchingServiceTest, MatchesAndFollowUpsReferOnlyToRowsThatExistAndStay) {
  // Checked once per statement (migration 0007) rather than by foreign keys, with the same
  // refusal: a statement with one row naming nothing writes no row at all.
  const v1::Supporter supporter = CreateSupporter(Profile("sup-a"));
  const v1::MatchRequest request = CreateRequest("p-1");
  const v1::Match match = StartMatch("p-2", supporter);
  ASSERT_FALSE(match.match_id().empty());
  auto insert_matches = [&](const std::string& request_id, const std::string& supporter_id) {
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO matching.matches (agency_id, request_id, supporter_id, participant_id, units,"
        " explanation_pb, proposed_by) VALUES",
        " ('", kAgency, "', '", request.match_request_id(), "', '", supporter.supporter_id(),
        "', 'p-1', 1, '', 'admin'),", " ('", kAgency, "', '", request_id, "', '", supporter_id,
        "', 'p-1', 1, '', 'admin')"));
  };
  auto matches = [&] {
    return db_->AdminQuery("SELECT count(*) FROM matching.matches")[0][0].as<int>();
  };
  const int before = matches();
  EXPECT_THROW(insert_matches(RandomUuid(), supporter.supporter_id()), pqxx::foreign_key_violation)
      << "an unknown request";
  EXPECT_THROW(insert_matches(request.match_request_id(), RandomUuid()),
               pqxx::foreign_key_violation)
      << "an unknown supporter";
  EXPECT_THROW(db_->AdminQuery(absl::StrCat("INSERT INTO matching.matches (agency_id, request_id,"
                                            " supporter_id, participant_id, units, explanation_pb,"
                                            " proposed_by) VALUES ('agency-b', '",
                                            request.match_request_id(), "', '",
                                            supporter.supporter_id(), "', 'p-1', 1, '', 'admin')")),
               pqxx::foreign_key_violation)
      << "another agency's request and supporter";
  EXPECT_EQ(matches(), before) << "no row of a refused statement stays";
  insert_matches(request.match_request_id(), supporter.supporter_id());
  EXPECT_EQ(matches(), before + 2);

  EXPECT_THROW(db_->AdminQuery(absl::StrCat(
                   "INSERT INTO matching.follow_ups (agency_id, match_id, due_on) VALUES ('",
                   kAgency, "', '", RandomUuid(), "', current_date)")),
               pqxx::foreign_key_violation)
      << "a follow-up of an unknown match";

  // What a foreign key's lock kept from happening before commit is refused outright.
  for (const std::string& change :
       {absl::StrCat("DELETE FROM matching.match_requests WHERE id = '", request.match_request_id(),
                     "'"),
        absl::StrCat("DELETE FROM matching.supporters WHERE id = '", supporter.supporter_id(), "'"),
        absl::StrCat("DELETE FROM matching.matches WHERE id = '", match.match_id(), "'"),
        std::string("TRUNCATE matching.match_requests CASCADE"),
        std::string("TRUNCATE matching.supporters CASCADE"),
        absl::StrCat("UPDATE matching.match_requests SET id = gen_random_uuid() WHERE id = '",
                     request.match_request_id(), "'"),
        absl::StrCat("UPDATE matching.supporters SET agency_id = 'agency-b' WHERE id = '",
                     supporter.supporter_id(), "'"),
        absl::StrCat("UPDATE matching.matches SET supporter_id = gen_random_uuid() WHERE id = '",
                     match.match_id(), "'"),
        absl::StrCat("UPDATE matching.follow_ups SET match_id = gen_random_uuid()")}) {
    EXPECT_THROW(db_->AdminQuery(change), pqxx::foreign_key_violation) << change;
  }
  // Setting a key to the value it has is no change.
  db_->AdminQuery(
      absl::StrCat("UPDATE matching.matches SET supporter_id = supporter_id WHERE id = '",
                   match.match_id(), "'"));
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM matching.supporters")[0][0].as<int>(), 1);
}

}  // namespace
}  // namespace peerpath::testing
