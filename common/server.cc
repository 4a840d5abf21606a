#include "common/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <prometheus/exposer.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/audit.h"
#include "common/channel.h"
#include "common/idempotency.h"
#include "common/log.h"
#include "common/migrations.h"
#include "common/operations_service.h"
#include "common/rpc_observer.h"
#include "shared/migrations.h"

ABSL_FLAG(std::string, agency, "", "verify-audit: the agency whose audit chain to verify");

namespace peerpath {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", flag, " file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const ServerConfig& c) {
  if (c.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  // Read once here so that a missing or unreadable file stops the start with its flag's name;
  // gRPC then re-reads them every --tls_reload_interval, so a rotated certificate (a renewed
  // Kubernetes secret) is served by the next handshakes without a restart.
  if (auto cert = ReadFile(c.tls_cert_file, "--tls_cert_file"); !cert.ok()) return cert.status();
  if (auto key = ReadFile(c.tls_key_file, "--tls_key_file"); !key.ok()) return key.status();
  if (!c.tls_ca_file.empty()) {
    if (auto ca = ReadFile(c.tls_ca_file, "--tls_ca_file"); !ca.ok()) return ca.status();
  }
  grpc::experimental::TlsServerCredentialsOptions options(
      WatchCertificateFiles(c.tls_key_file, c.tls_cert_file, c.tls_ca_file, c.tls_reload_interval));
  options.watch_identity_key_cert_pairs();
  if (c.tls_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

// How often the audit rows written since are chained (common/audit.h).
constexpr absl::Duration kAuditChainInterval = absl::Milliseconds(250);

std::vector<MigrationTrack> MigrationTracks(const ServiceDefinition& definition) {
  return {{"shared", &shared::Migrations()}, {definition.name, definition.migrations}};
}

// Connects and migrates with backoff until it succeeds, the process stops, or a fatal error
// (a changed migration) occurs; then runs `on_schema_ready` once (on its own thread), watches
// the database and keeps health in step with it.
class Readiness {
 public:
  Readiness(const ServiceDefinition& definition, const ServerConfig& config, Database& db,
            grpc::HealthCheckServiceInterface* health, std::function<void()> on_schema_ready)
      : definition_(definition),
        config_(config),
        db_(db),
        health_(health),
        on_schema_ready_(std::move(on_schema_ready)) {}

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Non-zero when start-up failed for good; the process then exits with it.
  int fatal_exit_code() const { return fatal_exit_code_.load(); }

 private:
  // Sleeps up to `d`; false when asked to stop.
  bool SleepFor(absl::Duration d) {
    std::unique_lock<std::mutex> lock(mu_);
    return !wake_.wait_for(lock, absl::ToChronoMilliseconds(d), [this] { return stopping_; });
  }

  void SetServing(bool serving) {
    health_->SetServingStatus("", serving);
    health_->SetServingStatus(definition_.grpc_service, serving);
  }

  absl::Status ConnectAndMigrate() {
    DatabaseOptions options = db_.options();
    options.url = config_.migration_database_url;
    std::unique_ptr<pqxx::connection> conn;
    try {
      conn = OpenConnection(options);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("database unreachable: ", e.what()));
    }
    if (config_.migrate_on_start) {
      auto report = ApplyMigrations(*conn, definition_.name, MigrationTracks(definition_),
                                    config_.database_runtime_role);
      if (!report.ok()) return report.status();
      log::Info("schema ready", {{"schema", definition_.name},
                                 {"applied", report->applied},
                                 {"already_applied", report->already_applied}});
    }
    return CheckServingRole();
  }

  // Agencies' rows are kept apart by row-level security, which a superuser or a role with
  // BYPASSRLS skips: serving as one would let any caller's query read and write every agency's
  // rows. Such a --database_url stops start-up (the role is the connection's, whatever the URL).
  absl::Status CheckServingRole() {
    return db_.Transact([](pqxx::work& tx) -> absl::Status {
      const std::string user = tx.exec1("SELECT current_user")[0].as<std::string>();
      if (!BypassesRowLevelSecurity(tx, user).value_or(false)) return absl::OkStatus();
      return absl::FailedPreconditionError(absl::StrCat(
          "--database_url connects as ", user,
          ", a superuser or a role that bypasses row-level security, which keeps agencies apart; "
          "serve as the service's runtime role (deploy/k8s/db/bootstrap.sql creates it)"));
    });
  }

  void Run() {
    absl::Duration backoff = absl::Milliseconds(200);
    while (true) {
      absl::Status status = ConnectAndMigrate();
      if (status.ok()) break;
      if (status.code() == absl::StatusCode::kFailedPrecondition) {
        log::Error("start-up failed", {{"error", std::string(status.message())}});
        fatal_exit_code_ = 3;
        kill(getpid(), SIGTERM);
        return;
      }
      log::Warn("database not ready; retrying",
                {{"error", std::string(status.message())},
                 {"retry_in_ms", absl::ToInt64Milliseconds(backoff)}});
      if (!SleepFor(backoff)) return;
      backoff = std::min(backoff * 2, absl::Seconds(5));
    }
    MarkSchemaReady();
    on_schema_ready_();
    SetServing(true);
    log::Info("serving");
    bool serving = true;
    absl::Time next_cleanup = absl::Now();
    while (SleepFor(absl::Seconds(5))) {
      if (absl::Now() >= next_cleanup) {
        // Idempotency keys are promised for 24 hours; keep them 48 and clean up hourly.
        auto deleted = DeleteExpiredIdempotencyKeys(db_, absl::Hours(48));
        if (deleted.ok() && *deleted > 0) {
          log::Info("expired idempotency keys deleted", {{"count", *deleted}});
        }
        next_cleanup = absl::Now() + absl::Hours(1);
      }
      const bool ok = db_.Ping().ok();
      if (ok != serving) {
        serving = ok;
        SetServing(serving);
        log::Warn(serving ? "database reachable again; serving" : "database lost; not serving");
      }
    }
  }

  const ServiceDefinition& definition_;
  const ServerConfig& config_;
  Database& db_;
  grpc::HealthCheckServiceInterface* health_;
  const std::function<void()> on_schema_ready_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::atomic<int> fatal_exit_code_{0};
};

int Migrate(const ServiceDefinition& definition, const ServerConfig& config) {
  DatabaseOptions options{config.migration_database_url, definition.name, 1};
  // A migrate job may start before the database is up.
  const absl::Time give_up = absl::Now() + config.database_wait;
  while (true) {
    absl::Status status;
    try {
      auto conn = OpenConnection(options);
      auto report = ApplyMigrations(*conn, definition.name, MigrationTracks(definition),
                                    config.database_runtime_role);
      if (report.ok()) {
        log::Info("migrations done", {{"schema", definition.name},
                                      {"applied", report->applied},
                                      {"already_applied", report->already_applied}});
        return 0;
      }
      status = report.status();
    } catch (const std::exception& e) {
      status = absl::UnavailableError(absl::StrCat("database unreachable: ", e.what()));
    }
    if (status.code() != absl::StatusCode::kUnavailable || absl::Now() > give_up) {
      log::Error("migration failed", {{"error", std::string(status.message())}});
      return 1;
    }
    absl::SleepFor(absl::Milliseconds(500));
  }
}

// verify-audit: recomputes one agency's audit hash chain. Exit 0 intact, 4 broken, 1 error.
int VerifyAudit(const ServiceDefinition& definition, const ServerConfig& config,
                const std::string& agency) {
  if (agency.empty()) {
    log::Error("verify-audit needs --agency");
    return 2;
  }
  Database db({config.database_url, definition.name, 1});
  auto result =
      db.TransactForAgency(agency, [&](pqxx::work& tx) { return VerifyAuditChain(tx, agency); });
  if (!result.ok()) {
    log::Error("verify-audit failed", {{"error", std::string(result.status().message())}});
    return 1;
  }
  if (result->first_broken_seq != 0) {
    log::Error("audit chain broken", {{"agency_id", agency},
                                      {"first_broken_seq", result->first_broken_seq},
                                      {"problem", result->problem}});
    return 4;
  }
  log::Info("audit chain intact",
            {{"agency_id", agency}, {"rows", result->rows_checked}, {"pending", result->pending}});
  return 0;
}

int Serve(const ServiceDefinition& definition, const ServerConfig& config) {
  // Signals are taken by sigwait below, never by a handler on a random thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto credentials = ServerCredentials(config);
  if (!credentials.ok()) {
    log::Error("bad configuration", {{"error", std::string(credentials.status().message())}});
    return 2;
  }

  auto registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(config.metrics_address);
  } catch (const std::exception& e) {
    log::Error("cannot listen for metrics",
               {{"address", config.metrics_address}, {"error", e.what()}});
    return 2;
  }
  exposer->RegisterCollectable(registry);

  auto verifier = TokenVerifier::FromFile(
      config.jwt_keys_file, {config.jwt_issuer, config.jwt_audience, config.jwt_leeway});
  if (!verifier.ok()) {
    log::Error("bad configuration", {{"error", std::string(verifier.status().message())}});
    return 2;
  }

  DatabaseOptions db_options{config.database_url, definition.name, config.db_pool_size};
  db_options.statement_timeout = absl::ToChronoMilliseconds(config.max_call_duration);
  Database db(db_options);
  StopSignal stopping;
  ServiceContext context{config, db, *registry, **verifier, stopping};
  std::vector<std::unique_ptr<grpc::Service>> services = definition.make_services(context);
  OperationsService operations(db, **verifier);

  grpc::EnableDefaultHealthCheckService(true);
  if (config.enable_reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(config.listen_address, *credentials, &grpc_port);
  builder.SetMaxReceiveMessageSize(config.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, config.max_concurrent_streams);
  // Keeps handler threads between calls instead of starting and ending one per concurrent call
  // (measured on RecordCheckIn: about 20% more check-ins per second at 8 and 32 clients).
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                              config.idle_handler_threads);
  for (auto& service : services) builder.RegisterService(service.get());
  builder.RegisterService(&operations);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> observers;
  observers.push_back(std::make_unique<RpcObserverFactory>(*registry));
  builder.experimental().SetInterceptorCreators(std::move(observers));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    log::Error("cannot listen for gRPC", {{"address", config.listen_address}});
    return 2;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(definition.grpc_service, false);

  const auto metrics_ports = exposer->GetListeningPorts();
  log::Info("listening", {{"grpc_address", config.listen_address},
                          {"grpc_port", grpc_port},
                          {"metrics_port", metrics_ports.empty() ? 0 : metrics_ports.front()},
                          {"tls", !config.tls_cert_file.empty()},
                          {"mutual_tls", !config.tls_ca_file.empty()},
                          {"reflection", config.enable_reflection},
                          {"token_keys", (*verifier)->key_count()},
                          {"dev_tokens_allowed", config.allow_dev_tokens}});

  // The chainer calls a function the shared migrations create: it starts once they have run.
  AuditChainer audit_chainer(db, *registry, kAuditChainInterval);
  Readiness readiness(definition, config, db, health, [&audit_chainer] { audit_chainer.Start(); });
  readiness.Start();

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  log::Info("shutting down", {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"},
                              {"grace_ms", absl::ToInt64Milliseconds(config.shutdown_grace)}});
  // Health first, so load balancers stop sending new calls; then drain within the grace period.
  // Streams that would never end by themselves (event subscriptions) end now.
  health->Shutdown();
  stopping.Notify();
  readiness.Stop();  // Joined: the chainer is started or never will be.
  const absl::Time deadline = absl::Now() + config.shutdown_grace;
  // gRPC cancels calls still running at the deadline, but a handler blocked in a query would
  // hold shutdown forever: cancel the queries too, so their handlers return.
  std::promise<void> drained;
  std::thread query_canceller([&db, deadline, done = drained.get_future()] {
    if (done.wait_until(absl::ToChronoTime(deadline)) == std::future_status::timeout) {
      log::Warn("shutdown grace period over; cancelling running queries");
      db.CancelRunningQueries();
    }
  });
  server->Shutdown(absl::ToChronoTime(deadline));
  server->Wait();
  drained.set_value();
  query_canceller.join();
  audit_chainer.Stop();  // Chains what the last calls wrote.
  const int code = readiness.fatal_exit_code();
  log::Info("stopped", {{"exit_code", code}});
  return code;
}

}  // namespace

