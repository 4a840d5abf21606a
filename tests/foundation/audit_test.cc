// The audit log as the service's own role sees it: appends chain per agency, the role cannot
// change or remove rows, and tampering by a superuser is found and named by the verifier.
#include "common/audit.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
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

  static AuditEntry Entry(const std::string& participant,
                          AuditDecision decision = AuditDecision::kAllowed) {
    return {"clinician-9", "clinician", "consent.CheckAccess", "consent", "c-1", participant,
            decision,      "req-1"};
  }

  // Appends one row; returns its id. It is chained later (Chain, Verify).
  int64_t Append(const std::string& agency, const std::string& participant,
                 AuditDecision decision = AuditDecision::kAllowed) {
    auto id = database_->TransactForAgency(agency, [&](pqxx::work& tx) {
      return AppendAudit(tx, agency, Entry(participant, decision));
    });
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or(-1);
  }

  int Chain() {
    auto chained = database_->Transact([](pqxx::work& tx) { return ChainAudit(tx, 1000); });
    EXPECT_TRUE(chained.ok()) << chained.status();
    return chained.value_or(-1);
  }

  // seq of each row of the agency, in the order the rows were appended (0: not chained).
  std::vector<int64_t> SeqsInAppendOrder(const std::string& agency) {
    std::vector<int64_t> seqs;
    for (const auto& row :
         db_->AdminQuery("SELECT coalesce(seq, 0) FROM consent.audit_log WHERE agency_id = '" +
                         agency + "' ORDER BY id")) {
      seqs.push_back(row[0].as<int64_t>());
    }
    return seqs;
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

TEST_F(AuditLog, AppendsUnchainedThenChainsNumberedPerAgency) {
  for (int i = 1; i <= 5; ++i) Append("agency-a", "p-" + std::to_string(i));
  Append("agency-b", "p-x", AuditDecision::kDenied);
  // Written in the action's transaction without a place in the chain yet.
  EXPECT_EQ(SeqsInAppendOrder("agency-a"), std::vector<int64_t>(5, 0));
  EXPECT_EQ(Chain(), 6);
  EXPECT_EQ(SeqsInAppendOrder("agency-a"), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(SeqsInAppendOrder("agency-b"), (std::vector<int64_t>{1}));
  EXPECT_EQ(Chain(), 0);  // Nothing pending: nothing rechained.
  Append("agency-a", "p-6");
  EXPECT_EQ(Chain(), 1);
  EXPECT_EQ(SeqsInAppendOrder("agency-a").back(), 6);
  AuditVerification a = Verify("agency-a");
  EXPECT_EQ(a.rows_checked, 6);
  EXPECT_EQ(a.pending, 0);
  EXPECT_EQ(a.first_broken_seq, 0) << a.problem;
  EXPECT_EQ(Verify("agency-b").rows_checked, 1);
  ExitResult command = VerifyCommand("agency-a");
  EXPECT_EQ(command.exit_code, 0) << command.log;
  EXPECT_NE(command.log.find("\"rows\":6"), std::string::npos) << command.log;
}

TEST_F(AuditLog, ManyRowsInOneStatementKeepTheirOrderAndAnyText) {
  // Text that an unescaped array literal would split, unquote or turn into NULL.
  const std::vector<std::string> odd = {"a,b",  "{x}", "say \"hi\"", "back\\slash",
                                        "NULL", "",    "ünï"};
  std::vector<AuditEntry> entries;
  for (const std::string& participant : odd) entries.push_back(Entry(participant));
  ASSERT_TRUE(database_
                  ->TransactForAgency("agency-a",
                                      [&](pqxx::work& tx) {
                                        return AppendAudits(tx, "agency-a", EncodeAudits(entries));
                                      })
                  .ok());
  const auto rows =
      db_->AdminQuery("SELECT participant_id, actor FROM consent.audit_log ORDER BY id");
  ASSERT_EQ(rows.size(), odd.size());
  for (size_t i = 0; i < odd.size(); ++i) {
    EXPECT_EQ(rows[i][0].as<std::string>(), odd[i]);
    EXPECT_EQ(rows[i][1].as<std::string>(), "clinician-9");
  }
  EXPECT_EQ(Chain(), static_cast<int>(odd.size()));
  const AuditVerification verified = Verify("agency-a");
  EXPECT_EQ(verified.rows_checked, static_cast<int64_t>(odd.size()));
  EXPECT_EQ(verified.first_broken_seq, 0) << verified.problem;
}

TEST_F(AuditLog, VerificationChainsWhatIsPendingFirst) {
  for (int i = 1; i <= 3; ++i) Append("agency-a", "p-" + std::to_string(i));
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.rows_checked, 3);
  EXPECT_EQ(result.first_broken_seq, 0) << result.problem;
  EXPECT_EQ(SeqsInAppendOrder("agency-a"), (std::vector<int64_t>{1, 2, 3}));
}

TEST_F(AuditLog, WritersOfOneAgencyDoNotWaitForEachOther) {
  // Two open transactions of one agency append; the later one commits first and is chained
  // first; the earlier one, committed last, is chained after it. Nothing is skipped.
  pqxx::connection first(db_->UrlFor("consent")), second(db_->UrlFor("consent"));
  for (auto* c : {&first, &second}) pqxx::nontransaction(*c).exec0("SET search_path TO consent");
  pqxx::work slow(first), fast(second);
  for (auto* tx : {&slow, &fast}) {
    tx->exec0("SET LOCAL app.agency_id = 'agency-a'");
  }
  ASSERT_TRUE(AppendAudit(slow, "agency-a", Entry("p-slow")).ok());
  ASSERT_TRUE(AppendAudit(fast, "agency-a", Entry("p-fast")).ok());  // Would block before.
  fast.commit();
  EXPECT_EQ(Chain(), 1);
  slow.commit();
  EXPECT_EQ(Chain(), 1);
  EXPECT_EQ(SeqsInAppendOrder("agency-a"), (std::vector<int64_t>{2, 1}));
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.rows_checked, 2);
  EXPECT_EQ(result.first_broken_seq, 0) << result.problem;
}

