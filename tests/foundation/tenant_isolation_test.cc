// Row-level security as a second wall behind the code: connected as the service's own role, a
// transaction sees and writes only the rows of the agency it is scoped to.
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/db.h"
#include "common/migrations.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

class TenantIsolation : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    database_ = MigrateWithProbeTable(*db_, "consent");
  }

  absl::Status Insert(const std::string& scope, const std::string& row_agency) {
    return database_->TransactForAgency(scope, [&](pqxx::work& tx) -> absl::Status {
      tx.exec_params0("INSERT INTO probe (agency_id, note) VALUES ($1, 'x')", row_agency);
      return absl::OkStatus();
    });
  }

  int CountAll(const std::string& scope) {
    auto count = database_->TransactForAgency(scope, [](pqxx::work& tx) -> absl::StatusOr<int> {
      return tx.exec1("SELECT count(*) FROM probe")[0].as<int>();  // No WHERE on purpose.
    });
    EXPECT_TRUE(count.ok()) << count.status();
    return count.value_or(-1);
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Database> database_;
};

TEST_F(TenantIsolation, QueryWithoutWhereSeesOnlyTheScopedAgency) {
  ASSERT_TRUE(Insert("agency-a", "agency-a").ok());
  ASSERT_TRUE(Insert("agency-a", "agency-a").ok());
  ASSERT_TRUE(Insert("agency-b", "agency-b").ok());
  EXPECT_EQ(CountAll("agency-a"), 2);
  EXPECT_EQ(CountAll("agency-b"), 1);
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.probe")[0][0].as<int>(), 3);
}

TEST_F(TenantIsolation, NoAgencySetSeesNothing) {
  ASSERT_TRUE(Insert("agency-a", "agency-a").ok());
  auto count = database_->Transact([](pqxx::work& tx) -> absl::StatusOr<int> {
    return tx.exec1("SELECT count(*) FROM probe")[0].as<int>();
  });
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 0);
}

TEST_F(TenantIsolation, InsertForAForeignAgencyFails) {
  absl::Status foreign = Insert("agency-a", "agency-b");
  EXPECT_FALSE(foreign.ok());
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.probe")[0][0].as<int>(), 0);
}

TEST_F(TenantIsolation, RowCannotBeMovedToAnotherAgency) {
  ASSERT_TRUE(Insert("agency-a", "agency-a").ok());
  absl::Status moved = database_->TransactForAgency("agency-a", [](pqxx::work& tx) {
    tx.exec0("UPDATE probe SET agency_id = 'agency-b'");
    return absl::OkStatus();
  });
  EXPECT_FALSE(moved.ok());
  // Nor can another agency touch it.
  auto deleted =
      database_->TransactForAgency("agency-b", [](pqxx::work& tx) -> absl::StatusOr<int> {
        return static_cast<int>(tx.exec0("DELETE FROM probe").affected_rows());
      });
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 0);
  EXPECT_EQ(db_->AdminQuery("SELECT agency_id FROM consent.probe")[0][0].as<std::string>(),
            "agency-a");
}

TEST_F(TenantIsolation, RuntimeRoleOwnsNothingAndCannotSwitchTheWallOff) {
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM pg_tables WHERE schemaname = 'consent' AND "
                            "tableowner = 'peerpath_consent'")[0][0]
                .as<int>(),
            0);
  EXPECT_FALSE(db_->AdminQuery("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = "
                               "'peerpath_consent'")[0][0]
                   .as<bool>());
  for (const char* sql :
       {"ALTER TABLE probe DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE probe NO FORCE ROW LEVEL SECURITY", "DROP POLICY tenant_isolation ON probe",
        "INSERT INTO schema_migrations (track, version, name, checksum) "
        "VALUES ('consent', 999, 'forged', 'x')",
        "CREATE TABLE sneaky (agency_id text)"}) {
    absl::Status status = database_->TransactForAgency("agency-a", [&](pqxx::work& tx) {
      tx.exec0(sql);
      return absl::OkStatus();
    });
    EXPECT_FALSE(status.ok()) << sql;
  }
}

