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
  sequence   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  track      text NOT NULL,
  version    integer NOT NULL,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (track, version)
))sql";

// Row-level security on every tenant table of the schema, as a second wall behind the code's
// own agency checks: a row is visible and writable only when its agency_id equals the
// transaction's app.agency_id (set by Database::Transact). FORCE makes the policy bind the
// table's owner too. Runs after every migration run, so a table added by any migration is
// covered; idempotent. A table already enabled, forced and under the current policy is left
// alone: each of these ALTERs takes an ACCESS EXCLUSIVE lock, which waits for every running call
// on the table and holds every new one behind it until the run commits, and a start-up with
// nothing to migrate must not stall the replicas already serving (a rolling deployment).
//
// The setting is read by a sub-SELECT, which PostgreSQL evaluates once per statement (an
// InitPlan) and can use as an index condition; a bare current_setting() call is evaluated again
// for every row a statement reads or writes. A policy created before in that form is changed to
// this one, once. The form is told from the stored expression tree (a SUBLINK node), never by
// deparsing it: pg_get_expr() (behind pg_policies.qual) locks the tables whose policies it
// deparses, which runners of other schemas migrating at the same moment hold, and it deadlocked
// (MigrationConcurrency.AllServicesAndTwoReplicasEachMigrateOneDatabaseAtOnce).
constexpr char kTenantIsolation[] = R"sql(
DO $rls$
DECLARE
  t record;
  v_rule constant text := 'agency_id = (SELECT current_setting(''app.agency_id'', true))';
  v_qual text;
  v_check text;
BEGIN
  FOR t IN
    SELECT c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'agency_id' AND NOT a.attisdropped
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
  LOOP
    IF NOT t.relrowsecurity THEN
      EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t.relname);
    END IF;
    IF NOT t.relforcerowsecurity THEN
      EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t.relname);
    END IF;
    SELECT p.polqual::text, p.polwithcheck::text INTO v_qual, v_check
      FROM pg_policy p WHERE p.polrelid = t.oid AND p.polname = 'tenant_isolation';
    IF NOT FOUND THEN
      EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (%s) WITH CHECK (%s)',
                     t.relname, v_rule, v_rule);
    ELSIF v_qual NOT LIKE '%SUBLINK%' OR v_check NOT LIKE '%SUBLINK%' THEN
      EXECUTE format('ALTER POLICY tenant_isolation ON %I USING (%s) WITH CHECK (%s)',
                     t.relname, v_rule, v_rule);
    END IF;
  END LOOP;
END
$rls$)sql";

// Before a run that applies migrations: the schema's tables are no longer forced under their
// policies, so that the owner, who runs the migrations with no agency set, sees and changes the
// rows of every agency (a backfill, rows moved to a new table); under FORCE such a migration saw
// no row and did nothing, silently. kTenantIsolation forces every tenant table again in the same
// transaction, so no other session ever sees a table unforced; the runtime role, which owns
// nothing, is bound by the policies either way.
constexpr char kLiftForceForMigrations[] = R"sql(
DO $lift$
DECLARE
  t record;
BEGIN
  FOR t IN
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relforcerowsecurity
  LOOP
    EXECUTE format('ALTER TABLE %I NO FORCE ROW LEVEL SECURITY', t.relname);
  END LOOP;
END
$lift$)sql";

}  // namespace

std::optional<bool> BypassesRowLevelSecurity(pqxx::transaction_base& tx, const std::string& role) {
  const pqxx::result rows =
      tx.exec_params("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = $1", role);
  if (rows.empty()) return std::nullopt;
  return rows[0][0].as<bool>();
}

std::string MigrationChecksum(const Migration& migration) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(migration.sql.data(), migration.sql.size(), digest, &length, EVP_sha256(), nullptr);
  return absl::BytesToHexString(
      std::string(reinterpret_cast<const char*>(digest), static_cast<size_t>(length)));
}

