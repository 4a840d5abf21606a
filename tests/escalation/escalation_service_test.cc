// The escalation service through its real binary and a real PostgreSQL: raising, routing,
// visibility by role and agency, acknowledgement races, resolution, cancellation, routing policy
// versions, and the deadline sweeper escalating exactly once across SIGKILL restarts.
#include "services/escalation/escalation_service.h"

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>
#include <tuple>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/time_util.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "services/escalation/notification_outbox.h"
#include "services/escalation/notifier.h"
#include "services/escalation/store.h"
#include "services/escalation/sweeper.h"
#include "tests/support/local_http_server.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using namespace std::chrono_literals;
using common::v1::CONCERN_CATEGORY_BASIC_NEEDS;
using common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING;
using common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY;
using common::v1::CONCERN_SEVERITY_CRITICAL;
using common::v1::CONCERN_SEVERITY_URGENT;
namespace v1 = peerpath::escalation::v1;

class EscalationServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    service_ = Start({"--deadline_sweep_interval=1h"});
    // What the matching log leaves: peer-1 (supervised by sup-1) and, since earlier, peer-2
    // (supervised by sup-2) both support client-42.
    Match("peer-1", "client-42", "sup-1", "1 day");
    Match("peer-2", "client-42", "sup-2", "2 days");
  }

  void Match(const std::string& supporter, const std::string& participant,
             const std::string& supervisor, const std::string& ago) {
    db_->AdminQuery(
        "INSERT INTO escalation.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, started_at, supervisor_subject) VALUES ('agency-a', "
        "gen_random_uuid(), gen_random_uuid(), '" +
        supporter + "', '" + participant + "', now() - interval '" + ago + "', '" + supervisor +
        "')");
  }

  // The plan of `statement` (prepared with `parameter_types`, executed with `arguments`) as the
  // service's role runs it under agency-a's scope on its generic plan (Plans::kGeneric), after
  // `between` ran: the statement is planned and cached on the connection first, as a service's
  // connection keeps its generic plan while the tables change under it.
  std::string CachedGenericPlanAfter(const std::string& parameter_types,
                                     const std::string& statement, const std::string& arguments,
                                     const std::function<void()>& between) {
    pqxx::connection conn(db_->UrlFor("escalation"));
    pqxx::nontransaction(conn).exec0("SET search_path TO escalation");
    pqxx::nontransaction(conn).exec0("PREPARE statement_under_test (" + parameter_types + ") AS " +
                                     statement);
    const auto plan = [&] {
      pqxx::work tx(conn);
      ScopeToAgency(tx, "agency-a", Plans::kGeneric);
      const std::string text = Explain(tx, "EXECUTE statement_under_test (" + arguments + ")");
      tx.commit();
      return text;
    };
    plan();  // Planned and cached.
    between();
    return plan();
  }

  // `count` copies of concern `id` (g = 1 to count in the SQL expressions): about `participant`,
  // raised by `raised_by`, held by `target_kind` `target_id` (c the copied concern), opened
  // `minutes_before` minutes before it; each with the ROUTED transition to its target. Then both
  // tables analysed, as autovacuum leaves them after a burst.
  void CopyConcern(const std::string& id, int count, const std::string& participant,
                   const std::string& raised_by, const std::string& target_kind,
                   const std::string& target_id, const std::string& minutes_before) {
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO escalation.concerns (agency_id, participant_id, category, severity, source, "
        "raised_by, raised_by_role, policy_id, policy_version, target_kind, target_id, "
        "ack_deadline, next_deadline, next_deadline_kind, notify_at, notified_at, opened_at) "
        "SELECT c.agency_id, ",
        participant, ", c.category, c.severity, c.source, ", raised_by,
        ", c.raised_by_role, c.policy_id, c.policy_version, ", target_kind, ", ", target_id,
        ", now() + interval '4 hours', now() + interval '4 hours', 'acknowledgement', now(), "
        "now(), c.opened_at - (",
        minutes_before, ") * interval '1 minute' FROM escalation.concerns c, generate_series(1, ",
        count, ") g WHERE c.id = '", id,
        "'; INSERT INTO escalation.concern_transitions (agency_id, concern_id, kind, status_after, "
        "level, target_kind, target_id, actor, occurred_at) SELECT c.agency_id, c.id, 'routed', "
        "'open', 0, c.target_kind, c.target_id, 'system:routing', c.opened_at FROM "
        "escalation.concerns c WHERE NOT EXISTS (SELECT 1 FROM escalation.concern_transitions t "
        "WHERE t.agency_id = c.agency_id AND t.concern_id = c.id); ANALYZE escalation.concerns; "
        "ANALYZE escalation.concern_transitions"));
  }

  // A page of agency-a's concerns (50, and whether there is more) that `viewer` may see, after
  // `cursor`, as the service's role lists them (through `filter`, if any); what the list read
  // checked: no sequential scan of concerns or transitions, fewer than `max_concerns` and
  // `max_transitions` rows read.
  std::vector<escalation::ConcernRecord> ListPage(const escalation::Viewer& viewer,
                                                  const std::string& cursor, int max_concerns,
                                                  int max_transitions,
                                                  escalation::Store::ListFilter filter = {}) {
    pqxx::connection runtime(db_->UrlFor("escalation"));
    pqxx::work tx(runtime);
    tx.exec0("SET LOCAL search_path TO escalation");
    ScopeToAgency(tx, "agency-a");
    filter.now = absl::Now();
    auto listed = escalation::Store::ListConcerns(tx, "agency-a", viewer, filter, cursor, 51);
    EXPECT_TRUE(listed.ok()) << listed.status();
    std::map<std::string, TableReads> reads = ReadsInTransaction(tx, "escalation");
    EXPECT_EQ(reads["concerns"].sequential_scans, 0) << viewer.subject << " " << cursor;
    EXPECT_LT(reads["concerns"].rows, max_concerns) << viewer.subject << " " << cursor;
    EXPECT_EQ(reads["concern_transitions"].sequential_scans, 0) << viewer.subject << " " << cursor;
    EXPECT_LT(reads["concern_transitions"].rows, max_transitions)
        << viewer.subject << " " << cursor;
    tx.commit();
    return listed.ok() ? *listed : std::vector<escalation::ConcernRecord>{};
  }

  std::unique_ptr<ServiceProcess> Start(std::vector<std::string> args) {
    args.push_back("--agency_time_zone=America/Chicago");
    auto process = std::make_unique<ServiceProcess>("escalation", db_->UrlFor("escalation"), args);
    EXPECT_TRUE(process->WaitListening()) << process->Log();
    EXPECT_TRUE(process->WaitHealth(true)) << process->Log();
    stub_ = v1::EscalationService::NewStub(process->Channel());
    return process;
  }

  static std::unique_ptr<grpc::ClientContext> As(const std::string& agency,
                                                 const std::vector<std::string>& roles,
                                                 const std::string& subject) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 20s);
    context->AddMetadata("authorization", "Bearer " + TokenFor(agency, roles, subject));
    return context;
  }

  v1::RaiseConcernRequest Raise(common::v1::ConcernCategory category,
                                common::v1::ConcernSeverity severity, const std::string& key) {
    v1::RaiseConcernRequest request;
    request.set_participant_id("client-42");
    request.set_category(category);
    request.set_severity(severity);
    request.set_description("said they had a plan tonight");
    request.set_idempotency_key(key);
    return request;
  }

  v1::Concern MustRaise(const v1::RaiseConcernRequest& request,
                        const std::string& subject = "peer-1",
                        const std::string& role = "peer_supporter",
                        const std::string& agency = "agency-a") {
    v1::RaiseConcernResponse response;
    grpc::Status status =
        stub_->RaiseConcern(As(agency, {role}, subject).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.concern();
  }

  grpc::Status Acknowledge(const std::string& id, const std::string& subject,
                           const std::string& role = "clinician",
                           const std::string& agency = "agency-a",
                           v1::AcknowledgeConcernResponse* out = nullptr) {
    v1::AcknowledgeConcernRequest request;
    request.set_concern_id(id);
    v1::AcknowledgeConcernResponse response;
    return stub_->AcknowledgeConcern(As(agency, {role}, subject).get(), request,
                                     out ? out : &response);
  }

  grpc::Status Resolve(const std::string& id, const std::string& subject,
                       v1::ConcernOutcome outcome = v1::CONCERN_OUTCOME_CLINICAL_REVIEW_DONE,
                       v1::ResolveConcernResponse* out = nullptr) {
    v1::ResolveConcernRequest request;
    request.set_concern_id(id);
    request.set_outcome(outcome);
    v1::ResolveConcernResponse response;
    return stub_->ResolveConcern(As("agency-a", {"clinician"}, subject).get(), request,
                                 out ? out : &response);
  }

  // Clinician dr-1's dashboard of the clinical on-call team, through `stub` (default: stub_),
  // for 30 s at most.
  std::unique_ptr<grpc::ClientReader<v1::WatchConcernsResponse>> WatchOnCall(
      grpc::ClientContext& context, v1::EscalationService::Stub* stub = nullptr) {
    context.AddMetadata("authorization", "Bearer " + TokenFor("agency-a", {"clinician"}, "dr-1"));
    context.set_deadline(std::chrono::system_clock::now() + 30s);
    v1::WatchConcernsRequest request;
    request.mutable_target()->set_kind(v1::TARGET_KIND_CLINICAL_ON_CALL);
    request.mutable_target()->set_target_id("clinical-on-call");
    return (stub ? stub : stub_.get())->WatchConcerns(&context, request);
  }

  int Count(const std::string& sql) { return db_->AdminQuery(sql)[0][0].as<int>(); }

  struct RaiseSpec {
    v1::RaiseConcernRequest request;
    std::string subject, role;
  };
  // Sends `calls` (agency-a's) at once: the first two hold the agency's two write transactions,
  // their key claims waiting on a table lock, until every call is in the service; the others
  // queue behind them and share the next transactions. Each call's status and response, by call.
  void RaiseTogether(const std::vector<RaiseSpec>& calls, std::vector<grpc::Status>& statuses,
                     std::vector<v1::RaiseConcernResponse>& responses) {
    ASSERT_GT(calls.size(), 2u);
    auto lock = db_->Admin();
    pqxx::work held(*lock);
    held.exec0("LOCK TABLE escalation.idempotency_keys IN SHARE MODE");
    auto blocked = [&] { return RaisesWaitingOnALock(); };
    responses.assign(calls.size(), v1::RaiseConcernResponse());
    statuses.assign(calls.size(), grpc::Status());
    std::vector<std::thread> threads;
    absl::Cleanup join = [&] {
      held.abort();
      for (auto& t : threads) t.join();
    };
    for (size_t i = 0; i < calls.size(); ++i) {
      threads.emplace_back([&, i] {
        statuses[i] = stub_->RaiseConcern(As("agency-a", {calls[i].role}, calls[i].subject).get(),
                                          calls[i].request, &responses[i]);
      });
      if (i < 2) {
        for (int tries = 0; tries < 400 && blocked() < static_cast<int>(i) + 1; ++tries) {
          std::this_thread::sleep_for(25ms);
        }
        ASSERT_EQ(blocked(), static_cast<int>(i) + 1) << "call " << i << " never reached the lock";
      }
    }
    // All of them in the service: the two in their transactions, the others queued behind them
    // (none reaches the database).
    for (int tries = 0; tries < 400 && RaisesInFlight() < calls.size(); ++tries) {
      std::this_thread::sleep_for(25ms);
    }
    ASSERT_EQ(RaisesInFlight(), calls.size());
    EXPECT_EQ(blocked(), 2);
  }

  // `count` pages of agency-a to the clinical on-call team, due now (as after a burst of
  // escalations while the paging endpoint was down).
  void OwePages(int count) {
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO escalation.notifications (agency_id, concern_id, reason, category, "
        "severity, level, target_kind, target_id, deadline) SELECT 'agency-a', "
        "gen_random_uuid(), 'opened', 1, 3, 0, 1, 'clinical-on-call', now() + interval '15 "
        "minutes' FROM generate_series(1, ",
        count, ")"));
  }

  // RaiseConcern calls whose key claim waits on a lock (not the service's background work, which
  // may wait on locks of its own).
  int RaisesWaitingOnALock() {
    return Count(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = "
        "current_database() AND query LIKE '%INSERT INTO idempotency_keys%'");
  }

  // The service's RaiseConcern calls waiting for their write transaction or in it.
  double RaisesInFlight() {
    return MetricValue(HttpGet(service_->metrics_port(), "/metrics"),
                       "peerpath_escalation_raise_calls_in_flight", {});
  }

  void RaiseCriticalConcernsTwoHoursOverdue(int count);
  void ExpectEachEscalatedOnceToTheCaseManagementTeam(int count);

  // Every concern as if opened `interval` earlier: its deadlines have passed by as much.
  void MoveEveryConcernBack(const std::string& interval) {
    db_->AdminQuery("UPDATE escalation.concerns SET opened_at = opened_at - interval '" + interval +
                    "', ack_deadline = ack_deadline - interval '" + interval +
                    "', next_deadline = next_deadline - interval '" + interval + "'");
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<ServiceProcess> service_;
  std::unique_ptr<v1::EscalationService::Stub> stub_;
};

