// The evaluation binary end to end: real peerpath-checkin and peerpath-matching binaries serve
// their event logs (rows written into their outboxes as their own transactions would), the
// evaluation binary consumes them over gRPC with its service token, county outcomes arrive with
// RecordServiceOutcome, and reports are read over gRPC by the roles allowed to, refused to the
// others; a restart with --replay_read_models rebuilds the same report from position 0.
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/evaluation/v1/evaluation.grpc.pb.h"
#include "peerpath/matching/v1/events.pb.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using namespace std::chrono_literals;
namespace ev = peerpath::evaluation::v1;

constexpr char kAgency[] = "agency-a";

std::string Uuid(int kind, int i) { return absl::StrFormat("%08d-0000-4000-8000-%012d", kind, i); }

// The first day of last month (UTC): a period that has ended, inside the allowed range.
absl::CivilDay LastMonth() {
  return absl::CivilDay(absl::CivilMonth(absl::ToCivilSecond(absl::Now(), absl::UTCTimeZone())) -
                        1);
}

class EvaluationServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    checkin_ = std::make_unique<ServiceProcess>("checkin", db_->UrlFor("checkin"));
    matching_ = std::make_unique<ServiceProcess>("matching", db_->UrlFor("matching"));
    ASSERT_TRUE(checkin_->WaitHealth(true)) << checkin_->Log();
    ASSERT_TRUE(matching_->WaitHealth(true)) << matching_->Log();
    token_file_ = std::make_unique<TokenFile>("platform", std::vector<std::string>{"service"},
                                              "svc-evaluation");
    StartEvaluation(false);
  }

  void StartEvaluation(bool replay) {
    evaluation_.reset();
    std::vector<std::string> args = {
        absl::StrCat("--checkin_address=127.0.0.1:", checkin_->grpc_port()),
        absl::StrCat("--matching_address=127.0.0.1:", matching_->grpc_port()), token_file_->Flag(),
        "--gauge_interval=200ms"};
    if (replay) args.push_back("--replay_read_models");
    evaluation_ = std::make_unique<ServiceProcess>("evaluation", db_->UrlFor("evaluation"), args);
    ASSERT_TRUE(evaluation_->WaitHealth(true)) << evaluation_->Log();
    stub_ = ev::EvaluationService::NewStub(evaluation_->Channel());
  }

  template <typename Payload>
  void Emit(const std::string& service, const std::string& agency, const std::string& aggregate,
            const Payload& payload) {
    db_->WriteOutboxEvent(service, agency, payload, aggregate);
    ++emitted_[service];
  }

  int Count(const std::string& sql) { return db_->AdminQuery(sql)[0][0].as<int>(); }

  // Waits until the evaluation consumers applied everything emitted.
  bool WaitApplied() {
    for (int i = 0; i < 300; ++i) {
      bool done = true;
      for (const auto& [service, n] : emitted_) {
        done &= Count(absl::StrCat("SELECT coalesce(max(position), 0) FROM evaluation."
                                   "consumer_positions WHERE source = '",
                                   service, "'")) >= n;
      }
      if (done) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  static std::unique_ptr<grpc::ClientContext> As(const std::string& agency,
                                                 const std::vector<std::string>& roles) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->AddMetadata("authorization", "Bearer " + TokenFor(agency, roles, "staff-1"));
    return context;
  }

  static std::set<std::string> ViolatedFields(const grpc::Status& status) {
    google::rpc::Status details;
    std::set<std::string> fields;
    if (!details.ParseFromString(status.error_details())) return fields;
    for (const auto& any : details.details()) {
      google::rpc::BadRequest bad;
      if (any.UnpackTo(&bad)) {
        for (const auto& v : bad.field_violations()) fields.insert(v.field());
      }
    }
    return fields;
  }

  ev::GetProgramReportRequest LastMonthRequest() {
    ev::GetProgramReportRequest request;
    request.mutable_period()->set_kind(ev::PERIOD_KIND_MONTH);
    const absl::CivilDay day = LastMonth();
    request.mutable_period()->mutable_start_date()->set_year(static_cast<int32_t>(day.year()));
    request.mutable_period()->mutable_start_date()->set_month(day.month());
    request.mutable_period()->mutable_start_date()->set_day(1);
    return request;
  }

  grpc::Status Report(const std::string& agency, const std::vector<std::string>& roles,
                      ev::GetProgramReportResponse& response) {
    return stub_->GetProgramReport(As(agency, roles).get(), LastMonthRequest(), &response);
  }

  // 24 participants enrolled on the 2nd of last month; p01..p12 matched since the 1st.
  void EmitProgram() {
    const absl::Time second = absl::FromCivil(LastMonth() + 1, absl::UTCTimeZone());
    for (int i = 1; i <= 24; ++i) {
      checkin::v1::EnrollmentStartedEvent e;
      e.set_enrollment_id(Uuid(1, i));
      e.set_participant_id(absl::StrFormat("p%02d", i));
      e.set_pathway_key("early_engagement");
      e.set_pathway_version(1);
      *e.mutable_enrolled_at() = ToProtoTimestamp(second);
      Emit("checkin", kAgency, e.enrollment_id(), e);
      if (i <= 12) {
        matching::v1::MatchStartedEvent m;
        m.set_match_id(Uuid(2, i));
        m.set_supporter_id(absl::StrFormat("sup%02d", i));
        m.set_participant_id(e.participant_id());
        *m.mutable_started_at() = ToProtoTimestamp(second - absl::Hours(24));
        Emit("matching", kAgency, m.match_id(), m);
      }
    }
    // Another agency's enrollment: never in agency-a's reports.
    checkin::v1::EnrollmentStartedEvent other;
    other.set_enrollment_id(Uuid(1, 99));
    other.set_participant_id("b-1");
    other.set_pathway_key("early_engagement");
    *other.mutable_enrolled_at() = ToProtoTimestamp(second);
    Emit("checkin", "agency-b", other.enrollment_id(), other);
  }

  ev::RecordServiceOutcomeRequest Outcome(const std::string& participant, const std::string& key) {
    ev::RecordServiceOutcomeRequest r;
    r.set_participant_id(participant);
    r.set_kind(ev::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_ATTENDED);
    *r.mutable_occurred_at() =
        ToProtoTimestamp(absl::FromCivil(LastMonth() + 9, absl::UTCTimeZone()));
    r.set_idempotency_key(key);
    return r;
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<TokenFile> token_file_;
  std::unique_ptr<ServiceProcess> checkin_;
  std::unique_ptr<ServiceProcess> matching_;
  std::unique_ptr<ServiceProcess> evaluation_;
  std::unique_ptr<ev::EvaluationService::Stub> stub_;
  std::map<std::string, int> emitted_;
};

const ev::ReportCell& CellOf(const ev::ProgramReport& report, const std::string& measure,
                             int index = 0) {
  int seen = 0;
  for (const auto& cell : report.cells()) {
    if (cell.measure_id() == measure && seen++ == index) return cell;
  }
  ADD_FAILURE() << "no cell " << measure;
  static const ev::ReportCell none;
  return none;
}

TEST_F(EvaluationServiceTest, ReportsFromTheProducersLogsAndCountyOutcomes) {
  EmitProgram();
  ASSERT_TRUE(WaitApplied()) << evaluation_->Log();
  // County outcomes: first appointments of p01..p24, attended by p01..p06 and p13..p18.
  for (int i = 1; i <= 24; ++i) {
    ev::RecordServiceOutcomeRequest r = Outcome(absl::StrFormat("p%02d", i), absl::StrCat("k", i));
    if ((i - 1) % 12 >= 6) r.set_kind(ev::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_MISSED);
    ev::RecordServiceOutcomeResponse response;
    ASSERT_TRUE(stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), r, &response).ok());
  }
  ev::GetProgramReportResponse response;
  ASSERT_TRUE(Report(kAgency, {"program_admin"}, response).ok());
  const ev::ProgramReport& r = response.report();
  EXPECT_EQ(CellOf(r, "enrollments_started").count().count(), 24);
  EXPECT_EQ(CellOf(r, "participants_served").count().count(), 24);
  // 12 of 24 attended: 12 people in the numerator and 12 outside; each cohort has 6 of 12,
  // so the cohort cells are suppressed and the total is shown.
  const auto& total = CellOf(r, "first_appointment_attendance", 0);
  ASSERT_FALSE(total.suppressed());
  EXPECT_EQ(total.rate().numerator(), 12);
  EXPECT_EQ(total.rate().denominator(), 24);
  EXPECT_TRUE(CellOf(r, "first_appointment_attendance", 1).suppressed());
  EXPECT_TRUE(CellOf(r, "first_appointment_attendance", 2).suppressed());
  EXPECT_EQ(r.pathway_keys_size(), 1);
  EXPECT_TRUE(r.has_data_as_of());

  // The same figures for every role allowed; operations sees the same suppressed aggregates.
  for (const char* role : {"supervisor", "integration", "operations"}) {
    ev::GetProgramReportResponse other;
    ASSERT_TRUE(Report(kAgency, {role}, other).ok()) << role;
    EXPECT_EQ(CellOf(other.report(), "enrollments_started").count().count(), 24) << role;
  }
  // Agency B sees one enrollment: suppressed, never agency A's 24.
  ev::GetProgramReportResponse b;
  ASSERT_TRUE(Report("agency-b", {"program_admin"}, b).ok());
  EXPECT_TRUE(CellOf(b.report(), "enrollments_started").suppressed());

  // The CSV export: a header and one row per cell, the same values.
  ev::ExportReportRequest export_request;
  *export_request.mutable_period() = LastMonthRequest().period();
  auto context = As(kAgency, {"program_admin"});
  auto reader = stub_->ExportReport(context.get(), export_request);
  std::vector<std::string> rows;
  ev::ExportReportResponse row;
  while (reader->Read(&row)) rows.push_back(row.csv_row());
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(static_cast<int>(rows.size()), r.cells_size() + 1);
  EXPECT_EQ(rows[0].rfind("agency_id,period_start,period_end,", 0), 0u);
  EXPECT_NE(rows[1].find(",enrollments_started,Enrollments started,count,,,,,,false,24,"),
            std::string::npos)
      << rows[1];

  // Replay: emptied and rebuilt from position 0 of both logs, the same report.
  StartEvaluation(true);
  ASSERT_TRUE(WaitApplied()) << evaluation_->Log();
  ev::GetProgramReportResponse replayed;
  ASSERT_TRUE(Report(kAgency, {"program_admin"}, replayed).ok());
  ASSERT_EQ(replayed.report().cells_size(), r.cells_size());
  for (int i = 0; i < r.cells_size(); ++i) {
    EXPECT_EQ(replayed.report().cells(i).SerializeAsString(), r.cells(i).SerializeAsString())
        << r.cells(i).measure_id();
  }
}

