// DeferredWrites against the real PostgreSQL: arguments arrive as themselves however they are
// spelled (quotes, backslashes, "$1", text that looks like SQL), in order, in the caller's
// transaction, in one round trip; a failing statement rolls the whole transaction back.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/db.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

class DeferredWritesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    database_ = MigrateAndConnect(*db_, "consent", 4);
    db_->AdminQuery(
        "CREATE TABLE consent.scratch (n serial PRIMARY KEY, t text, i bigint, b boolean,"
        " d double precision); "
        "GRANT ALL ON consent.scratch, consent.scratch_n_seq TO peerpath_consent");
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Database> database_;
};

TEST_F(DeferredWritesTest, ArgumentsArriveAsThemselvesInOrderInOneTransaction) {
  const std::vector<std::string> texts = {
      "plain",     "it's", "back\\slash", "$1 and $2",  "'); DROP TABLE consent.scratch; --",
      "ünïcødé ✓", "",     "E'x'",        "line\nbreak"};
  absl::Status status = database_->Transact([&](pqxx::work& tx) -> absl::Status {
    DeferredWrites writes(tx);
    EXPECT_TRUE(writes.empty());
    for (size_t k = 0; k < texts.size(); ++k) {
      // Named (prepared, sent as EXECUTE) and unnamed (sent as text) in turn.
      writes.Exec(k % 2 == 0 ? "scratch_insert" : "",
                  "INSERT INTO scratch (t, i, b) VALUES ($1, $2, $3)", texts[k],
                  static_cast<int64_t>(k) - 4, k % 2 == 0);
    }
    EXPECT_FALSE(writes.empty());
    // Nothing is sent before Flush.
    EXPECT_EQ(tx.exec1("SELECT count(*) FROM scratch")[0].as<int>(), 0);
    writes.Flush();
    EXPECT_TRUE(writes.empty());
    writes.Flush();  // Nothing left: no statement.
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
  const pqxx::result rows = db_->AdminQuery("SELECT t, i, b FROM consent.scratch ORDER BY n");
  ASSERT_EQ(rows.size(), texts.size());
  for (size_t k = 0; k < texts.size(); ++k) {
    EXPECT_EQ(rows[k][0].as<std::string>(), texts[k]);
    EXPECT_EQ(rows[k][1].as<int64_t>(), static_cast<int64_t>(k) - 4);
    EXPECT_EQ(rows[k][2].as<bool>(), k % 2 == 0);
  }
}

TEST_F(DeferredWritesTest, ADoubleArrivesAsItself) {
  const std::vector<double> values = {1.0 / 3,
                                      -0.1,
                                      1e-300,
                                      6.02214076e23,
                                      -0.0,
                                      1e308,
                                      std::numeric_limits<double>::quiet_NaN(),
                                      INFINITY,
                                      -INFINITY};
  absl::Status status = database_->Transact([&](pqxx::work& tx) -> absl::Status {
    DeferredWrites writes(tx);
    for (size_t k = 0; k < values.size(); ++k) {
      writes.Exec(k % 2 == 0 ? "scratch_double" : "", "INSERT INTO scratch (d) VALUES ($1)",
                  values[k]);
    }
    writes.Flush();
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
  const pqxx::result rows = db_->AdminQuery("SELECT d FROM consent.scratch ORDER BY n");
  ASSERT_EQ(rows.size(), values.size());
  for (size_t k = 0; k < values.size(); ++k) {
    const double got = rows[k][0].as<double>();
    if (std::isnan(values[k])) {
      EXPECT_TRUE(std::isnan(got)) << k;
    } else {
      EXPECT_EQ(got, values[k]) << k << ": " << rows[k][0].c_str();
    }
  }
}

TEST_F(DeferredWritesTest, AFailingStatementRollsTheTransactionBack) {
  absl::Status status = database_->Transact([&](pqxx::work& tx) -> absl::Status {
    tx.exec0("INSERT INTO scratch (t) VALUES ('before')");
    DeferredWrites writes(tx);
    writes.Exec("scratch_t", "INSERT INTO scratch (t) VALUES ($1)", std::string("deferred"));
    writes.Exec("scratch_n_t", "INSERT INTO scratch (n, t) VALUES ($1, $2)", 1, std::string("dup"));
    writes.Flush();
    return absl::OkStatus();
  });
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.scratch")[0][0].as<int>(), 0);
}

TEST_F(DeferredWritesTest, AParameterWithoutAnArgumentIsRefusedBeforeAnythingIsSent) {
  for (const char* name : {"", "scratch_two"}) {
    absl::Status status = database_->Transact([&](pqxx::work& tx) -> absl::Status {
      DeferredWrites writes(tx);
      writes.Exec("", "INSERT INTO scratch (t) VALUES ($1)", std::string("before"));
      EXPECT_THROW(
          writes.Exec(name, "INSERT INTO scratch (t, i) VALUES ($1, $2)", std::string("x")),
          std::invalid_argument)
          << "name '" << name << "'";
      writes.Flush();  // What was added before the refusal is still whole.
      return absl::OkStatus();
    });
    EXPECT_TRUE(status.ok()) << status;
  }
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.scratch")[0][0].as<int>(), 2);
}

// A name stands for one statement: a second statement under a name already used is refused
// before anything is sent, never executed as the first one with the second one's arguments.
TEST_F(DeferredWritesTest, AStatementUnderANameUsedForAnotherIsRefused) {
  absl::Status status = database_->Transact([&](pqxx::work& tx) -> absl::Status {
    DeferredWrites writes(tx);
    writes.Exec("scratch_reused", "INSERT INTO scratch (t) VALUES ($1)", std::string("first"));
    EXPECT_ANY_THROW(writes.Exec("scratch_reused", "INSERT INTO scratch (i) VALUES ($1::bigint)",
                                 static_cast<int64_t>(7)));
    writes.Flush();
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(db_->AdminQuery("SELECT string_agg(coalesce(t, '-') || coalesce(i::text, '-'), ',')"
                            " FROM consent.scratch")[0][0]
                .as<std::string>(),
            "first-");
}

// A named statement is prepared once per connection and then only executed: a second
// transaction on the same connection finds it prepared, and its writes land as before.
TEST_F(DeferredWritesTest, ANamedStatementIsPreparedOnceAndExecuted) {
  auto prepared = [](pqxx::work& tx) {
    return tx.exec1("SELECT count(*) FROM pg_prepared_statements WHERE name = 'scratch_named'")[0]
        .as<int>();
  };
  for (int run = 0; run < 3; ++run) {
    absl::Status status = database_->Transact([&](pqxx::work& tx) -> absl::Status {
      EXPECT_EQ(prepared(tx), run == 0 ? 0 : 1) << "run " << run;
      DeferredWrites writes(tx);
      writes.Exec("scratch_named", "INSERT INTO scratch (t, i) VALUES ($1, $2::bigint * 2)",
                  std::string("named"), static_cast<int64_t>(run));
      EXPECT_EQ(prepared(tx), 1);
      writes.Flush();
      return absl::OkStatus();
    });
    ASSERT_TRUE(status.ok()) << status;
  }
  EXPECT_EQ(db_->AdminQuery("SELECT string_agg(t || i, ',' ORDER BY n) FROM consent.scratch")[0][0]
                .as<std::string>(),
            "named0,named2,named4");
}

}  // namespace
}  // namespace peerpath::testing