TEST_F(EscalationServiceTest, APageIsWrittenWithItsConcernAndDeliveredAfterACrash) {
  // The paging endpoint is down when the concern is raised.
  int port = 0;
  { port = LocalHttpServer(0).port(); }
  const std::string url =
      "--notification_webhook_url=http://127.0.0.1:" + std::to_string(port) + "/page";
  service_ = Start({"--deadline_sweep_interval=1h", url});
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "page-1"));
  ASSERT_FALSE(c.concern_id().empty());
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications WHERE concern_id = '" +
                  c.concern_id() + "' AND reason = 'opened' AND delivered_at IS NULL"),
            1);
  bool tried = false;
  for (int i = 0; i < 100 && !tried; ++i) {
    tried = Count("SELECT count(*) FROM escalation.notifications WHERE attempts > 0") == 1;
    if (!tried) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(tried) << service_->Log();
  // The service dies before the endpoint is back; the page is still owed. (A page delivered 31
  // days ago is kept no longer.)
  service_->Signal(SIGKILL);
  service_.reset();
  db_->AdminQuery(
      "INSERT INTO escalation.notifications (agency_id, concern_id, reason, category, severity, "
      "level, target_kind, target_id, deadline, delivered_at) VALUES ('agency-a', "
      "gen_random_uuid(), 'opened', 1, 3, 0, 1, 'clinical-on-call', now() - interval '31 days', "
      "now() - interval '31 days')");
  LocalHttpServer pager(/*failures=*/0, port);
  service_ = Start({"--deadline_sweep_interval=1h", url});
  bool delivered = false;
  for (int i = 0; i < 200 && !delivered; ++i) {
    delivered = pager.bodies().size() == 1;
    if (!delivered) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(delivered) << service_->Log();
  EXPECT_NE(pager.bodies()[0].find(c.concern_id()), std::string::npos);
  EXPECT_EQ(pager.bodies()[0].find("client-42"), std::string::npos);  // No participant id.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications WHERE delivered_at IS NOT NULL"),
            1);  // The new one; the 31-day-old one is gone.
  // A refused change pages nobody: a concern raised outside the caller's matches.
  v1::RaiseConcernRequest outside =
      Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "page-2");
  outside.set_participant_id("client-99");
  v1::RaiseConcernResponse response;
  EXPECT_EQ(
      stub_->RaiseConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), outside, &response)
          .error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications"), 1);
  EXPECT_EQ(pager.bodies().size(), 1u);
}

// A backlog of pages (the paging endpoint down for hours) is read from the front of the due
// index, a transaction's worth per pass, never sorted: neither before the table's statistics know
// of the backlog (the plan used to read and sort all of it then) nor after.
TEST_F(EscalationServiceTest, ADispatcherPassReadsItsPagesFromTheFrontOfABacklog) {
  db_->AdminQuery(
      "INSERT INTO escalation.notifications (agency_id, concern_id, reason, category, severity, "
      "level, target_kind, target_id, deadline, next_attempt_at) SELECT 'agency-a', "
      "gen_random_uuid(), 'opened', 1, 3, 0, 1, 'clinical-on-call', now() + interval '15 "
      "minutes', now() - i * interval '1 second' FROM generate_series(1, 20000) i");
  auto plan = [&] {
    auto admin = db_->Admin();
    pqxx::work tx(*admin);
    tx.exec0("SET LOCAL search_path TO escalation");
    tx.exec0(std::string("PREPARE due (bigint, integer) AS ") + escalation::kDueNotificationsSql);
    return Explain(tx, "EXECUTE due (86400000000, 16)");
  };
  for (const bool analysed : {false, true}) {
    if (analysed) db_->AdminQuery("ANALYZE escalation.notifications");
    const std::string text = plan();
    EXPECT_NE(text.find("Index Scan using notifications_due_in_order"), std::string::npos)
        << analysed << "\n"
        << text;
    EXPECT_EQ(text.find("Sort"), std::string::npos) << analysed << "\n" << text;
  }
}

// ListConcerns reads a page at a time: a clinician's list of the agency's 20,001 concerns, newest
// first from a cursor, reads about a page of them for each page. It read all of them, checked each
// for whether it was routed to the caller, and sorted them, for every page.
TEST_F(EscalationServiceTest, ListingConcernsReadsAPageAtATime) {
  const v1::Concern raised =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-list"));
  // Copies opened a minute apart before it, each routed to the clinical on-call team.
  CopyConcern(raised.concern_id(), 20000, "'copy-' || g", "c.raised_by", "c.target_kind",
              "c.target_id", "g");
  const escalation::Viewer clinician{{"clinical_on_call"}, "dr-1"};
  // About a page of concerns read, from the index; whether each was routed to the viewer's team
  // looked up for it (not every transition of the agency read into a hash first).
  const auto page = [&](const std::string& cursor) {
    return ListPage(clinician, cursor, /*max_concerns=*/200, /*max_transitions=*/400);
  };
  const std::vector<escalation::ConcernRecord> first = page("");
  ASSERT_EQ(first.size(), 51u);
  EXPECT_EQ(first[0].concern.concern_id(), raised.concern_id());  // Opened last.
  EXPECT_EQ(first[1].concern.participant_id(), "copy-1");
  EXPECT_EQ(first[50].concern.participant_id(), "copy-50");
  const v1::Concern& last = first[49].concern;
  const std::vector<escalation::ConcernRecord> second = page(escalation::Store::ListCursor(last));
  ASSERT_EQ(second.size(), 51u);
  EXPECT_EQ(second[0].concern.participant_id(), "copy-50");
  EXPECT_EQ(second[50].concern.participant_id(), "copy-100");
}

// A peer supporter's and a supervisor's lists are gathered from their side (migration 0017): among
// the agency's 20,000 other concerns, each page reads about the concerns they may see, newest
// first. They walked the agency's concerns, testing each, until their page was full: every
// concern of the agency read for one who sees few of them.
TEST_F(EscalationServiceTest, ThoseWhoActForNoTeamListFromTheirOwnSide) {
  const v1::Concern raised = MustRaise(
      Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-side"), "dr-a", "clinician");
  // sup-list supervises peer-list (matched with client-side) and peer-old (whose match with
  // client-old has ended).
  Match("peer-list", "client-side", "sup-list", "3 days");
  Match("peer-old", "client-old", "sup-list", "9 days");
  db_->AdminQuery(
      "UPDATE escalation.supporter_matches SET active = false, ended_at = now() WHERE "
      "supporter_subject = 'peer-old'");
  const std::string team = "c.target_kind", team_id = "c.target_id";
  CopyConcern(raised.concern_id(), 20000, "'copy-' || g", "'dr-a'", team, team_id, "g");
  // Those sup-list may see, spread through the agency's history: raised by their supporters (the
  // match ended or not), about their supporter's participant, routed to them, raised by them.
  CopyConcern(raised.concern_id(), 30, "'other-' || g", "'peer-list'", team, team_id, "g * 600");
  CopyConcern(raised.concern_id(), 30, "'client-side'", "'dr-a'", team, team_id, "g * 600 + 1");
  CopyConcern(raised.concern_id(), 30, "'other-' || g", "'peer-old'", team, team_id, "g * 600 + 2");
  CopyConcern(raised.concern_id(), 20, "'other-' || g", "'dr-a'", "'supervisor'", "'sup-list'",
              "g * 900 + 3");
  CopyConcern(raised.concern_id(), 20, "'other-' || g", "'sup-list'", team, team_id, "g * 900 + 4");
  // And one they may not: about the participant of the ended match.
  CopyConcern(raised.concern_id(), 10, "'client-old'", "'dr-a'", team, team_id, "g * 1000 + 5");

  // Every page of `viewer`'s list, each checked to read a few hundred concerns at most.
  const auto walk = [&](const escalation::Viewer& viewer,
                        const escalation::Store::ListFilter& filter = {}) {
    std::vector<escalation::ConcernRecord> all;
    std::string cursor;
    for (int pages = 0; pages < 10; ++pages) {
      std::vector<escalation::ConcernRecord> page =
          ListPage(viewer, cursor, /*max_concerns=*/400, /*max_transitions=*/200, filter);
      const bool more = page.size() > 50;
      if (more) page.resize(50);
      all.insert(all.end(), page.begin(), page.end());
      if (!more) break;
      cursor = escalation::Store::ListCursor(page.back().concern);
    }
    return all;
  };
  const auto newest_first = [](const std::vector<escalation::ConcernRecord>& listed) {
    for (size_t i = 1; i < listed.size(); ++i) {
      const v1::Concern &before = listed[i - 1].concern, &after = listed[i].concern;
      const absl::Time b = FromProtoTimestamp(before.opened_at()),
                       a = FromProtoTimestamp(after.opened_at());
      if (b < a || (b == a && before.concern_id() <= after.concern_id())) return false;
    }
    return true;
  };

  const std::vector<escalation::ConcernRecord> supervisor =
      walk(escalation::Viewer{{"supervised_supporters"}, "sup-list"});
  EXPECT_EQ(supervisor.size(), 130u);
  EXPECT_TRUE(newest_first(supervisor));
  std::map<std::string, int> by_source;
  std::set<std::string> ids;
  for (const escalation::ConcernRecord& r : supervisor) {
    const v1::Concern& c = r.concern;
    ids.insert(c.concern_id());
    EXPECT_NE(c.participant_id(), "client-old");
    // In full, but for those they raised themselves (theirs to follow, not routed to them).
    EXPECT_EQ(r.routed_to_viewer, c.raised_by() != "sup-list") << c.raised_by();
    // The sources were told apart when seeded: the participant, else the raiser (dr-a raised
    // only those routed to sup-list).
    std::string source = c.raised_by();
    if (c.participant_id() == "client-side") {
      source = "their participant";
    } else if (c.raised_by() == "dr-a") {
      source = "routed to them";
    }
    ++by_source[source];
  }
  EXPECT_EQ(ids.size(), 130u);  // No concern twice.
  EXPECT_EQ(by_source, (std::map<std::string, int>{{"peer-list", 30},
                                                   {"peer-old", 30},
                                                   {"routed to them", 20},
                                                   {"sup-list", 20},
                                                   {"their participant", 30}}));

  // Filtered as asked: their supporter's participant; none of them critical.
  escalation::Store::ListFilter about;
  about.participant_id = "client-side";
  const std::vector<escalation::ConcernRecord> participant =
      walk(escalation::Viewer{{"supervised_supporters"}, "sup-list"}, about);
  EXPECT_EQ(participant.size(), 30u);
  EXPECT_TRUE(newest_first(participant));
  for (const escalation::ConcernRecord& r : participant) {
    EXPECT_EQ(r.concern.participant_id(), "client-side");
  }
  escalation::Store::ListFilter critical;
  critical.severities = {"critical"};
  EXPECT_TRUE(walk(escalation::Viewer{{"supervised_supporters"}, "sup-list"}, critical).empty());

  // A peer supporter: the 30 they raised, not routed to them (status only).
  const std::vector<escalation::ConcernRecord> supporter =
      walk(escalation::Viewer{{}, "peer-list"});
  EXPECT_EQ(supporter.size(), 30u);
  EXPECT_TRUE(newest_first(supporter));
  for (const escalation::ConcernRecord& r : supporter) {
    EXPECT_EQ(r.concern.raised_by(), "peer-list");
    EXPECT_FALSE(r.routed_to_viewer);
  }
  // A supervisor of nobody, with nothing routed to them: an empty list, read at once.
  EXPECT_TRUE(walk(escalation::Viewer{{"supervised_supporters"}, "sup-none"}).empty());
}

// A lookup of one concern by agency and id keeps off concerns_listed (ListConcerns' index), on the
// generic plan made while the table is small and not yet analysed, as after a fresh install: the
// foreign-key check of each transition insert (as PostgreSQL runs it, as the table's owner) and
// the locking read of the concerns an action changes. Without its partial predicate the check
// took it, with the agency alone as its condition, and read every concern of the agency at each
// transition written.
TEST_F(EscalationServiceTest, LookupsOfOneConcernKeepOffTheListingIndex) {
  pqxx::connection conn(db_->OwnerUrlFor("escalation"));
  pqxx::work tx(conn);
  tx.exec0("SET LOCAL plan_cache_mode = force_generic_plan");
  tx.exec0(
      "PREPARE fk_check (text, uuid) AS SELECT 1 FROM ONLY escalation.concerns x "
      "WHERE agency_id = $1 AND id = $2 FOR KEY SHARE OF x");
  const std::string fk_check =
      Explain(tx, "EXECUTE fk_check ('agency-a', '0b7a1d7e-4f43-4a52-8d8e-3c1fd1a4c7a0')");
  tx.commit();
  EXPECT_EQ(fk_check.find("concerns_listed"), std::string::npos) << fk_check;
  const std::string lock = db_->PlanAsService(
      "escalation", "agency-a", "text, uuid[]", escalation::Store::LockConcernsSql(),
      "'agency-a', '{0b7a1d7e-4f43-4a52-8d8e-3c1fd1a4c7a0}'", /*generic=*/true);
  EXPECT_EQ(lock.find("concerns_listed"), std::string::npos) << lock;
}

// A pass marks the pages it delivered in one statement, by their ids in the primary key, however
// much the table grew since PostgreSQL cached the plan: under load, the plan cached while the
// table was small was a sequential scan (cheaper on paper), and every pass read the whole table.
TEST_F(EscalationServiceTest, ADispatcherPassMarksItsPagesByTheirKey) {
  const auto page = [&](int count) {
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO escalation.notifications (agency_id, concern_id, reason, category, "
        "severity, level, target_kind, target_id, deadline) SELECT 'agency-' || (i % 2), "
        "gen_random_uuid(), 'opened', 1, 3, 0, 1, 'clinical-on-call', now() + interval '15 "
        "minutes' FROM generate_series(1, ",
        count, ") i"));
  };
  page(60);  // The first pages, analysed (autovacuum), when the dispatcher's plan is cached.
  db_->AdminQuery("ANALYZE escalation.notifications");
  pqxx::connection conn(db_->UrlFor("escalation"));
  pqxx::work tx(conn);
  tx.exec0("SET LOCAL search_path TO escalation");
  ScopeToSetting(tx, escalation::kDispatchSetting, "on", Plans::kIndexScans);
  tx.exec0("SET LOCAL plan_cache_mode = force_generic_plan");
  tx.exec0(std::string("PREPARE mark (bigint[]) AS ") + escalation::kMarkDeliveredSql);
  tx.exec("EXPLAIN EXECUTE mark ('{1}')");  // Planned and cached.
  page(20000);
  const std::string plan = Explain(tx, "EXECUTE mark ('{1,2,3}')");
  EXPECT_NE(plan.find("notifications_pkey"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Seq Scan"), std::string::npos) << plan;
}

// The sweeper's prepared reads of concerns keep to their indexes as the table grows: plans cached
// by the service's role on a few analysed concerns, under the sweeper's scopes, and used in later
// transactions after 20,000 more concerns with no analyse in between (as until autovacuum catches
// up with a burst). Without enable_seqscan off in the scopes, two of them stayed sequential scans
// of every concern ever raised, paid at every sweep.
TEST_F(EscalationServiceTest, TheSweepersReadsOfConcernsKeepToTheirIndexesAsTheTableGrows) {
  db_->AdminQuery(
      "INSERT INTO escalation.routing_policies (agency_id, version, rules, time_zone, "
      "business_hours, created_by) VALUES ('agency-plan', 1, '[]', 'UTC', '[]', 'system:default')");
  const auto raise = [&](int count) {
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO escalation.concerns (agency_id, participant_id, category, severity, source, "
        "raised_by, raised_by_role, policy_id, policy_version, target_kind, target_id, "
        "ack_deadline, next_deadline, next_deadline_kind, notify_at, notified_at, opened_at) "
        "SELECT p.agency_id, 'client-' || g, 'clinical_worsening', 'urgent', 'manual', 'dr-a', "
        "'clinician', p.id, 1, 'clinical_on_call', 'clinical-on-call', now() + interval '4 hours', "
        "now() + interval '4 hours', 'acknowledgement', now(), now(), now() "
        "FROM generate_series(1, ",
        count, ") g, escalation.routing_policies p WHERE p.agency_id = 'agency-plan'"));
  };
  raise(60);  // Their targets told when they were raised, as most are.
  db_->AdminQuery("ANALYZE escalation.concerns");
  pqxx::connection conn(db_->UrlFor("escalation"));
  pqxx::nontransaction(conn).exec0("SET search_path TO escalation");
  // Each read in a transaction of its own, scoped as the sweeper scopes it.
  const auto plan = [&](const std::string& statement, const std::string& arguments, bool sweep) {
    pqxx::work tx(conn);
    if (sweep) {
      ScopeToSetting(tx, escalation::kSweeperSetting, "on", Plans::kIndexScans);
    } else {
      ScopeToAgency(tx, "agency-plan", Plans::kIndexScans);
    }
    tx.exec0("SET LOCAL plan_cache_mode = force_generic_plan");
    const std::string text = Explain(tx, "EXECUTE " + statement + " (" + arguments + ")");
    tx.commit();
    return text;
  };
  {
    pqxx::nontransaction prepare(conn);
    prepare.exec0(std::string("PREPARE due (bigint, bigint) AS ") + escalation::kDueConcernsSql);
    prepare.exec0(std::string("PREPARE pending (bigint, bigint) AS ") +
                  escalation::kPendingNotificationsSql);
    prepare.exec0("PREPARE lock_chunk (text, uuid[]) AS " + escalation::Store::LockConcernsSql());
  }
  const std::string now_us = "(extract(epoch FROM now()) * 1000000)::bigint";
  const std::string ids = "'agency-plan', '{0b7a1d7e-4f43-4a52-8d8e-3c1fd1a4c7a0}'";
  plan("due", now_us + ", 100", true);  // Planned and cached.
  plan("pending", now_us + ", 100", true);
  plan("lock_chunk", ids, false);
  raise(20000);
  const struct {
    std::string statement, arguments, index;
    bool sweep;
  } reads[] = {{"due", now_us + ", 100", "concerns_open_by_deadline", true},
               {"pending", now_us + ", 100", "concerns_pending_notification", true},
               {"lock_chunk", ids, "Index Cond", false}};
  for (const auto& read : reads) {
    const std::string text = plan(read.statement, read.arguments, read.sweep);
    EXPECT_NE(text.find(read.index), std::string::npos) << read.statement << ":\n" << text;
    EXPECT_EQ(text.find("Seq Scan"), std::string::npos) << read.statement << ":\n" << text;
  }
}

// RaiseConcern's read of what its calls are decided on keeps to its indexes as the tables grow:
// its generic plan, cached by the service's role under RaiseConcern's scope while the agency had a
// few analysed matches and enrollments, used in later transactions after 20,000 more of each (no
// analyse in between, as until autovacuum catches up with a burst). Its plan read every
// enrollment and, three times, every active match of the agency.
TEST_F(EscalationServiceTest, ARaisesReadOfItsContextKeepsToItsIndexesAsTheTablesGrow) {
  const auto grow = [&](int from, int count) {
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO escalation.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, active, ended_at, supervisor_subject) SELECT "
        "'agency-a', gen_random_uuid(), gen_random_uuid(), 'peer-' || (g % 500), 'client-' || g, "
        "g % 3 <> 0, CASE WHEN g % 3 = 0 THEN now() END, 'sup-' || (g % 50) FROM "
        "generate_series(",
        from, ", ", from + count - 1,
        ") g; INSERT INTO escalation.enrollments (agency_id, enrollment_id, participant_id) "
        "SELECT 'agency-a', gen_random_uuid(), 'client-' || g FROM generate_series(",
        from, ", ", from + count - 1, ") g"));
  };
  grow(1, 60);
  db_->AdminQuery("ANALYZE escalation.supporter_matches; ANALYZE escalation.enrollments");
  const std::string text = CachedGenericPlanAfter(
      "text, text[], text[], text[], text[], text[]", escalation::kRaiseContextsSql,
      "'agency-a', '{k-1,k-2}', '{aa,bb}', '{client-1,client-3}', '{peer-1,peer-1}', "
      "'{\"\",0b7a1d7e-4f43-4a52-8d8e-3c1fd1a4c7a0}'",
      [&] { grow(61, 20000); });
  EXPECT_EQ(text.find("Seq Scan on supporter_matches"), std::string::npos) << text;
  EXPECT_EQ(text.find("Seq Scan on enrollments"), std::string::npos) << text;
  EXPECT_EQ(text.find("Seq Scan on idempotency_keys"), std::string::npos) << text;
  // Each of its three reads of matches (the participant's supporter; whether the caller supports
  // or supervises them) looks up the call's participant, none reads the agency's matches whole.
  int by_participant = 0;
  for (size_t at = 0; (at = text.find("(participant_id = i.participant)", at)) != std::string::npos;
       ++at) {
    ++by_participant;
  }
  EXPECT_EQ(by_participant, 3) << text;
}