// The policy reads the transaction's agency once per statement (an InitPlan), not once per row;
// a policy created in the earlier per-row form is rewritten by the next migration run, once, and
// isolates as before.
TEST_F(TenantIsolation, ThePolicyReadsTheAgencyOncePerStatementAlsoAfterAnUpgrade) {
  auto form = [&] {
    return db_
        ->AdminQuery(
            "SELECT qual || ' / ' || with_check FROM pg_policies WHERE schemaname = "
            "'consent' AND tablename = 'probe' AND policyname = 'tenant_isolation'")[0][0]
        .as<std::string>();
  };
  const std::string once =
      "(agency_id = ( SELECT current_setting('app.agency_id'::text, true) AS current_setting))";
  EXPECT_EQ(form(), once + " / " + once);
  auto plan = [&] {
    auto lines =
        database_->TransactForAgency("agency-a", [](pqxx::work& tx) -> absl::StatusOr<std::string> {
          return Explain(tx, "SELECT count(*) FROM probe");
        });
    EXPECT_TRUE(lines.ok()) << lines.status();
    return lines.value_or("");
  };
  EXPECT_NE(plan().find("InitPlan"), std::string::npos) << plan();

  db_->AdminQuery(
      "ALTER POLICY tenant_isolation ON consent.probe "
      "USING (agency_id = current_setting('app.agency_id', true)) "
      "WITH CHECK (agency_id = current_setting('app.agency_id', true))");
  ASSERT_NE(form(), once + " / " + once);
  database_ = MigrateAndConnect(*db_, "consent", 2);
  EXPECT_EQ(form(), once + " / " + once);
  EXPECT_NE(plan().find("InitPlan"), std::string::npos) << plan();
  ASSERT_TRUE(Insert("agency-a", "agency-a").ok());
  ASSERT_TRUE(Insert("agency-b", "agency-b").ok());
  EXPECT_FALSE(Insert("agency-a", "agency-b").ok());
  EXPECT_EQ(CountAll("agency-a"), 1);
  EXPECT_EQ(CountAll("agency-b"), 1);
}

// A start-up with nothing to migrate takes no lock that waits for the calls of the replicas
// already serving: a rolling deployment starts its new replicas while a long read (a report) may
// be running. The runner used to enable and force row-level security on every table again at every
// run, an ACCESS EXCLUSIVE lock on each, held until commit and queueing every call behind it.
TEST_F(TenantIsolation, AStartUpWithNothingToMigrateWaitsForNoRunningCall) {
  ASSERT_TRUE(Insert("agency-a", "agency-a").ok());
  ReadInProgress reading(*db_, "consent", "agency-a", "consent.probe");
  EXPECT_EQ(reading.rows_seen(), 1);
  // A migration run that would wait for it gives up after a second instead of hanging the test.
  ExitResult migrate =
      RunToExit("consent", {"migrate", "--database_url=" + db_->OwnerUrlFor("consent") +
                                           "?options=-c%20lock_timeout%3D1000"});
  EXPECT_EQ(migrate.exit_code, 0) << migrate.log;
  reading.End();
  // The wall still stands.
  EXPECT_TRUE(db_->AdminQuery("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
                              "WHERE oid = 'consent.probe'::regclass")[0][0]
                  .as<bool>());
  EXPECT_EQ(CountAll("agency-b"), 0);
}

// A data migration (a backfill, rows moved to a new table) sees the rows of every agency, though
// it runs as the schema owner, whom the tenant policy binds too (FORCE ROW LEVEL SECURITY) and no
// agency is set: the runner lifts FORCE for the run and sets it again before commit. Such a
// migration used to see no row at all.
TEST_F(TenantIsolation, ADataMigrationSeesTheRowsOfEveryAgency) {
  ASSERT_TRUE(Insert("agency-a", "agency-a").ok());
  ASSERT_TRUE(Insert("agency-b", "agency-b").ok());
  ASSERT_TRUE(Insert("agency-b", "agency-b").ok());
  const std::vector<Migration> backfill = {
      {1, "probe_counts",
       "CREATE TABLE probe_counts AS SELECT agency_id AS agency, count(*) AS n FROM probe "
       "GROUP BY agency_id; UPDATE probe SET note = 'migrated'"}};
  pqxx::connection owner(db_->OwnerUrlFor("consent"));
  const auto report = ApplyMigrations(owner, "consent", {{"probe", &backfill}}, "peerpath_consent");
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->applied, 1);
  const pqxx::result counts =
      db_->AdminQuery("SELECT agency, n FROM consent.probe_counts ORDER BY agency");
  ASSERT_EQ(counts.size(), 2u);
  EXPECT_EQ(counts[0][0].as<std::string>(), "agency-a");
  EXPECT_EQ(counts[0][1].as<int>(), 1);
  EXPECT_EQ(counts[1][1].as<int>(), 2);
  EXPECT_EQ(
      db_->AdminQuery("SELECT count(*) FROM consent.probe WHERE note = 'migrated'")[0][0].as<int>(),
      3);
  // Forced again before the run committed: the owner is bound by the policy once more, and the
  // service's role as before.
  EXPECT_TRUE(db_->AdminQuery("SELECT relforcerowsecurity FROM pg_class "
                              "WHERE oid = 'consent.probe'::regclass")[0][0]
                  .as<bool>());
  pqxx::work as_owner(owner);
  EXPECT_EQ(as_owner.exec1("SELECT count(*) FROM consent.probe")[0].as<int>(), 0);
  as_owner.abort();
  EXPECT_EQ(CountAll("agency-b"), 2);
}

TEST_F(TenantIsolation, EmptyAgencyScopeIsRefusedBeforeTheDatabase) {
  EXPECT_EQ(Insert("", "").code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace peerpath::testing
