#pragma once

// Versioned, forward-only schema migrations in tracks: the "shared" track (common/migrations: the
// outbox, audit, idempotency and consumer tables every service keeps in its own schema) and the
// service's own track (services/<name>/migrations). Tracks apply in order, each by version.
//
// ApplyMigrations runs in one transaction under a per-schema advisory lock, so two replicas
// starting together apply each migration once, and a second run changes nothing. Applied
// migrations are recorded with a SHA-256 checksum in <schema>.schema_migrations; a migration whose
// text changed after it was applied stops the service (FAILED_PRECONDITION): files are never
// edited after they land.
//
// A migration may say how it is run, in a comment line `-- peerpath-migration: <option>, ...`:
//   schema-only   it changes the schema and moves no rows (a new table, a function, an index), so
//                 the run does not lift FORCE ROW LEVEL SECURITY on every tenant table for it
//                 (which locks each table, waiting for every call on it) and locks only what its
//                 own statements lock;
//   concurrently  a single statement run alone, outside the run's transaction (CREATE or DROP
//                 INDEX CONCURRENTLY, so that the table's writes go on while an index builds),
//                 written to be repeatable (IF NOT EXISTS / IF EXISTS in the statement itself,
//                 not in a comment or a string); an invalid index of the name it builds (what
//                 a failed build left) is dropped first, other invalid indexes are left alone.
//                 Implies schema-only.
// The run's transactions apply the migrations in order up to each concurrent one; an unknown
// option, or a concurrent migration that is not repeatable, is refused before anything applies
// (FAILED_PRECONDITION).

#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace peerpath {

struct Migration {
  int version;
  std::string name;
  std::string sql;
};

struct MigrationTrack {
  std::string name;  // "shared" or the service name.
  const std::vector<Migration>* migrations;
};

struct AppliedMigration {
  int64_t sequence = 0;  // Order of application in this schema.
  std::string track;
  int version = 0;
  std::string name;
  std::string checksum;
  absl::Time applied_at;
};

struct MigrationReport {
  int applied = 0;          // Migrations applied by this run.
  int already_applied = 0;  // Migrations found applied before this run.
};

// Hex SHA-256 of the migration text.
std::string MigrationChecksum(const Migration& migration);

// `conn` is the schema owner's. When `runtime_role` is set, it is granted what the service needs
// to serve and nothing more: USAGE on the schema, reading and writing the tables, but not
// rewriting history (audit_log: INSERT and SELECT only; outbox: no DELETE) nor the migrations
// ledger (SELECT only). It owns nothing, so it cannot switch row-level security off.
absl::StatusOr<MigrationReport> ApplyMigrations(pqxx::connection& conn, const std::string& schema,
                                                const std::vector<MigrationTrack>& tracks,
                                                const std::string& runtime_role = "");

// Whether `role` is a superuser or has BYPASSRLS, so that row-level security (which keeps agencies
// apart) does not bind it; nullopt when there is no such role. Neither may serve.
std::optional<bool> BypassesRowLevelSecurity(pqxx::transaction_base& tx, const std::string& role);

// The applied migrations after `after_sequence` in order of application, at most `limit`.
absl::StatusOr<std::vector<AppliedMigration>> ListAppliedMigrations(pqxx::work& tx,
                                                                    int64_t after_sequence,
                                                                    int limit);

}  // namespace peerpath
