// Idempotent create/record calls against the real PostgreSQL, as the service's own role: a retry
// returns the first response and writes nothing, a reused key with another request is refused,
// concurrent calls with one key execute once.
#include "common/idempotency.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "common/audit.h"
#include "common/status.h"
#include "peerpath/common/v1/common.pb.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

using peerpath::common::v1::Date;
using peerpath::common::v1::Event;

class Idempotency : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    database_ = MigrateAndConnect(*db_, "consent", 4);
  }

  static Date Request(int day) {
    Date d;
    d.set_year(2026);
    d.set_month(11);
    d.set_day(day);
    return d;
  }

  // A "record" call: appends an audit row (the write) and answers with an id.
  absl::Status Record(const std::string& agency, const std::string& key, const Date& request,
                      Event& response, const std::string& method = "RecordThing") {
    return RunIdempotent(*database_, {agency, key, method, &request, "staff-1"}, response,
                         [&](pqxx::work& tx, google::protobuf::Message& out) -> absl::Status {
                           ++writes_;
                           auto seq = AppendAudit(tx, agency,
                                                  {"staff-1", "clinician", method, "thing", "",
                                                   "p-1", AuditDecision::kAllowed, "req"});
                           if (!seq.ok()) return seq.status();
                           static_cast<Event&>(out).set_event_id("thing-" + std::to_string(*seq));
                           return absl::OkStatus();
                         });
  }

  int AuditRows() {
    return db_->AdminQuery("SELECT count(*) FROM consent.audit_log")[0][0].as<int>();
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Database> database_;
  std::atomic<int> writes_{0};
};

TEST_F(Idempotency, RetryWithSameKeyReturnsFirstResponseAndWritesOnce) {
  Event first, second;
  ASSERT_TRUE(Record("agency-a", "key-1", Request(1), first).ok());
  ASSERT_TRUE(Record("agency-a", "key-1", Request(1), second).ok());
  EXPECT_EQ(first.event_id(), "thing-1");
  EXPECT_EQ(second.event_id(), "thing-1");
  EXPECT_EQ(writes_, 1);
  EXPECT_EQ(AuditRows(), 1);
}

