#pragma once

// A service's schema migrated in a fresh test database, the way a deployment does it: the
// binary's `migrate` as the schema owner, then a pool connected as the runtime role.

#include <memory>
#include <string>

#include "common/db.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {

// Runs `peerpath-<service> migrate` against `db` as the owner role; throws with the binary's log
// when it fails. Returns a pool of `pool_size` connections as the service's runtime role.
std::unique_ptr<Database> MigrateAndConnect(const TestDatabase& db, const std::string& service,
                                            int pool_size = 4);

}  // namespace peerpath::testing
