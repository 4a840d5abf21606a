#include "tests/support/test_database.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <thread>

#include "absl/strings/str_cat.h"

namespace peerpath::testing {
namespace {

constexpr const char* kServices[] = {"matching", "checkin", "consent", "escalation", "evaluation"};

std::string RequiredEnv(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    throw std::runtime_error(absl::StrCat(
        name, " is not set: run the tests through tools/test, which starts PostgreSQL"));
  }
  return value;
}

std::string RandomName() {
  std::random_device rd;
  std::uniform_int_distribution<uint64_t> dist;
  return absl::StrCat("pp_", absl::Hex(dist(rd), absl::kZeroPad16));
}

}  // namespace

std::string AdminUrl(const std::string& database) {
  std::string url = RequiredEnv("PEERPATH_TEST_PG_ADMIN_URL");
  const auto slash = url.rfind('/');
  return url.substr(0, slash + 1) + database;
}

TestDatabase::TestDatabase(std::string name) : name_(std::move(name)) {}

std::unique_ptr<TestDatabase> TestDatabase::Create() {
  auto db = Deferred();
  db->CreateNow();
  return db;
}

std::unique_ptr<TestDatabase> TestDatabase::Deferred() {
  return std::unique_ptr<TestDatabase>(new TestDatabase(RandomName()));
}

void TestDatabase::CreateNow() {
  pqxx::connection admin(AdminUrl("postgres"));
  pqxx::nontransaction tx(admin);
  tx.exec0("CREATE DATABASE " + name_);
  created_ = true;
  pqxx::connection conn(AdminUrl(name_));
  pqxx::nontransaction setup(conn);
  setup.exec0("REVOKE CREATE ON SCHEMA public FROM PUBLIC");
  for (const char* service : kServices) {
    // The owner role creates the schema and migrates; the runtime role only connects.
    setup.exec0(absl::StrCat("GRANT CONNECT, CREATE ON DATABASE ", name_, " TO peerpath_", service,
                             "_owner"));
    setup.exec0(absl::StrCat("GRANT CONNECT ON DATABASE ", name_, " TO peerpath_", service));
  }
}