TEST_F(EvaluationServiceTest, ReportsAreInTheTimeZoneTheCheckInServiceNames) {
  ev::GetProgramReportResponse before;
  ASSERT_TRUE(Report(kAgency, {"program_admin"}, before).ok());
  EXPECT_EQ(before.report().time_zone(), "UTC");
  // The program admin sets the agency's zone in the check-in service; its event reaches the
  // evaluation service through the real log.
  auto checkin = checkin::v1::CheckInService::NewStub(checkin_->Channel());
  checkin::v1::UpdateProgramPolicyRequest update;
  update.mutable_policy()->set_time_zone("Europe/Paris");
  update.mutable_update_mask()->add_paths("time_zone");
  checkin::v1::UpdateProgramPolicyResponse updated;
  ASSERT_TRUE(
      checkin->UpdateProgramPolicy(As(kAgency, {"program_admin"}).get(), update, &updated).ok());
  ++emitted_["checkin"];
  ASSERT_TRUE(WaitApplied()) << evaluation_->Log();
  ev::GetProgramReportResponse after;
  ASSERT_TRUE(Report(kAgency, {"program_admin"}, after).ok());
  const absl::TimeZone paris = [] {
    absl::TimeZone tz;
    EXPECT_TRUE(absl::LoadTimeZone("Europe/Paris", &tz));
    return tz;
  }();
  EXPECT_EQ(after.report().time_zone(), "Europe/Paris");
  EXPECT_EQ(FromProtoTimestamp(after.report().period_range().start_time()),
            absl::FromCivil(LastMonth(), paris));
  // Another agency keeps UTC.
  ev::GetProgramReportResponse b;
  ASSERT_TRUE(Report("agency-b", {"program_admin"}, b).ok());
  EXPECT_EQ(b.report().time_zone(), "UTC");
}

