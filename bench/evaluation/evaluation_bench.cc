// Evaluation read models and reports, against a real PostgreSQL (PEERPATH_TEST_PG_ADMIN_URL, as
// tools/bench sets):
//
//   1. events applied per second: check-in events (check-ins with wellbeing scores, REACHED
//      contact attempts) through the real EventConsumer (pages of 500, one transaction per page
//      with the stored position) into the read models: with a per-event handler, then the same
//      log delivered again (duplicates: nothing changes), then as the service consumes it
//      (CheckInConsumerOptions: the batch handler, one run per agency of a page) into an empty
//      database; then a county's log of 16 agencies in turn, in runs of consecutive events (one
//      event each there) and as the service consumes it;
//   2. GetProgramReport's computation (BuildProgramReport: every scope, suppression) over an
//      agency whose check-in history holds 1 million and 10 million check-ins, beside a plain SQL
//      GROUP BY over the raw check-in rows computing only the check-in measures (contacts per
//      supporter, wellbeing first/latest per enrollment) in the same run. The raw rows and the
//      rollups the consumer would have built from them are generated with SQL generate_series.
//
// PEERPATH_BENCH_SECONDS (default 5) scales the number of events of part 1; with 1 or less, part 2
// uses 100,000 check-ins only (a CI smoke). PEERPATH_EVALUATION_BENCH_CHECKINS (e.g.
// "1000000,10000000", the default) sets the sizes of part 2. Prints figures; never fails on a
// time. Not run by ctest.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/event_consumer.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "services/evaluation/evaluation_service.h"
#include "services/evaluation/read_models.h"
#include "services/evaluation/report_store.h"
#include "tests/support/log_fetcher.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/test_database.h"

