// Escalation hot paths, against a real PostgreSQL (PEERPATH_TEST_PG_ADMIN_URL, as tools/test sets):
//
//   1. route-and-persist: RaiseConcern over gRPC on the real binary (validate, route, insert the
//      concern with its transitions, events and audit row, store the idempotent response), with
//      16 calls in flight, all of one agency, then one of each of 16 agencies, beside plain
//      single-row INSERTs (one transaction each, as many connections as calls in flight) into a
//      table of the same database in the same run, the calls each write transaction held
//      (the group commit's mean batch, from the service's histogram), what the service's
//      background work (page delivery, event and feed positions, audit chaining) had left at
//      each phase's end, and the database's floor:
//      the rows a concern writes, in one statement from libpq (no read, no service); and the
//      machine's bound: an empty RPC's and a concern's rows' processor time (16 to a
//      transaction, the best case; and as many as the group commit gathered), added; and each
//      phase's processor time per concern, part by part (the database server, the service, this
//      client, the whole machine), beside what the target leaves the machine per concern;
//   1b. route-and-persist from check-in's event log: 4,000 ConcernRaisedEvents per second of
//      phase length, of one agency, then as many of 16 agencies in turn, served by a real
//      peerpath-checkin and consumed by a second escalation binary; concerns per second from the
//      first page applied to the last, beside the INSERT rate, and processor time per concern;
//   2. the deadline sweeper (in-process) with 100,000 open concerns (beside 200,000 resolved) of
//      which 0, then 100 are due, the open/overdue gauges' count (every 5 s in the service), and
//      the plans of both queries (on the partial index concerns_open_by_deadline, no table scan);
//   3. ListConcerns with the sweeper's concerns (each given its ROUTED transition): a clinician's
//      pages walked back from the newest, and a supervisor's who may see none of them;
//   4. the pure routing function (Google Benchmark).
//
// PEERPATH_BENCH_SECONDS (default 5) sets the length of each timed phase;
// PEERPATH_BENCH_ESCALATION_IN_FLIGHT (default 16, at most 256) the calls in flight in phase 1.
#include <benchmark/benchmark.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/db.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "services/escalation/notifier.h"
#include "services/escalation/routing.h"
#include "services/escalation/store.h"
#include "services/escalation/sweeper.h"
#include "tests/support/cpu_share.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::escalation {
namespace {

using namespace std::chrono_literals;

void BM_RouteCriticalConcern(benchmark::State& state) {
  const RoutingPolicy policy = DefaultPolicy("UTC", absl::UTCTimeZone());
  const RoutingRule* rule = RuleFor(policy, common::v1::CONCERN_CATEGORY_BASIC_NEEDS,
                                    common::v1::CONCERN_SEVERITY_ROUTINE);
  absl::Time now = absl::FromUnixSeconds(1795000000);
  for (auto _ : state) {
    benchmark::DoNotOptimize(RouteFrom(*rule, 0, PersonDirectory{}, policy.calendar, now));
    now += absl::Minutes(7);
  }
}
BENCHMARK(BM_RouteCriticalConcern)->Repetitions(5)->ReportAggregatesOnly(true);

struct Figures {
  double per_second = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  long calls = 0;
  long errors = 0;
};

// Runs `call(thread)` from `in_flight` threads for `length`; latency of each call.
Figures Hammer(int in_flight, absl::Duration length, const std::function<bool(int)>& call) {
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<double> all;
  std::atomic<long> errors{0};
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int t = 0; t < in_flight; ++t) {
    threads.emplace_back([&, t] {
      std::vector<double> mine;
      while (!stop) {
        const absl::Time before = absl::Now();
        if (!call(t)) ++errors;
        mine.push_back(absl::ToDoubleMilliseconds(absl::Now() - before));
      }
      std::lock_guard<std::mutex> lock(mu);
      all.insert(all.end(), mine.begin(), mine.end());
    });
  }
  std::this_thread::sleep_for(absl::ToChronoNanoseconds(length));
  stop = true;
  for (auto& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::sort(all.begin(), all.end());
  Figures f;
  f.calls = static_cast<long>(all.size());
  f.errors = errors;
  f.per_second = f.calls / seconds;
  if (!all.empty()) {
    f.p50_ms = all[all.size() / 2];
    f.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return f;
}

void Print(const char* name, const Figures& f) {
  std::printf("%-44s %9.0f/s  p50 %7.2f ms  p99 %7.2f ms  (%ld calls, %ld errors)\n", name,
              f.per_second, f.p50_ms, f.p99_ms, f.calls, f.errors);
}

// The plan of `sql` with `arguments`, as the sweeper runs it (its setting on, `plans`: prepared
// on a connection, as the sweeper's statements are), indented; "(failed)" if it failed.
std::string Plan(Database& database, const std::string& sql, const std::string& arguments,
                 Plans plans) {
  auto plan = database.TransactWithSetting(
      kSweeperSetting, "on",
      [&](pqxx::work& tx) -> absl::StatusOr<std::string> {
        tx.exec0("PREPARE bench_plan AS " + sql);
        const std::string text = testing::Explain(tx, "EXECUTE bench_plan (" + arguments + ")");
        tx.exec0("DEALLOCATE bench_plan");
        return "  " + absl::StrReplaceAll(absl::StripSuffix(text, "\n"), {{"\n", "\n  "}}) + "\n";
      },
      plans);
  return plan.ok() ? *plan : "(failed)";
}

// Route-and-persist of the concerns check-in raises, the way most concerns arrive: `count`
// ConcernRaisedEvents in check-in's event log (served by a real peerpath-checkin), all of one
// agency, then as many of 16 agencies in turn (a county's log, where the consumer's runs of one
// agency are one event long), consumed by an escalation binary started once the first are in the
// log (--checkin_address), each routed and written with its transitions, events, audit row, page
// and watch-feed note. The rate counts from the first page applied to the last, from the
// consumer's stored position.
void RouteFromCheckInLog(testing::TestDatabase& db, int count, double insert_rate,
                         pid_t postmaster) {
  std::printf("\n== route-and-persist from check-in's event log (%d concerns each) ==\n", count);
  testing::ServiceProcess checkin("checkin", db.UrlFor("checkin"), {"--log_level=info"});
  if (!checkin.WaitListening() || !checkin.WaitHealth(true)) {
    std::printf("check-in did not start:\n%s\n", checkin.Log().c_str());
    return;
  }
  const auto admin = db.Admin();
  admin->prepare("bench_emit",
                 "INSERT INTO checkin.outbox (agency_id, event_type, aggregate_id, payload) "
                 "VALUES ($1, 'peerpath.checkin.v1.ConcernRaisedEvent', $2, $3)");
  // `count` events in one transaction, of `agencies` agencies in turn.
  const auto emit = [&](int agencies) {
    pqxx::work tx(*admin);
    const absl::Time raised = absl::Now();
    for (int i = 0; i < count; ++i) {
      checkin::v1::ConcernRaisedEvent e;
      e.set_enrollment_id("5f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b");
      e.set_participant_id(absl::StrCat("client-", i % 997));
      e.set_supporter_id("peer-bench");
      e.set_category(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING);
      e.set_severity(common::v1::CONCERN_SEVERITY_URGENT);
      e.set_source(checkin::v1::CONCERN_SOURCE_ROUTING_RULE);
      e.set_check_in_id("0b7e2a41-3c6d-4f58-9e1a-2b3c4d5e6f70");
      e.set_receiving_clinician("dr-bench");
      *e.mutable_raised_at() = ToProtoTimestamp(raised);
      tx.exec_prepared0("bench_emit", absl::StrCat("bench-log-", i % agencies), e.enrollment_id(),
                        pqxx::binarystring(e.SerializeAsString()));
    }
    tx.commit();
  };
  emit(1);
  const testing::TokenFile token_file("platform", {"service"}, "svc-escalation");
  testing::ServiceProcess consumer(
      "escalation", db.UrlFor("escalation"),
      {"--deadline_sweep_interval=1h", "--log_level=info",
       absl::StrCat("--checkin_address=127.0.0.1:", checkin.grpc_port()), token_file.Flag()});
  const auto watcher = db.Admin();
  // The consumer's stored position; and the log's end, once check-in has numbered every event
  // (it numbers them as it serves a page), into `end`.
  const auto position = [&](int64_t* end) {
    pqxx::nontransaction tx(*watcher);
    if (*end == 0) {
      const pqxx::result r = tx.exec(
          "SELECT coalesce(max(position), 0) FROM checkin.outbox HAVING count(*) FILTER (WHERE "
          "position IS NULL) = 0");
      if (!r.empty()) *end = r[0][0].as<int64_t>();
    }
    return tx
        .exec1(
            "SELECT coalesce(max(position), 0) FROM escalation.consumer_positions WHERE "
            "source = 'checkin'")[0]
        .as<int64_t>();
  };
  // Drains what was emitted after position `before`; false when it was not consumed in time.
  const auto drain = [&](const char* name, int64_t before) {
    int64_t first = 0, last = 0;
    absl::Time first_at, last_at;
    testing::PartTimes start, end;
    double checkin_start = 0;
    const absl::Time give_up = absl::Now() + absl::Minutes(5);
    while (absl::Now() < give_up) {
      const int64_t at = position(&last);
      if (first == 0 && at > before) {
        // From the first page applied (its events not counted) to the last.
        first = at;
        first_at = absl::Now();
        start = testing::ReadPartTimes(postmaster, consumer.pid());
        checkin_start = testing::ProcessCpuSeconds(checkin.pid());
      }
      if (last > before && at >= last) {
        last_at = absl::Now();
        end = testing::ReadPartTimes(postmaster, consumer.pid());
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    if (last_at == absl::Time() || first >= last) {
      std::printf("the log was not consumed in time (position %lld of %lld):\n%s\n",
                  static_cast<long long>(position(&last)), static_cast<long long>(last),
                  consumer.Log().c_str());
      return int64_t{0};
    }
    const double checkin_seconds = testing::ProcessCpuSeconds(checkin.pid()) - checkin_start;
    const double routed = static_cast<double>(last - first);
    const double seconds = absl::ToDoubleSeconds(last_at - first_at);
    std::printf(
        "%-24s %7.0f concerns/s, ratio to plain INSERT %.2f (%.0f in %.2f s after the "
        "first page)\n",
        name, routed / seconds, insert_rate > 0 ? routed / seconds / insert_rate : 0.0, routed,
        seconds);
    const testing::PerCallTimes t = testing::PerCall(start, end, routed);
    std::printf(
        "  processor time per concern, us: database %.0f, escalation %.0f, check-in %.0f, "
        "machine %.0f\n",
        t.database, t.service, checkin_seconds * 1e6 / routed, t.machine);
    return last;
  };
  const int64_t one_agency = drain("one agency", 0);
  if (one_agency > 0) {
    emit(16);
    if (drain("16 agencies in turn", one_agency) > 0) {
      std::printf("concerns stored: %d (the target's 0.5 is RaiseConcern's, above)\n",
                  db.AdminQuery("SELECT count(*) FROM escalation.concerns WHERE agency_id LIKE "
                                "'bench-log-%'")[0][0]
                      .as<int>());
    }
  }
}

void RunDatabaseBenchmarks() {
  const char* seconds_env = std::getenv("PEERPATH_BENCH_SECONDS");
  const absl::Duration length = absl::Seconds(seconds_env ? std::atoi(seconds_env) : 5);
  // PEERPATH_BENCH_ESCALATION_IN_FLIGHT (default 16) sets the calls in flight of every phase but
  // the coalesced rows' (two connections), the agencies of the spread phase with them: the group
  // commit's batches grow with it, and so do the latencies.
  int in_flight = 16;
  if (const char* env = std::getenv("PEERPATH_BENCH_ESCALATION_IN_FLIGHT"); env != nullptr) {
    if (!absl::SimpleAtoi(env, &in_flight) || in_flight < 1 || in_flight > 256) {
      std::fprintf(stderr,
                   "PEERPATH_BENCH_ESCALATION_IN_FLIGHT must be a whole number from 1 to 256, not "
                   "\"%s\"\n",
                   env);
      std::exit(2);
    }
  }
  auto db = testing::TestDatabase::Create();
  testing::ServiceProcess service(
      "escalation", db->UrlFor("escalation"),
      {"--deadline_sweep_interval=1h", "--log_level=info", "--db_pool_size=16"});
  if (!service.WaitListening() || !service.WaitHealth(true)) {
    std::fprintf(stderr, "escalation did not start:\n%s\n", service.Log().c_str());
    return;
  }
  auto stub = v1::EscalationService::NewStub(service.Channel());
  const std::string token = testing::TokenFor("bench", {"clinician"}, "dr-bench");
  // One agency per caller thread: the audit chain of an agency is appended one at a time.
  std::vector<std::string> agency_tokens;
  for (int t = 0; t < in_flight; ++t) {
    agency_tokens.push_back(
        testing::TokenFor(absl::StrCat("bench-", t), {"clinician"}, "dr-bench"));
  }
  std::atomic<long> key{0};
  bool spread = false;
  auto raise = [&](int thread) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    context.AddMetadata("authorization", "Bearer " + (spread ? agency_tokens[thread] : token));
    v1::RaiseConcernRequest request;
    request.set_participant_id(absl::StrCat("client-", key % 997));
    request.set_category(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING);
    request.set_severity(common::v1::CONCERN_SEVERITY_URGENT);
    request.set_description("bench");
    request.set_idempotency_key(absl::StrCat("bench-", key++));
    v1::RaiseConcernResponse response;
    return stub->RaiseConcern(&context, request, &response).ok();
  };
  for (int i = 0; i < 50; ++i) raise(0);  // Warm-up: pool, policy version 1.
  spread = true;
  for (int t = 0; t < in_flight; ++t) raise(t);
  spread = false;

  db->AdminQuery(
      "CREATE TABLE public.plain_insert (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
      "agency_id text NOT NULL, participant_id text NOT NULL, severity text NOT NULL, "
      "created_at timestamptz NOT NULL DEFAULT now())");
  std::vector<std::unique_ptr<pqxx::connection>> connections;
  // One per call in flight, and two at least for the coalesced phases.
  for (int i = 0; i < std::max(in_flight, 2); ++i) {
    connections.push_back(std::make_unique<pqxx::connection>(testing::AdminUrl(db->name())));
  }
  auto insert = [&](int thread) {
    pqxx::work tx(*connections[thread]);
    tx.exec_params0(
        "INSERT INTO public.plain_insert (agency_id, participant_id, severity) "
        "VALUES ($1, $2, 'urgent')",
        "bench", absl::StrCat("client-", thread));
    tx.commit();
    return true;
  };
  // The database's floor for RaiseConcern: the rows one concern writes (the concern, its OPENED
  // and ROUTED transitions, the audit row, two outbox events, the idempotency key with a response,
  // the watch-feed note and the page) in one prepared statement, one round trip, as the
  // superuser (no row-level security): no read, no routing, no service, and nothing of what runs
  // after commit but the audit chaining, which runs beside it as beside RaiseConcern (event
  // positions, page delivery).
  // The count is written into the statement, so that its generic plan knows it.
  const std::string floor_sql = R"sql(
      WITH c AS (
        INSERT INTO escalation.concerns (agency_id, participant_id, category, severity, source,
          description, raised_by, raised_by_role, status, policy_id, policy_version,
          current_level, target_kind, target_id, ack_deadline, next_deadline,
          next_deadline_kind, notify_at, notified_at, opened_at)
        SELECT $1, $2, 'clinical_worsening', 'urgent', 'manual', 'bench', 'dr-bench',
          'clinician', 'open', p.id, p.version, 0, 'clinical_on_call', 'clinical-on-call',
          now() + interval '4 hours', now() + interval '4 hours', 'acknowledgement', now(), now(),
          now()
        FROM escalation.routing_policies p CROSS JOIN generate_series(1, COUNT) g
        WHERE p.agency_id = $1 AND p.version = 1
        RETURNING id, agency_id, participant_id),
      t AS (
        INSERT INTO escalation.concern_transitions (agency_id, concern_id, kind, from_status,
          status_after, level, target_kind, target_id, actor, actor_role, occurred_at)
        SELECT c.agency_id, c.id, k.kind, CASE WHEN k.n = 2 THEN 'open' END, 'open', 0,
          'clinical_on_call', 'clinical-on-call', 'dr-bench', 'clinician', now()
        FROM c CROSS JOIN (VALUES (1, 'opened'), (2, 'routed')) AS k (n, kind)),
      a AS (
        INSERT INTO escalation.audit_log (agency_id, occurred_at, actor, actor_role, action,
          object_type, object_id, participant_id, decision, request_id)
        SELECT c.agency_id, now(), 'dr-bench', 'clinician', 'escalation.RaiseConcern',
          'concern', c.id::text, c.participant_id, 'allowed', 'request-bench' FROM c),
      o AS (
        INSERT INTO escalation.outbox (agency_id, event_type, aggregate_id, payload)
        SELECT c.agency_id, 'peerpath.escalation.v1.ConcernOpenedEvent', c.id::text,
          decode(repeat('cd', 150), 'hex') FROM c CROSS JOIN generate_series(1, 2)),
      k AS (
        INSERT INTO escalation.idempotency_keys (agency_id, idempotency_key, method,
          request_hash, response)
        SELECT c.agency_id, $3 || '-' || c.id, 'RaiseConcern', sha256(convert_to($3, 'UTF8')),
          decode(repeat('ab', 400), 'hex') FROM c),
      w AS (
        INSERT INTO escalation.watch_feed (agency_id, kind, concern, previous_target_kind,
          previous_target_id, occurred_at, revision)
        SELECT c.agency_id, 1, decode(repeat('ef', 250), 'hex'), 0, '', now(), 1 FROM c)
      INSERT INTO escalation.notifications (agency_id, concern_id, reason, category, severity,
        level, target_kind, target_id, deadline)
      SELECT c.agency_id, c.id, 'opened', 2, 2, 0, 1, 'clinical-on-call',
        now() + interval '4 hours' FROM c)sql";
  constexpr int kCoalesced = 16;
  const auto prepare_floor = [&](pqxx::connection& connection, int count) {
    connection.prepare(absl::StrCat("floor_", count),
                       absl::StrReplaceAll(floor_sql, {{"COUNT", absl::StrCat(count)}}));
  };
  for (auto& connection : connections) prepare_floor(*connection, 1);
  // The coalesced phases write on two connections, as the group commit writes one agency's
  // batches at best (kConcurrentRaiseWritesPerAgency), up to 16 concerns to a statement.
  for (int t : {0, 1}) {
    for (int count = 2; count <= kCoalesced; ++count) prepare_floor(*connections[t], count);
  }
  // `per_transaction` concerns' rows in one statement (one round trip) and one transaction.
  auto rows_alone = [&](int thread, int per_transaction) {
    try {
      pqxx::work tx(*connections[thread]);
      tx.exec_prepared0(absl::StrCat("floor_", per_transaction), "bench",
                        absl::StrCat("client-", key % 997), absl::StrCat("floor-", key++));
      tx.commit();
      return true;
    } catch (const std::exception& e) {
      static std::once_flag once;
      std::call_once(once, [&] { std::fprintf(stderr, "floor statement failed: %s\n", e.what()); });
      return false;
    }
  };
  // Where each phase's processor time goes: the database server (the parent of any backend is
  // its postmaster), the service, this client.
  pid_t postmaster = 0;
  testing::ProcessCpuSeconds(db->AdminQuery("SELECT pg_backend_pid()")[0][0].as<int>(), false,
                             &postmaster);
  const auto parts = [&] { return testing::ReadPartTimes(postmaster, service.pid()); };
  // Interleaved phases so all see the same machine load.
  const Figures plain = Hammer(in_flight, length, insert);
  // The group commit's batches in each RaiseConcern phase: calls per write transaction, from the
  // service's batch-size histogram.
  const auto batches = [&] {
    return testing::ReadHistogram(service.metrics_port(), "peerpath_escalation_raise_batch_size");
  };
  // What the service's background work had not caught up with when a phase ended: pages not yet
  // delivered, watch-feed rows without a position, audit rows not chained (a phase that left
  // work behind would look faster than it is); and events without a position, which a consumer's
  // read gives them (none reads the log here: a deployment's evaluation service would, at a cost
  // this phase does not show).
  const auto left_behind = [&] {
    return db
        ->AdminQuery(
            "SELECT (SELECT count(*) FROM escalation.notifications WHERE delivered_at IS NULL "
            "AND gave_up_at IS NULL) || ' pages, ' || (SELECT count(*) FROM "
            "escalation.watch_feed WHERE position IS NULL) || ' feed rows, ' || (SELECT "
            "count(*) FROM escalation.audit_log WHERE seq IS NULL) || ' audit rows (and ' || "
            "(SELECT count(*) FROM escalation.outbox WHERE position IS NULL) || ' events no "
            "consumer read)'")[0][0]
        .as<std::string>();
  };
  const testing::HistogramTotals before_routed = batches();
  const testing::PartTimes routed_start = parts();
  const Figures routed = Hammer(in_flight, length, raise);
  const testing::PartTimes routed_end = parts();
  const std::string routed_left = left_behind();
  const testing::HistogramTotals after_routed = batches();
  spread = true;
  const testing::PartTimes spread_start = parts();
  const Figures routed_spread = Hammer(in_flight, length, raise);
  const testing::PartTimes spread_end = parts();
  const std::string spread_left = left_behind();
  const testing::HistogramTotals after_spread = batches();
  // Once the service has chained the audit rows of the calls (it chains the floor's as they
  // commit, as it does RaiseConcern's).
  db->WaitForAuditChained("escalation");
  const testing::PartTimes floor_start = parts();
  const Figures floor = Hammer(in_flight, length, [&](int t) { return rows_alone(t, 1); });
  const testing::PartTimes floor_end = parts();
  // The machine's bound: every concern costs at least an RPC and its rows (with their audit
  // chaining, which the service does beside them). Each is measured alone with its processor
  // share (the rows 16 to a transaction on 2 connections, as a group commit would write them at
  // best); the processor time they take per concern, added, bounds the rate of any
  // implementation from above.
  db->WaitForAuditChained("escalation");
  const testing::PartTimes empty_start = parts();
  const Figures empty = Hammer(in_flight, length, [&](int) {
    return testing::HealthStatus(service.Channel(), "") == "SERVING";
  });
  const testing::PartTimes empty_end = parts();
  // The rows `per_transaction` to a statement on two connections: their rate in concerns and
  // their processor time, from one phase.
  struct Coalesced {
    int per_transaction;
    Figures figures;
    testing::PartTimes start, end;
    double Rate() const { return figures.per_second * per_transaction; }
    double Share() const { return testing::ShareBetween(start.machine, end.machine); }
    testing::PerCallTimes PerConcern() const {
      return testing::PerCall(start, end, static_cast<double>(figures.calls) * per_transaction);
    }
  };
  const auto coalesce = [&](int per_transaction) {
    Coalesced c{per_transaction, {}, parts(), {}};
    c.figures = Hammer(2, length, [&](int t) { return rows_alone(t, per_transaction); });
    c.end = parts();
    return c;
  };
  const Coalesced coalesced = coalesce(kCoalesced);
  // And as many to a statement as the service's group commit gathered for one agency: the bound
  // of an implementation that batches as this one does and does nothing else.
  const int own_batch =
      std::clamp(static_cast<int>(std::lround(testing::MeanBetween(before_routed, after_routed))),
                 1, kCoalesced);
  db->WaitForAuditChained("escalation");
  const Coalesced batched = coalesce(own_batch);
  const double empty_share = testing::ShareBetween(empty_start.machine, empty_end.machine);
  const double bound =
      testing::BoundFromCpu(empty.per_second, empty_share, coalesced.Rate(), coalesced.Share());
  const double batched_bound =
      testing::BoundFromCpu(empty.per_second, empty_share, batched.Rate(), batched.Share());
  const auto ratio = [&](double rate) {
    return plain.per_second > 0 ? rate / plain.per_second : 0;
  };
  std::printf("\n== route-and-persist vs plain INSERT (%d in flight, %.0f s each) ==\n", in_flight,
              absl::ToDoubleSeconds(length));
  Print("plain single-row INSERT (libpq, 1 tx each)", plain);
  Print("RaiseConcern over gRPC, one agency", routed);
  const std::string agencies = in_flight == 1 ? "1 agency" : absl::StrCat(in_flight, " agencies");
  Print(absl::StrCat("RaiseConcern over gRPC, ", agencies).c_str(), routed_spread);
  std::printf("  calls per write transaction (group commit): one agency %.1f, %s %.1f\n",
              testing::MeanBetween(before_routed, after_routed), agencies.c_str(),
              testing::MeanBetween(after_routed, after_spread));
  std::printf(
      "  left behind at the phase's end (the service's background work): one agency %s; %s %s\n",
      routed_left.c_str(), agencies.c_str(), spread_left.c_str());
  Print("RaiseConcern's rows alone (1 statement, libpq)", floor);
  std::printf(
      "ratio RaiseConcern / INSERT: %.2f (target >= 0.5); RaiseConcern p99 %.2f ms "
      "(target < 20 ms)\n",
      ratio(routed.per_second), routed.p99_ms);
  std::printf(
      "the database's floor, RaiseConcern's rows alone / INSERT: %.2f (no read, no service)\n",
      ratio(floor.per_second));
  std::printf(
      "the machine's bound, from processor time alone:\n"
      "  empty RPC (health Check), %d in flight:       %7.0f calls/s     processor %3.0f%% busy\n",
      in_flight, empty.per_second, 100 * empty_share);
  for (const Coalesced* c : {&coalesced, &batched}) {
    std::printf(
        "  a concern's rows, %2d per tx, 2 connections:   %7.0f concerns/s  processor %3.0f%% "
        "busy\n",
        c->per_transaction, c->Rate(), 100 * c->Share());
  }
  std::printf(
      "  an RPC and its rows per concern, nothing else: at most %.0f concerns/s, ratio %.2f\n"
      "  the same at the group commit's batch (%d):     at most %.0f concerns/s, ratio %.2f\n",
      bound, ratio(bound), own_batch, batched_bound, ratio(batched_bound));
  // Per concern (per call for the empty RPC), in microseconds. The service's time in the rows'
  // phases is its audit chaining of their rows; the machine's includes the kernel's own threads.
  std::printf(
      "processor time per concern, us:                 database  service   client  machine\n");
  const auto row = [](const char* name, const testing::PerCallTimes& t) {
    std::printf("  %-44s %8.0f %8.0f %8.0f %8.0f\n", name, t.database, t.service, t.client,
                t.machine);
  };
  row("RaiseConcern, one agency",
      testing::PerCall(routed_start, routed_end, static_cast<double>(routed.calls)));
  row(absl::StrCat("RaiseConcern, ", agencies).c_str(),
      testing::PerCall(spread_start, spread_end, static_cast<double>(routed_spread.calls)));
  row("its rows alone, 1 per statement",
      testing::PerCall(floor_start, floor_end, static_cast<double>(floor.calls)));
  for (const Coalesced* c : {&coalesced, &batched}) {
    row(absl::StrCat("its rows, ", c->per_transaction, " per statement, 2 connections").c_str(),
        c->PerConcern());
  }
  row("empty RPC (per call)",
      testing::PerCall(empty_start, empty_end, static_cast<double>(empty.calls)));
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (plain.per_second > 0) {
    std::printf(
        "  the target (0.5 x INSERT's rate) leaves the machine %.0f us per concern (%ld "
        "processors, all busy)\n",
        static_cast<double>(cores) * 1e6 / (0.5 * plain.per_second), cores);
  }

  RouteFromCheckInLog(*db, std::max(2000, static_cast<int>(4000 * absl::ToDoubleSeconds(length))),
                      plain.per_second, postmaster);

  // 100,000 open concerns, none due; then 100 due. Beside them, 200,000 resolved ones (history
  // the sweeper and the gauges must not read).
  db->AdminQuery(
      "INSERT INTO escalation.concerns (agency_id, participant_id, category, severity, source, "
      "raised_by, raised_by_role, policy_id, policy_version, target_kind, target_id, "
      "ack_deadline, notify_at, notified_at, opened_at, acknowledged_at, acknowledged_by, "
      "acknowledged_level, status, resolved_at, resolved_by, outcome) "
      "SELECT 'bench', 'client-' || (g % 5000), 'clinical_worsening', 'urgent', 'manual', "
      "'dr-bench', 'clinician', p.id, 1, 'clinical_on_call', 'clinical-on-call', "
      "now() - interval '1 day', now() - interval '2 days', now() - interval '2 days', "
      "now() - interval '2 days', now() - interval '2 days', 'dr-bench', 0, 'resolved', "
      "now() - interval '1 day', 'dr-bench', 'no_action_needed' "
      "FROM generate_series(1, 200000) g, escalation.routing_policies p "
      "WHERE p.agency_id = 'bench' AND p.version = 1");
  db->AdminQuery(
      "INSERT INTO escalation.concerns (agency_id, participant_id, category, severity, source, "
      "raised_by, raised_by_role, policy_id, policy_version, target_kind, target_id, "
      "ack_deadline, next_deadline, next_deadline_kind, notify_at, notified_at, opened_at) "
      "SELECT 'bench', 'client-' || (g % 5000), 'clinical_worsening', 'urgent', 'manual', "
      "'dr-bench', 'clinician', p.id, 1, 'clinical_on_call', 'clinical-on-call', "
      "now() + interval '4 hours' + g * interval '1 second', "
      "now() + interval '4 hours' + g * interval '1 second', 'acknowledgement', now(), now(), "
      "now() "
      "FROM generate_series(1, 100000) g, escalation.routing_policies p "
      "WHERE p.agency_id = 'bench' AND p.version = 1");
  // As autovacuum leaves a table after a burst of inserts: statistics, and its pages marked
  // all-visible (what index-only scans rely on).
  const auto vacuum_analyze = [&](const std::string& table) {
    auto admin = db->Admin();
    pqxx::nontransaction(*admin).exec0("VACUUM ANALYZE escalation." + table);
  };
  vacuum_analyze("concerns");
  const int open =
      db->AdminQuery(
            "SELECT count(*) FROM escalation.concerns WHERE status IN ('open', 'acknowledged')")
          [0][0]
              .as<int>();
  Database database(DatabaseOptions{.url = db->UrlFor("escalation"), .schema = "escalation"});
  LogNotifier notifier;
  NotificationOutbox outbox(database, notifier, nullptr);  // Written, not delivered, here.
  DeadlineSweeper sweeper(database, outbox, nullptr);
  std::printf("\n== deadline sweeper with %d open concerns ==\n", open);
  std::vector<double> idle;
  for (int i = 0; i < 20; ++i) {
    const absl::Time before = absl::Now();
    auto result = sweeper.SweepOnce(absl::Now());
    idle.push_back(absl::ToDoubleMilliseconds(absl::Now() - before));
    if (!result.ok() || result->due != 0) std::printf("unexpected sweep result\n");
  }
  std::sort(idle.begin(), idle.end());
  std::printf("sweep, nothing due:  median %.2f ms, max %.2f ms (20 sweeps; target < 100 ms)\n",
              idle[idle.size() / 2], idle.back());
  // The open/overdue gauges' count (the running sweeper does it every 5 s).
  std::vector<double> counting;
  for (int i = 0; i < 20; ++i) {
    const absl::Time before = absl::Now();
    auto counts = Store::CountOpen(database, absl::Now());
    counting.push_back(absl::ToDoubleMilliseconds(absl::Now() - before));
    if (!counts.ok() || counts->open["urgent"] != open) std::printf("unexpected gauge counts\n");
  }
  std::sort(counting.begin(), counting.end());
  std::printf(
      "gauge counts:        median %.2f ms, max %.2f ms (20 counts; the sweeper counts every 5 "
      "s)\n",
      counting[counting.size() / 2], counting.back());
  db->AdminQuery(
      "UPDATE escalation.concerns SET opened_at = now() - interval '5 hours', "
      "ack_deadline = now() - interval '1 minute', next_deadline = now() - interval '1 minute' "
      "WHERE id IN (SELECT id FROM escalation.concerns WHERE agency_id = 'bench' "
      "ORDER BY next_deadline LIMIT 100)");
  const absl::Time before = absl::Now();
  auto result = sweeper.SweepOnce(absl::Now());
  const double due_ms = absl::ToDoubleMilliseconds(absl::Now() - before);
  std::printf("sweep, 100 due:      %.2f ms (%d due, %d escalated: %.2f ms per escalation)\n",
              due_ms, result.ok() ? result->due : -1, result.ok() ? result->acted : -1,
              result.ok() && result->acted > 0 ? due_ms / result->acted : 0.0);
  // The plans of the sweeper's queries, as the runtime role runs them.
  const std::string now_us = std::to_string(absl::ToUnixMicros(absl::Now()));
  std::printf("sweeper query plan:\n%s\n",
              Plan(database, kDueConcernsSql, now_us + ", 500", Plans::kIndexScans).c_str());
  std::printf("gauge count plan:\n%s\n",
              Plan(database, kOpenCountsSql, now_us, Plans::kAsPostgresChooses).c_str());

  // A supervisor of 5 supporters, each matched with 20 participants, and 1,000 concerns of theirs
  // (raised by a supporter, or by a clinician about one of their participants) spread through the
  // agency's history; and one of those supporters, who raised 100 of them.
  db->AdminQuery(
      "INSERT INTO escalation.supporter_matches (agency_id, match_id, supporter_id, "
      "supporter_subject, participant_id, started_at, supervisor_subject) SELECT 'bench', "
      "gen_random_uuid(), gen_random_uuid(), 'peer-list-' || (g % 5), 'list-client-' || g, now(), "
      "'sup-list' FROM generate_series(1, 100) g");
  db->AdminQuery(
      "INSERT INTO escalation.concerns (agency_id, participant_id, category, severity, source, "
      "raised_by, raised_by_role, policy_id, policy_version, target_kind, target_id, "
      "ack_deadline, next_deadline, next_deadline_kind, notify_at, notified_at, opened_at) "
      "SELECT 'bench', 'list-client-' || (g % 100 + 1), 'clinical_worsening', 'urgent', 'manual', "
      "CASE WHEN g % 2 = 0 THEN 'peer-list-' || (g % 10 / 2) ELSE 'dr-bench' END, "
      "CASE WHEN g % 2 = 0 THEN 'peer_supporter' ELSE 'clinician' END, p.id, 1, "
      "'clinical_on_call', 'clinical-on-call', now() + interval '4 hours', "
      "now() + interval '4 hours', 'acknowledgement', now(), now(), "
      "now() - g * interval '7 minutes' "
      "FROM generate_series(1, 1000) g, escalation.routing_policies p "
      "WHERE p.agency_id = 'bench' AND p.version = 1");
  vacuum_analyze("supporter_matches");
  // ListConcerns, a page of 50 (51 asked: whether there is more) among every concern of the agency,
  // each routed to the clinical on-call team (the seeded ones get their ROUTED transition here).
  db->AdminQuery(
      "INSERT INTO escalation.concern_transitions (agency_id, concern_id, kind, status_after, "
      "level, target_kind, target_id, actor, occurred_at) SELECT c.agency_id, c.id, 'routed', "
      "'open', 0, c.target_kind, c.target_id, 'system:routing', c.opened_at "
      "FROM escalation.concerns c WHERE NOT EXISTS (SELECT 1 FROM escalation.concern_transitions "
      "t WHERE t.agency_id = c.agency_id AND t.concern_id = c.id)");
  vacuum_analyze("concerns");
  vacuum_analyze("concern_transitions");
  const int listed = db->AdminQuery(
                           "SELECT count(*) FROM escalation.concerns WHERE agency_id = "
                           "'bench'")[0][0]
                         .as<int>();
  Store::ListFilter unfiltered;
  unfiltered.now = absl::Now();
  // The milliseconds of each of `pages` pages walked back from the newest (from the newest again
  // after the last page), and how many concerns the pages listed.
  const auto walk = [&](const Viewer& viewer, int pages) {
    std::vector<double> times;
    std::string cursor;
    std::set<std::string> seen;
    for (int i = 0; i < pages; ++i) {
      const absl::Time start = absl::Now();
      auto page = database.TransactForAgency(
          "bench", [&](pqxx::work& tx) -> absl::StatusOr<std::vector<ConcernRecord>> {
            return Store::ListConcerns(tx, "bench", viewer, unfiltered, cursor, 51);
          });
      times.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
      if (!page.ok()) {
        std::printf("ListConcerns failed: %s\n", std::string(page.status().message()).c_str());
        break;
      }
      for (size_t k = 0; k < page->size() && k < 50; ++k) {
        seen.insert((*page)[k].concern.concern_id());
      }
      cursor = page->size() > 50 ? Store::ListCursor((*page)[49].concern) : "";
    }
    std::sort(times.begin(), times.end());
    return std::make_tuple(times[times.size() / 2], times.back(), static_cast<int>(seen.size()));
  };
  const auto [clinician_median, clinician_max, clinician_seen] =
      walk(Viewer{{"clinical_on_call"}, "dr-list"}, 20);
  const auto [supervisor_median, supervisor_max, supervisor_seen] =
      walk(Viewer{{"supervised_supporters"}, "sup-list"}, 5);
  const auto [supporter_median, supporter_max, supporter_seen] = walk(Viewer{{}, "peer-list-0"}, 5);
  const auto [none_median, none_max, none_seen] =
      walk(Viewer{{"supervised_supporters"}, "sup-none"}, 5);
  std::printf("\n== ListConcerns, a page of 50 among %d concerns of the agency ==\n", listed);
  std::printf(
      "clinician (all routed to their team), 20 pages back from the newest: median %.2f ms, "
      "max %.2f ms (%d concerns listed)\n",
      clinician_median, clinician_max, clinician_seen);
  std::printf(
      "supervisor of 5 supporters (1,000 concerns theirs), 5 pages: median %.2f ms, max %.2f ms "
      "(%d listed)\n",
      supervisor_median, supervisor_max, supervisor_seen);
  std::printf(
      "peer supporter (100 concerns raised), 5 pages: median %.2f ms, max %.2f ms (%d listed)\n",
      supporter_median, supporter_max, supporter_seen);
  std::printf(
      "supervisor who may see none of them, 5 pages: median %.2f ms, max %.2f ms (%d listed)\n",
      none_median, none_max, none_seen);
}

}  // namespace
}  // namespace peerpath::escalation

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  if (std::getenv("PEERPATH_TEST_PG_ADMIN_URL") != nullptr) {
    peerpath::escalation::RunDatabaseBenchmarks();
  } else {
    std::printf("PEERPATH_TEST_PG_ADMIN_URL not set: database benchmarks skipped\n");
  }
  return 0;
}
