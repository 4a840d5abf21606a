// CheckAccess on the hot path of every disclosure.
//
//   consent_check_access_bench            the pure decision (Google Benchmark, median of 10)
//   PEERPATH_TEST_PG_ADMIN_URL=... consent_check_access_bench
//                                         also: the real binary over gRPC, a participant with 20
//                                         consents, 64 calls in flight, beside the empty health
//                                         Check RPC on the same server in the same run, and the
//                                         same decision when it misses the cache (another
//                                         person each call: one database read).
// PEERPATH_BENCH_SECONDS (default 5) sets the length of each gRPC phase (run in three turns);
// PEERPATH_BENCH_SERVER_LOG=1 prints the server's log after the figures. The counts of decisions
// from the cache and from the database, as the server exports them, are printed with the figures.
#include <benchmark/benchmark.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"
#include "services/consent/access.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::consent {
namespace {

using namespace std::chrono_literals;

std::vector<ConsentFacts> TwentyConsents(absl::Time now) {
  std::vector<ConsentFacts> out;
  const char* roles[] = {"clinician", "case_manager", "supervisor", "program_admin"};
  for (int i = 0; i < 20; ++i) {
    ConsentFacts c;
    c.id = absl::StrCat("consent-", i);
    c.recipient = {v1::RECIPIENT_KIND_ROLE, roles[i % 4]};
    c.purposes = Bit(1 + i % 5);
    c.categories = Bit(1 + i % 6) | Bit(1 + (i + 1) % 6);
    c.directive = i == 19 ? Directive::kDeny : Directive::kPermit;
    c.valid_from = now - absl::Hours(24);
    if (i % 3 == 0) c.valid_until = now + absl::Hours(24 + i);
    if (i % 7 == 0) c.state = ConsentState::kRevoked;
    out.push_back(c);
  }
  return out;
}

void BM_DecideAccess20Consents(benchmark::State& state) {
  const absl::Time now = absl::Now();
  const std::vector<ConsentFacts> consents = TwentyConsents(now);
  Accessor accessor;
  accessor.person_subject = "dr-1";
  accessor.identities = {{v1::RECIPIENT_KIND_PERSON, "dr-1"},
                         {v1::RECIPIENT_KIND_ROLE, "clinician"},
                         {v1::RECIPIENT_KIND_TEAM, "on-call"}};
  int i = 0;
  for (auto _ : state) {
    const AccessQuery query{static_cast<DataCategory>(1 + i % 6),
                            static_cast<Purpose>(1 + (i / 6) % 5)};
    benchmark::DoNotOptimize(DecideAccess(consents, {}, accessor, query, now));
    ++i;
  }
}
BENCHMARK(BM_DecideAccess20Consents)->Repetitions(10)->ReportAggregatesOnly(true);

struct Figures {
  double per_second = 0;
  double p50_us = 0;
  double p99_us = 0;
  long calls = 0;
  long errors = 0;
};

// The calls of one kind over every round it ran in.
struct Phase {
  std::vector<double> latencies_us;
  double seconds = 0;
  long errors = 0;

  Figures Summary() {
    std::sort(latencies_us.begin(), latencies_us.end());
    Figures f;
    f.calls = static_cast<long>(latencies_us.size());
    f.errors = errors;
    if (seconds > 0) f.per_second = latencies_us.size() / seconds;
    if (!latencies_us.empty()) {
      f.p50_us = latencies_us[latencies_us.size() / 2];
      f.p99_us = latencies_us[std::min(latencies_us.size() - 1, latencies_us.size() * 99 / 100)];
    }
    return f;
  }
};

// `in_flight` threads each making `call` back to back for `length`; adds to `phase`.
void Hammer(int in_flight, absl::Duration length, const std::function<bool()>& call, Phase& phase) {
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> latencies(in_flight);
  std::atomic<long> errors{0};
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int t = 0; t < in_flight; ++t) {
    threads.emplace_back([&, t] {
      while (!stop.load(std::memory_order_relaxed)) {
        const absl::Time begin = absl::Now();
        if (!call()) ++errors;
        latencies[t].push_back(absl::ToDoubleMicroseconds(absl::Now() - begin));
      }
    });
  }
  std::this_thread::sleep_for(absl::ToChronoNanoseconds(length));
  stop = true;
  for (auto& t : threads) t.join();
  phase.seconds += absl::ToDoubleSeconds(absl::Now() - start);
  phase.errors += errors;
  for (auto& l : latencies) phase.latencies_us.insert(phase.latencies_us.end(), l.begin(), l.end());
}

