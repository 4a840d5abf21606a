// Integration tests of one real service binary (PEERPATH_TEST_SERVICE names it) against the real
// PostgreSQL: start-up and health, migrations, metrics, validation errors, graceful shutdown.
#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "common/migrations.h"
#include "common/status.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "peerpath/ops/v1/operations.grpc.pb.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using peerpath::ops::v1::ListMigrationsRequest;
using peerpath::ops::v1::ListMigrationsResponse;
using peerpath::ops::v1::OperationsService;
using namespace std::chrono_literals;

std::string Service() {
  const char* s = std::getenv("PEERPATH_TEST_SERVICE");
  return s != nullptr ? s : "consent";
}

std::string GrpcServiceName(const std::string& service) {
  static const std::map<std::string, std::string> names = {
      {"matching", "peerpath.matching.v1.MatchingService"},
      {"checkin", "peerpath.checkin.v1.CheckInService"},
      {"consent", "peerpath.consent.v1.ConsentService"},
      {"escalation", "peerpath.escalation.v1.EscalationService"},
      {"evaluation", "peerpath.evaluation.v1.EvaluationService"}};
  return names.at(service);
}

// The migration files of a track, as the binary should have embedded them.
std::vector<Migration> MigrationFiles(const std::string& track) {
  std::vector<Migration> out;
  const std::filesystem::path dir =
      track == "shared"
          ? std::filesystem::path(PEERPATH_SOURCE_DIR) / "common" / "migrations"
          : std::filesystem::path(PEERPATH_SOURCE_DIR) / "services" / track / "migrations";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (entry.path().extension() != ".sql") continue;
    std::ifstream in(entry.path());
    std::stringstream sql;
    sql << in.rdbuf();
    out.push_back({std::stoi(file.substr(0, 4)), file.substr(5, file.size() - 9), sql.str()});
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.version < b.version; });
  return out;
}

// Tables, columns, indexes and recorded migrations of a schema, as text, to compare runs.
std::string SchemaSnapshot(const TestDatabase& db, const std::string& schema) {
  std::string out;
  for (const auto& row :
       db.AdminQuery("SELECT table_name || '.' || column_name || ':' || data_type FROM "
                     "information_schema.columns WHERE table_schema = '" +
                     schema + "' ORDER BY 1")) {
    out += row[0].as<std::string>() + "\n";
  }
  for (const auto& row : db.AdminQuery("SELECT indexdef FROM pg_indexes WHERE schemaname = '" +
                                       schema + "' ORDER BY 1")) {
    out += row[0].as<std::string>() + "\n";
  }
  for (const auto& row : db.AdminQuery("SELECT version || name || checksum || applied_at FROM " +
                                       schema + ".schema_migrations ORDER BY version")) {
    out += row[0].as<std::string>() + "\n";
  }
  return out;
}

// A client context carrying an operations token, as a dashboard's backend would send.
std::unique_ptr<grpc::ClientContext> OpsContext(const std::string& role = "operations") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", "Bearer " + TokenFor("agency-ops", {role}));
  return ctx;
}

class ServiceBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override { db_ = TestDatabase::Create(); }

  std::unique_ptr<ServiceProcess> StartServing(std::vector<std::string> args = {}) {
    auto process = std::make_unique<ServiceProcess>(Service(), db_->UrlFor(Service()), args);
    EXPECT_TRUE(process->WaitHealth(true)) << process->Log();
    return process;
  }

  // The service's `migrate` subcommand as the schema owner; its exit code.
  int MigrateAsOwner() {
    return RunToExit(Service(), {"migrate", "--database_url=" + db_->OwnerUrlFor(Service())})
        .exit_code;
  }

  std::unique_ptr<TestDatabase> db_;
};