// The check-in consumer's read of a run of ConcernRaisedEvents keeps to its indexes as the tables
// grow: its generic plan, cached under the consumer's scope while the agency had a few concerns
// and matches, used after 20,000 more of each (no analyse in between). Each event is looked up by
// its id among the concerns and by its participant among the matches; neither is read whole.
TEST_F(EscalationServiceTest, TheCheckInConsumersReadKeepsToItsIndexesAsTheTablesGrow) {
  const v1::Concern raised =
      MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-log"));
  const auto grow = [&](int from, int count) {
    const std::string series = absl::StrCat("generate_series(", from, ", ", from + count - 1, ")");
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO escalation.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, supervisor_subject) SELECT 'agency-a', "
        "gen_random_uuid(), gen_random_uuid(), 'peer-' || (g % 500), 'client-' || g, 'sup-' || "
        "(g % 50) FROM ",
        series,
        " g; INSERT INTO escalation.concerns (agency_id, participant_id, category, severity, "
        "source, source_event_id, raised_by, raised_by_role, policy_id, policy_version, "
        "target_kind, target_id, ack_deadline, next_deadline, next_deadline_kind, notify_at, "
        "notified_at, opened_at) SELECT c.agency_id, 'client-' || g, c.category, c.severity, "
        "'check_in_rule', 'event-' || g, 'system:checkin', 'service', c.policy_id, "
        "c.policy_version, c.target_kind, c.target_id, now() + interval '4 hours', now() + "
        "interval '4 hours', 'acknowledgement', now(), now(), c.opened_at FROM "
        "escalation.concerns c, ",
        series, " g WHERE c.id = '", raised.concern_id(), "'"));
  };
  grow(1, 60);
  db_->AdminQuery("ANALYZE escalation.supporter_matches; ANALYZE escalation.concerns");
  const std::string text = CachedGenericPlanAfter(
      "text, text[], text[]", escalation::kRaisedContextsSql,
      "'agency-a', '{event-1,event-new}', '{client-1,client-new}'", [&] { grow(61, 20000); });
  EXPECT_EQ(text.find("Seq Scan on concerns"), std::string::npos) << text;
  EXPECT_EQ(text.find("Seq Scan on supporter_matches"), std::string::npos) << text;
  EXPECT_NE(text.find("concerns_by_source_event"), std::string::npos) << text;
  EXPECT_NE(text.find("(participant_id = i.participant)"), std::string::npos) << text;
}

// RaiseConcern's read finds a named enrollment by its key, as the service runs it (its role,
// under row-level security, on the generic plan): it used to read every enrollment of the agency
// for each batch of calls.
TEST_F(EscalationServiceTest, ARaiseReadsTheEnrollmentItNamesByItsKey) {
  db_->AdminQuery(
      "INSERT INTO escalation.enrollments (agency_id, enrollment_id, participant_id) SELECT "
      "'agency-' || (g % 2), gen_random_uuid(), 'client-' || g FROM generate_series(1, 20000) g");
  db_->AdminQuery("ANALYZE escalation.enrollments");
  const std::string plan = db_->PlanAsService(
      "escalation", "agency-a", "text, text[], text[], text[], text[], text[]",
      escalation::kRaiseContextsSql,
      "'agency-a', '{k-1,k-2}', '{aa,bb}', '{client-1,client-3}', '{peer-1,peer-1}', "
      "'{\"\",0b7a1d7e-4f43-4a52-8d8e-3c1fd1a4c7a0}'",
      /*generic=*/true);
  EXPECT_NE(plan.find("Index Scan using enrollments_pkey on enrollments"), std::string::npos)
      << plan;
  EXPECT_EQ(plan.find("Seq Scan on enrollments"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Bitmap Heap Scan on enrollments"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Hash Cond"), std::string::npos) << plan;
}

TEST_F(EscalationServiceTest, ABacklogOfPagesGoesOutThroughSeveralConnectionsAtOnce) {
  // 40 pages owed, to an endpoint that takes 50 ms per page.
  service_->Signal(SIGKILL);
  service_->WaitExit(5s);
  OwePages(40);
  LocalHttpServer pager(/*failures=*/0, /*port=*/0, /*delay_ms=*/50);
  service_ = Start({"--deadline_sweep_interval=1h", "--notification_webhook_url=" + pager.url()});
  // Recorded as delivered when its transaction (up to 16 pages) commits.
  const std::string delivered =
      "SELECT count(*) FROM escalation.notifications WHERE delivered_at IS NOT NULL AND "
      "attempts = 1";
  for (int i = 0; i < 200 && Count(delivered) < 40; ++i) std::this_thread::sleep_for(50ms);
  EXPECT_EQ(Count(delivered), 40);
  EXPECT_EQ(pager.bodies().size(), 40u) << "each page once";
  EXPECT_GE(pager.most_at_once(), 2) << "the backlog went through several connections at once";
}

// Delivers each page after `per_page`; counts the pages, the threads that delivered them and the
// most delivered at once.
class TimedNotifier final : public escalation::Notifier {
 public:
  explicit TimedNotifier(absl::Duration per_page) : per_page_(per_page) {}

  bool Deliver(const escalation::Notification&) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads_.insert(std::this_thread::get_id());
      most_at_once_ = std::max(most_at_once_, ++running_);
    }
    absl::SleepFor(per_page_);
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
    ++delivered_;
    return true;
  }

  int delivered() const {
    std::lock_guard<std::mutex> lock(mu_);
    return delivered_;
  }
  size_t threads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_.size();
  }
  int most_at_once() const {
    std::lock_guard<std::mutex> lock(mu_);
    return most_at_once_;
  }

 private:
  const absl::Duration per_page_;
  mutable std::mutex mu_;
  std::set<std::thread::id> threads_;
  int running_ = 0;
  int most_at_once_ = 0;
  int delivered_ = 0;
};