int RunService(const ServiceDefinition& definition, int argc, char** argv) {
  // Debian's Abseil is built with Mutex deadlock detection on (no NDEBUG): every lock taken by
  // gRPC and by us then updates a global lock graph, which showed as several percent of a
  // server's CPU. It is a debugging aid; production servers turn it off, as this does.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(
      absl::StrCat("PeerPath ", definition.name, " service.\n\nUsage: peerpath-", definition.name,
                   " [serve|migrate|verify-audit --agency=A] [flags]\nEvery flag can also be set "
                   "by the environment variable "
                   "PEERPATH_<FLAG_NAME_IN_UPPER_CASE>."));
  std::vector<std::string> args = ParseFlagsAndEnvironment(argc, argv);
  const std::string command = args.empty() ? "serve" : args.front();
  if (args.size() > 1 ||
      (command != "serve" && command != "migrate" && command != "verify-audit")) {
    std::cerr << "usage: peerpath-" << definition.name
              << " [serve|migrate|verify-audit --agency=A] [flags]; see --help\n";
    return 2;
  }
  auto config = ServerConfigFromFlags({absl::StrCat("127.0.0.1:", definition.default_grpc_port),
                                       absl::StrCat("127.0.0.1:", definition.default_metrics_port),
                                       absl::StrCat("peerpath_", definition.name)},
                                      /*serving=*/command == "serve");
  log::Configure(definition.name, config.ok() ? config->log_level : log::Level::kInfo);
  if (!config.ok()) {
    log::Error("bad configuration", {{"error", std::string(config.status().message())}});
    return 2;
  }
  if (command == "migrate") return Migrate(definition, *config);
  if (command == "verify-audit")
    return VerifyAudit(definition, *config, absl::GetFlag(FLAGS_agency));
  return Serve(definition, *config);
}

}  // namespace peerpath