TEST_F(ServiceBinaryTest, NotServingUntilDatabaseExistsThenServingWithMigrationsApplied) {
  auto late_db = TestDatabase::Deferred();
  ServiceProcess process(Service(), late_db->UrlFor(Service()));
  ASSERT_TRUE(process.WaitListening()) << process.Log();
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(HealthStatus(process.Channel()), "NOT_SERVING");
  EXPECT_EQ(HealthStatus(process.Channel(), GrpcServiceName(Service())), "NOT_SERVING");

  late_db->CreateNow();
  ASSERT_TRUE(process.WaitHealth(true, "", 15s)) << process.Log();
  EXPECT_EQ(HealthStatus(process.Channel(), GrpcServiceName(Service())), "SERVING");

  // Every migration file of both tracks is applied, with the checksum of the file's text.
  ASSERT_FALSE(MigrationFiles(Service()).empty()) << "the service ships no migration";
  for (const std::string& track : {std::string("shared"), Service()}) {
    const auto files = MigrationFiles(track);
    auto rows =
        late_db->AdminQuery("SELECT version, name, checksum FROM " + Service() +
                            ".schema_migrations WHERE track = '" + track + "' ORDER BY version");
    ASSERT_EQ(rows.size(), files.size()) << track;
    for (size_t i = 0; i < files.size(); ++i) {
      EXPECT_EQ(rows[i][0].as<int>(), files[i].version);
      EXPECT_EQ(rows[i][1].as<std::string>(), files[i].name);
      EXPECT_EQ(rows[i][2].as<std::string>(), MigrationChecksum(files[i]));
    }
  }
}

TEST_F(ServiceBinaryTest, EveryTableCarriesTheTenant) {
  ASSERT_EQ(MigrateAsOwner(), 0);
  auto missing = db_->AdminQuery(
      "SELECT t.table_name FROM information_schema.tables t WHERE t.table_schema = '" + Service() +
      "' AND t.table_type = 'BASE TABLE' AND t.table_name NOT IN ('schema_migrations', "
      "'consumer_positions', 'consumer_failures') AND NOT EXISTS "
      "(SELECT 1 FROM information_schema.columns c WHERE c.table_schema = t.table_schema AND "
      "c.table_name = t.table_name AND c.column_name = 'agency_id' AND c.is_nullable = 'NO')");
  for (const auto& row : missing) ADD_FAILURE() << "no agency_id: " << row[0].as<std::string>();
}

TEST_F(ServiceBinaryTest, EveryTenantTableHasRowLevelSecurityForced) {
  ASSERT_EQ(MigrateAsOwner(), 0);
  auto tables = db_->AdminQuery(
      "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, EXISTS (SELECT 1 FROM "
      "pg_policies p WHERE p.schemaname = n.nspname AND p.tablename = c.relname AND "
      "p.policyname = 'tenant_isolation') FROM pg_class c JOIN pg_namespace n ON n.oid = "
      "c.relnamespace WHERE n.nspname = '" +
      Service() +
      "' AND c.relkind = 'r' AND EXISTS "
      "(SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'agency_id')");
  for (const auto& row : tables) {
    const std::string table = row[0].as<std::string>();
    EXPECT_TRUE(row[1].as<bool>()) << table << ": row-level security not enabled";
    EXPECT_TRUE(row[2].as<bool>()) << table << ": row-level security not forced";
    EXPECT_TRUE(row[3].as<bool>()) << table << ": no tenant_isolation policy";
  }
}