// Runs a dispatcher of this process on `url` through `notifier` until it delivered `count` pages
// (20 s at most), then stops it.
void DispatchUntilDelivered(const std::string& url, TimedNotifier& notifier, int count,
                            escalation::NotificationOutboxOptions options = {}) {
  Database db(DatabaseOptions{.url = url, .schema = "escalation"});
  StopSignal stopping;
  escalation::NotificationOutbox outbox(db, notifier, nullptr, options);
  outbox.Start(stopping);
  for (int i = 0; i < 800 && notifier.delivered() < count; ++i) {
    std::this_thread::sleep_for(25ms);
  }
  stopping.Notify();
}

// A backlog of 200 pages goes out a transaction at a time on the dispatcher's own thread when the
// receiver answers at once (the database is the slower part: more connections would only take
// turns on it), and through several connections at once when the receiver takes 10 ms a page.
// (Each worker of a fan-out delivers 100 at most, so 200 cannot all go through one.)
TEST_F(EscalationServiceTest, ABacklogGoesThroughSeveralConnectionsOnlyWhenTheReceiverIsSlower) {
  service_->Signal(SIGKILL);  // Its own dispatcher out of the way.
  service_->WaitExit(5s);
  const std::vector<std::pair<absl::Duration, bool>> receivers = {{absl::ZeroDuration(), false},
                                                                  {absl::Milliseconds(10), true}};
  for (const auto& [per_page, several] : receivers) {
    SCOPED_TRACE(absl::FormatDuration(per_page));
    OwePages(200);
    TimedNotifier notifier(per_page);
    DispatchUntilDelivered(db_->UrlFor("escalation"), notifier, 200);
    EXPECT_EQ(notifier.delivered(), 200);
    if (several) {
      EXPECT_GE(notifier.most_at_once(), 2);
    } else {
      EXPECT_EQ(notifier.threads(), 1u);
      EXPECT_EQ(notifier.most_at_once(), 1);
    }
  }
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications WHERE delivered_at IS NULL"), 0);
}

// A pass of the dispatcher's own thread ends after 1,024 pages, and the next follows of itself:
// 2,500 pages owed and nothing committed meanwhile (no wake) all go out, though the dispatcher
// otherwise looks only every hour here.
TEST_F(EscalationServiceTest, ALongBacklogGoesOutPassAfterPassWithoutAWake) {
  service_->Signal(SIGKILL);  // Its own dispatcher out of the way.
  service_->WaitExit(5s);
  OwePages(2500);
  TimedNotifier notifier(absl::ZeroDuration());
  DispatchUntilDelivered(db_->UrlFor("escalation"), notifier, 2500,
                         {.poll = absl::Hours(1), .min_gap = absl::ZeroDuration()});
  EXPECT_EQ(notifier.delivered(), 2500);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications WHERE delivered_at IS NULL"), 0);
}

TEST_F(EscalationServiceTest, CriticalSafetyConcernGoesToClinicalOnCallWithin15Minutes) {
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-1"));
  EXPECT_EQ(c.state(), v1::CONCERN_STATE_OPEN);
  EXPECT_EQ(c.current_level(), 0);
  EXPECT_EQ(c.current_target().kind(), v1::TARGET_KIND_CLINICAL_ON_CALL);
  EXPECT_EQ(c.current_target().target_id(), "clinical-on-call");
  EXPECT_EQ(c.source(), v1::CONCERN_SOURCE_MANUAL);
  EXPECT_EQ(c.raised_by(), "peer-1");
  EXPECT_EQ(c.policy_version(), 1);
  EXPECT_EQ(google::protobuf::util::TimeUtil::DurationToSeconds(c.ack_deadline() - c.opened_at()),
            15 * 60);
  // Opened, routed, and routine engagement stopped: one transaction, in this order.
  auto events = db_->AdminQuery("SELECT event_type FROM escalation.outbox WHERE aggregate_id = '" +
                                c.concern_id() + "' ORDER BY id");
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0][0].as<std::string>(), "peerpath.escalation.v1.ConcernOpenedEvent");
  EXPECT_EQ(events[1][0].as<std::string>(), "peerpath.escalation.v1.ConcernRoutedEvent");
  EXPECT_EQ(events[2][0].as<std::string>(), "peerpath.escalation.v1.RoutineEngagementStoppedEvent");
  // Free text never leaves the service's concern row.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE position('said they had a plan' "
                  "in encode(payload, 'escape')) > 0"),
            0);
  EXPECT_EQ(service_->Log().find("said they had a plan"), std::string::npos);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.audit_log WHERE action = "
                  "'peerpath.escalation.v1.EscalationService.RaiseConcern'"),
            1);
  // Paged once, with the opening, and the concern says so: the sweeper (every second here) never
  // pages the target again for it.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE id = '" + c.concern_id() +
                  "' AND notified_at IS NOT NULL"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications WHERE concern_id = '" +
                  c.concern_id() + "'"),
            1);
}

// The time helpers every concern statement calls (migrations 0002, 0009): exact to the
// microsecond both ways, 0 and NULL for each other, and inlined by the planner (a call of their
// own per row cost some 7% of the database's time under RaiseConcern).
TEST_F(EscalationServiceTest, TimeHelpersAreExactAndInlined) {
  EXPECT_EQ(
      db_->AdminQuery("SELECT escalation.us_from_ts(escalation.ts_from_us(1795509715785631))")[0][0]
          .as<int64_t>(),
      1795509715785631);
  EXPECT_EQ(db_->AdminQuery("SELECT escalation.us_from_ts(NULL)")[0][0].as<int64_t>(), 0);
  EXPECT_TRUE(db_->AdminQuery("SELECT escalation.ts_from_us(0)")[0][0].is_null());
  EXPECT_EQ(db_->AdminQuery("SELECT escalation.ts_from_us(1) = timestamptz '1970-01-01 "
                            "00:00:00.000001+00'")[0][0]
                .as<bool>(),
            true);
  for (const char* call : {"escalation.us_from_ts(now())", "escalation.ts_from_us(42)"}) {
    pqxx::connection admin(AdminUrl(db_->name()));
    pqxx::nontransaction tx(admin);
    const std::string plan = Explain(tx, std::string("(VERBOSE) SELECT ") + call);
    EXPECT_EQ(plan.find("_from_"), std::string::npos) << plan;
  }
}

// Migration 0010 moved concerns' single-column rules into domains: the database still refuses
// what they refuse, whoever writes.
TEST_F(EscalationServiceTest, TheDatabaseStillRefusesWhatTheConcernRulesRefuse) {
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT, "d-1"));
  for (const std::string set :
       {"participant_id = ''", "category = 'other'", "severity = 'severe'", "source = 'rumour'",
        "raised_by = ''", "raised_by_role = ''", "status = 'closed'", "current_level = 21",
        "target_kind = 'peer_supporter'", "target_id = ''", "breach_count = -1",
        "policy_version = 0"}) {
    EXPECT_THROW(db_->AdminQuery("UPDATE escalation.concerns SET " + set + " WHERE id = '" +
                                 c.concern_id() + "'"),
                 pqxx::check_violation)
        << set;
  }
  db_->AdminQuery(
      "UPDATE escalation.concerns SET severity = 'critical', current_level = 1 "
      "WHERE id = '" +
      c.concern_id() + "'");
}

TEST_F(EscalationServiceTest, RetryWithSameKeyReturnsTheSameConcernAndStoresOnce) {
  const auto request = Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-2");
  const v1::Concern first = MustRaise(request);
  const v1::Concern second = MustRaise(request);
  EXPECT_EQ(first.concern_id(), second.concern_id());
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 1);
  auto changed = request;
  changed.set_severity(CONCERN_SEVERITY_CRITICAL);
  v1::RaiseConcernResponse response;
  grpc::Status status =
      stub_->RaiseConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), changed, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

// Concurrent RaiseConcern calls of one agency share a write transaction (group commit), and each
// is answered as it would be alone: raised, replayed, refused by relationship, key reused for
// another request, enrollment of another participant. A refused call writes nothing, its key
// stays free, and it fails no other call of its transaction. Two calls hold the agency's two
// write transactions on a table lock while the others queue behind them.
TEST_F(EscalationServiceTest, CallsRaisedTogetherShareATransactionAndEachIsAnsweredAsAlone) {
  auto raise = [&](const v1::RaiseConcernRequest& request, const std::string& subject,
                   const std::string& role, v1::RaiseConcernResponse* response) {
    return stub_->RaiseConcern(As("agency-a", {role}, subject).get(), request, response);
  };
  v1::RaiseConcernResponse used;
  ASSERT_TRUE(raise(Raise(common::v1::CONCERN_CATEGORY_DISENGAGEMENT,
                          common::v1::CONCERN_SEVERITY_ROUTINE, "used-1"),
                    "dr-1", "clinician", &used)
                  .ok());
  const std::string other_enrollment = "5b0c6a52-4a53-4c1e-9a43-2d7f4b0e6a11";
  db_->AdminQuery(
      "INSERT INTO escalation.enrollments (agency_id, enrollment_id, participant_id) VALUES "
      "('agency-a', '" +
      other_enrollment + "', 'client-99')");

  struct Call {
    v1::RaiseConcernRequest request;
    std::string subject, role;
    grpc::StatusCode expected;
  };
  auto request = [&](const std::string& key, const std::string& participant = "client-42") {
    v1::RaiseConcernRequest r = Raise(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING,
                                      common::v1::CONCERN_SEVERITY_URGENT, key);
    r.set_participant_id(participant);
    return r;
  };
  v1::RaiseConcernRequest wrong_enrollment = request("mixed-8");
  wrong_enrollment.set_enrollment_id(other_enrollment);
  const std::vector<Call> calls = {
      {request("lead-1"), "dr-1", "clinician", grpc::OK},
      {request("lead-2"), "dr-2", "clinician", grpc::OK},
      {request("mixed-1"), "peer-1", "peer_supporter", grpc::OK},
      {request("mixed-2", "client-77"), "dr-1", "clinician", grpc::OK},
      {request("mixed-3"), "peer-9", "peer_supporter", grpc::PERMISSION_DENIED},
      {request("mixed-4"), "sup-1", "supervisor", grpc::OK},
      {request("mixed-5"), "sup-9", "supervisor", grpc::PERMISSION_DENIED},
      {request("mixed-1"), "peer-1", "peer_supporter", grpc::OK},  // The retry of mixed-1.
      {request("used-1"), "dr-1", "clinician", grpc::FAILED_PRECONDITION},
      {wrong_enrollment, "dr-1", "clinician", grpc::NOT_FOUND},
  };

  std::vector<RaiseSpec> specs;
  for (const Call& c : calls) specs.push_back({c.request, c.subject, c.role});
  std::vector<v1::RaiseConcernResponse> responses;
  std::vector<grpc::Status> statuses;
  ASSERT_NO_FATAL_FAILURE(RaiseTogether(specs, statuses, responses));

  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(statuses[i].error_code(), calls[i].expected)
        << calls[i].request.idempotency_key() << ": " << statuses[i].error_message();
  }
  EXPECT_EQ(responses[7].concern().concern_id(), responses[2].concern().concern_id());
  EXPECT_EQ(responses[7].SerializeAsString(), responses[2].SerializeAsString());
  // The queued calls shared the next transaction, all but one of the pair sent under one key
  // (never two of a key in one transaction): that one goes in a transaction of its own, either
  // before or after, and the pair's concern was raised by whichever claimed the key first.
  const std::string raised_together = "('" + responses[3].concern().concern_id() + "', '" +
                                      responses[5].concern().concern_id() + "')";
  EXPECT_EQ(Count("SELECT count(DISTINCT xmin::text) FROM escalation.concerns WHERE id IN " +
                  raised_together),
            1);
  // Each table's rows of the transaction go in one statement: every row is its own concern's.
  for (const size_t i : {size_t{3}, size_t{5}}) {
    const std::string id = responses[i].concern().concern_id();
    const auto concern = db_->AdminQuery(
        "SELECT participant_id, raised_by, raised_by_role FROM escalation.concerns WHERE id = '" +
        id + "'");
    ASSERT_EQ(concern.size(), 1u) << id;
    EXPECT_EQ(concern[0][0].as<std::string>(), calls[i].request.participant_id());
    EXPECT_EQ(concern[0][1].as<std::string>(), calls[i].subject);
    EXPECT_EQ(concern[0][2].as<std::string>(), calls[i].role);
    const auto transitions = db_->AdminQuery(
        "SELECT kind, actor FROM escalation.concern_transitions WHERE concern_id = '" + id +
        "' ORDER BY seq");
    ASSERT_EQ(transitions.size(), 2u) << id;
    EXPECT_EQ(transitions[0][0].as<std::string>(), "opened");
    EXPECT_EQ(transitions[0][1].as<std::string>(), calls[i].subject);
    EXPECT_EQ(transitions[1][0].as<std::string>(), "routed");
    EXPECT_EQ(transitions[1][1].as<std::string>(), "system:routing");
    const auto events = db_->AdminQuery(
        "SELECT event_type FROM escalation.outbox WHERE aggregate_id = '" + id + "' ORDER BY id");
    ASSERT_EQ(events.size(), 2u) << id;
    EXPECT_EQ(events[0][0].as<std::string>(), "peerpath.escalation.v1.ConcernOpenedEvent");
    EXPECT_EQ(events[1][0].as<std::string>(), "peerpath.escalation.v1.ConcernRoutedEvent");
    EXPECT_EQ(Count("SELECT count(*) FROM escalation.audit_log WHERE object_id = '" + id +
                    "' AND actor = '" + calls[i].subject + "' AND participant_id = '" +
                    calls[i].request.participant_id() + "' AND decision = 'allowed'"),
              1);
    EXPECT_EQ(Count("SELECT count(*) FROM escalation.watch_feed WHERE position(convert_to('" + id +
                    "', 'UTF8') IN concern) > 0"),
              1);
    EXPECT_EQ(
        Count("SELECT count(*) FROM escalation.notifications WHERE concern_id = '" + id + "'"), 1);
    // Its stored response is the one its caller got (a retry would get it).
    const auto stored = db_->AdminQuery(
        "SELECT encode(response, 'base64') FROM escalation.idempotency_keys WHERE "
        "idempotency_key = '" +
        calls[i].request.idempotency_key() + "'");
    ASSERT_EQ(stored.size(), 1u);
    std::string bytes;
    std::string base64 = stored[0][0].as<std::string>();
    base64.erase(std::remove(base64.begin(), base64.end(), '\n'), base64.end());
    ASSERT_TRUE(absl::Base64Unescape(base64, &bytes));
    v1::RaiseConcernResponse stored_response;
    ASSERT_TRUE(stored_response.ParseFromString(bytes));
    EXPECT_EQ(stored_response.concern().concern_id(), id);
    EXPECT_EQ(stored_response.SerializeAsString(), responses[i].SerializeAsString());
  }
  // Each raised concern whole, once; nothing of the refused ones.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 6);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions"), 12);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE event_type = "
                  "'peerpath.escalation.v1.ConcernOpenedEvent'"),
            6);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.watch_feed"), 6);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE id IN " + raised_together +
                  " AND notified_at IS NOT NULL"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.audit_log WHERE action LIKE '%RaiseConcern' "
                  "AND decision = 'allowed'"),
            6);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.audit_log WHERE action LIKE '%RaiseConcern' "
                  "AND decision = 'denied' AND participant_id = 'client-42'"),
            2);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.idempotency_keys WHERE idempotency_key IN "
                  "('mixed-3', 'mixed-5', 'mixed-8')"),
            0);
  // A refused call's key is free: raised with it now, by whom may.
  v1::RaiseConcernResponse after;
  EXPECT_TRUE(raise(request("mixed-3"), "dr-1", "clinician", &after).ok());
  // The key used before still answers its first call.
  v1::RaiseConcernResponse replayed;
  ASSERT_TRUE(raise(Raise(common::v1::CONCERN_CATEGORY_DISENGAGEMENT,
                          common::v1::CONCERN_SEVERITY_ROUTINE, "used-1"),
                    "dr-1", "clinician", &replayed)
                  .ok());
  EXPECT_EQ(replayed.concern().concern_id(), used.concern().concern_id());
}