namespace peerpath::evaluation {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string Uuid(int kind, int64_t i) {
  return absl::StrFormat("%08d-0000-4000-8000-%012d", kind, i);
}

// `n` check-in events; with more than one agency, agency i % agencies writes event i (a county's
// log, where agencies' events alternate), each enrollment staying with one agency.
std::vector<common::v1::Event> CheckInLog(int64_t n, int agencies = 1) {
  std::vector<common::v1::Event> log;
  log.reserve(static_cast<size_t>(n));
  const absl::Time start = absl::FromCivil(absl::CivilDay(2026, 1, 1), absl::UTCTimeZone());
  for (int64_t i = 1; i <= n; ++i) {
    common::v1::Event e;
    e.set_position(i);
    e.set_event_id(Uuid(99, i));
    e.set_agency_id(agencies == 1 ? "bench" : absl::StrCat("bench-", i % agencies));
    const int64_t enrollment = i % 2000;  // 2000 is a multiple of every agency count used.
    const absl::Time at = start + absl::Minutes(i * 3);
    if (i % 10 == 0) {
      checkin::v1::ContactAttemptRecordedEvent a;
      a.set_contact_attempt_id(Uuid(6, i));
      a.set_enrollment_id(Uuid(1, enrollment));
      a.set_participant_id(absl::StrCat("p", enrollment));
      a.set_supporter_id(absl::StrCat("s", enrollment % 200));
      a.set_pathway_key("early_engagement");
      a.set_outcome(checkin::v1::CONTACT_OUTCOME_REACHED);
      *a.mutable_attempted_at() = ToProtoTimestamp(at);
      e.set_type("peerpath.checkin.v1.ContactAttemptRecordedEvent");
      e.mutable_payload()->PackFrom(a);
    } else {
      checkin::v1::CheckInRecordedEvent c;
      c.set_check_in_id(Uuid(5, i));
      c.set_enrollment_id(Uuid(1, enrollment));
      c.set_participant_id(absl::StrCat("p", enrollment));
      c.set_supporter_id(absl::StrCat("s", enrollment % 200));
      c.set_pathway_key("early_engagement");
      c.set_wellbeing_score(static_cast<int32_t>(1 + i % 5));
      *c.mutable_occurred_at() = ToProtoTimestamp(at);
      e.set_type("peerpath.checkin.v1.CheckInRecordedEvent");
      e.mutable_payload()->PackFrom(c);
    }
    *e.mutable_occurred_at() = ToProtoTimestamp(at);
    log.push_back(std::move(e));
  }
  return log;
}

void ApplyThroughput(int seconds) {
  auto test_db = testing::TestDatabase::Create();
  auto db = testing::MigrateAndConnect(*test_db, "evaluation", 2);
  const int64_t n = std::max<int64_t>(20000, int64_t{20000} * seconds);
  const std::vector<common::v1::Event> log = CheckInLog(n);
  EventConsumer consumer(*db, ConsumerOptions{.source = "checkin"}, testing::FetcherOver(log),
                         ApplyCheckInEvent);
  auto run = [&](const char* label) {
    const auto t0 = Clock::now();
    int64_t applied = 0;
    for (;;) {
      auto page = consumer.PollOnce();
      if (!page.ok()) {
        std::printf("apply failed: %s\n", std::string(page.status().message()).c_str());
        return;
      }
      auto position = consumer.Position();
      applied += *page;
      if (position.ok() && *position >= n) break;
    }
    const double ms = Ms(Clock::now() - t0);
    std::printf("%-40s %9.0f events/s  (%lld events, %lld handled, %.0f ms; target >= 20,000/s)\n",
                label, static_cast<double>(n) / (ms / 1000.0), static_cast<long long>(n),
                static_cast<long long>(applied), ms);
  };
  std::printf("\n== events applied through the consumer (pages of 500, one transaction each) ==\n");
  run("per-event handler, first delivery");
  test_db->AdminQuery("UPDATE evaluation.consumer_positions SET position = 0");
  run("the same log delivered again");
  const auto rows = test_db->AdminQuery(
      "SELECT (SELECT sum(contacts) FROM evaluation.supporter_contacts_month), "
      "(SELECT count(*) FROM evaluation.applied_events)");
  std::printf("after both: %s contacts counted, %s events recorded (each once)\n",
              rows[0][0].c_str(), rows[0][1].c_str());

  // The same log consumed as the service does (ApplyCheckInBatch: a run of one agency's check-in
  // events in one statement), into an empty database. Then a county's log of 16 agencies in
  // turn, whose consecutive events are never one agency's: in runs of consecutive events, and
  // in one run per agency of a page (runs_by_agency, as the service consumes).
  const auto batched = [&](const char* label, const std::vector<common::v1::Event>& events,
                           const ConsumerOptions& options) {
    auto batch_db = testing::TestDatabase::Create();
    auto batch = testing::MigrateAndConnect(*batch_db, "evaluation", 2);
    EventConsumer consumer(*batch, options, testing::FetcherOver(events), ApplyCheckInEvent);
    const auto t0 = Clock::now();
    for (;;) {
      auto page = consumer.PollOnce();
      if (!page.ok()) {
        std::printf("batch apply failed: %s\n", std::string(page.status().message()).c_str());
        return;
      }
      if (auto position = consumer.Position(); position.ok() && *position >= n) break;
    }
    const double ms = Ms(Clock::now() - t0);
    const auto same = batch_db->AdminQuery(
        "SELECT (SELECT sum(contacts) FROM evaluation.supporter_contacts_month), (SELECT "
        "count(*) FROM evaluation.wellbeing_month)");
    std::printf(
        "%-40s %9.0f events/s  (%lld events, %.0f ms; %s contacts, %s enrollment-months; "
        "target >= 20,000/s)\n",
        label, static_cast<double>(n) / (ms / 1000.0), static_cast<long long>(n), ms,
        same[0][0].c_str(), same[0][1].c_str());
  };
  ConsumerOptions consecutive = CheckInConsumerOptions();
  consecutive.runs_by_agency = false;
  batched("consumer with the batch handler (service)", log, CheckInConsumerOptions());
  const std::vector<common::v1::Event> county = CheckInLog(n, 16);
  batched("16 agencies in turn, consecutive runs", county, consecutive);
  batched("16 agencies in turn (service)", county, CheckInConsumerOptions());
}

constexpr int64_t kParticipants = 10000;
constexpr int64_t kSupporters = 1000;

void Generate(testing::TestDatabase& db, int64_t checkins) {
  const std::string n = absl::StrCat(checkins);
  const std::string p = absl::StrCat(kParticipants);
  const std::string s = absl::StrCat(kSupporters);
  auto admin = db.Admin();
  pqxx::work tx(*admin);
  tx.exec0("SET LOCAL search_path = evaluation");
  tx.exec0("SET LOCAL statement_timeout = 0");
  tx.exec0(
      "CREATE TABLE bench_raw_checkins (id bigint PRIMARY KEY, agency_id text NOT NULL, "
      "enrollment_id uuid NOT NULL, participant_id text NOT NULL, pathway_key text NOT NULL, "
      "supporter_id text NOT NULL, occurred_at timestamptz NOT NULL, score smallint NOT NULL)");
  // Check-ins spread evenly over two years (2024-10-01 to 2026-09-30), each participant's
  // spread over the whole time.
  tx.exec0(absl::StrCat(
      "INSERT INTO bench_raw_checkins SELECT g, 'bench', ('00000000-0000-4000-8000-' || "
      "lpad((g % ",
      p, ")::text, 12, '0'))::uuid, 'p' || (g % ", p,
      "), (ARRAY['early_engagement', "
      "'step_down', 'crisis_transition', 'structured_check_in'])[1 + (g % ",
      p,
      ") % 4], "
      "'s' || ((g % ",
      p, ") % ", s, "), timestamptz '2024-10-01' + (g::float8 / ", n,
      ") * interval '730 days', 1 + ((g / ", p, ") + (g % 7)) % 5 FROM generate_series(1, ", n,
      ") g"));
  tx.exec0("CREATE INDEX ON bench_raw_checkins (agency_id, occurred_at)");
  // The other read models: one enrollment and one match per participant, first appointments,
  // concerns and county outcomes.
  tx.exec0(absl::StrCat(
      "INSERT INTO enrollments SELECT 'bench', ('00000000-0000-4000-8000-' || lpad(i::text, 12, "
      "'0'))::uuid, 'p' || i, (ARRAY['early_engagement', 'step_down', 'crisis_transition', "
      "'structured_check_in'])[1 + i % 4], NULL, timestamptz '2024-10-01' + (i % 700) * "
      "interval '1 day', NULL FROM generate_series(0, ",
      kParticipants - 1, ") i"));
  tx.exec0(absl::StrCat(
      "INSERT INTO matches SELECT 'bench', gen_random_uuid(), 's' || (i % ", s,
      "), 'p' || i, "
      "'req-' || i, '', timestamptz '2024-10-01' + (i % 700) * interval '1 day', CASE WHEN i % 3 "
      "= 0 THEN timestamptz '2026-02-01' + (i % 100) * interval '1 day' END, '' FROM "
      "generate_series(0, ",
      kParticipants - 1, ") i WHERE i % 5 <> 0"));
  tx.exec0(absl::StrCat(
      "INSERT INTO appointments SELECT 'bench', gen_random_uuid(), ('00000000-0000-4000-8000-' || "
      "lpad(i::text, 12, '0'))::uuid, 'p' || i, (ARRAY['early_engagement', 'step_down', "
      "'crisis_transition', 'structured_check_in'])[1 + i % 4], true, CASE WHEN i % 3 = 0 THEN "
      "'missed' ELSE 'attended' END, timestamptz '2024-10-01' + (i % 720) * interval '1 day', "
      "i % 2 = 0 FROM generate_series(0, ",
      kParticipants - 1, ") i"));
  tx.exec0(
      absl::StrCat("INSERT INTO concerns SELECT 'bench', gen_random_uuid(), 'p' || (i * 7 % ", p,
                   "), NULL, "
                   "1 + i % 7, 1 + i % 3, timestamptz '2024-10-01' + (i % 729) * interval '1 day', "
                   "timestamptz '2024-10-01' + (i % 729) * interval '1 day' + (i % 240) * interval "
                   "'1 minute', NULL, NULL, i % 9 = 0 FROM generate_series(1, ",
                   kParticipants * 2, ") i"));
  tx.exec0(absl::StrCat(
      "INSERT INTO service_outcomes (agency_id, participant_id, kind, discharge_setting, "
      "occurred_at, reported_by) SELECT 'bench', 'p' || (i * 13 % ",
      p,
      "), (ARRAY['discharge', "
      "'crisis_contact', 'emergency_visit', 'outpatient_follow_up', 'first_appointment_attended'])"
      "[1 + i % 5], CASE WHEN i % 5 = 0 THEN 'crisis_stabilization' END, timestamptz "
      "'2024-10-01' + (i % 729) * interval '1 day', 'county' FROM generate_series(1, ",
      kParticipants * 2, ") i"));
  // The rollups the consumer builds from the same check-ins, stored in the order the consumer
  // would write them (check-ins arrive in time order).
  tx.exec0(
      "INSERT INTO contact_days SELECT * FROM (SELECT DISTINCT agency_id, participant_id, "
      "(occurred_at AT TIME ZONE 'UTC')::date AS day FROM bench_raw_checkins) d ORDER BY day");
  tx.exec0(
      "INSERT INTO supporter_contacts_month SELECT agency_id, supporter_id, date_trunc('month', "
      "occurred_at AT TIME ZONE 'UTC')::date, count(*) FROM bench_raw_checkins GROUP BY 1, 2, 3");
  tx.exec0(
      "INSERT INTO wellbeing_first SELECT DISTINCT ON (enrollment_id) agency_id, enrollment_id, "
      "occurred_at, ('00000000-0000-4000-9000-' || lpad(id::text, 12, '0'))::uuid, score FROM "
      "bench_raw_checkins ORDER BY enrollment_id, occurred_at, id");
  tx.exec0(
      "INSERT INTO wellbeing_month SELECT * FROM (SELECT DISTINCT ON (enrollment_id, month) "
      "agency_id, enrollment_id, participant_id, pathway_key, month, count(*) OVER (PARTITION BY "
      "enrollment_id, month), occurred_at, ('00000000-0000-4000-9000-' || lpad(id::text, 12, "
      "'0'))::uuid, score FROM (SELECT *, date_trunc('month', occurred_at AT TIME ZONE "
      "'UTC')::date AS month FROM bench_raw_checkins) r ORDER BY enrollment_id, month, "
      "occurred_at DESC, id DESC) w ORDER BY month, occurred_at");
  tx.commit();
  // The steady state of tables filled over months, which autovacuum has long visited (visibility
  // map set, statistics current), rather than a bulk load that autovacuum would work through
  // while the reports are timed.
  pqxx::nontransaction(*admin).exec0("VACUUM ANALYZE");
}

// The check-in measures of March 2026 straight from the raw rows: contacts per supporter, and per
// enrollment its first score ever and its latest score in the month.
void PlainSql(pqxx::connection& admin) {
  pqxx::work tx(admin);
  tx.exec0("SET LOCAL search_path = evaluation");
  tx.exec(
      "SELECT supporter_id, count(*) FROM bench_raw_checkins WHERE agency_id = 'bench' AND "
      "occurred_at >= '2026-03-01' AND occurred_at < '2026-04-01' GROUP BY supporter_id");
  tx.exec(
      "SELECT direction, count(*) FROM (SELECT enrollment_id, sign((array_agg(score ORDER BY "
      "occurred_at DESC, id DESC) FILTER (WHERE occurred_at >= '2026-03-01'))[1] - "
      "(array_agg(score ORDER BY occurred_at, id))[1]) AS direction FROM bench_raw_checkins "
      "WHERE agency_id = 'bench' AND occurred_at < '2026-04-01' GROUP BY enrollment_id HAVING "
      "count(*) FILTER (WHERE occurred_at >= '2026-03-01') > 0 AND count(*) >= 2) t GROUP BY "
      "direction");
  tx.commit();
}

void ReportLatency(int64_t checkins) {
  auto test_db = testing::TestDatabase::Create();
  auto db = testing::MigrateAndConnect(*test_db, "evaluation", 3);
  const auto g0 = Clock::now();
  Generate(*test_db, checkins);
  const double generate_s = Ms(Clock::now() - g0) / 1000.0;
  const auto sizes = test_db->AdminQuery(
      "SELECT (SELECT count(*) FROM evaluation.contact_days), (SELECT count(*) FROM "
      "evaluation.wellbeing_month), (SELECT count(*) FROM evaluation.supporter_contacts_month)");

  v1::ReportPeriod period;
  period.set_kind(v1::PERIOD_KIND_MONTH);
  period.mutable_start_date()->set_year(2026);
  period.mutable_start_date()->set_month(3);
  period.mutable_start_date()->set_day(1);
  const absl::Time now = absl::Now();
  std::vector<double> report_ms;
  int shown = 0;
  for (int i = 0; i < 11; ++i) {
    v1::ProgramReport report;
    const auto t0 = Clock::now();
    auto st = BuildProgramReport(*db, "bench", period, "", "", 11, now, report);
    if (!st.ok()) {
      std::printf("report failed: %s\n", std::string(st.message()).c_str());
      return;
    }
    if (i > 0) report_ms.push_back(Ms(Clock::now() - t0));  // The first warms the caches.
    shown = 0;
    for (const auto& cell : report.cells()) shown += cell.suppressed() ? 0 : 1;
  }
  // Where the time goes: reading the read models (here all on one connection; the report reads
  // each rollup on a connection of its own meanwhile), and computing every scope in memory.
  {
    const ReportWindow window{absl::FromCivil(absl::CivilDay(2026, 3, 1), absl::UTCTimeZone()),
                              absl::FromCivil(absl::CivilDay(2026, 4, 1), absl::UTCTimeZone()),
                              "UTC", absl::UTCTimeZone()};
    const auto t0 = Clock::now();
    auto facts =
        db->TransactForAgency("bench", [&](pqxx::work& tx) { return LoadFacts(tx, window, now); });
    const auto t1 = Clock::now();
    if (facts.ok()) {
      ComputeScopes(*facts, {{},
                             {"", "crisis_transition"},
                             {"", "early_engagement"},
                             {"", "step_down"},
                             {"", "structured_check_in"}});
    }
    std::printf(
        "    parts: reading the read models on one connection %.1f ms, computing 5 scopes %.1f "
        "ms\n",
        Ms(t1 - t0), Ms(Clock::now() - t1));
  }
  auto admin = test_db->Admin();
  std::vector<double> sql_ms;
  for (int i = 0; i < 4; ++i) {
    const auto t0 = Clock::now();
    PlainSql(*admin);
    if (i > 0) sql_ms.push_back(Ms(Clock::now() - t0));
  }
  std::sort(report_ms.begin(), report_ms.end());
  std::sort(sql_ms.begin(), sql_ms.end());
  const double report_median = report_ms[report_ms.size() / 2];
  const double sql_median = sql_ms[sql_ms.size() / 2];
  std::printf(
      "%9lld check-ins (generated in %.0f s; rollups: %s contact days, %s enrollment-months, %s "
      "supporter-months)\n",
      static_cast<long long>(checkins), generate_s, sizes[0][0].c_str(), sizes[0][1].c_str(),
      sizes[0][2].c_str());
  std::printf(
      "    GetProgramReport (all 25 measures, 5 scopes, suppression): median %.1f ms, max %.1f ms "
      "(%d of 79 cells shown)\n",
      report_median, report_ms.back(), shown);
  std::printf(
      "    plain SQL GROUP BY over raw check-ins (2 check-in measures only): median %.1f ms\n"
      "    ratio %.3f (target < 50 ms and <= 0.05 x plain SQL)\n",
      sql_median, report_median / sql_median);
}

}  // namespace
}  // namespace peerpath::evaluation

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  int seconds = 5;
  if (const char* env = std::getenv("PEERPATH_BENCH_SECONDS"); env != nullptr) {
    if (!absl::SimpleAtoi(env, &seconds) || seconds < 1) seconds = 1;
  }
  peerpath::evaluation::ApplyThroughput(seconds);
  std::string sizes = seconds <= 1 ? "100000" : "1000000,10000000";
  if (const char* env = std::getenv("PEERPATH_EVALUATION_BENCH_CHECKINS"); env != nullptr) {
    sizes = env;
  }
  std::printf(
      "\n== GetProgramReport over the rollups vs plain SQL over raw rows (March 2026, "
      "%lld participants, %lld supporters) ==\n",
      static_cast<long long>(peerpath::evaluation::kParticipants),
      static_cast<long long>(peerpath::evaluation::kSupporters));
  for (absl::string_view size : absl::StrSplit(sizes, ',', absl::SkipEmpty())) {
    int64_t n = 0;
    if (absl::SimpleAtoi(size, &n) && n > 0) peerpath::evaluation::ReportLatency(n);
  }
  return 0;
}
