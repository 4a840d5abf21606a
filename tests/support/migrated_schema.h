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

// For a data migration's test, which writes rows between two steps: the migrations of
// `migrations` before `version`.
std::vector<Migration> MigrationsBefore(const std::vector<Migration>& migrations, int version);

// Applies the shared track and `migrations` as `service`'s own track to `db`, in this process, as
// `migrate` does (the schema owner connected, the runtime role granted); throws when it fails, so
// the test stops there rather than asserting on a schema half migrated.
void ApplyServiceMigrations(const TestDatabase& db, const std::string& service,
                            const std::vector<Migration>& migrations);

}  // namespace peerpath::testing