// A transaction the database refuses for one of its calls is run again a call at a time: that
// call fails alone (its key stays free), and the calls that shared its transaction are raised.
TEST_F(EscalationServiceTest, ACallTheDatabaseRefusesFailsNoOtherCallOfItsTransaction) {
  db_->AdminQuery(
      "CREATE FUNCTION escalation.refuse_test_participant() RETURNS trigger LANGUAGE plpgsql AS "
      "$$ BEGIN IF NEW.participant_id = 'client-refused' THEN RAISE EXCEPTION 'refused by the "
      "test'; END IF; RETURN NEW; END $$;"
      "CREATE TRIGGER refuse_test_participant BEFORE INSERT ON escalation.concerns FOR EACH ROW "
      "EXECUTE FUNCTION escalation.refuse_test_participant()");
  auto request = [&](const std::string& key, const std::string& participant) {
    v1::RaiseConcernRequest r = Raise(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING,
                                      common::v1::CONCERN_SEVERITY_URGENT, key);
    r.set_participant_id(participant);
    return r;
  };
  const std::vector<RaiseSpec> calls = {
      {request("lead-1", "client-42"), "dr-1", "clinician"},
      {request("lead-2", "client-42"), "dr-2", "clinician"},
      {request("shared-1", "client-42"), "dr-1", "clinician"},
      {request("shared-2", "client-refused"), "dr-1", "clinician"},
      {request("shared-3", "client-77"), "dr-1", "clinician"},
  };
  std::vector<grpc::Status> statuses;
  std::vector<v1::RaiseConcernResponse> responses;
  ASSERT_NO_FATAL_FAILURE(RaiseTogether(calls, statuses, responses));
  for (size_t i : {0, 1, 2, 4}) {
    EXPECT_TRUE(statuses[i].ok()) << calls[i].request.idempotency_key() << ": "
                                  << statuses[i].error_message();
  }
  EXPECT_EQ(statuses[3].error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 4);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE participant_id = "
                  "'client-refused'"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.idempotency_keys WHERE idempotency_key = "
                  "'shared-2'"),
            0);
}

TEST_F(EscalationServiceTest, AGroupCommitSettingOutOfRangeIsRefusedAtStart) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"escalation_max_raise_batch", {"0", "257", "many"}},
      {"escalation_raise_writes", {"0", "65", "-1", "few"}},
  };
  for (const auto& [flag, values] : cases) {
    for (const std::string& bad : values) {
      ServiceProcess refused("escalation", db_->UrlFor("escalation"), {"--" + flag + "=" + bad});
      EXPECT_EQ(refused.WaitExit(30s), std::optional<int>(2)) << refused.Log();
      EXPECT_NE(refused.Log().find("--" + flag + " '" + bad + "'"), std::string::npos)
          << refused.Log();
    }
  }
}

// --escalation_raise_writes bounds the RaiseConcern write transactions of all agencies together:
// calls of more agencies than that, whose key claims wait on a table lock, hold that many
// transactions and the rest wait in the service (the default 3, then 1). Once the lock goes,
// every call is raised.
TEST_F(EscalationServiceTest, RaiseWritesBoundTheTransactionsOfAllAgenciesTogether) {
  const std::vector<std::tuple<std::string, int, int>> cases = {
      {"", 3, 5},
      {"--escalation_raise_writes=1", 1, 3},
  };
  for (const auto& [flag, writes, agencies] : cases) {
    SCOPED_TRACE(flag.empty() ? "default" : flag);
    std::vector<std::string> args = {"--deadline_sweep_interval=1h"};
    if (!flag.empty()) args.push_back(flag);
    service_ = Start(args);
    auto lock = db_->Admin();
    pqxx::work held(*lock);
    held.exec0("LOCK TABLE escalation.idempotency_keys IN SHARE MODE");
    std::vector<grpc::Status> statuses(agencies);
    std::vector<v1::RaiseConcernResponse> responses(agencies);
    std::vector<std::thread> threads;
    absl::Cleanup join = [&] {
      held.abort();
      for (auto& t : threads) t.join();
    };
    for (int i = 0; i < agencies; ++i) {
      threads.emplace_back([&, i] {
        statuses[i] =
            stub_->RaiseConcern(As(absl::StrCat("writes-agency-", i), {"clinician"}, "dr-1").get(),
                                Raise(CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT,
                                      absl::StrCat("writes-", writes, "-", i)),
                                &responses[i]);
      });
    }
    for (int tries = 0;
         tries < 400 && (RaisesInFlight() < agencies || RaisesWaitingOnALock() < writes); ++tries) {
      std::this_thread::sleep_for(25ms);
    }
    ASSERT_EQ(RaisesInFlight(), agencies);
    // A call past the bound would reach the lock within this time.
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(RaisesWaitingOnALock(), writes);
    std::move(join).Invoke();
    for (int i = 0; i < agencies; ++i) {
      EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
      EXPECT_EQ(Count(absl::StrCat("SELECT count(*) FROM escalation.concerns WHERE agency_id = "
                                   "'writes-agency-",
                                   i, "' AND id = '", responses[i].concern().concern_id(), "'")),
                1);
    }
  }
}

