#include "tests/support/migrated_schema.h"

#include <stdexcept>

#include "tests/support/service_process.h"

namespace peerpath::testing {

std::unique_ptr<Database> MigrateAndConnect(const TestDatabase& db, const std::string& service,
                                            int pool_size) {
  ExitResult migrate = RunToExit(service, {"migrate", "--database_url=" + db.OwnerUrlFor(service)});
  if (migrate.exit_code != 0) {
    throw std::runtime_error("migrate " + service + " failed:\n" + migrate.log);
  }
  return std::make_unique<Database>(
      DatabaseOptions{db.UrlFor(service), service, pool_size, std::chrono::milliseconds(5000)});
}

}  // namespace peerpath::testing
