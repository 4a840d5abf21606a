// Migrations of several services, and several replicas of one service, started at the same moment
// against one database: every run succeeds and every migration is applied exactly once.
#include <gtest/gtest.h>

#include <future>
#include <vector>

#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

const std::vector<std::string> kServices = {"matching", "checkin", "consent", "escalation",
                                            "evaluation"};

TEST(MigrationConcurrency, AllServicesAndTwoReplicasEachMigrateOneDatabaseAtOnce) {
  auto db = TestDatabase::Create();
  std::vector<std::pair<std::string, std::future<ExitResult>>> runs;
  for (int replica = 0; replica < 2; ++replica) {
    for (const std::string& service : kServices) {
      runs.emplace_back(
          service, std::async(std::launch::async, [&db, service] {
            return RunToExit(service, {"migrate", "--database_url=" + db->OwnerUrlFor(service)});
          }));
    }
  }
  for (auto& [service, run] : runs) {
    ExitResult result = run.get();
    EXPECT_EQ(result.exit_code, 0) << service << ":\n" << result.log;
  }
  for (const std::string& service : kServices) {
    auto rows = db->AdminQuery("SELECT count(*), count(DISTINCT (track, version)) FROM " + service +
                               ".schema_migrations");
    EXPECT_GE(rows[0][0].as<int>(), 1) << service;
    EXPECT_EQ(rows[0][0].as<int>(), rows[0][1].as<int>()) << service;
    // The schema belongs to the service's owner role, neither to the superuser nor to the role
    // the service serves as.
    auto owner = db->AdminQuery(
        "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = '" + service + "'");
    EXPECT_EQ(owner[0][0].as<std::string>(), "peerpath_" + service + "_owner");
  }
}

TEST(MigrationConcurrency, MigrateWithoutDatabaseUrlIsAClearConfigurationError) {
  ExitResult result = RunToExit("consent", {"migrate"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.log.find("--database_url"), std::string::npos) << result.log;
}

TEST(MigrationConcurrency, BadEnvironmentValueNamesTheVariable) {
  ExitResult result = RunToExit("consent", {"migrate"}, std::chrono::seconds(30),
                                {{"PEERPATH_DB_POOL_SIZE", "lots"}});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.log.find("PEERPATH_DB_POOL_SIZE"), std::string::npos) << result.log;
}

TEST(MigrationConcurrency, UnknownSubcommandIsRefused) {
  ExitResult result = RunToExit("consent", {"migrat"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.log.find("usage"), std::string::npos) << result.log;
}

TEST(MigrationConcurrency, PlaintextOnPublicAddressIsRefused) {
  ExitResult result = RunToExit("consent", {"serve", "--listen_address=0.0.0.0:0",
                                            "--database_url=postgresql://x@127.0.0.1:1/none"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_NE(result.log.find("refusing to serve plaintext"), std::string::npos) << result.log;
}

TEST(MigrationConcurrency, UnreachableDatabaseMakesMigrateFail) {
  // Port 1 refuses at once; migrate keeps trying for --database_wait.
  ExitResult result = RunToExit("consent", {"migrate", "--database_wait=1s",
                                            "--database_url=postgresql://x@127.0.0.1:1/none"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.log.find("migration failed"), std::string::npos) << result.log;
}

}  // namespace
}  // namespace peerpath::testing