TestDatabase::~TestDatabase() {
  if (!created_) return;
  try {
    pqxx::connection admin(AdminUrl("postgres"));
    pqxx::nontransaction tx(admin);
    tx.exec0("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception&) {
    // The cluster is thrown away after the run; a leftover database harms nothing.
  }
}

std::string TestDatabase::UrlFor(const std::string& service) const {
  std::string url = AdminUrl(name_);
  const std::string user = "postgres@";
  return url.replace(url.find(user), user.size(), absl::StrCat("peerpath_", service, "@"));
}

std::string TestDatabase::OwnerUrlFor(const std::string& service) const {
  std::string url = AdminUrl(name_);
  const std::string user = "postgres@";
  return url.replace(url.find(user), user.size(), absl::StrCat("peerpath_", service, "_owner@"));
}

std::unique_ptr<pqxx::connection> TestDatabase::Admin() const {
  return std::make_unique<pqxx::connection>(AdminUrl(name_));
}

pqxx::result TestDatabase::AdminQuery(const std::string& sql) const {
  pqxx::connection conn(AdminUrl(name_));
  pqxx::work tx(conn);
  pqxx::result r = tx.exec(sql);
  tx.commit();
  return r;
}

std::string TestDatabase::PlanAsService(const std::string& service, const std::string& agency_id,
                                        const std::string& parameter_types,
                                        const std::string& statement, const std::string& arguments,
                                        bool generic) const {
  pqxx::connection conn(UrlFor(service));
  pqxx::work tx(conn);
  tx.exec0("SET LOCAL search_path TO " + tx.quote_name(service));
  tx.exec_params(
      "SELECT set_config('app.agency_id', $1, true), "
      "set_config('plan_cache_mode', $2, true)",
      agency_id, generic ? "force_generic_plan" : "auto");
  tx.exec0("PREPARE statement_under_test (" + parameter_types + ") AS " + statement);
  return Explain(tx, "EXECUTE statement_under_test (" + arguments + ")");
}

std::string Explain(pqxx::transaction_base& tx, const std::string& statement) {
  std::string plan;
  for (const auto& row : tx.exec("EXPLAIN " + statement)) plan += row[0].as<std::string>() + "\n";
  return plan;
}

std::map<std::string, TableReads> ReadsInTransaction(pqxx::transaction_base& tx,
                                                     const std::string& schema) {
  std::map<std::string, TableReads> reads;
  for (const auto& row : tx.exec_params(
           "SELECT relname, seq_scan, coalesce(idx_scan, 0), coalesce(seq_tup_read, 0) + "
           "coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables WHERE schemaname = $1",
           schema)) {
    reads[row[0].c_str()] = {row[1].as<int64_t>(), row[2].as<int64_t>(), row[3].as<int64_t>()};
  }
  return reads;
}

std::map<std::string, int64_t> IndexPagesRead(pqxx::connection& conn, const std::string& schema,
                                              const std::function<void()>& run) {
  const auto pages = [&] {
    {
      // A backend sends its counts as it goes idle after a statement, at most once a second
      // unless the next time is forced; this statement's end is that next time.
      pqxx::nontransaction tx(conn);
      tx.exec("SELECT pg_stat_force_next_flush()");
    }
    pqxx::nontransaction tx(conn);
    std::map<std::string, int64_t> read;
    for (const auto& row :
         tx.exec_params("SELECT relname, sum(idx_blks_read + idx_blks_hit)::bigint FROM "
                        "pg_statio_user_indexes WHERE "
                        "schemaname = $1 GROUP BY relname",
                        schema)) {
      read[row[0].c_str()] = row[1].as<int64_t>();
    }
    return read;
  };
  // Connections that closed send their counts as their backends exit, a moment later: the counts
  // before are taken once they have stopped changing.
  std::map<std::string, int64_t> before = pages();
  for (int i = 0; i < 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::map<std::string, int64_t> again = pages();
    if (again == before) break;
    before = std::move(again);
  }
  run();
  std::map<std::string, int64_t> read = pages();
  for (auto& [table, count] : read) {
    if (auto it = before.find(table); it != before.end()) count -= it->second;
  }
  return read;
}

StatementReads ReadsOfStatement(pqxx::connection& conn, const std::string& schema,
                                const std::string& sql) {
  StatementReads reads;
  reads.index_pages = IndexPagesRead(conn, schema, [&] {
    pqxx::work tx(conn);
    tx.exec(sql);
    reads.rows = ReadsInTransaction(tx, schema);
    tx.commit();
  });
  return reads;
}

void ExpectFewReads(pqxx::connection& conn, const std::string& schema, const std::string& sql,
                    const std::vector<std::string>& tables, int max_rows, int max_index_pages,
                    const std::string& plans) {
  const StatementReads reads = ReadsOfStatement(conn, schema, sql);
  for (const std::string& table : tables) {
    const auto rows = reads.rows.find(table);
    if (rows == reads.rows.end()) {
      ADD_FAILURE() << "no table " << schema << "." << table;
      continue;
    }
    EXPECT_EQ(rows->second.sequential_scans, 0)
        << table << ": sequential scans by " << sql << " " << plans;
    EXPECT_LT(rows->second.rows, max_rows) << table << ": rows read by " << sql << " " << plans;
    const auto pages = reads.index_pages.find(table);
    EXPECT_LT(pages == reads.index_pages.end() ? 0 : pages->second, max_index_pages)
        << table << ": index pages read by " << sql << " " << plans;
  }
}

void Vacuum(const TestDatabase& db, const std::string& schema,
            const std::vector<std::string>& tables) {
  pqxx::connection admin(AdminUrl(db.name()));
  std::string sql;
  for (const std::string& table : tables) {
    sql +=
        (sql.empty() ? "VACUUM " : ", ") + admin.quote_name(schema) + "." + admin.quote_name(table);
  }
  pqxx::nontransaction(admin).exec(sql);
}

void AutovacuumOff(const TestDatabase& db, const std::string& schema,
                   const std::vector<std::string>& tables) {
  for (const std::string& table : tables) {
    db.AdminQuery("ALTER TABLE " + schema + "." + table + " SET (autovacuum_enabled = off)");
  }
}

void TestDatabase::WriteOutboxEvent(const std::string& schema, const std::string& agency_id,
                                    const google::protobuf::Message& payload,
                                    const std::string& aggregate_id) const {
  pqxx::connection conn(AdminUrl(name_));
  pqxx::work tx(conn);
  tx.exec_params0("INSERT INTO " + tx.quote_name(schema) +
                      ".outbox (agency_id, event_type, aggregate_id, payload) VALUES ($1, $2, $3, "
                      "$4)",
                  agency_id, payload.GetDescriptor()->full_name(), aggregate_id,
                  pqxx::binarystring(payload.SerializeAsString()));
  tx.commit();
}

std::vector<std::string> TestDatabase::OutboxPayloads(const std::string& schema,
                                                      const std::string& type) const {
  std::vector<std::string> out;
  for (const auto& row : AdminQuery("SELECT payload FROM " + schema +
                                    ".outbox WHERE event_type = '" + type + "' ORDER BY id")) {
    out.push_back(pqxx::binarystring(row[0]).str());
  }
  return out;
}

bool TestDatabase::WaitForAuditChained(const std::string& schema) const {
  for (int i = 0; i < 200; ++i) {
    if (AdminQuery("SELECT count(*) FROM " + schema + ".audit_log WHERE seq IS NULL")[0][0]
            .as<int>() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace peerpath::testing
