// The audit log as the service's own role sees it: appends chain per agency, the role cannot
// change or remove rows, and tampering by a superuser is found and named by the verifier.
#include "common/audit.h"

#include <gtest/gtest.h>

#include "common/db.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

class AuditLog : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    database_ = MigrateAndConnect(*db_, "consent", 2);
  }

  int64_t Append(const std::string& agency, const std::string& participant,
                 AuditDecision decision = AuditDecision::kAllowed) {
    auto seq = database_->TransactForAgency(agency, [&](pqxx::work& tx) {
      return AppendAudit(tx, agency,
                         {"clinician-9", "clinician", "consent.CheckAccess", "consent", "c-1",
                          participant, decision, "req-1"});
    });
    EXPECT_TRUE(seq.ok()) << seq.status();
    return seq.value_or(-1);
  }

  AuditVerification Verify(const std::string& agency) {
    auto result = database_->TransactForAgency(
        agency, [&](pqxx::work& tx) { return VerifyAuditChain(tx, agency); });
    EXPECT_TRUE(result.ok()) << result.status();
    return result.value_or(AuditVerification{});
  }

  ExitResult VerifyCommand(const std::string& agency) {
    return RunToExit("consent", {"verify-audit", "--agency=" + agency,
                                 "--database_url=" + db_->UrlFor("consent")});
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Database> database_;
};

TEST_F(AuditLog, AppendsNumberPerAgencyAndVerifies) {
  for (int i = 1; i <= 5; ++i) EXPECT_EQ(Append("agency-a", "p-" + std::to_string(i)), i);
  EXPECT_EQ(Append("agency-b", "p-x", AuditDecision::kDenied), 1);
  AuditVerification a = Verify("agency-a");
  EXPECT_EQ(a.rows_checked, 5);
  EXPECT_EQ(a.first_broken_seq, 0) << a.problem;
  EXPECT_EQ(Verify("agency-b").rows_checked, 1);
  ExitResult command = VerifyCommand("agency-a");
  EXPECT_EQ(command.exit_code, 0) << command.log;
  EXPECT_NE(command.log.find("\"rows\":5"), std::string::npos) << command.log;
}

TEST_F(AuditLog, ServiceRoleCannotChangeOrRemoveRows) {
  Append("agency-a", "p-1");
  for (const char* sql : {"UPDATE audit_log SET actor = 'someone-else'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log"}) {
    absl::Status status = database_->TransactForAgency("agency-a", [&](pqxx::work& tx) {
      tx.exec0(sql);
      return absl::OkStatus();
    });
    EXPECT_FALSE(status.ok()) << sql;
  }
  EXPECT_EQ(Verify("agency-a").first_broken_seq, 0);
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.audit_log")[0][0].as<int>(), 1);
}

TEST_F(AuditLog, TamperedRowIsNamedByTheVerifier) {
  for (int i = 1; i <= 6; ++i) Append("agency-a", "p-" + std::to_string(i));
  // A superuser can switch triggers off; the chain still shows what was done.
  db_->AdminQuery(
      "SET session_replication_role = replica; "
      "UPDATE consent.audit_log SET participant_id = 'p-forged' WHERE agency_id = 'agency-a' "
      "AND seq = 4");
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.first_broken_seq, 4);
  EXPECT_EQ(result.problem, "row content does not match its hash");
  ExitResult command = VerifyCommand("agency-a");
  EXPECT_EQ(command.exit_code, 4);
  EXPECT_NE(command.log.find("\"first_broken_seq\":4"), std::string::npos) << command.log;
  // Other agencies' chains are unaffected.
  Append("agency-b", "p-1");
  EXPECT_EQ(Verify("agency-b").first_broken_seq, 0);
}

TEST_F(AuditLog, RemovedRowIsNamedByTheVerifier) {
  for (int i = 1; i <= 4; ++i) Append("agency-a", "p-" + std::to_string(i));
  db_->AdminQuery(
      "SET session_replication_role = replica; "
      "DELETE FROM consent.audit_log WHERE agency_id = 'agency-a' AND seq = 2");
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.first_broken_seq, 2);
  EXPECT_EQ(result.problem, "row missing (sequence gap)");
}

TEST_F(AuditLog, RehashedRowBreaksTheLinkOfTheNext) {
  for (int i = 1; i <= 3; ++i) Append("agency-a", "p-" + std::to_string(i));
  // A careful forger recomputes row 2's own hash; row 3 still points at the old one.
  db_->AdminQuery(
      "SET session_replication_role = replica; SET search_path TO consent; "
      "UPDATE audit_log a SET actor = 'x', row_hash = sha256(a.prev_hash || convert_to("
      "audit_canonical((a.agency_id, a.seq, a.occurred_at, 'x', a.actor_role, a.action, "
      "a.object_type, a.object_id, a.participant_id, a.decision, a.request_id, a.prev_hash, "
      "a.row_hash)::audit_log), 'UTF8')) WHERE agency_id = 'agency-a' AND seq = 2");
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.first_broken_seq, 3);
  EXPECT_EQ(result.problem, "previous-hash link broken");
}

}  // namespace
}  // namespace peerpath::testing