// Starts a call with the callback client API and waits for it: every phase calls the same way,
// so the figures differ only by what the server does.
grpc::Status CallAndWait(const std::function<void(std::function<void(grpc::Status)>)>& start) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  start([&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    status = std::move(s);
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  return status;
}

void OverGrpc() {
  using peerpath::testing::ServiceProcess;
  using peerpath::testing::TestDatabase;
  using peerpath::testing::TokenFor;
  const char* seconds_env = std::getenv("PEERPATH_BENCH_SECONDS");
  const absl::Duration length = absl::Seconds(seconds_env ? std::atoi(seconds_env) : 5);
  auto db = TestDatabase::Create();
  ServiceProcess server("consent", db->UrlFor("consent"), {"--log_level=info"});
  if (!server.WaitListening() || !server.WaitHealth(true)) {
    std::fprintf(stderr, "consent did not start:\n%s\n", server.Log().c_str());
    return;
  }
  auto channel = server.Channel();
  auto stub = v1::ConsentService::NewStub(channel);
  const std::string staff = "Bearer " + TokenFor("agency-a", {"case_manager"}, "staff-1");
  const std::string service = "Bearer " + TokenFor("agency-a", {"service"}, "svc-checkin");
  const char* roles[] = {"clinician", "case_manager", "supervisor", "program_admin"};
  // p-bench for the cached decisions, p-miss (the same 20 consents) for the misses, so that the
  // misses do not evict p-bench's entries.
  for (int i = 0; i < 40; ++i) {
    v1::RecordConsentRequest request;
    v1::Consent& c = *request.mutable_consent();
    c.set_participant_id(i < 20 ? "p-bench" : "p-miss");
    const int k = i % 20;
    c.set_given_by(v1::CONSENT_GIVER_PARTICIPANT);
    c.mutable_recipient()->set_kind(v1::RECIPIENT_KIND_ROLE);
    c.mutable_recipient()->set_id(roles[k % 4]);
    c.add_purposes(static_cast<v1::Purpose>(1 + k % 5));
    c.add_data_categories(static_cast<v1::DataCategory>(1 + k % 6));
    c.set_directive(k == 19 ? v1::CONSENT_DIRECTIVE_DENY : v1::CONSENT_DIRECTIVE_PERMIT);
    c.set_obtained_method(v1::OBTAINED_METHOD_ELECTRONIC);
    request.set_idempotency_key(absl::StrCat("bench-", i));
    grpc::ClientContext context;
    context.AddMetadata("authorization", staff);
    v1::RecordConsentResponse response;
    grpc::Status status = stub->RecordConsent(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "seeding failed: %s\n", status.error_message().c_str());
      return;
    }
  }
  grpc::GenericStub generic(channel);
  auto empty = [&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    grpc::Slice nothing("");
    grpc::ByteBuffer request(&nothing, 1);
    grpc::ByteBuffer reply;
    return CallAndWait([&](std::function<void(grpc::Status)> done) {
             generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                               &request, &reply, std::move(done));
           })
        .ok();
  };
  // CheckAccess for `subject` in a role, about a category and purpose that vary with `i`.
  auto check_access = [&](const std::string& participant, const std::string& subject, int i) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    context.AddMetadata("authorization", service);
    v1::CheckAccessRequest request;
    request.set_participant_id(participant);
    request.mutable_actor()->set_subject(subject);
    request.mutable_actor()->add_roles(roles[i % 4]);
    request.set_data_category(static_cast<v1::DataCategory>(1 + i % 6));
    request.set_purpose(static_cast<v1::Purpose>(1 + i % 5));
    v1::CheckAccessResponse response;
    return CallAndWait([&](std::function<void(grpc::Status)> done) {
             stub->async()->CheckAccess(&context, &request, &response, std::move(done));
           })
        .ok();
  };
  std::atomic<int> n{0};
  auto check = [&] { return check_access("p-bench", "dr-1", n++); };
  // A cache miss every call: a person not asked about before (the cache keeps inputs per
  // participant and person), so the decision reads the database, in one round trip.
  std::atomic<int> m{0};
  auto miss = [&] {
    const int i = m++;
    return check_access("p-miss", absl::StrCat("dr-miss-", i), i);
  };
  // The same call refused by validation: token verification and the handler, no database.
  auto invalid = [&] {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + 10s);
    context.AddMetadata("authorization", service);
    v1::CheckAccessRequest request;
    request.mutable_actor()->set_subject("dr-1");
    v1::CheckAccessResponse response;
    return CallAndWait([&](std::function<void(grpc::Status)> done) {
             stub->async()->CheckAccess(&context, &request, &response, std::move(done));
           }).error_code() == grpc::StatusCode::INVALID_ARGUMENT;
  };
  Phase warm_up;
  Hammer(8, absl::Seconds(1), check, warm_up);  // Connections, the pool and the cache.
  // The kinds take turns, three rounds of a third of the length each, so that a slow spell of
  // this shared machine falls on all of them rather than on one.
  Phase empty_phase, invalid_phase, check_phase, miss_phase;
  for (int round = 0; round < 3; ++round) {
    Hammer(64, length / 3, empty, empty_phase);
    Hammer(64, length / 3, invalid, invalid_phase);
    Hammer(64, length / 3, check, check_phase);
    Hammer(64, length / 3, miss, miss_phase);
  }
  const Figures e = empty_phase.Summary();
  const Figures a = invalid_phase.Summary();
  const Figures c = check_phase.Summary();
  const Figures x = miss_phase.Summary();
  std::printf("\nover gRPC, 64 calls in flight, %.0f s each in three turns, same server and run:\n",
              absl::ToDoubleSeconds(length));
  std::printf(
      "  empty RPC (health Check): %9.0f calls/s  p50 %8.0f us  p99 %8.0f us  (%ld calls, %ld "
      "errors)\n",
      e.per_second, e.p50_us, e.p99_us, e.calls, e.errors);
  std::printf(
      "  CheckAccess refused before the database: %9.0f calls/s  p50 %8.0f us  p99 %8.0f us\n",
      a.per_second, a.p50_us, a.p99_us);
  std::printf(
      "  CheckAccess, 20 consents: %9.0f calls/s  p50 %8.0f us  p99 %8.0f us  (%ld calls, %ld "
      "errors)\n",
      c.per_second, c.p50_us, c.p99_us, c.calls, c.errors);
  std::printf(
      "  CheckAccess, each a cache miss: %9.0f calls/s  p50 %8.0f us  p99 %8.0f us  (%ld calls, "
      "%ld errors; one database round trip each)\n",
      x.per_second, x.p50_us, x.p99_us, x.calls, x.errors);
  // Where the decisions' inputs came from, as the server counts them.
  const std::string metrics = peerpath::testing::HttpGet(server.metrics_port(), "/metrics");
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    if (absl::StartsWith(line, "peerpath_consent_access_decisions_total{") ||
        absl::StartsWith(line, "peerpath_consent_decision_cache_listening ")) {
      std::printf("  %.*s\n", static_cast<int>(line.size()), line.data());
    }
  }
  if (std::getenv("PEERPATH_BENCH_SERVER_LOG") != nullptr)
    std::printf("%s\n", server.Log().c_str());
  if (e.per_second > 0 && e.p99_us > 0) {
    std::printf(
        "  ratio: throughput %.2f x empty (target >= 0.7), p99 %.2f x empty (target <= 1.5)\n",
        c.per_second / e.per_second, c.p99_us / e.p99_us);
  }
}

}  // namespace
}  // namespace peerpath::consent

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (std::getenv("PEERPATH_TEST_PG_ADMIN_URL") != nullptr) {
    peerpath::consent::OverGrpc();
  } else {
    std::printf("PEERPATH_TEST_PG_ADMIN_URL not set: gRPC figures skipped\n");
  }
  return 0;
}
