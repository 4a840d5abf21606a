#include "tests/support/migrated_schema.h"

#include <stdexcept>

#include "shared/migrations.h"
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

std::unique_ptr<Database> MigrateWithProbeTable(const TestDatabase& db, const std::string& service,
                                                int pool_size) {
  MigrateAndConnect(db, service);
  db.AdminQuery("CREATE TABLE " + service +
                ".probe (id serial PRIMARY KEY, agency_id text NOT NULL, note text);"
                "ALTER TABLE " +
                service + ".probe OWNER TO peerpath_" + service + "_owner");
  return MigrateAndConnect(db, service, pool_size);
}

ReadInProgress::ReadInProgress(const TestDatabase& db, const std::string& service,
                               const std::string& agency, const std::string& table)
    : conn_(db.UrlFor(service)), tx_(conn_) {
  tx_.exec_params("SELECT set_config('app.agency_id', $1, true)", agency);
  rows_seen_ = tx_.exec1("SELECT count(*) FROM " + table)[0].as<int>();
}

std::vector<Migration> MigrationsBefore(const std::vector<Migration>& migrations, int version) {
  std::vector<Migration> out;
  for (const Migration& m : migrations) {
    if (m.version < version) out.push_back(m);
  }
  return out;
}

void ApplyServiceMigrations(const TestDatabase& db, const std::string& service,
                            const std::vector<Migration>& migrations) {
  pqxx::connection owner(db.OwnerUrlFor(service));
  const auto report =
      ApplyMigrations(owner, service, {{"shared", &shared::Migrations()}, {service, &migrations}},
                      "peerpath_" + service);
  if (!report.ok()) {
    throw std::runtime_error("migrating " + service + " failed: " + report.status().ToString());
  }
}

}  // namespace peerpath::testing