TEST_F(EvaluationServiceTest, PipelineStatusAndGauges) {
  EmitProgram();
  ASSERT_TRUE(WaitApplied()) << evaluation_->Log();
  ev::GetPipelineStatusResponse status;
  ASSERT_TRUE(stub_->GetPipelineStatus(As(kAgency, {"operations"}).get(), {}, &status).ok());
  ASSERT_EQ(status.sources_size(), 4);
  EXPECT_EQ(status.sources(0).source(), ev::EVENT_SOURCE_CHECKIN);
  EXPECT_EQ(status.sources(0).service_name(), "peerpath.checkin.v1.CheckInService");
  EXPECT_EQ(status.sources(0).state(), ev::CONSUMER_STATE_STREAMING);
  EXPECT_EQ(status.sources(0).last_applied_position(), 25);
  EXPECT_EQ(status.sources(0).head_position(), 25);
  EXPECT_EQ(status.sources(0).events_behind(), 0);
  EXPECT_EQ(status.sources(1).last_applied_position(), 12);
  // Escalation and consent are not configured here: never connected.
  EXPECT_EQ(status.sources(2).state(), ev::CONSUMER_STATE_CONNECTING);

  std::string metrics;
  for (int i = 0; i < 100; ++i) {
    metrics = HttpGet(evaluation_->metrics_port(), "/metrics");
    if (MetricValue(metrics, "peerpath_evaluation_active_enrollments", {}) == 25) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(MetricValue(metrics, "peerpath_evaluation_active_enrollments", {}), 25);
  EXPECT_EQ(MetricValue(metrics, "peerpath_evaluation_open_concerns", {{"severity", "critical"}}),
            0);
  EXPECT_EQ(MetricValue(metrics, "peerpath_event_consumer_lag_events", {{"source", "checkin"}}), 0);
  EXPECT_EQ(metrics.find("p01"), std::string::npos) << "no personal data in metrics";
}

TEST_F(EvaluationServiceTest, RecordServiceOutcomeIsIdempotentAndValidated) {
  ev::RecordServiceOutcomeRequest r = Outcome("client-7", "key-1");
  r.set_source_system("county-ehr");
  r.set_source_reference("rec/1");
  ev::RecordServiceOutcomeResponse first, retry, again, other;
  ASSERT_TRUE(stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), r, &first).ok());
  EXPECT_EQ(first.outcome().participant_id(), "client-7");
  EXPECT_EQ(first.outcome().agency_id(), kAgency);
  EXPECT_FALSE(first.already_recorded());
  ASSERT_TRUE(stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), r, &retry).ok());
  EXPECT_EQ(retry.outcome().outcome_id(), first.outcome().outcome_id());
  // The same county record under another key: the stored outcome, nothing written.
  r.set_idempotency_key("key-2");
  ASSERT_TRUE(stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), r, &again).ok());
  EXPECT_TRUE(again.already_recorded());
  EXPECT_EQ(again.outcome().outcome_id(), first.outcome().outcome_id());
  // Different content for the same county record.
  r.set_idempotency_key("key-3");
  r.set_kind(ev::SERVICE_OUTCOME_KIND_CRISIS_CONTACT);
  EXPECT_EQ(stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), r, &other).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  // The first key with another request.
  r.set_idempotency_key("key-1");
  EXPECT_EQ(stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), r, &other).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Count("SELECT count(*) FROM evaluation.service_outcomes"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM evaluation.audit_log WHERE action = "
                  "'peerpath.evaluation.v1.EvaluationService.RecordServiceOutcome' AND "
                  "decision = 'allowed'"),
            1);

  // Every bad field named.
  ev::RecordServiceOutcomeRequest bad;
  bad.set_kind(ev::SERVICE_OUTCOME_KIND_DISCHARGE);
  bad.set_source_system("county ehr");
  *bad.mutable_occurred_at() = ToProtoTimestamp(absl::Now() + absl::Hours(1));
  grpc::Status status =
      stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), bad, &other);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ViolatedFields(status),
            (std::set<std::string>{"participant_id", "discharge_setting", "occurred_at",
                                   "source_reference", "source_system", "idempotency_key"}));
  ev::RecordServiceOutcomeRequest crisis = Outcome("client-8", "key-9");
  crisis.set_kind(ev::SERVICE_OUTCOME_KIND_UNSPECIFIED);
  crisis.set_discharge_setting(ev::DISCHARGE_SETTING_CRISIS_STABILIZATION);
  status = stub_->RecordServiceOutcome(As(kAgency, {"integration"}).get(), crisis, &other);
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"kind", "discharge_setting"}));
}

