// How SQL errors reach clients and the log: the client gets a code, the log the SQLSTATE and the
// primary message only (never a DETAIL line quoting row values, which may be personal data); a
// schema still being migrated is "not ready yet", not an error.
#include <gtest/gtest.h>

#include "common/db.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

class DatabaseErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    database_ = MigrateAndConnect(*db_, "consent", 4);
    db_->AdminQuery(
        "CREATE TABLE consent.scratch (n serial PRIMARY KEY, t text CHECK (t <> 'Jane Doe')); "
        "GRANT ALL ON consent.scratch, consent.scratch_n_seq TO peerpath_consent");
  }

  // Runs `sql` in a transaction; returns its status and what was logged meanwhile.
  std::pair<absl::Status, std::string> RunLogged(const std::string& sql) {
    ::testing::internal::CaptureStderr();
    const absl::Status status = database_->Transact([&](pqxx::work& tx) -> absl::Status {
      tx.exec0(sql);
      return absl::OkStatus();
    });
    return {status, ::testing::internal::GetCapturedStderr()};
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Database> database_;
};

TEST_F(DatabaseErrorsTest, RowValuesInTheErrorDetailStayOutOfTheLog) {
  MarkSchemaReady();
  const auto [status, logged] = RunLogged("INSERT INTO scratch (t) VALUES ('Jane Doe')");
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(status.message(), "database error");
  EXPECT_NE(logged.find("\"sqlstate\":\"23514\""), std::string::npos) << logged;
  EXPECT_NE(logged.find("scratch_t_check"), std::string::npos) << logged;
  // PostgreSQL's DETAIL reads "Failing row contains (1, Jane Doe)".
  EXPECT_EQ(logged.find("Jane Doe"), std::string::npos) << logged;
  EXPECT_EQ(logged.find("Failing row"), std::string::npos) << logged;
}

TEST_F(DatabaseErrorsTest, AMissingTableIsAnErrorOnceTheSchemaIsReady) {
  // Before MarkSchemaReady (in a fresh process the migrations may still be running) this is
  // logged as "not ready yet"; the flag is process-wide, so only the ready state is tested here.
  MarkSchemaReady();
  const auto [status, logged] = RunLogged("SELECT * FROM no_such_table");
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(logged.find("\"level\":\"error\""), std::string::npos) << logged;
  EXPECT_NE(logged.find("\"sqlstate\":\"42P01\""), std::string::npos) << logged;
  EXPECT_EQ(logged.find("not ready"), std::string::npos) << logged;
}

}  // namespace
}  // namespace peerpath::testing