TEST_F(Idempotency, SameKeyWithDifferentRequestIsFailedPrecondition) {
  Event first, second;
  ASSERT_TRUE(Record("agency-a", "key-1", Request(1), first).ok());
  absl::Status other = Record("agency-a", "key-1", Request(2), second);
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
  EXPECT_NE(other.message().find("different request"), absl::string_view::npos);
  absl::Status other_method = Record("agency-a", "key-1", Request(1), second, "OtherRpc");
  EXPECT_EQ(other_method.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(AuditRows(), 1);
}

TEST_F(Idempotency, AnotherCallerCannotReplayTheFirstCallersResponse) {
  const Date request = Request(5);
  auto record = [&](const std::string& caller, Event& response) {
    return RunIdempotent(*database_, {"agency-a", "key-who", "RecordThing", &request, caller},
                         response, [&](pqxx::work&, google::protobuf::Message& out) {
                           ++writes_;
                           static_cast<Event&>(out).set_event_id("for-" + caller);
                           return absl::OkStatus();
                         });
  };
  Event first, again, other;
  ASSERT_TRUE(record("staff-1", first).ok());
  ASSERT_TRUE(record("staff-1", again).ok());
  EXPECT_EQ(again.event_id(), "for-staff-1");
  absl::Status stranger = record("staff-2", other);
  EXPECT_EQ(stranger.code(), absl::StatusCode::kFailedPrecondition) << stranger;
  EXPECT_TRUE(other.event_id().empty());
  EXPECT_EQ(writes_, 1);
}

TEST_F(Idempotency, KeysBelongToOneAgency) {
  Event a, b;
  ASSERT_TRUE(Record("agency-a", "shared-key", Request(1), a).ok());
  ASSERT_TRUE(Record("agency-b", "shared-key", Request(1), b).ok());
  EXPECT_EQ(writes_, 2);
  EXPECT_EQ(AuditRows(), 2);
}

TEST_F(Idempotency, FailedWriteLeavesTheKeyFree) {
  const Date request = Request(3);
  Event response;
  absl::Status failed =
      RunIdempotent(*database_, {"agency-a", "key-f", "RecordThing", &request, "staff-1"}, response,
                    [](pqxx::work& tx, google::protobuf::Message&) -> absl::Status {
                      AppendAudit(tx, "agency-a",
                                  {"s", "clinician", "x", "", "", "", AuditDecision::kAllowed, ""})
                          .IgnoreError();
                      return absl::FailedPreconditionError("refused by a rule");
                    });
  EXPECT_EQ(failed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(AuditRows(), 0);  // The write rolled back with the claim.
  ASSERT_TRUE(Record("agency-a", "key-f", request, response).ok());
  EXPECT_EQ(AuditRows(), 1);
}

TEST_F(Idempotency, MalformedOrMissingKeyNamesTheField) {
  Event response;
  for (const std::string& key : {std::string(), std::string("has space"), std::string(129, 'k')}) {
    absl::Status status = Record("agency-a", key, Request(1), response);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << key;
    ASSERT_EQ(FieldViolations(status).size(), 1u);
    EXPECT_EQ(FieldViolations(status)[0].field, "idempotency_key");
  }
  EXPECT_EQ(writes_, 0);
}

TEST_F(Idempotency, ConcurrentCallsWithOneKeyExecuteOnce) {
  const Date request = Request(4);
  std::promise<void> first_claimed;
  std::promise<void> release_first;
  Event first_response;
  std::thread first([&] {
    absl::Status status = RunIdempotent(
        *database_, {"agency-a", "key-c", "RecordThing", &request, "staff-1"}, first_response,
        [&](pqxx::work& tx, google::protobuf::Message& out) -> absl::Status {
          ++writes_;
          first_claimed.set_value();
          release_first.get_future().wait();  // Hold the claim uncommitted.
          AppendAudit(tx, "agency-a",
                      {"s", "clinician", "x", "", "", "", AuditDecision::kAllowed, ""})
              .IgnoreError();
          static_cast<Event&>(out).set_event_id("from-first");
          return absl::OkStatus();
        });
    EXPECT_TRUE(status.ok()) << status;
  });
  first_claimed.get_future().wait();
  Event second_response;
  auto second = std::async(std::launch::async,
                           [&] { return Record("agency-a", "key-c", request, second_response); });
  // The second call waits on the first's claim rather than writing.
  EXPECT_EQ(second.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  release_first.set_value();
  first.join();
  ASSERT_TRUE(second.get().ok());
  EXPECT_EQ(second_response.event_id(), "from-first");
  EXPECT_EQ(writes_, 1);
  EXPECT_EQ(AuditRows(), 1);
}

TEST_F(Idempotency, CleanUpKeepsKeysForAtLeast24Hours) {
  Event response;
  ASSERT_TRUE(Record("agency-a", "young", Request(1), response).ok());
  ASSERT_TRUE(Record("agency-b", "old", Request(1), response).ok());
  db_->AdminQuery(
      "UPDATE consent.idempotency_keys SET created_at = now() - interval '49 hours' "
      "WHERE idempotency_key = 'old'");
  auto deleted = DeleteExpiredIdempotencyKeys(*database_, absl::Hours(48));
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 1);
  // Asking for less than 24 hours still keeps every key younger than that.
  ASSERT_TRUE(DeleteExpiredIdempotencyKeys(*database_, absl::Minutes(1)).ok());
  EXPECT_EQ(db_->AdminQuery("SELECT idempotency_key FROM consent.idempotency_keys")[0][0]
                .as<std::string>(),
            "young");
}

}  // namespace
}  // namespace peerpath::testing