TEST_F(AuditLog, ChainingCannotChangeARowsContent) {
  Append("agency-a", "p-1");
  // Even the table's owner may only give an unchained row its place once, nothing else.
  auto as_owner = [&](const std::string& sql) {
    pqxx::connection owner(db_->OwnerUrlFor("consent"));
    pqxx::work tx(owner);
    tx.exec0("SET LOCAL search_path TO consent");
    tx.exec0("SET LOCAL app.audit_chain = 'on'");
    tx.exec0(sql);
    tx.commit();
  };
  EXPECT_THROW(as_owner("UPDATE audit_log SET seq = 1, prev_hash = sha256(''), "
                        "row_hash = sha256(''), actor = 'x'"),
               std::exception);
  EXPECT_EQ(Chain(), 1);
  EXPECT_THROW(as_owner("UPDATE audit_log SET seq = 7"), std::exception);
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.rows_checked, 1);
  EXPECT_EQ(result.first_broken_seq, 0) << result.problem;
}

TEST_F(AuditLog, TamperedRowIsNamedByTheVerifier) {
  for (int i = 1; i <= 6; ++i) Append("agency-a", "p-" + std::to_string(i));
  Chain();
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
  Chain();
  db_->AdminQuery(
      "SET session_replication_role = replica; "
      "DELETE FROM consent.audit_log WHERE agency_id = 'agency-a' AND seq = 2");
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.first_broken_seq, 2);
  EXPECT_EQ(result.problem, "row missing (sequence gap)");
}

TEST_F(AuditLog, UnchainedRowIsRechainedAtTheEndAndLeavesAGap) {
  for (int i = 1; i <= 4; ++i) Append("agency-a", "p-" + std::to_string(i));
  Chain();
  // A forger unchains row 2 to change it: the chainer gives it a new place, row 2 is missing.
  db_->AdminQuery(
      "SET session_replication_role = replica; UPDATE consent.audit_log SET seq = NULL, "
      "prev_hash = NULL, row_hash = NULL, participant_id = 'p-forged' WHERE agency_id = "
      "'agency-a' AND seq = 2");
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.first_broken_seq, 2);
  EXPECT_EQ(result.problem, "row missing (sequence gap)");
}

TEST_F(AuditLog, DeletedLastRowLeavesAGapBeforeTheNext) {
  for (int i = 1; i <= 3; ++i) Append("agency-a", "p-" + std::to_string(i));
  Chain();
  // The chain's head (migration 0005) remembers row 3: after its removal the next row is 4.
  db_->AdminQuery(
      "SET session_replication_role = replica; "
      "DELETE FROM consent.audit_log WHERE agency_id = 'agency-a' AND seq = 3");
  Append("agency-a", "p-4");
  EXPECT_EQ(Chain(), 1);
  EXPECT_EQ(SeqsInAppendOrder("agency-a"), (std::vector<int64_t>{1, 2, 4}));
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.first_broken_seq, 3);
  EXPECT_EQ(result.problem, "row missing (sequence gap)");
}

