#pragma once

// A service's schema migrated in a fresh test database, the way a deployment does it: the
// binary's `migrate` as the schema owner, then a pool connected as the runtime role.

#include <memory>
#include <string>
#include <vector>

#include "common/db.h"
#include "common/migrations.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {

// Runs `peerpath-<service> migrate` against `db` as the owner role; throws with the binary's log
// when it fails. Returns a pool of `pool_size` connections as the service's runtime role.
std::unique_ptr<Database> MigrateAndConnect(const TestDatabase& db, const std::string& service,
                                            int pool_size = 4);

// MigrateAndConnect, with a tenant table `<service>.probe` (id serial, agency_id, note) added as
// any migration would add one and put under row-level security by a second `migrate`, as every
// run does: a table for tests of the runner and of the wall, which no service reads.
std::unique_ptr<Database> MigrateWithProbeTable(const TestDatabase& db, const std::string& service,
                                                int pool_size = 2);

// A call in progress, as the service's runtime role: a transaction scoped to `agency` that has
// read `table` (its rows counted in rows_seen) and so holds the table's lock for reading until
// End(). What a migration run must not wait for.
class ReadInProgress {
 public:
  ReadInProgress(const TestDatabase& db, const std::string& service, const std::string& agency,
                 const std::string& table);
  int rows_seen() const { return rows_seen_; }
  void End() { tx_.commit(); }

 private:
  pqxx::connection conn_;
  pqxx::work tx_;
  int rows_seen_ = 0;
};

// For a data migration's test, which writes rows between two steps: the migrations of
// `migrations` before `version`.
std::vector<Migration> MigrationsBefore(const std::vector<Migration>& migrations, int version);

// Applies the shared track and `migrations` as `service`'s own track to `db`, in this process, as
// `migrate` does (the schema owner connected, the runtime role granted); throws when it fails, so
// the test stops there rather than asserting on a schema half migrated.
void ApplyServiceMigrations(const TestDatabase& db, const std::string& service,
                            const std::vector<Migration>& migrations);

}  // namespace peerpath::testing
