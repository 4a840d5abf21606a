#pragma once

// A fresh PostgreSQL database per test, on the throwaway cluster tools/test starts.
//
// The cluster's superuser URL comes from PEERPATH_TEST_PG_ADMIN_URL. Without it the test fails
// (never skips): a skipped database test would pass in ctest and prove nothing.

#include <google/protobuf/message.h>

#include <functional>
#include <map>
#include <memory>
#include <pqxx/pqxx>
#include <string>
#include <vector>

namespace peerpath::testing {

class TestDatabase {
 public:
  // Creates database `pp_<random>`; each service role may connect and create its schema there.
  static std::unique_ptr<TestDatabase> Create();
  // Names a database that does not exist yet (Create it later with CreateNow()).
  static std::unique_ptr<TestDatabase> Deferred();

  ~TestDatabase();

  void CreateNow();
  const std::string& name() const { return name_; }
  // The URL a service serves with: its runtime role (owns nothing, no BYPASSRLS).
  std::string UrlFor(const std::string& service) const;
  // The URL of the role that owns the service's schema and migrates it.
  std::string OwnerUrlFor(const std::string& service) const;
  // Superuser connection to this database, for setting up and inspecting.
  std::unique_ptr<pqxx::connection> Admin() const;
  // Runs one statement as superuser and returns its result.
  pqxx::result AdminQuery(const std::string& sql) const;
  // Commits an event into service `schema`'s outbox the way that service's own transactions do
  // (its log then lists it once the position assigner has numbered it).
  void WriteOutboxEvent(const std::string& schema, const std::string& agency_id,
                        const google::protobuf::Message& payload,
                        const std::string& aggregate_id) const;
  // The payloads (serialized) of the events of fully qualified `type` in `schema`'s outbox, in
  // insertion order.
  std::vector<std::string> OutboxPayloads(const std::string& schema, const std::string& type) const;
  // How the service runs a statement: the plan (EXPLAIN, one line per row) of `statement`,
  // prepared with `parameter_types` ("text, integer") and executed with `arguments` (SQL
  // literals), as the service's runtime role makes it: its schema first, under row-level
  // security for `agency_id`, on the generic plan when `generic` (Plans::kGeneric).
  std::string PlanAsService(const std::string& service, const std::string& agency_id,
                            const std::string& parameter_types, const std::string& statement,
                            const std::string& arguments, bool generic = false) const;
  // Waits (up to 10 s) until service `schema`'s audit chainer has chained every committed audit
  // row, so that a measurement does not share the machine with it; false when it has not.
  bool WaitForAuditChained(const std::string& schema) const;

 private:
  explicit TestDatabase(std::string name);
  std::string name_;
  bool created_ = false;
};

// The plan of `statement` in `tx` (EXPLAIN `statement`, its lines each ended by a newline);
// `statement` may be an EXECUTE of a prepared statement, or begin with EXPLAIN's options.
std::string Explain(pqxx::transaction_base& tx, const std::string& statement);

// What the statements of `tx` so far read of each table of `schema` (pg_stat_xact_user_tables):
// for tests that a statement reads a few rows by index, not a table whole.
struct TableReads {
  int64_t sequential_scans = 0;
  int64_t index_scans = 0;
  int64_t rows = 0;  // Read by sequential scans and fetched through indexes.
};
std::map<std::string, TableReads> ReadsInTransaction(pqxx::transaction_base& tx,
                                                     const std::string& schema);

// The index pages the statements `run` makes on `conn` read, per table of `schema`
// (pg_statio_user_indexes, found in shared buffers or read, with the connection's counts flushed
// before and after): an index scan whose condition cannot start from the index's first column
// walks the index whole, while the rows it fetches (TableReads) are few. A lookup in an index of
// some thousands of rows reads two or three pages. Other connections' reads count too once they
// send theirs (a closed connection's as its backend exits: the counts before `run` are taken
// once they stop changing), so a test keeps other readers and autovacuum away from the tables
// while it measures.
std::map<std::string, int64_t> IndexPagesRead(pqxx::connection& conn, const std::string& schema,
                                              const std::function<void()>& run);

// What `sql` read of each table of `schema`, run on `conn` in a transaction of its own: its rows
// (ReadsInTransaction) and index pages (IndexPagesRead).
struct StatementReads {
  std::map<std::string, TableReads> rows;
  std::map<std::string, int64_t> index_pages;
};
StatementReads ReadsOfStatement(pqxx::connection& conn, const std::string& schema,
                                const std::string& sql);

// Expects `sql`, run as ReadsOfStatement runs it, to read each of `tables` by index and a little:
// no sequential scan, fewer than `max_rows` rows and fewer than `max_index_pages` index pages.
// `plans` says which plans it ran on, for the failure message.
void ExpectFewReads(pqxx::connection& conn, const std::string& schema, const std::string& sql,
                    const std::vector<std::string>& tables, int max_rows, int max_index_pages,
                    const std::string& plans);

// VACUUM of `tables` of `schema` in `db`: for a test of the plans made again once autovacuum has
// told PostgreSQL a grown table's size, before its analyse has told it what is in it.
void Vacuum(const TestDatabase& db, const std::string& schema,
            const std::vector<std::string>& tables);

// Keeps autovacuum off `tables` of `schema` in `db`, for a test that analyses and vacuums them
// itself, at known moments, and counts what is read of them.
void AutovacuumOff(const TestDatabase& db, const std::string& schema,
                   const std::vector<std::string>& tables);

// The superuser URL of the test cluster, with `database` substituted.
std::string AdminUrl(const std::string& database);

}  // namespace peerpath::testing
