// How SQL errors reach clients and the log: the client gets a code, the log the SQLSTATE and the
// primary message only (never a DETAIL line quoting row values, which may be personal data); a
// schema still being migrated is "not ready yet", not an error. Also what the pool can lend at
// once.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

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

TEST_F(DatabaseErrorsTest, SpareCountsConnectionsToBeHadAtOnce) {
  EXPECT_EQ(database_->Spare(), 4);  // None opened yet.
  EXPECT_EQ(database_->BackgroundWorkers(), 3) << "one left to the calls";
  EXPECT_EQ(database_->BackgroundWorkers(2), 2);
  const absl::Status st = database_->Transact([&](pqxx::work& outer) -> absl::Status {
    outer.exec("SELECT 1");
    EXPECT_EQ(database_->Spare(), 3);
    return database_->Transact([&](pqxx::work& inner) -> absl::Status {
      inner.exec("SELECT 1");
      EXPECT_EQ(database_->Spare(), 2);
      return database_->Transact([&](pqxx::work& third) -> absl::Status {
        third.exec("SELECT 1");
        EXPECT_EQ(database_->BackgroundWorkers(), 1) << "at least one, even with one spare";
        return absl::OkStatus();
      });
    });
  });
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(database_->Spare(), 4);  // Both back, idle.
}

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

TEST_F(DatabaseErrorsTest, AMissingTableIsNotReadyYetBeforeMigrationsAndAnErrorAfter) {
  MarkSchemaReady(false);  // A process whose migrations are still running.
  const auto [early, logged_early] = RunLogged("SELECT * FROM no_such_table");
  EXPECT_EQ(early.code(), absl::StatusCode::kInternal);
  EXPECT_NE(logged_early.find("schema not ready yet"), std::string::npos) << logged_early;
  EXPECT_EQ(logged_early.find("\"level\":\"error\""), std::string::npos) << logged_early;
  // Other SQL errors stay errors meanwhile.
  const auto [bad, logged_bad] = RunLogged("INSERT INTO scratch (t) VALUES ('Jane Doe')");
  EXPECT_NE(logged_bad.find("\"level\":\"error\""), std::string::npos) << logged_bad;

  MarkSchemaReady();
  const auto [status, logged] = RunLogged("SELECT * FROM no_such_table");
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(logged.find("\"level\":\"error\""), std::string::npos) << logged;
  EXPECT_NE(logged.find("\"sqlstate\":\"42P01\""), std::string::npos) << logged;
  EXPECT_EQ(logged.find("not ready"), std::string::npos) << logged;
}

TEST(ConnectTimeout, IsAddedToEitherFormOfConnectionString) {
  EXPECT_EQ(WithConnectTimeout("postgresql://u@h:5/db", 5),
            "postgresql://u@h:5/db?connect_timeout=5");
  EXPECT_EQ(WithConnectTimeout("postgres://u@h/db?sslmode=require", 3),
            "postgres://u@h/db?sslmode=require&connect_timeout=3");
  EXPECT_EQ(WithConnectTimeout("host=h dbname=db", 7), "host=h dbname=db connect_timeout=7");
  // libpq would round 1 up to 2 anyway; an operator's own setting wins.
  EXPECT_EQ(WithConnectTimeout("postgresql://h/db", 1), "postgresql://h/db?connect_timeout=2");
  EXPECT_EQ(WithConnectTimeout("postgresql://h/db?connect_timeout=30", 5),
            "postgresql://h/db?connect_timeout=30");
}

TEST(DeadPeerDetection, KeepalivesAndUserTimeoutAreAddedUnlessNamed) {
  EXPECT_EQ(WithDeadPeerDetection("postgresql://u@h/db?connect_timeout=5"),
            "postgresql://u@h/db?connect_timeout=5&keepalives_idle=10&keepalives_interval=5&"
            "keepalives_count=3&tcp_user_timeout=30000");
  EXPECT_EQ(WithDeadPeerDetection("host=h keepalives_idle=60 tcp_user_timeout=0"),
            "host=h keepalives_idle=60 tcp_user_timeout=0 keepalives_interval=5 "
            "keepalives_count=3");
  // libpq accepts what it adds.
  EXPECT_NO_THROW({
    pqxx::connection conn{WithDeadPeerDetection(AdminUrl("postgres"))};
    pqxx::nontransaction tx(conn);
    tx.exec1("SELECT 1");
  });
}