TEST_F(EvaluationServiceTest, RolesAndRequestsRefused) {
  ev::RecordServiceOutcomeResponse outcome;
  for (const char* role : {"program_admin", "operations", "peer_supporter", "clinician"}) {
    EXPECT_EQ(stub_->RecordServiceOutcome(As(kAgency, {role}).get(), Outcome("c-1", "k"), &outcome)
                  .error_code(),
              grpc::StatusCode::PERMISSION_DENIED)
        << role;
  }
  ev::GetProgramReportResponse report;
  for (const char* role : {"peer_supporter", "clinician", "case_manager", "service"}) {
    EXPECT_EQ(Report(kAgency, {role}, report).error_code(), grpc::StatusCode::PERMISSION_DENIED)
        << role;
  }
  grpc::ClientContext anonymous;
  EXPECT_EQ(stub_->GetProgramReport(&anonymous, LastMonthRequest(), &report).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ev::GetPipelineStatusResponse pipeline;
  EXPECT_EQ(
      stub_->GetPipelineStatus(As(kAgency, {"program_admin"}).get(), {}, &pipeline).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);

  // Bad requests name their fields; unknown filters are NOT_FOUND.
  ev::GetProgramReportRequest request;
  grpc::Status status =
      stub_->GetProgramReport(As(kAgency, {"program_admin"}).get(), request, &report);
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"period"}));
  request = LastMonthRequest();
  request.mutable_period()->set_kind(ev::PERIOD_KIND_UNSPECIFIED);
  request.mutable_period()->mutable_start_date()->set_day(2);
  request.set_pathway_key("Bad-Key");
  request.set_program_id("bad program");
  status = stub_->GetProgramReport(As(kAgency, {"program_admin"}).get(), request, &report);
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"period.kind", "period.start_date",
                                                           "pathway_key", "program_id"}));
  request = LastMonthRequest();
  request.mutable_period()->mutable_start_date()->set_year(2999);
  status = stub_->GetProgramReport(As(kAgency, {"program_admin"}).get(), request, &report);
  EXPECT_EQ(ViolatedFields(status), (std::set<std::string>{"period.start_date"}));
  request = LastMonthRequest();
  request.set_pathway_key("step_down");
  EXPECT_EQ(
      stub_->GetProgramReport(As(kAgency, {"program_admin"}).get(), request, &report).error_code(),
      grpc::StatusCode::NOT_FOUND);

  // Definitions: every measure, paged; a foreign token refused.
  ev::ListMeasureDefinitionsRequest list;
  list.set_page_size(20);
  ev::ListMeasureDefinitionsResponse page1, page2;
  ASSERT_TRUE(stub_->ListMeasureDefinitions(As(kAgency, {"operations"}).get(), list, &page1).ok());
  EXPECT_EQ(page1.definitions_size(), 20);
  list.set_page_token(page1.next_page_token());
  ASSERT_TRUE(stub_->ListMeasureDefinitions(As(kAgency, {"operations"}).get(), list, &page2).ok());
  EXPECT_EQ(page2.definitions_size(), 5);
  EXPECT_TRUE(page2.next_page_token().empty());
  EXPECT_EQ(page2.definitions(4).measure_id(), "person_feedback");
  EXPECT_TRUE(page2.definitions(4).unavailable_reason().empty());
  list.set_page_token("forged");
  EXPECT_EQ(
      stub_->ListMeasureDefinitions(As(kAgency, {"operations"}).get(), list, &page2).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  list.set_page_token("");
  list.set_page_size(-1);
  EXPECT_EQ(
      stub_->ListMeasureDefinitions(As(kAgency, {"operations"}).get(), list, &page2).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace peerpath::testing