TEST_F(EscalationServiceTest, BadRaiseNamesEveryField) {
  v1::RaiseConcernRequest request;
  request.set_enrollment_id("not-a-uuid");
  request.set_description(std::string(1001, 'x'));
  v1::RaiseConcernResponse response;
  grpc::Status status =
      stub_->RaiseConcern(As("agency-a", {"clinician"}, "dr-1").get(), request, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  for (const char* field : {"participant_id", "category", "severity", "enrollment_id",
                            "description", "idempotency_key"}) {
    EXPECT_NE(status.error_details().find(field), std::string::npos) << field;
  }
}

TEST_F(EscalationServiceTest, RolesWithoutConcernWorkAreRefused) {
  v1::RaiseConcernResponse response;
  for (const char* role : {"program_admin", "operations", "integration"}) {
    grpc::Status status = stub_->RaiseConcern(
        As("agency-a", {role}, "x-1").get(),
        Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-3"), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << role;
  }
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-4"));
  // A peer supporter never acknowledges.
  EXPECT_EQ(Acknowledge(c.concern_id(), "peer-1", "peer_supporter").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // A clinician may see... only what is routed to them: a case-management concern is hidden.
  EXPECT_EQ(Acknowledge(c.concern_id(), "dr-1", "clinician").error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(EscalationServiceTest, OtherAgencyNeitherSeesNorActs) {
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-5"));
  v1::GetConcernRequest get;
  get.set_concern_id(c.concern_id());
  v1::GetConcernResponse response;
  EXPECT_EQ(
      stub_->GetConcern(As("agency-b", {"clinician"}, "dr-b").get(), get, &response).error_code(),
      grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Acknowledge(c.concern_id(), "dr-b", "clinician", "agency-b").error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::ListConcernsResponse list;
  ASSERT_TRUE(stub_
                  ->ListConcerns(As("agency-b", {"clinician"}, "dr-b").get(),
                                 v1::ListConcernsRequest(), &list)
                  .ok());
  EXPECT_EQ(list.concerns_size(), 0);
  // Nor do the same subjects in another agency, whose lists are gathered from their side: the
  // concern's raiser (peer-1) and peer-1's supervisor (sup-1).
  for (const auto& [role, subject] : std::vector<std::pair<std::string, std::string>>{
           {"peer_supporter", "peer-1"}, {"supervisor", "sup-1"}}) {
    ASSERT_TRUE(
        stub_->ListConcerns(As("agency-b", {role}, subject).get(), v1::ListConcernsRequest(), &list)
            .ok());
    EXPECT_EQ(list.concerns_size(), 0) << subject;
  }
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE status = 'open'"), 1);
  EXPECT_GE(Count("SELECT count(*) FROM escalation.audit_log WHERE agency_id = 'agency-b' AND "
                  "decision = 'denied'"),
            2);
}

TEST_F(EscalationServiceTest, RaiserSeesStatusTargetSeesEverything) {
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-6"));
  v1::ResolveConcernRequest resolve;
  resolve.set_concern_id(c.concern_id());
  resolve.set_outcome(v1::CONCERN_OUTCOME_PARTICIPANT_SAFE);
  v1::ResolveConcernResponse resolved;
  ASSERT_TRUE(
      stub_->ResolveConcern(As("agency-a", {"clinician"}, "dr-1").get(), resolve, &resolved).ok());

  v1::GetConcernRequest get;
  get.set_concern_id(c.concern_id());
  v1::GetConcernResponse as_raiser;
  ASSERT_TRUE(
      stub_->GetConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), get, &as_raiser).ok());
  EXPECT_EQ(as_raiser.concern().view(), v1::CONCERN_VIEW_STATUS);
  EXPECT_EQ(as_raiser.concern().state(), v1::CONCERN_STATE_RESOLVED);
  EXPECT_EQ(as_raiser.concern().outcome(), v1::CONCERN_OUTCOME_UNSPECIFIED);
  EXPECT_TRUE(as_raiser.concern().resolved_by().empty());
  EXPECT_EQ(as_raiser.concern().transitions_size(), 0);

  v1::GetConcernResponse as_target;
  ASSERT_TRUE(stub_->GetConcern(As("agency-a", {"clinician"}, "dr-2").get(), get, &as_target).ok());
  EXPECT_EQ(as_target.concern().view(), v1::CONCERN_VIEW_FULL);
  EXPECT_EQ(as_target.concern().outcome(), v1::CONCERN_OUTCOME_PARTICIPANT_SAFE);
  EXPECT_EQ(as_target.concern().resolved_by(), "dr-1");
  // Resolving an OPEN concern acknowledges it first: opened, routed, acknowledged, resolved.
  ASSERT_EQ(as_target.concern().transitions_size(), 4);
  EXPECT_EQ(as_target.concern().transitions(2).kind(), v1::TRANSITION_KIND_ACKNOWLEDGED);
  EXPECT_EQ(as_target.concern().transitions(2).actor(), "dr-1");
  EXPECT_EQ(as_target.concern().transitions(3).kind(), v1::TRANSITION_KIND_RESOLVED);
  EXPECT_EQ(as_target.concern().transitions(3).to_state(), v1::CONCERN_STATE_RESOLVED);

  // A clinician of the on-call team who also works as a peer supporter acts for the target too.
  v1::GetConcernResponse as_dual;
  ASSERT_TRUE(
      stub_
          ->GetConcern(As("agency-a", {"clinician", "peer_supporter"}, "dr-3").get(), get, &as_dual)
          .ok());
  EXPECT_EQ(as_dual.concern().view(), v1::CONCERN_VIEW_FULL);
  EXPECT_EQ(as_dual.concern().outcome(), v1::CONCERN_OUTCOME_PARTICIPANT_SAFE);
  EXPECT_EQ(as_dual.concern().transitions_size(), 4);

  // Another peer supporter and a case manager cannot see it at all.
  v1::GetConcernResponse hidden;
  EXPECT_EQ(stub_->GetConcern(As("agency-a", {"peer_supporter"}, "peer-2").get(), get, &hidden)
                .error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(
      stub_->GetConcern(As("agency-a", {"case_manager"}, "cm-1").get(), get, &hidden).error_code(),
      grpc::StatusCode::NOT_FOUND);
  // A retry of the resolution is safe; another outcome is refused.
  ASSERT_TRUE(
      stub_->ResolveConcern(As("agency-a", {"clinician"}, "dr-1").get(), resolve, &resolved).ok());
  resolve.set_outcome(v1::CONCERN_OUTCOME_REFERRED);
  EXPECT_EQ(stub_->ResolveConcern(As("agency-a", {"clinician"}, "dr-1").get(), resolve, &resolved)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(EscalationServiceTest, ListShowsEachCallerWhatTheyMaySee) {
  MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-7"));
  MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-8"));
  MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-9"), "peer-2");
  auto list = [&](const std::string& role, const std::string& subject,
                  v1::ListConcernsRequest request = {}) {
    v1::ListConcernsResponse response;
    grpc::Status status =
        stub_->ListConcerns(As("agency-a", {role}, subject).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  };
  EXPECT_EQ(list("clinician", "dr-1").concerns_size(), 1);
  EXPECT_EQ(list("case_manager", "cm-1").concerns_size(), 2);
  EXPECT_EQ(list("peer_supporter", "peer-1").concerns_size(), 2);
  EXPECT_EQ(list("peer_supporter", "peer-2").concerns_size(), 1);
  EXPECT_EQ(list("peer_supporter", "peer-1").concerns(0).view(), v1::CONCERN_VIEW_STATUS);
  // Paging: one at a time, newest first, then the token ends.
  v1::ListConcernsRequest paged;
  paged.set_page_size(1);
  auto first = list("case_manager", "cm-1", paged);
  ASSERT_EQ(first.concerns_size(), 1);
  ASSERT_FALSE(first.next_page_token().empty());
  paged.set_page_token(first.next_page_token());
  auto second = list("case_manager", "cm-1", paged);
  ASSERT_EQ(second.concerns_size(), 1);
  EXPECT_NE(first.concerns(0).concern_id(), second.concerns(0).concern_id());
  EXPECT_TRUE(second.next_page_token().empty());
  // A token used with other filters, and a negative page size, are refused.
  paged.add_severities(CONCERN_SEVERITY_CRITICAL);
  paged.set_page_size(-1);
  v1::ListConcernsResponse response;
  grpc::Status status =
      stub_->ListConcerns(As("agency-a", {"case_manager"}, "cm-1").get(), paged, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_details().find("page_token"), std::string::npos);
  EXPECT_NE(status.error_details().find("page_size"), std::string::npos);
}

TEST_F(EscalationServiceTest, TwoCliniciansAcknowledgeAtOnceOneWinsTheOtherIsTold) {
  for (int round = 0; round < 5; ++round) {
    const v1::Concern c = MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY,
                                          CONCERN_SEVERITY_CRITICAL, absl::StrCat("race-", round)));
    std::atomic<bool> go{false};
    grpc::Status results[2];
    std::thread clinicians[2];
    for (int i = 0; i < 2; ++i) {
      clinicians[i] = std::thread([&, i] {
        while (!go) std::this_thread::yield();
        results[i] = Acknowledge(c.concern_id(), absl::StrCat("dr-", i));
      });
    }
    go = true;
    for (auto& t : clinicians) t.join();
    const int winners = results[0].ok() + results[1].ok();
    ASSERT_EQ(winners, 1) << results[0].error_message() << " / " << results[1].error_message();
    const grpc::Status& loser = results[0].ok() ? results[1] : results[0];
    const std::string winner = results[0].ok() ? "dr-0" : "dr-1";
    EXPECT_EQ(loser.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(loser.error_message().find("concern already acknowledged by " + winner),
              std::string::npos)
        << loser.error_message();
    EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions WHERE kind = "
                    "'acknowledged' AND concern_id = '" +
                    c.concern_id() + "'"),
              1);
    // The winner's retry is safe.
    v1::AcknowledgeConcernResponse again;
    ASSERT_TRUE(Acknowledge(c.concern_id(), winner, "clinician", "agency-a", &again).ok());
    EXPECT_EQ(again.concern().acknowledged_by(), winner);
    EXPECT_TRUE(again.concern().has_resolution_deadline());
  }
}

TEST_F(EscalationServiceTest, PeerSupporterCannotCancelSafetyConcernButCanCancelOwnOpenOne) {
  const v1::Concern safety =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-10"));
  v1::CancelConcernRequest cancel;
  cancel.set_concern_id(safety.concern_id());
  cancel.set_reason("raised for the wrong participant");
  v1::CancelConcernResponse response;
  EXPECT_EQ(
      stub_->CancelConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), cancel, &response)
          .error_code(),
      grpc::StatusCode::FAILED_PRECONDITION);
  const v1::Concern routine =
      MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-11"));
  cancel.set_concern_id(routine.concern_id());
  cancel.set_reason("   ");
  EXPECT_EQ(
      stub_->CancelConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), cancel, &response)
          .error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  cancel.set_reason("duplicate of another concern");
  ASSERT_TRUE(
      stub_->CancelConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), cancel, &response)
          .ok());
  EXPECT_EQ(response.concern().state(), v1::CONCERN_STATE_CANCELLED);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE id = '" + routine.concern_id() +
                  "' AND next_deadline IS NULL"),
            1);
  // The reason stays in the service.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE position('duplicate of' in "
                  "encode(payload, 'escape')) > 0"),
            0);
  // Acknowledging a cancelled concern is refused with the reason why.
  EXPECT_EQ(Acknowledge(routine.concern_id(), "cm-1", "case_manager").error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// A two-level rule for critical clinical worsening: on-call, then the case-management team.
v1::UpdateRoutingPolicyRequest TwoLevelPolicy(int base_version, const std::string& key) {
  v1::UpdateRoutingPolicyRequest request;
  request.set_base_version(base_version);
  request.set_idempotency_key(key);
  request.mutable_update_mask()->add_paths("rules");
  v1::RoutingRule* rule = request.mutable_policy()->add_rules();
  rule->set_category(CONCERN_CATEGORY_CLINICAL_WORSENING);
  rule->set_severity(CONCERN_SEVERITY_CRITICAL);
  rule->mutable_target()->set_kind(v1::TARGET_KIND_CLINICAL_ON_CALL);
  rule->mutable_target()->set_target_id("night-team");
  rule->mutable_ack_deadline()->mutable_duration()->set_seconds(600);
  rule->mutable_resolution_window()->mutable_duration()->set_seconds(3600);
  v1::EscalationStep* step = rule->add_escalation_chain();
  step->mutable_target()->set_kind(v1::TARGET_KIND_CASE_MANAGEMENT_TEAM);
  step->mutable_target()->set_target_id("cm-team");
  step->mutable_ack_deadline()->mutable_duration()->set_seconds(1800);
  return request;
}

TEST_F(EscalationServiceTest, PolicyChangeAppliesToNewConcernsOnly) {
  const v1::Concern before =
      MustRaise(Raise(CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_CRITICAL, "k-12"));
  v1::UpdateRoutingPolicyResponse updated;
  ASSERT_TRUE(stub_
                  ->UpdateRoutingPolicy(As("agency-a", {"program_admin"}, "admin-1").get(),
                                        TwoLevelPolicy(1, "p-1"), &updated)
                  .ok());
  EXPECT_EQ(updated.policy().version(), 2);
  EXPECT_EQ(updated.policy().rules_size(), 21);
  const v1::Concern after =
      MustRaise(Raise(CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_CRITICAL, "k-13"));
  EXPECT_EQ(after.policy_version(), 2);
  EXPECT_EQ(after.current_target().target_id(), "night-team");
  EXPECT_EQ(
      google::protobuf::util::TimeUtil::DurationToSeconds(after.ack_deadline() - after.opened_at()),
      600);
  v1::GetConcernRequest get;
  get.set_concern_id(before.concern_id());
  v1::GetConcernResponse old;
  ASSERT_TRUE(stub_->GetConcern(As("agency-a", {"clinician"}, "dr-1").get(), get, &old).ok());
  EXPECT_EQ(old.concern().policy_version(), 1);
  EXPECT_EQ(old.concern().ack_deadline(), before.ack_deadline());
  // Versions are kept; a stale base is ABORTED; other roles and unsafe rules are refused.
  v1::GetRoutingPolicyRequest get_policy;
  get_policy.set_version(1);
  v1::GetRoutingPolicyResponse v1_policy;
  ASSERT_TRUE(stub_
                  ->GetRoutingPolicy(As("agency-a", {"peer_supporter"}, "peer-1").get(), get_policy,
                                     &v1_policy)
                  .ok());
  EXPECT_EQ(v1_policy.policy().created_by(), "system:default");
  EXPECT_EQ(stub_
                ->UpdateRoutingPolicy(As("agency-a", {"program_admin"}, "admin-1").get(),
                                      TwoLevelPolicy(1, "p-2"), &updated)
                .error_code(),
            grpc::StatusCode::ABORTED);
  EXPECT_EQ(stub_
                ->UpdateRoutingPolicy(As("agency-a", {"clinician"}, "dr-1").get(),
                                      TwoLevelPolicy(2, "p-3"), &updated)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  auto unsafe = TwoLevelPolicy(2, "p-4");
  unsafe.mutable_policy()->mutable_rules(0)->set_category(CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  unsafe.mutable_policy()->mutable_rules(0)->mutable_target()->set_kind(
      v1::TARGET_KIND_CASE_MANAGEMENT_TEAM);
  grpc::Status status = stub_->UpdateRoutingPolicy(
      As("agency-a", {"program_admin"}, "admin-1").get(), unsafe, &updated);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("immediate-safety"), std::string::npos);
  auto bad = TwoLevelPolicy(2, "p-5");
  bad.mutable_policy()->mutable_rules(0)->mutable_target()->clear_target_id();
  bad.mutable_policy()->set_time_zone("Mars/Olympus");
  bad.mutable_update_mask()->add_paths("time_zone");
  status =
      stub_->UpdateRoutingPolicy(As("agency-a", {"program_admin"}, "admin-1").get(), bad, &updated);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_details().find("policy.rules[0].target.target_id"), std::string::npos);
  EXPECT_NE(status.error_details().find("policy.time_zone"), std::string::npos);
}

// `count` critical concerns under TwoLevelPolicy (the on-call clinician, then the case-management
// team), every acknowledgement deadline passed (as if the service was down for two hours).
void EscalationServiceTest::RaiseCriticalConcernsTwoHoursOverdue(int count) {
  v1::UpdateRoutingPolicyResponse updated;
  ASSERT_TRUE(stub_
                  ->UpdateRoutingPolicy(As("agency-a", {"program_admin"}, "admin-1").get(),
                                        TwoLevelPolicy(1, "p-1"), &updated)
                  .ok());
  for (int i = 0; i < count; ++i) {
    MustRaise(Raise(CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_CRITICAL,
                    absl::StrCat("due-", i)),
              "dr-raiser", "clinician");
  }
  MoveEveryConcernBack("2 hours");
}

// Waits (up to 30 s) for the running sweeper(s), then: each of `count` concerns escalated exactly
// once, to the case-management team, with one breach, transition and event each.
void EscalationServiceTest::ExpectEachEscalatedOnceToTheCaseManagementTeam(int count) {
  for (int wait = 0; wait < 300; ++wait) {
    if (Count("SELECT count(*) FROM escalation.concerns WHERE current_level = 0") == 0) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE current_level = 1 AND "
                  "status = 'open' AND target_id = 'cm-team' AND breach_count = 1"),
            count);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.escalation_breaches WHERE deadline_kind = "
                  "'acknowledgement' AND level = 0 AND escalated_to_id = 'cm-team'"),
            count);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions WHERE kind = 'escalated'"),
            count);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE event_type = "
                  "'peerpath.escalation.v1.ConcernEscalatedEvent'"),
            count);
  // The new level's deadline runs from the escalation: 30 minutes, in the future.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE next_deadline > now() + "
                  "interval '25 minutes'"),
            count);
}

TEST_F(EscalationServiceTest, MissedDeadlinesEscalateExactlyOnceAcrossSigkillRestarts) {
  constexpr int kConcerns = 300;
  RaiseCriticalConcernsTwoHoursOverdue(kConcerns);
  service_->Signal(SIGKILL);
  service_->WaitExit(5s);
  // A sweeper that runs all the time, killed in the middle of its work, twice.
  for (int kill = 0; kill < 2; ++kill) {
    auto sweeping = Start({"--deadline_sweep_interval=10ms"});
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + 100 * kill));
    sweeping->Signal(SIGKILL);
    sweeping->WaitExit(5s);
    // How far the killed sweeper got (for the record; any count from 0 to all is valid).
    RecordProperty(absl::StrCat("escalated_after_kill_", kill),
                   Count("SELECT count(*) FROM escalation.escalation_breaches"));
  }
  service_ = Start({"--deadline_sweep_interval=10ms"});
  ExpectEachEscalatedOnceToTheCaseManagementTeam(kConcerns);
  // The case-management team now holds them; the on-call clinician was escalated past.
  const std::string id =
      db_->AdminQuery("SELECT id::text FROM escalation.concerns LIMIT 1")[0][0].as<std::string>();
  grpc::Status past = Acknowledge(id, "dr-raiser", "clinician");
  EXPECT_EQ(past.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(past.error_message().find("escalated past you"), std::string::npos);
  EXPECT_TRUE(Acknowledge(id, "cm-1", "case_manager").ok());
}

