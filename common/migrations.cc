#include "common/migrations.h"

#include <openssl/evp.h>

#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/db.h"
#include "common/log.h"

namespace peerpath {
namespace {

constexpr char kCreateLedger[] = R"sql(
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
))sql";

}  // namespace

std::string MigrationChecksum(const Migration& migration) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(migration.sql.data(), migration.sql.size(), digest, &length, EVP_sha256(), nullptr);
  return absl::BytesToHexString(
      std::string(reinterpret_cast<const char*>(digest), static_cast<size_t>(length)));
}

absl::StatusOr<MigrationReport> ApplyMigrations(pqxx::connection& conn, const std::string& schema,
                                                const std::vector<Migration>& migrations) {
  MigrationReport report;
  try {
    pqxx::work tx(conn);
    // Serialises migration runs of this schema across replicas; released at commit/rollback.
    tx.exec_params("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                   "peerpath.migrations." + schema);
    const bool exists =
        tx.exec_params1("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema)[0]
            .as<bool>();
    // A DBA may have created the schema already (deploy/k8s/db/bootstrap.sql); only create it
    // when missing, so a role without CREATE on the database can still migrate.
    if (!exists) tx.exec0("CREATE SCHEMA " + tx.quote_name(schema));
    tx.exec0("SET LOCAL search_path TO " + tx.quote_name(schema));
    tx.exec0(kCreateLedger);

    std::map<int, std::string> applied;
    for (const auto& row : tx.exec("SELECT version, checksum FROM schema_migrations")) {
      applied[row[0].as<int>()] = row[1].as<std::string>();
    }
    for (const Migration& m : migrations) {
      const std::string checksum = MigrationChecksum(m);
      auto it = applied.find(m.version);
      if (it != applied.end()) {
        if (it->second != checksum) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "migration %04d_%s in schema %s was changed after it was applied (checksum %s, "
              "database has %s); add a new migration instead of editing an applied one",
              m.version, m.name, schema, checksum, it->second));
        }
        ++report.already_applied;
        continue;
      }
      tx.exec(m.sql);
      tx.exec_params0("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                      m.version, m.name, checksum);
      log::Info("migration applied",
                {{"schema", schema}, {"version", m.version}, {"name", m.name}});
      ++report.applied;
    }
    tx.commit();
  } catch (const std::exception& e) {
    return StatusFromDatabaseException(e);
  }
  return report;
}

absl::StatusOr<std::vector<AppliedMigration>> ListAppliedMigrations(pqxx::work& tx,
                                                                    int after_version, int limit) {
  std::vector<AppliedMigration> out;
  const auto rows = tx.exec_params(
      "SELECT version, name, checksum, extract(epoch FROM applied_at)::float8 "
      "FROM schema_migrations WHERE version > $1 ORDER BY version LIMIT $2",
      after_version, limit);
  for (const auto& row : rows) {
    out.push_back({row[0].as<int>(), row[1].as<std::string>(), row[2].as<std::string>(),
                   absl::FromUnixMicros(static_cast<int64_t>(row[3].as<double>() * 1e6))});
  }
  return out;
}

}  // namespace peerpath