absl::StatusOr<MigrationReport> ApplyMigrations(pqxx::connection& conn, const std::string& schema,
                                                const std::vector<MigrationTrack>& tracks,
                                                const std::string& runtime_role) {
  MigrationReport report;
  try {
    pqxx::work tx(conn);
    // A migration (or waiting for another replica's) may take longer than any call may.
    tx.exec0("SET LOCAL statement_timeout TO 0");
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

    std::map<std::pair<std::string, int>, std::string> applied;
    for (const auto& row : tx.exec("SELECT track, version, checksum FROM schema_migrations")) {
      applied[{row[0].as<std::string>(), row[1].as<int>()}] = row[2].as<std::string>();
    }
    bool pending = false;
    for (const MigrationTrack& track : tracks) {
      for (const Migration& m : *track.migrations) {
        pending = pending || !applied.contains({track.name, m.version});
      }
    }
    if (pending) tx.exec0(kLiftForceForMigrations);
    for (const MigrationTrack& track : tracks) {
      for (const Migration& m : *track.migrations) {
        const std::string checksum = MigrationChecksum(m);
        auto it = applied.find({track.name, m.version});
        if (it != applied.end()) {
          if (it->second != checksum) {
            return absl::FailedPreconditionError(absl::StrFormat(
                "migration %s/%04d_%s in schema %s was changed after it was applied (checksum "
                "%s, database has %s); add a new migration instead of editing an applied one",
                track.name, m.version, m.name, schema, checksum, it->second));
          }
          ++report.already_applied;
          continue;
        }
        tx.exec(m.sql);
        tx.exec_params0(
            "INSERT INTO schema_migrations (track, version, name, checksum) "
            "VALUES ($1, $2, $3, $4)",
            track.name, m.version, m.name, checksum);
        log::Info(
            "migration applied",
            {{"schema", schema}, {"track", track.name}, {"version", m.version}, {"name", m.name}});
        ++report.applied;
      }
    }
    tx.exec0(kTenantIsolation);
    if (!runtime_role.empty() &&
        runtime_role != tx.exec1("SELECT current_user")[0].as<std::string>()) {
      const std::optional<bool> bypasses = BypassesRowLevelSecurity(tx, runtime_role);
      if (!bypasses.has_value()) {
        return absl::FailedPreconditionError(
            absl::StrCat("runtime role ", runtime_role,
                         " does not exist (deploy/k8s/db/bootstrap.sql creates it)"));
      }
      if (*bypasses) {
        return absl::FailedPreconditionError(absl::StrCat(
            "runtime role ", runtime_role, " is a superuser or bypasses row-level security"));
      }
      const std::string r = tx.quote_name(runtime_role);
      const std::string s = tx.quote_name(schema);
      tx.exec0(
          absl::StrCat("GRANT USAGE ON SCHEMA ", s, " TO ", r, ";",
                       "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ", s, " TO ",
                       r, ";", "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ", s, " TO ", r, ";",
                       "REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM ", r, ";",
                       "REVOKE UPDATE, DELETE ON audit_log FROM ", r, ";",
                       "REVOKE DELETE ON outbox FROM ", r, ";",
                       // The chain's heads are the chainer's (audit_chain, as the owner) alone.
                       "REVOKE ALL ON audit_chain_heads FROM ", r));
    }
    tx.commit();
  } catch (const std::exception& e) {
    return StatusFromDatabaseException(e);
  }
  return report;
}

absl::StatusOr<std::vector<AppliedMigration>> ListAppliedMigrations(pqxx::work& tx,
                                                                    int64_t after_sequence,
                                                                    int limit) {
  std::vector<AppliedMigration> out;
  const auto rows = tx.exec_params(
      "SELECT sequence, track, version, name, checksum, "
      "(extract(epoch FROM applied_at) * 1000000)::int8 "
      "FROM schema_migrations WHERE sequence > $1 ORDER BY sequence LIMIT $2",
      after_sequence, limit);
  for (const auto& row : rows) {
    out.push_back({row[0].as<int64_t>(), row[1].as<std::string>(), row[2].as<int>(),
                   row[3].as<std::string>(), row[4].as<std::string>(),
                   absl::FromUnixMicros(row[5].as<int64_t>())});
  }
  return out;
}

}  // namespace peerpath