TEST_F(EscalationServiceTest, TwoReplicasSweepingOneBacklogEscalateEachConcernOnce) {
  constexpr int kConcerns = 300;
  RaiseCriticalConcernsTwoHoursOverdue(kConcerns);
  service_->Signal(SIGKILL);
  service_->WaitExit(5s);
  // Two replicas, each acting through several connections, started together on the same due
  // concerns (each found due by both; each concern's row lock decides who acts).
  const std::vector<std::string> args = {"--deadline_sweep_interval=10ms",
                                         "--agency_time_zone=America/Chicago"};
  ServiceProcess first("escalation", db_->UrlFor("escalation"), args);
  ServiceProcess second("escalation", db_->UrlFor("escalation"), args);
  ASSERT_TRUE(first.WaitListening() && second.WaitListening()) << first.Log() << second.Log();
  ExpectEachEscalatedOnceToTheCaseManagementTeam(kConcerns);
}

TEST_F(EscalationServiceTest, ExhaustedChainRecordsTheBreachAndReAlerts) {
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-14"));
  MoveEveryConcernBack("1 hour");
  service_ = Start({"--deadline_sweep_interval=20ms"});
  for (int wait = 0; wait < 100; ++wait) {
    if (Count("SELECT count(*) FROM escalation.escalation_breaches") == 1) break;
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.escalation_breaches WHERE escalated_to_kind "
                  "IS NULL"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE current_level = 0 AND "
                  "next_deadline_kind = 'chain_exhausted' AND next_deadline > now()"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE event_type = "
                  "'peerpath.escalation.v1.ConcernReAlertedEvent'"),
            1);
  // The breach's transitions and events in the order they happened: escalated (to no one), then
  // re-alerted.
  EXPECT_EQ(db_->AdminQuery("SELECT string_agg(kind, ',' ORDER BY seq) FROM "
                            "escalation.concern_transitions")[0][0]
                .as<std::string>(),
            "opened,routed,escalated,realerted");
  EXPECT_EQ(
      db_->AdminQuery("SELECT string_agg(event_type, ',' ORDER BY id) FROM escalation.outbox "
                      "WHERE event_type LIKE '%Escalated%' OR event_type LIKE '%ReAlerted%'")[0][0]
          .as<std::string>(),
      "peerpath.escalation.v1.ConcernEscalatedEvent,"
      "peerpath.escalation.v1.ConcernReAlertedEvent");
}

TEST_F(EscalationServiceTest, ADeadlineWhoseBreachIsRecordedIsNotEscalatedAgain) {
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-15"));
  MoveEveryConcernBack("1 hour");
  // The breach of this very deadline is on record already (what a second escalation would add).
  db_->AdminQuery(
      "INSERT INTO escalation.escalation_breaches (agency_id, concern_id, deadline_kind, level, "
      "deadline) SELECT agency_id, id, 'acknowledgement', 0, ack_deadline FROM "
      "escalation.concerns WHERE id = '" +
      c.concern_id() + "'");
  service_ = Start({"--deadline_sweep_interval=20ms"});
  std::this_thread::sleep_for(600ms);
  // Every sweep's transaction failed as a whole: nothing of an escalation was written.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.escalation_breaches"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions WHERE kind <> 'opened' "
                  "AND kind <> 'routed'"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE event_type IN ("
                  "'peerpath.escalation.v1.ConcernEscalatedEvent', "
                  "'peerpath.escalation.v1.ConcernReAlertedEvent')"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE breach_count = 0 AND "
                  "next_deadline < now()"),
            1)
      << "still due: the sweeper tries again, and a person sees it overdue";
}

// Whether an escalated concern's new target was paged is decided on the sweeper's clock, which
// decides the page, never on the database's: with the sweeper's clock two minutes ahead of the
// database's, the escalation pages the new target once, and the pending pass of the next sweep
// (notified_at still empty) does not page it again.
TEST_F(EscalationServiceTest, AnEscalationPagesItsTargetOnceWhateverTheDatabaseClockSays) {
  RaiseCriticalConcernsTwoHoursOverdue(1);
  service_->Signal(SIGKILL);  // Its own sweeper out of the way.
  service_->WaitExit(5s);
  Database db(DatabaseOptions{.url = db_->UrlFor("escalation"), .schema = "escalation"});
  escalation::LogNotifier notifier;
  escalation::NotificationOutbox outbox(db, notifier, nullptr);  // Not started: pages stay.
  escalation::DeadlineSweeper sweeper(db, outbox, nullptr);
  const absl::Time ahead = absl::Now() + absl::Minutes(2);
  auto first = sweeper.SweepOnce(ahead);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = sweeper.SweepOnce(ahead + absl::Seconds(1));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications WHERE reason = 'escalated'"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.notifications WHERE reason NOT IN ('opened', "
                  "'escalated')"),
            0);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE current_level = 1 AND "
                  "notified_at IS NOT NULL"),
            1);
}

TEST_F(EscalationServiceTest, AConcernTheDatabaseRefusesHoldsBackNoOtherOfItsChunk) {
  // The sweeper acts on an agency's due concerns in chunks, one transaction each. One concern
  // whose escalation the database refuses (the breach of this very deadline is on record already)
  // fails its chunk as a whole; the chunk's other concerns are then escalated one at a time, and
  // the refused one stays due with nothing of an escalation written.
  constexpr int kConcerns = 40;
  RaiseCriticalConcernsTwoHoursOverdue(kConcerns);
  service_->Signal(SIGKILL);
  service_->WaitExit(5s);
  const std::string refused =
      db_->AdminQuery(
             "SELECT id::text FROM escalation.concerns ORDER BY next_deadline, id OFFSET 3 LIMIT 1")
          [0][0]
              .as<std::string>();
  db_->AdminQuery(
      "INSERT INTO escalation.escalation_breaches (agency_id, concern_id, deadline_kind, level, "
      "deadline) SELECT agency_id, id, 'acknowledgement', 0, ack_deadline FROM "
      "escalation.concerns WHERE id = '" +
      refused + "'");
  service_ = Start({"--deadline_sweep_interval=20ms", "--log_level=info"});
  for (int wait = 0; wait < 300; ++wait) {
    if (Count("SELECT count(*) FROM escalation.concerns WHERE current_level = 1") ==
        kConcerns - 1) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(300ms);  // More sweeps, each refused again for that one concern.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE current_level = 1 AND "
                  "status = 'open' AND target_id = 'cm-team' AND breach_count = 1"),
            kConcerns - 1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.escalation_breaches WHERE escalated_to_id = "
                  "'cm-team'"),
            kConcerns - 1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions WHERE kind = 'escalated'"),
            kConcerns - 1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.outbox WHERE event_type = "
                  "'peerpath.escalation.v1.ConcernEscalatedEvent'"),
            kConcerns - 1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns WHERE id = '" + refused +
                  "' AND current_level = 0 AND breach_count = 0 AND next_deadline < now()"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concern_transitions WHERE concern_id = '" +
                  refused + "' AND kind NOT IN ('opened', 'routed')"),
            0);
  // All in the first sweep: the refused concern's chunk was retried a concern at a time at once,
  // not left to later sweeps.
  std::optional<nlohmann::json> first_sweep;
  for (absl::string_view line : absl::StrSplit(service_->Log(), '\n')) {
    const auto parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_object() && parsed.value("msg", "") == "deadline sweep") {
      first_sweep = parsed;
      break;
    }
  }
  ASSERT_TRUE(first_sweep.has_value()) << service_->Log();
  EXPECT_EQ(first_sweep->value("due", 0), kConcerns);
  EXPECT_EQ(first_sweep->value("acted", 0), kConcerns - 1);
}

TEST_F(EscalationServiceTest, AcknowledgedButUnresolvedReAlertsThenEscalates) {
  v1::UpdateRoutingPolicyResponse updated;
  ASSERT_TRUE(stub_
                  ->UpdateRoutingPolicy(As("agency-a", {"program_admin"}, "admin-1").get(),
                                        TwoLevelPolicy(1, "p-1"), &updated)
                  .ok());
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_CRITICAL, "k-15"),
                "dr-raiser", "clinician");
  ASSERT_TRUE(Acknowledge(c.concern_id(), "dr-1").ok());
  const std::string where = " WHERE id = '" + c.concern_id() + "'";
  db_->AdminQuery("UPDATE escalation.concerns SET next_deadline = now() - interval '1 second'" +
                  where);
  service_ = Start({"--deadline_sweep_interval=20ms"});
  for (int wait = 0; wait < 100; ++wait) {
    if (Count("SELECT count(*) FROM escalation.escalation_breaches") == 1) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns" + where +
                  " AND status = 'acknowledged' AND next_deadline_kind = "
                  "'resolution_after_realert' AND revision = 3"),
            1);
  // Still unresolved when the level's limit passes again: OPEN at the next level.
  db_->AdminQuery("UPDATE escalation.concerns SET next_deadline = now() - interval '1 second'" +
                  where);
  for (int wait = 0; wait < 100; ++wait) {
    if (Count("SELECT count(*) FROM escalation.escalation_breaches") == 2) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns" + where +
                  " AND status = 'open' AND current_level = 1 AND breach_count = 2 AND "
                  "revision = 4"),
            1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.escalation_breaches WHERE deadline_kind = "
                  "'resolution_after_realert' AND escalated_to_id = 'cm-team'"),
            1);
  // Each change's watch note carries the revision it left: opened, acknowledged, re-alerted,
  // escalated.
  EXPECT_EQ(db_->AdminQuery("SELECT array_agg(revision ORDER BY id)::text FROM "
                            "escalation.watch_feed")[0][0]
                .as<std::string>(),
            "{1,2,3,4}");
}

TEST_F(EscalationServiceTest, OutOfHoursNotificationWaitsForBusinessHours) {
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, common::v1::CONCERN_SEVERITY_ROUTINE, "n-1"));
  const std::string where = " WHERE id = '" + c.concern_id() + "'";
  // As if raised on a Saturday: business hours begin in an hour.
  db_->AdminQuery(
      "UPDATE escalation.concerns SET notify_at = now() + interval '1 hour', "
      "notified_at = NULL" +
      where);
  service_ = Start({"--deadline_sweep_interval=20ms"});
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns" + where + " AND notified_at IS NULL"),
            1);
  EXPECT_EQ(service_->Log().find("business_hours_started"), std::string::npos);
  // Business hours have begun: the target is told, once.
  db_->AdminQuery("UPDATE escalation.concerns SET notify_at = now() - interval '1 second'" + where);
  for (int wait = 0; wait < 100; ++wait) {
    if (Count("SELECT count(*) FROM escalation.concerns" + where + " AND notified_at IS NULL") ==
        0) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  std::this_thread::sleep_for(300ms);
  const std::string log = service_->Log();
  const size_t first = log.find("business_hours_started");
  ASSERT_NE(first, std::string::npos);
  EXPECT_EQ(log.find("business_hours_started", first + 1), std::string::npos);
  EXPECT_EQ(log.find("said they had a plan"), std::string::npos);
}

TEST_F(EscalationServiceTest, GaugesCountOpenAndOverdueConcerns) {
  MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "k-16"));
  MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "k-17"));
  service_ = Start({"--deadline_sweep_interval=50ms"});
  double open = 0;
  for (int wait = 0; wait < 100 && open < 1; ++wait) {
    std::this_thread::sleep_for(100ms);
    open = MetricValue(HttpGet(service_->metrics_port(), "/metrics"), "peerpath_open_concerns",
                       {{"severity", "critical"}});
  }
  const std::string metrics = HttpGet(service_->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(metrics, "peerpath_open_concerns", {{"severity", "critical"}}), 1);
  EXPECT_EQ(MetricValue(metrics, "peerpath_open_concerns", {{"severity", "urgent"}}), 1);
  EXPECT_EQ(MetricValue(metrics, "peerpath_overdue_concerns", {{"severity", "critical"}}), 0);
}

