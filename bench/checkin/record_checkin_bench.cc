// RecordCheckIn, the hot path of every peer supporter's day.
//
//   checkin_record_bench                 the pure answer validation and rule evaluation
//                                        (Google Benchmark)
//   PEERPATH_TEST_PG_ADMIN_URL=... checkin_record_bench
//                                        also: the real binary over gRPC at 1, 8 and 32 clients
//                                        (each its own supporter and enrollment, a new
//                                        idempotency key per call), printed beside pgbench's
//                                        single-row prepared INSERTs of a similar size (about
//                                        600 bytes) into the same PostgreSQL, same client counts,
//                                        and the database's floor: a check-in's rows written by
//                                        pgbench in one round trip, alone and 8 coalesced;
//                                        then the machine's bound at 32 clients: an empty RPC's
//                                        and the rows' processor time per check-in, added.
// PEERPATH_BENCH_SECONDS (default 5) sets the length of each phase;
// PEERPATH_BENCH_CHECKIN_MAX_WRITE_BATCH=1 turns the service's group commit off, for comparison.
// The ratio is the figure to read: both sides share the cluster's durability settings (tools/test
// runs with fsync=off). "per commit" is the mean number of check-ins per write transaction.
#include <benchmark/benchmark.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "services/checkin/pathway.h"
#include "tests/support/cpu_share.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::checkin {
namespace {

Answers StructuredAnswers(int wellbeing) {
  Answers answers;
  auto add = [&](const char* key) {
    auto* a = answers.Add();
    a->set_field_key(key);
    return a;
  };
  add("opening_question")->set_text_value("How has the week been since we last spoke?");
  add("current_stressors")->set_text_value("Work hours changed; sleeping less; rent is due.");
  add("current_supports")->set_text_value("Sister nearby, Tuesday group, walks with the dog.");
  add("wellbeing")->set_scale_value(wellbeing);
  add("encouragement_to_seek_support_given")->set_bool_value(true);
  add("concern_noticed")->set_enum_value("none");
  return answers;
}

void BM_ValidateAndRouteStructuredCheckIn(benchmark::State& state) {
  const v1::PathwayVersion& pathway = DefaultPathways()[3];
  const Answers answers = StructuredAnswers(4);
  for (auto _ : state) {
    benchmark::DoNotOptimize(ValidateAnswers(pathway, answers));
    benchmark::DoNotOptimize(FiringRules(pathway, answers));
  }
}
BENCHMARK(BM_ValidateAndRouteStructuredCheckIn);

struct Figures {
  double per_second = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  long calls = 0;
  long errors = 0;
};

Figures Hammer(int clients, absl::Duration length, const std::function<bool(int)>& call) {
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> latencies(clients);
  std::atomic<long> errors{0};
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      while (!stop.load(std::memory_order_relaxed)) {
        const absl::Time begin = absl::Now();
        if (!call(t)) ++errors;
        latencies[t].push_back(absl::ToDoubleMilliseconds(absl::Now() - begin));
      }
    });
  }
  std::this_thread::sleep_for(absl::ToChronoNanoseconds(length));
  stop = true;
  for (auto& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Figures f;
  f.calls = static_cast<long>(all.size());
  f.errors = errors;
  f.per_second = static_cast<double>(all.size()) / seconds;
  if (!all.empty()) {
    f.p50_ms = all[all.size() / 2];
    f.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return f;
}

// pgbench's transactions per second running `transaction` (a pgbench script) as each.
double PgbenchRate(const std::string& url, const std::string& name, const std::string& transaction,
                   int clients, int seconds) {
  const std::string script =
      absl::StrCat(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp", "/", name, ".sql");
  {
    std::ofstream out(script);
    out << transaction;
  }
  const std::string command =
      absl::StrCat("pgbench -n -M prepared -f ", script, " -c ", clients, " -j ",
                   std::min(clients, 4), " -T ", seconds, " '", url, "' 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return 0;
  std::string output;
  char buffer[512];
  while (fgets(buffer, sizeof buffer, pipe) != nullptr) output += buffer;
  pclose(pipe);
  std::remove(script.c_str());
  std::smatch m;
  if (std::regex_search(output, m, std::regex(R"(tps = ([0-9.]+))"))) return std::stod(m[1]);
  std::fprintf(stderr, "pgbench failed:\n%s\n", output.c_str());
  return 0;
}

// One single-row prepared INSERT of about 600 bytes per transaction: the issue's yardstick.
double PgbenchInsertRate(const std::string& url, int clients, int seconds) {
  return PgbenchRate(url, "checkin_insert",
                     absl::StrCat("INSERT INTO bench_rows (agency_id, participant_id, answers) "
                                  "VALUES ('agency-a', 'p-bench', '{\"answers\": \"",
                                  std::string(560, 'x'), "\"}');\n"),
                     clients, seconds);
}

// The rows the issue names for a check-in (check-in row, idempotency claim, outbox event and
// audit row), written by pgbench in one pipelined transaction (one round trip) into the service's
// own tables, with their indexes and foreign keys, for `per_transaction` check-ins at once (one
// multi-row INSERT per table): what one round trip per check-in costs the database before the
// service reads or decides anything, alone and coalesced. A lower bound of RecordCheckIn's
// database work: no read, no enrollment update, no audit chaining or event positioning after
// commit; as the superuser, so without row-level security. Client c writes to enrollment c % 32
// (public.bench_enrollments). Returns check-ins per second.
double PgbenchCheckInRowsRate(const std::string& url, int clients, int seconds,
                              int per_transaction) {
  const std::string rows = absl::StrCat(" FROM generate_series(1, ", per_transaction, ") g");
  return per_transaction *
         PgbenchRate(
             url, absl::StrCat("checkin_rows_", per_transaction),
             absl::StrCat(
                 "\\set k random(1, 1000000000000)\n"
                 "\\startpipeline\n"
                 "BEGIN;\n"
                 "INSERT INTO checkin.idempotency_keys (agency_id, idempotency_key, method, "
                 "request_hash, response) SELECT 'agency-a', 'rows-' || :client_id || '-' || :k "
                 "|| '-' || g, 'RecordCheckIn', sha256((:k || '-' || g)::bytea), "
                 "decode(repeat('ab', 300), 'hex')",
                 rows,
                 ";\n"
                 "INSERT INTO checkin.check_ins (agency_id, enrollment_id, participant_id, "
                 "supporter_id, recorded_by, recorded_by_role, pathway_key, pathway_version, "
                 "answers, wellbeing, contact_mode, occurred_at) SELECT 'agency-a', e.id, "
                 "e.participant_id, gen_random_uuid(), 'peer-bench', 'peer_supporter', "
                 "e.pathway_key, e.pathway_version, '{\"answers\": \"",
                 std::string(560, 'x'),
                 "\"}', 4, 'phone', now() FROM checkin.enrollments e CROSS JOIN "
                 "generate_series(1, ",
                 per_transaction,
                 ") g WHERE e.id = (SELECT id FROM public.bench_enrollments WHERE n = "
                 ":client_id::integer % 32);\n"
                 "INSERT INTO checkin.outbox (agency_id, event_type, aggregate_id, payload) "
                 "SELECT 'agency-a', 'peerpath.checkin.v1.CheckInRecordedEvent', 'bench', "
                 "decode(repeat('cd', 120), 'hex')",
                 rows,
                 ";\n"
                 "INSERT INTO checkin.audit_log (agency_id, occurred_at, actor, actor_role, "
                 "action, object_type, object_id, participant_id, decision, request_id) SELECT "
                 "'agency-a', now(), 'peer-bench', 'peer_supporter', 'checkin.RecordCheckIn', "
                 "'check_in', gen_random_uuid()::text, 'p-bench', 'allowed', 'request-bench'",
                 rows,
                 ";\n"
                 "END;\n"
                 "\\endpipeline\n"),
             clients, seconds);
}

void OverGrpc() {
  using peerpath::testing::ServiceProcess;
  using peerpath::testing::TestDatabase;
  using peerpath::testing::TokenFor;
  const char* seconds_env = std::getenv("PEERPATH_BENCH_SECONDS");
  const int seconds = seconds_env ? std::max(1, std::atoi(seconds_env)) : 5;
  // PEERPATH_BENCH_CHECKIN_MAX_WRITE_BATCH=1 measures without the group commit.
  const char* batch_env = std::getenv("PEERPATH_BENCH_CHECKIN_MAX_WRITE_BATCH");
  auto db = TestDatabase::Create();
  ServiceProcess server("checkin", db->UrlFor("checkin"),
                        {"--db_pool_size=16", "--log_level=info",
                         absl::StrCat("--checkin_max_write_batch=", batch_env ? batch_env : "64")});
  if (!server.WaitListening() || !server.WaitHealth(true)) {
    std::fprintf(stderr, "checkin did not start:\n%s\n", server.Log().c_str());
    return;
  }
  auto stub = v1::CheckInService::NewStub(server.Channel());
  constexpr int kMaxClients = 32;
  std::vector<std::string> enrollments, tokens;
  const std::string staff = "Bearer " + TokenFor("agency-a", {"case_manager"}, "staff-1");
  for (int i = 0; i < kMaxClients; ++i) {
    db->AdminQuery(absl::StrCat(
        "INSERT INTO checkin.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, started_at) VALUES ('agency-a', gen_random_uuid(), "
        "gen_random_uuid(), 'peer-",
        i, "', 'p-", i, "', now())"));
    v1::CreateEnrollmentRequest request;
    request.set_participant_id(absl::StrCat("p-", i));
    request.set_pathway_key("structured_checkin");
    request.mutable_schedule()->mutable_weekly()->add_weekdays(v1::WEEKDAY_MONDAY);
    request.set_idempotency_key(absl::StrCat("enroll-", i));
    grpc::ClientContext context;
    context.AddMetadata("authorization", staff);
    v1::CreateEnrollmentResponse response;
    grpc::Status status = stub->CreateEnrollment(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "enrollment failed: %s\n", status.error_message().c_str());
      return;
    }
    enrollments.push_back(response.enrollment().enrollment_id());
    tokens.push_back("Bearer " +
                     TokenFor("agency-a", {"peer_supporter"}, absl::StrCat("peer-", i)));
  }
  std::atomic<long> key{0};
  auto record = [&](int client) {
    v1::RecordCheckInRequest request;
    request.set_enrollment_id(enrollments[client]);
    *request.mutable_occurred_at() = ToProtoTimestamp(absl::Now());
    request.set_contact_mode(v1::CONTACT_MODE_PHONE);
    *request.mutable_answers() = StructuredAnswers(3 + static_cast<int>(key % 2));
    request.set_idempotency_key(absl::StrCat("bench-", key++));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    context.AddMetadata("authorization", tokens[client]);
    v1::RecordCheckInResponse response;
    return stub->RecordCheckIn(&context, request, &response).ok();
  };
  db->AdminQuery(
      "CREATE TABLE public.bench_rows (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), agency_id "
      "text NOT NULL, participant_id text NOT NULL, answers jsonb NOT NULL, recorded_at "
      "timestamptz NOT NULL DEFAULT now())");
  db->AdminQuery("CREATE TABLE public.bench_enrollments (n integer PRIMARY KEY, id uuid NOT NULL)");
  for (size_t i = 0; i < enrollments.size(); ++i) {
    db->AdminQuery(absl::StrCat("INSERT INTO public.bench_enrollments VALUES (", i, ", '",
                                enrollments[i], "')"));
  }
  const std::string admin_url = peerpath::testing::AdminUrl(db->name());
  std::printf("\nRecordCheckIn over gRPC vs single-row prepared INSERT (pgbench), %d s each\n",
              seconds);
  std::printf("%8s %14s %10s %10s %8s %16s %8s %14s\n", "clients", "checkins/s", "p50 ms", "p99 ms",
              "errors", "pgbench INSERT/s", "ratio", "per commit");
  std::vector<std::pair<int, double>> insert_rates;
  for (int clients : {1, 8, 32}) {
    // Check-ins per write transaction, from the service's histogram.
    const auto batches = [&] {
      return peerpath::testing::ReadHistogram(server.metrics_port(),
                                              "peerpath_checkin_write_batch_size");
    };
    const peerpath::testing::HistogramTotals before = batches();
    const Figures f = Hammer(clients, absl::Seconds(seconds), record);
    const double per_commit = peerpath::testing::MeanBetween(before, batches());
    // The service chains the audit rows of what it committed just after; the INSERTs run once
    // it has caught up, so that they do not share the machine with it.
    db->WaitForAuditChained("checkin");
    const double inserts = PgbenchInsertRate(admin_url, clients, seconds);
    insert_rates.emplace_back(clients, inserts);
    std::printf("%8d %14.0f %10.2f %10.2f %8ld %16.0f %8.2f %14.1f\n", clients, f.per_second,
                f.p50_ms, f.p99_ms, f.errors, inserts, inserts > 0 ? f.per_second / inserts : 0.0,
                per_commit);
    std::fflush(stdout);
  }
  std::printf("(per commit: check-ins per write transaction, the group commit's mean batch)\n");
  std::printf(
      "\nWithout the service (the database's floor): pgbench writing a check-in's rows\n"
      "(check-in, idempotency claim, outbox event, audit row) in one round trip into the\n"
      "service's tables, one check-in per transaction and 8 coalesced, in check-ins/s\n");
  std::printf("%8s %16s %8s %16s %8s %16s\n", "clients", "1 per tx", "ratio", "8 per tx", "ratio",
              "pgbench INSERT/s");
  for (const auto& [clients, inserts] : insert_rates) {
    const double one = PgbenchCheckInRowsRate(admin_url, clients, seconds, 1);
    const double eight = PgbenchCheckInRowsRate(admin_url, clients, seconds, 8);
    std::printf("%8d %16.0f %8.2f %16.0f %8.2f %16.0f\n", clients, one,
                inserts > 0 ? one / inserts : 0.0, eight, inserts > 0 ? eight / inserts : 0.0,
                inserts);
    std::fflush(stdout);
  }
  // What this machine could do at best: every check-in costs at least an RPC and its rows (with
  // the audit chaining DESIGN.md requires, which the service does beside them). Each is measured
  // alone, saturating the machine as far as it can, with its processor share; the processor time
  // they take per check-in, added, bounds the rate from above (the rows 32 to a transaction on 2
  // connections: the group commit's shape at its best; no read, validation or event relay).
  double empty = 0, best_rows = 0;
  db->WaitForAuditChained("checkin");
  using peerpath::testing::CpuShare;
  const double empty_share = CpuShare([&] {
    empty = Hammer(kMaxClients, absl::Seconds(seconds), [&](int) {
              return peerpath::testing::HealthStatus(server.Channel(), "") == "SERVING";
            }).per_second;
  });
  const double rows_share =
      CpuShare([&] { best_rows = PgbenchCheckInRowsRate(admin_url, 2, seconds, 32); });
  const double inserts_32 = insert_rates.back().second;
  const double bound = peerpath::testing::BoundFromCpu(empty, empty_share, best_rows, rows_share);
  std::printf(
      "\nThe machine's bound at %d clients, from processor time alone\n"
      "  empty RPC (health Check), %d clients:         %8.0f calls/s      processor %3.0f%% busy\n"
      "  a check-in's rows, 32 per tx, 2 connections: %8.0f check-ins/s  processor %3.0f%% busy\n"
      "  an RPC and its rows per check-in, nothing else: at most %.0f check-ins/s, ratio %.2f\n",
      kMaxClients, kMaxClients, empty, 100 * empty_share, best_rows, 100 * rows_share, bound,
      inserts_32 > 0 ? bound / inserts_32 : 0.0);
  std::fflush(stdout);
  const int stored = db->AdminQuery("SELECT count(*) FROM checkin.check_ins")[0][0].as<int>();
  std::printf("check-ins stored: %d\n", stored);
}

}  // namespace
}  // namespace peerpath::checkin

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  if (std::getenv("PEERPATH_TEST_PG_ADMIN_URL") != nullptr) peerpath::checkin::OverGrpc();
  return 0;
}