// A policy's bare current_setting() is evaluated for every row a statement reads; inside a
// sub-SELECT once per statement (an InitPlan), which jobs reading every agency's rows rely on.
TEST_F(ServiceBinaryTest, EveryPolicyReadsItsSettingOncePerStatement) {
  ASSERT_EQ(MigrateAsOwner(), 0);
  auto policies = db_->AdminQuery(
      "SELECT tablename || '.' || policyname, coalesce(qual, ''), coalesce(with_check, '') FROM "
      "pg_policies WHERE schemaname = '" +
      Service() + "' ORDER BY 1");
  ASSERT_GT(policies.size(), 0u);
  auto count = [](const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  int settings = 0;
  for (const auto& row : policies) {
    for (int column : {1, 2}) {
      const std::string expression = row[column].as<std::string>();
      settings += count(expression, "current_setting(");
      EXPECT_EQ(count(expression, "current_setting("), count(expression, "SELECT current_setting("))
          << row[0].as<std::string>() << " reads a setting per row: " << expression;
    }
  }
  EXPECT_GT(settings, 0);
}

TEST_F(ServiceBinaryTest, MigrateTwiceChangesNothing) {
  const std::string url = "--database_url=" + db_->OwnerUrlFor(Service());
  ExitResult first = RunToExit(Service(), {"migrate", url});
  ASSERT_EQ(first.exit_code, 0) << first.log;
  const std::string before = SchemaSnapshot(*db_, Service());
  ExitResult second = RunToExit(Service(), {"migrate", url});
  ASSERT_EQ(second.exit_code, 0) << second.log;
  EXPECT_NE(second.log.find("\"applied\":0"), std::string::npos) << second.log;
  EXPECT_EQ(SchemaSnapshot(*db_, Service()), before);
}

TEST_F(ServiceBinaryTest, ChangedMigrationStopsStartUp) {
  const std::string url = "--database_url=" + db_->OwnerUrlFor(Service());
  ASSERT_EQ(RunToExit(Service(), {"migrate", url}).exit_code, 0);
  db_->AdminQuery("UPDATE " + Service() +
                  ".schema_migrations SET checksum = 'edited' "
                  "WHERE track = '" +
                  Service() + "' AND version = 1");
  ExitResult migrate = RunToExit(Service(), {"migrate", url});
  EXPECT_EQ(migrate.exit_code, 1);
  EXPECT_NE(migrate.log.find("changed after it was applied"), std::string::npos) << migrate.log;

  ServiceProcess serving(Service(), db_->UrlFor(Service()));
  auto code = serving.WaitExit(20s);
  ASSERT_TRUE(code.has_value()) << serving.Log();
  EXPECT_EQ(*code, 3);
}

TEST_F(ServiceBinaryTest, ARoleThatBypassesRowLevelSecurityCannotServeOrBeTheRuntimeRole) {
  // The schema is migrated by its owner; only the serving role is wrong.
  ASSERT_EQ(MigrateAsOwner(), 0);
  const std::string owner_url = db_->OwnerUrlFor(Service());
  auto serve = [&](const std::string& database_url) {
    std::vector<std::string> args{"serve", "--database_url=" + database_url,
                                  "--migration_database_url=" + owner_url,
                                  "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0"};
    for (const std::string& flag : TokenFlags()) args.push_back(flag);
    return RunToExit(Service(), args, std::chrono::seconds(20));
  };
  // A superuser…
  ExitResult superuser = serve(AdminUrl(db_->name()));
  EXPECT_EQ(superuser.exit_code, 3) << superuser.log;
  EXPECT_NE(superuser.log.find("connects as postgres, a superuser or a role that bypasses "
                               "row-level security"),
            std::string::npos)
      << superuser.log;
  // …and a plain role with BYPASSRLS (its own, not the service's: roles are shared by the tests
  // running at the same time).
  const std::string role = db_->name() + "_bypass";
  db_->AdminQuery("CREATE ROLE " + role + " LOGIN BYPASSRLS");
  db_->AdminQuery("GRANT CONNECT ON DATABASE " + db_->name() + " TO " + role);
  std::string bypass_url = AdminUrl(db_->name());
  bypass_url.replace(bypass_url.find("postgres@"), std::string("postgres@").size(), role + "@");
  ExitResult bypass = serve(bypass_url);
  // Named as the runtime role, the migration runner refuses it before granting it anything, as
  // it refuses a role that does not exist.
  ExitResult granted = RunToExit(
      Service(), {"migrate", "--database_url=" + owner_url, "--database_runtime_role=" + role});
  ExitResult missing = RunToExit(Service(), {"migrate", "--database_url=" + owner_url,
                                             "--database_runtime_role=" + role + "_missing"});
  db_->AdminQuery("REVOKE CONNECT ON DATABASE " + db_->name() + " FROM " + role);
  db_->AdminQuery("DROP ROLE " + role);
  EXPECT_EQ(bypass.exit_code, 3) << bypass.log;
  EXPECT_NE(bypass.log.find("connects as " + role + ", a superuser or a role that bypasses"),
            std::string::npos)
      << bypass.log;
  EXPECT_EQ(granted.exit_code, 1) << granted.log;
  EXPECT_NE(
      granted.log.find("runtime role " + role + " is a superuser or bypasses row-level security"),
      std::string::npos)
      << granted.log;
  EXPECT_EQ(missing.exit_code, 1) << missing.log;
  EXPECT_NE(missing.log.find("runtime role " + role + "_missing does not exist"), std::string::npos)
      << missing.log;
  // The service's runtime role, as deployed, serves.
  ServiceProcess serving(Service(), db_->UrlFor(Service()));
  EXPECT_TRUE(serving.WaitHealth(true)) << serving.Log();
}

TEST_F(ServiceBinaryTest, HandledCallsShowUpInMetricsWithTheirCode) {
  auto process = StartServing();
  // A domain RPC called without a token: refused (UNAUTHENTICATED), or UNIMPLEMENTED while the
  // service's issue has not built it; never answered.
  const auto* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
      GrpcServiceName(Service()));
  ASSERT_NE(service, nullptr);
  ASSERT_GT(service->method_count(), 0);
  const std::string method = service->method(0)->name();
  // Client-streaming and bidi RPCs do not exist in our APIs; a unary or server-streaming call
  // with an empty request both reach the handler.
  grpc::GenericStub generic(process->Channel());
  grpc::ClientContext ctx;
  grpc::CompletionQueue cq;
  grpc::Slice no_fields("");  // An empty message: every proto3 field at its default.
  grpc::ByteBuffer empty(&no_fields, 1);
  auto call =
      generic.PrepareUnaryCall(&ctx, "/" + GrpcServiceName(Service()) + "/" + method, empty, &cq);
  grpc::ByteBuffer reply;
  grpc::Status domain_status;
  if (!service->method(0)->server_streaming()) {
    call->StartCall();
    call->Finish(&reply, &domain_status, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_TRUE(domain_status.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
                domain_status.error_code() == grpc::StatusCode::UNIMPLEMENTED)
        << domain_status.error_code() << " " << domain_status.error_message();
  }
  cq.Shutdown();

  auto ops = OperationsService::NewStub(process->Channel());
  for (int i = 0; i < 3; ++i) {
    ListMigrationsResponse response;
    ASSERT_TRUE(ops->ListMigrations(OpsContext().get(), ListMigrationsRequest(), &response).ok());
  }
  ListMigrationsRequest bad_request;
  bad_request.set_page_size(-5);
  ListMigrationsResponse ignored;
  EXPECT_EQ(ops->ListMigrations(OpsContext().get(), bad_request, &ignored).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext anonymous;
  EXPECT_EQ(ops->ListMigrations(&anonymous, ListMigrationsRequest(), &ignored).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  const std::string metrics = HttpGet(process->metrics_port(), "/metrics");
  ASSERT_FALSE(metrics.empty());
  const std::map<std::string, std::string> ops_labels = {
      {"grpc_service", "peerpath.ops.v1.OperationsService"}, {"grpc_method", "ListMigrations"}};
  auto with = [](std::map<std::string, std::string> labels, std::string code) {
    labels["grpc_code"] = code;
    return labels;
  };
  EXPECT_EQ(MetricValue(metrics, "grpc_server_started_total", ops_labels), 5);
  EXPECT_EQ(MetricValue(metrics, "grpc_server_handled_total", with(ops_labels, "OK")), 3);
  EXPECT_EQ(MetricValue(metrics, "grpc_server_handled_total", with(ops_labels, "INVALID_ARGUMENT")),
            1);
  EXPECT_EQ(MetricValue(metrics, "grpc_server_handled_total", with(ops_labels, "UNAUTHENTICATED")),
            1);
  EXPECT_EQ(MetricValue(metrics, "grpc_server_handling_seconds_count", ops_labels), 5);
  if (!service->method(0)->server_streaming()) {
    EXPECT_EQ(MetricValue(metrics, "grpc_server_handled_total",
                          {{"grpc_service", GrpcServiceName(Service())},
                           {"grpc_method", method},
                           {"grpc_code", GrpcCodeName(domain_status.error_code())}}),
              1)
        << metrics;
  }
}

TEST_F(ServiceBinaryTest, ValidationErrorCarriesFieldViolationsAClientCanRead) {
  auto process = StartServing();
  auto ops = OperationsService::NewStub(process->Channel());
  ListMigrationsRequest request;
  request.set_page_size(-1);
  request.set_page_token("not-a-token");
  ListMigrationsResponse response;
  grpc::Status status = ops->ListMigrations(OpsContext().get(), request, &response);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::BadRequest bad_request;
  ASSERT_TRUE(details.details(0).UnpackTo(&bad_request));
  std::set<std::string> fields;
  for (const auto& v : bad_request.field_violations()) {
    fields.insert(v.field());
    EXPECT_FALSE(v.description().empty());
  }
  EXPECT_EQ(fields, (std::set<std::string>{"page_size", "page_token"}));
}

TEST_F(ServiceBinaryTest, PagesThroughMigrationsWithOpaqueTokens) {
  auto process = StartServing();
  auto ops = OperationsService::NewStub(process->Channel());
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    ListMigrationsRequest request;
    request.set_page_size(1);
    request.set_page_token(token);
    ListMigrationsResponse response;
    ASSERT_TRUE(ops->ListMigrations(OpsContext().get(), request, &response).ok());
    ASSERT_LE(response.migrations_size(), 1);
    for (const auto& m : response.migrations()) {
      seen.push_back(m.track() + "/" + std::to_string(m.version()));
    }
    token = response.next_page_token();
    ASSERT_LT(++pages, 100);
  } while (!token.empty());
  // Shared track first, then the service's own, each in version order.
  std::vector<std::string> expected;
  for (const std::string& track : {std::string("shared"), Service()}) {
    for (const auto& m : MigrationFiles(track)) {
      expected.push_back(track + "/" + std::to_string(m.version));
    }
  }
  EXPECT_EQ(seen, expected);
}

TEST_F(ServiceBinaryTest, RequestIdIsEchoedOrGenerated) {
  auto process = StartServing();
  auto ops = OperationsService::NewStub(process->Channel());
  ListMigrationsResponse response;
  auto given = OpsContext();
  given->AddMetadata("x-request-id", "demo-42");
  ASSERT_TRUE(ops->ListMigrations(given.get(), ListMigrationsRequest(), &response).ok());
  auto it = given->GetServerInitialMetadata().find("x-request-id");
  ASSERT_NE(it, given->GetServerInitialMetadata().end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "demo-42");

  auto unsafe = OpsContext();
  unsafe->AddMetadata("x-request-id", "jane doe {\"x\":1}");
  ASSERT_TRUE(ops->ListMigrations(unsafe.get(), ListMigrationsRequest(), &response).ok());
  it = unsafe->GetServerInitialMetadata().find("x-request-id");
  ASSERT_NE(it, unsafe->GetServerInitialMetadata().end());
  const std::string generated(it->second.data(), it->second.size());
  EXPECT_EQ(generated.size(), 32u);
  EXPECT_EQ(process->Log().find("jane doe"), std::string::npos);
}

TEST_F(ServiceBinaryTest, InFlightCallCompletesAfterSigtermThenExitZero) {
  auto process = StartServing({"--shutdown_grace=10s"});
  // Hold the migrations ledger locked so ListMigrations waits inside the server.
  auto admin = db_->Admin();
  pqxx::work lock_tx(*admin);
  lock_tx.exec0("LOCK TABLE " + Service() + ".schema_migrations IN ACCESS EXCLUSIVE MODE");

  auto ops = OperationsService::NewStub(process->Channel());
  auto in_flight = std::async(std::launch::async, [&] {
    auto ctx = OpsContext();
    ctx->set_deadline(std::chrono::system_clock::now() + 30s);
    ListMigrationsResponse response;
    grpc::Status status = ops->ListMigrations(ctx.get(), ListMigrationsRequest(), &response);
    return std::make_pair(status, response.migrations_size());
  });
  // Wait until the server's query is blocked on our lock.
  bool waiting = false;
  for (int i = 0; i < 200 && !waiting; ++i) {
    std::this_thread::sleep_for(25ms);
    waiting = db_->AdminQuery(
                     "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND datname = current_database()")
                  .size() > 0;
  }
  ASSERT_TRUE(waiting) << "the call never reached the database";

  process->Signal(SIGTERM);
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(process->WaitExit(0ms).has_value()) << "exited before the in-flight call ended";
  // New calls are refused while the old one drains.
  {
    auto fresh = grpc::CreateChannel("127.0.0.1:" + std::to_string(process->grpc_port()),
                                     grpc::InsecureChannelCredentials());
    EXPECT_NE(HealthStatus(fresh), "SERVING");
  }
  lock_tx.commit();

  auto [status, count] = in_flight.get();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_GE(count, 1);
  auto code = process->WaitExit(15s);
  ASSERT_TRUE(code.has_value()) << process->Log();
  EXPECT_EQ(*code, 0) << process->Log();
  EXPECT_NE(process->Log().find("\"msg\":\"stopped\""), std::string::npos);
}

TEST_F(ServiceBinaryTest, CallStillRunningAfterGraceIsCancelledAndProcessExits) {
  auto process = StartServing({"--shutdown_grace=1s"});
  auto admin = db_->Admin();
  pqxx::work lock_tx(*admin);
  lock_tx.exec0("LOCK TABLE " + Service() + ".schema_migrations IN ACCESS EXCLUSIVE MODE");
  auto ops = OperationsService::NewStub(process->Channel());
  auto in_flight = std::async(std::launch::async, [&] {
    ListMigrationsResponse response;
    return ops->ListMigrations(OpsContext().get(), ListMigrationsRequest(), &response);
  });
  std::this_thread::sleep_for(500ms);
  process->Signal(SIGTERM);
  auto code = process->WaitExit(10s);
  lock_tx.abort();
  ASSERT_TRUE(code.has_value()) << "did not exit after the grace period\n" << process->Log();
  EXPECT_EQ(*code, 0);
  EXPECT_FALSE(in_flight.get().ok());
}

TEST_F(ServiceBinaryTest, OperationsApiRefusesMissingBadAndUnprivilegedTokens) {
  auto process = StartServing();
  auto ops = OperationsService::NewStub(process->Channel());
  ListMigrationsResponse response;
  auto call = [&](grpc::ClientContext* ctx) {
    return ops->ListMigrations(ctx, ListMigrationsRequest(), &response);
  };
  grpc::ClientContext none;
  grpc::Status status = call(&none);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(status.error_message().find("missing authorization"), std::string::npos);

  grpc::ClientContext garbage;
  garbage.AddMetadata("authorization", "Bearer not.a.jwt");
  EXPECT_EQ(call(&garbage).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  grpc::ClientContext peer;
  peer.AddMetadata("authorization", "Bearer " + TokenFor("agency-a", {"peer_supporter"}));
  status = call(&peer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(status.error_message().find("operations"), std::string::npos);

  // Health stays open without a token.
  EXPECT_EQ(HealthStatus(process->Channel()), "SERVING");
  EXPECT_TRUE(call(OpsContext("program_admin").get()).ok());
}

TEST_F(ServiceBinaryTest, DevelopmentIssuerIsRefusedUnlessAllowed) {
  ExitResult refused = RunToExit(
      Service(), {"serve", "--database_url=" + db_->UrlFor(Service()),
                  "--jwt_keys_file=" + Keys().public_keys_file, "--jwt_issuer=peerpath-dev"});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.log.find("--allow_dev_tokens"), std::string::npos) << refused.log;
}

}  // namespace
}  // namespace peerpath::testing