TEST_F(EscalationServiceTest, WatchSendsSnapshotThenMarkerThenChangesInOrder) {
  const v1::Concern before =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "w-1"));
  MustRaise(Raise(CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, "w-2"));  // Not theirs.
  grpc::ClientContext context;
  auto stream = WatchOnCall(context);
  v1::WatchConcernsResponse message;
  ASSERT_TRUE(stream->Read(&message));
  ASSERT_TRUE(message.has_snapshot_concern());
  EXPECT_EQ(message.snapshot_concern().concern_id(), before.concern_id());
  EXPECT_TRUE(message.snapshot_concern().description().empty());
  ASSERT_TRUE(stream->Read(&message));
  ASSERT_TRUE(message.has_snapshot_end());
  EXPECT_EQ(message.snapshot_end().concern_count(), 1);

  const v1::Concern during =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "w-3"));
  ASSERT_TRUE(Acknowledge(before.concern_id(), "dr-2").ok());
  ASSERT_TRUE(Resolve(before.concern_id(), "dr-2").ok());

  std::vector<std::pair<v1::ConcernChangeKind, std::string>> seen;
  std::vector<bool> in_scope;
  while (seen.size() < 3 && stream->Read(&message)) {
    if (!message.has_change()) continue;
    seen.emplace_back(message.change().kind(), message.change().concern().concern_id());
    in_scope.push_back(message.change().in_scope());
  }
  context.TryCancel();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], std::make_pair(v1::CONCERN_CHANGE_KIND_OPENED, during.concern_id()));
  EXPECT_EQ(seen[1], std::make_pair(v1::CONCERN_CHANGE_KIND_ACKNOWLEDGED, before.concern_id()));
  EXPECT_EQ(seen[2], std::make_pair(v1::CONCERN_CHANGE_KIND_RESOLVED, before.concern_id()));
  EXPECT_EQ(in_scope, (std::vector<bool>{true, true, false}));
}

// The feed is relayed after commit, so changes committed before a stream's snapshot can arrive
// after its marker. Here the relay is held back (its positioning lock taken) while a concern is
// raised and acknowledged; the snapshot shows it acknowledged. When the relay catches up, neither
// older state may be sent (an OPENED after the snapshot would put an acknowledged concern back to
// unacknowledged on the dashboard); the next real change is.
TEST_F(EscalationServiceTest, WatchNeverSendsAStateOlderThanItShowed) {
  auto hold = db_->Admin();
  pqxx::work held(*hold);
  held.exec("SELECT pg_advisory_xact_lock(hashtextextended('peerpath.watch_feed.escalation', 0))");
  const v1::Concern c =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "late-1"));
  EXPECT_EQ(c.revision(), 1);
  ASSERT_TRUE(Acknowledge(c.concern_id(), "dr-2").ok());

  grpc::ClientContext context;
  auto stream = WatchOnCall(context);
  v1::WatchConcernsResponse message;
  ASSERT_TRUE(stream->Read(&message));
  ASSERT_TRUE(message.has_snapshot_concern());
  EXPECT_EQ(message.snapshot_concern().state(), v1::CONCERN_STATE_ACKNOWLEDGED);
  EXPECT_EQ(message.snapshot_concern().revision(), 2);
  ASSERT_TRUE(stream->Read(&message));
  ASSERT_TRUE(message.has_snapshot_end());
  // Both notes are committed but not relayed yet.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.watch_feed WHERE position IS NULL"), 2);
  held.commit();
  for (int i = 0; i < 100 && Count("SELECT count(*) FROM escalation.watch_feed WHERE position IS "
                                   "NULL") > 0;
       ++i) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(Count("SELECT count(*) FROM escalation.watch_feed WHERE position IS NULL"), 0);

  v1::ResolveConcernResponse resolved;
  ASSERT_TRUE(
      Resolve(c.concern_id(), "dr-2", v1::CONCERN_OUTCOME_CLINICAL_REVIEW_DONE, &resolved).ok());
  EXPECT_EQ(resolved.concern().revision(), 3);
  std::vector<std::pair<v1::ConcernChangeKind, int>> seen;
  while (stream->Read(&message)) {
    if (!message.has_change()) continue;
    seen.emplace_back(message.change().kind(), message.change().concern().revision());
    if (message.change().kind() == v1::CONCERN_CHANGE_KIND_RESOLVED) break;
  }
  context.TryCancel();
  EXPECT_EQ(
      seen,
      (std::vector<std::pair<v1::ConcernChangeKind, int>>{{v1::CONCERN_CHANGE_KIND_RESOLVED, 3}}));
}

// Two replicas over one database: a dashboard watching one sees, in order, what is raised,
// acknowledged and resolved through the other (the watch feed, not the process's own memory).
TEST_F(EscalationServiceTest, WatchSeesChangesMadeThroughAnotherReplica) {
  ServiceProcess other("escalation", db_->UrlFor("escalation"),
                       {"--deadline_sweep_interval=1h", "--agency_time_zone=America/Chicago"});
  ASSERT_TRUE(other.WaitHealth(true)) << other.Log();
  auto other_stub = v1::EscalationService::NewStub(other.Channel());
  grpc::ClientContext context;
  auto stream = WatchOnCall(context, other_stub.get());
  v1::WatchConcernsResponse message;
  ASSERT_TRUE(stream->Read(&message));
  ASSERT_TRUE(message.has_snapshot_end());
  EXPECT_EQ(message.snapshot_end().concern_count(), 0);

  // Through the first replica (stub_).
  const v1::Concern raised =
      MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "x-1"));
  ASSERT_TRUE(Acknowledge(raised.concern_id(), "dr-2").ok());
  ASSERT_TRUE(Resolve(raised.concern_id(), "dr-2").ok());

  std::vector<v1::ConcernChangeKind> kinds;
  while (kinds.size() < 3 && stream->Read(&message)) {
    if (!message.has_change()) continue;
    EXPECT_EQ(message.change().concern().concern_id(), raised.concern_id());
    EXPECT_TRUE(message.change().concern().description().empty());
    kinds.push_back(message.change().kind());
  }
  context.TryCancel();
  EXPECT_EQ(kinds, (std::vector<v1::ConcernChangeKind>{v1::CONCERN_CHANGE_KIND_OPENED,
                                                       v1::CONCERN_CHANGE_KIND_ACKNOWLEDGED,
                                                       v1::CONCERN_CHANGE_KIND_RESOLVED}));
  // Each change is written once, in its own transaction.
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.watch_feed WHERE position IS NOT NULL"), 3);
}

// The feed is for live streams: relayed rows older than an hour are pruned, newer ones kept.
TEST_F(EscalationServiceTest, WatchFeedKeepsAnHour) {
  MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "old-1"));
  MustRaise(Raise(CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, "new-1"));
  for (int i = 0; i < 100 && Count("SELECT count(*) FROM escalation.watch_feed WHERE position IS "
                                   "NOT NULL") < 2;
       ++i) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(Count("SELECT count(*) FROM escalation.watch_feed WHERE position IS NOT NULL"), 2);
  db_->AdminQuery(
      "UPDATE escalation.watch_feed SET created_at = now() - interval '2 hours' WHERE id = "
      "(SELECT min(id) FROM escalation.watch_feed)");
  // A replica prunes on its first pass (and every minute after).
  ServiceProcess other("escalation", db_->UrlFor("escalation"),
                       {"--deadline_sweep_interval=1h", "--agency_time_zone=America/Chicago"});
  ASSERT_TRUE(other.WaitHealth(true)) << other.Log();
  for (int i = 0; i < 100 && Count("SELECT count(*) FROM escalation.watch_feed") > 1; ++i) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.watch_feed"), 1);
}

TEST_F(EscalationServiceTest, WatchIsOnlyForWhoActsForTheTarget) {
  v1::WatchConcernsRequest request;
  request.mutable_target()->set_kind(v1::TARGET_KIND_CLINICAL_ON_CALL);
  request.mutable_target()->set_target_id("clinical-on-call");
  v1::WatchConcernsResponse message;
  auto context = As("agency-a", {"case_manager"}, "cm-1");
  auto stream = stub_->WatchConcerns(context.get(), request);
  EXPECT_FALSE(stream->Read(&message));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  request.mutable_target()->set_kind(v1::TARGET_KIND_SUPPORTER_SUPERVISOR);
  request.mutable_target()->set_target_id("sup-2");
  auto as_other = As("agency-a", {"supervisor"}, "sup-1");
  auto other = stub_->WatchConcerns(as_other.get(), request);
  EXPECT_FALSE(other->Read(&message));
  EXPECT_EQ(other->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  request.clear_target();
  auto as_clinician = As("agency-a", {"clinician"}, "dr-1");
  auto bad = stub_->WatchConcerns(as_clinician.get(), request);
  EXPECT_FALSE(bad->Read(&message));
  EXPECT_EQ(bad->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// A concern raised by hand for an enrollment this service knows (from the check-in log) goes to
// its receiving clinician; an enrollment of another participant is refused with nothing stored;
// one not known yet is accepted and routed past the receiving clinician nobody named.
TEST_F(EscalationServiceTest, TheEnrollmentNamedDecidesTheReceivingClinician) {
  const std::string mine = "5d1c4a52-8f0e-4d55-9a3a-0c7f3f1f6b01";
  const std::string theirs = "5d1c4a52-8f0e-4d55-9a3a-0c7f3f1f6b02";
  db_->AdminQuery(
      "INSERT INTO escalation.enrollments (agency_id, enrollment_id, participant_id, "
      "receiving_clinician) VALUES ('agency-a', '" +
      mine + "', 'client-42', 'dr-7'), ('agency-a', '" + theirs + "', 'client-7', 'dr-8')");
  v1::RaiseConcernRequest request =
      Raise(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT, "e-1");
  request.set_enrollment_id(mine);
  const v1::Concern routed = MustRaise(request);
  EXPECT_EQ(routed.current_target().kind(), v1::TARGET_KIND_RECEIVING_CLINICIAN);
  EXPECT_EQ(routed.current_target().target_id(), "dr-7");

  request.set_idempotency_key("e-2");
  request.set_enrollment_id(theirs);
  v1::RaiseConcernResponse response;
  const grpc::Status refused =
      stub_->RaiseConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), request, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::NOT_FOUND) << refused.error_message();
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.idempotency_keys WHERE idempotency_key = "
                  "'e-2'"),
            0);

  request.set_idempotency_key("e-3");
  request.set_enrollment_id("5d1c4a52-8f0e-4d55-9a3a-0c7f3f1f6b03");
  const v1::Concern unknown = MustRaise(request);
  EXPECT_EQ(unknown.current_target().kind(), v1::TARGET_KIND_CLINICAL_ON_CALL);
}

TEST_F(EscalationServiceTest, OnlyTheRelationshipRaisesAndSupervisorsSeeTheirSupportersConcerns) {
  // Outside the relationship: refused, nothing stored, the refusal audited.
  v1::RaiseConcernRequest request =
      Raise(common::v1::CONCERN_CATEGORY_ROLE_BOUNDARY, CONCERN_SEVERITY_URGENT, "r-1");
  v1::RaiseConcernResponse response;
  EXPECT_EQ(
      stub_->RaiseConcern(As("agency-a", {"peer_supporter"}, "peer-3").get(), request, &response)
          .error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(stub_->RaiseConcern(As("agency-a", {"supervisor"}, "sup-9").get(), request, &response)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::RaiseConcernRequest elsewhere = request;
  elsewhere.set_participant_id("client-7");
  EXPECT_EQ(
      stub_->RaiseConcern(As("agency-a", {"peer_supporter"}, "peer-1").get(), elsewhere, &response)
          .error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.concerns"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM escalation.audit_log WHERE decision = 'denied' AND action "
                  "= 'peerpath.escalation.v1.EscalationService.RaiseConcern'"),
            3);
  // Clinicians for anyone of the agency; the supervisor of a supporter for that participant.
  elsewhere.set_idempotency_key("r-2");
  MustRaise(elsewhere, "dr-1", "clinician");
  v1::RaiseConcernRequest by_supervisor = request;
  by_supervisor.set_idempotency_key("r-3");
  MustRaise(by_supervisor, "sup-2", "supervisor");

  // A role-boundary concern goes first to the supporter's supervisor: the participant's latest
  // active supporter is peer-1, supervised by sup-1.
  const v1::Concern mine = MustRaise(request, "peer-1");
  EXPECT_EQ(mine.current_target().kind(), v1::TARGET_KIND_SUPPORTER_SUPERVISOR);
  EXPECT_EQ(mine.current_target().target_id(), "sup-1");
  EXPECT_EQ(Acknowledge(mine.concern_id(), "sup-1", "supervisor").error_code(),
            grpc::StatusCode::OK);

  // Each supervisor sees the concerns of their supporters and their participants, in full;
  // a supervisor of nobody sees none.
  auto list = [&](const std::string& subject) {
    v1::ListConcernsRequest all;
    v1::ListConcernsResponse listed;
    EXPECT_TRUE(
        stub_->ListConcerns(As("agency-a", {"supervisor"}, subject).get(), all, &listed).ok());
    return listed;
  };
  const v1::ListConcernsResponse sup1 = list("sup-1");
  ASSERT_EQ(sup1.concerns_size(), 2);  // client-42's two concerns (peer-1's and sup-2's).
  for (const auto& c : sup1.concerns()) {
    EXPECT_EQ(c.participant_id(), "client-42");
    EXPECT_EQ(c.view(), v1::CONCERN_VIEW_FULL);
  }
  EXPECT_EQ(list("sup-2").concerns_size(), 2);
  EXPECT_EQ(list("sup-9").concerns_size(), 0);
  v1::GetConcernRequest get;
  get.set_concern_id(mine.concern_id());
  v1::GetConcernResponse got;
  ASSERT_TRUE(stub_->GetConcern(As("agency-a", {"supervisor"}, "sup-2").get(), get, &got).ok());
  EXPECT_EQ(got.concern().view(), v1::CONCERN_VIEW_FULL);
  EXPECT_EQ(
      stub_->GetConcern(As("agency-a", {"supervisor"}, "sup-9").get(), get, &got).error_code(),
      grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace peerpath::testing