TEST(ConnectTimeout, AServerThatNeverAnswersFailsTheConnectionInTime) {
  // Listens but never accepts: the TCP handshake completes, the startup packet is never answered.
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(listen(listener, 4), 0);
  socklen_t length = sizeof address;
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length), 0);
  DatabaseOptions options;
  options.url = "postgresql://nobody@127.0.0.1:" + std::to_string(ntohs(address.sin_port)) +
                "/none?sslmode=disable";
  options.schema = "none";
  options.connect_timeout_seconds = 2;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(OpenConnection(options), pqxx::broken_connection);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  close(listener);
}

// Binary array parameters arrive as the values added: PostgreSQL reads them as the array type the
// statement casts to, element by element, with nothing to quote or parse.
TEST_F(DatabaseErrorsTest, BinaryArraysArriveAsTheValuesAdded) {
  BinaryArray uuids(BinaryArray::Of::kUuid), texts(BinaryArray::Of::kText),
      ints(BinaryArray::Of::kInt4), doubles(BinaryArray::Of::kFloat8),
      bools(BinaryArray::Of::kBool), empty(BinaryArray::Of::kUuid);
  uuids.AddUuid("00000000-0000-0000-0000-000000000000");
  uuids.AddUuid("0123abcd-89EF-4a5b-8c7d-ffffffffffff");
  for (const char* t : {"plain", "", "comma, {brace} \"quote\" back\\slash", "NULL", "Zoë"}) {
    texts.AddText(t);
  }
  for (int32_t i : {0, -1, 2147483647, -2147483647 - 1}) ints.AddInt4(i);
  for (double d : {0.1, -2.5e-300, 1e308, 100.0 / 3}) doubles.AddFloat8(d);
  bools.AddBool(true);
  bools.AddBool(false);
  ASSERT_EQ(texts.size(), 5u);
  const absl::Status st = database_->Transact([&](pqxx::work& tx) -> absl::Status {
    const pqxx::row r = tx.exec_params1(
        "SELECT $1::uuid[]::text, $2::text[] = ARRAY['plain', '', 'comma, {brace} \"quote\" "
        "back\\slash', 'NULL', 'Zoë'], $3::integer[]::text, $4::double precision[] = "
        "ARRAY[0.1, -2.5e-300, 1e308, 100.0 / 3]::double precision[], $5::boolean[]::text, "
        "cardinality($6::uuid[]), array_length($2::text[], 1)",
        uuids.Bytes(), texts.Bytes(), ints.Bytes(), doubles.Bytes(), bools.Bytes(), empty.Bytes());
    EXPECT_EQ(r[0].as<std::string>(),
              "{00000000-0000-0000-0000-000000000000,0123abcd-89ef-4a5b-8c7d-ffffffffffff}");
    EXPECT_TRUE(r[1].as<bool>());
    EXPECT_EQ(r[2].as<std::string>(), "{0,-1,2147483647,-2147483648}");
    EXPECT_TRUE(r[3].as<bool>()) << "doubles arrive exactly";
    EXPECT_EQ(r[4].as<std::string>(), "{t,f}");
    EXPECT_EQ(r[5].as<int>(), 0);
    EXPECT_EQ(r[6].as<int>(), 5);
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
  // An array of one type named as another is refused by PostgreSQL, not misread.
  const absl::Status wrong = database_->Transact([&](pqxx::work& tx) -> absl::Status {
    tx.exec_params1("SELECT $1::integer[]", uuids.Bytes());
    return absl::OkStatus();
  });
  EXPECT_FALSE(wrong.ok());
  for (const char* bad :
       {"", "0123abcd-89ef-4a5b-8c7d-fffffffffff", "0123abcd_89ef-4a5b-8c7d-ffffffffffff",
        "0123abcg-89ef-4a5b-8c7d-ffffffffffff", "{0123abcd-89ef-4a5b-8c7d-ffffffffffff}"}) {
    EXPECT_THROW(uuids.AddUuid(bad), std::invalid_argument) << bad;
  }
  EXPECT_THROW(uuids.AddText("x"), std::logic_error) << "an element of another type";
  EXPECT_EQ(uuids.size(), 2u);
}

}  // namespace
}  // namespace peerpath::testing