TEST_F(AuditLog, AnAgencyWithoutAHeadContinuesFromItsLog) {
  // Rows chained before the heads existed (or a head lost): the chainer reads the log's last row.
  for (int i = 1; i <= 3; ++i) Append("agency-a", "p-" + std::to_string(i));
  Chain();
  db_->AdminQuery("DELETE FROM consent.audit_chain_heads");
  Append("agency-a", "p-4");
  Append("agency-a", "p-5");
  EXPECT_EQ(Chain(), 2);
  EXPECT_EQ(SeqsInAppendOrder("agency-a"), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.rows_checked, 5);
  EXPECT_EQ(result.first_broken_seq, 0) << result.problem;
  EXPECT_EQ(db_->AdminQuery("SELECT seq FROM consent.audit_chain_heads WHERE agency_id = "
                            "'agency-a'")[0][0]
                .as<int64_t>(),
            5);
}

TEST_F(AuditLog, TheServiceRoleCannotTouchTheChainsHeads) {
  Append("agency-a", "p-1");
  Chain();
  // As the service's runtime role, scoped to the agency: no right on the table at all.
  pqxx::connection as_service(db_->UrlFor("consent"));
  for (const char* sql : {"SELECT count(*) FROM consent.audit_chain_heads",
                          "UPDATE consent.audit_chain_heads SET seq = 1",
                          "INSERT INTO consent.audit_chain_heads VALUES ('agency-a', 9, "
                          "decode(repeat('00', 32), 'hex'))"}) {
    pqxx::work tx(as_service);
    tx.exec("SELECT set_config('app.agency_id', 'agency-a', true)");
    EXPECT_THROW(tx.exec(sql), pqxx::insufficient_privilege) << sql;
  }
  EXPECT_EQ(db_->AdminQuery("SELECT seq FROM consent.audit_chain_heads")[0][0].as<int64_t>(), 1);
}

// The chainer keeps to its indexes as the log grows: its plans cached on a connection while the
// log held a few analysed rows, then 20,000 rows to chain (no analyse in between, as until
// autovacuum catches up with a burst). It used to read the whole log at every run.
TEST_F(AuditLog, TheChainerKeepsToItsIndexesAsTheLogGrows) {
  const auto append = [&](int count) {
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO consent.audit_log (agency_id, occurred_at, actor, actor_role, action, "
        "object_type, object_id, participant_id, decision, request_id) SELECT 'agency-' || (g % "
        "2), now(), 'clinician-9', 'clinician', 'consent.CheckAccess', 'consent', 'c-' || g, "
        "'client-' || g, 'allowed', 'req-' || g FROM generate_series(1, ",
        count, ") g"));
  };
  pqxx::connection chainer(db_->UrlFor("consent"));
  // One run of the chainer on the connection, as its generic plans; the log's scans in it.
  const auto chain = [&] {
    pqxx::work tx(chainer);
    tx.exec0("SET LOCAL plan_cache_mode = force_generic_plan");
    tx.exec("SELECT consent.audit_chain(100000)");
    const TableReads log = ReadsInTransaction(tx, "consent")["audit_log"];
    tx.commit();
    return log;
  };
  append(60);
  db_->AdminQuery("ANALYZE consent.audit_log");
  chain();  // Planned and cached.
  append(20000);
  const TableReads log = chain();
  EXPECT_EQ(log.sequential_scans, 0);
  EXPECT_GT(log.index_scans, 0);
  EXPECT_EQ(
      db_->AdminQuery("SELECT count(*) FROM consent.audit_log WHERE seq IS NULL")[0][0].as<int>(),
      0);
}

TEST_F(AuditLog, RehashedRowBreaksTheLinkOfTheNext) {
  for (int i = 1; i <= 3; ++i) Append("agency-a", "p-" + std::to_string(i));
  Chain();
  // A careful forger recomputes row 2's own hash; row 3 still points at the old one.
  db_->AdminQuery(
      "SET session_replication_role = replica; SET search_path TO consent; "
      "UPDATE audit_log a SET actor = 'x', row_hash = sha256(a.prev_hash || convert_to("
      "audit_canonical((a.agency_id, a.seq, a.occurred_at, 'x', a.actor_role, a.action, "
      "a.object_type, a.object_id, a.participant_id, a.decision, a.request_id, a.prev_hash, "
      "a.row_hash, a.id)::audit_log), 'UTF8')) WHERE agency_id = 'agency-a' AND seq = 2");
  AuditVerification result = Verify("agency-a");
  EXPECT_EQ(result.first_broken_seq, 3);
  EXPECT_EQ(result.problem, "previous-hash link broken");
}

}  // namespace
}  // namespace peerpath::testing
