#include "common/migrations.h"

#include <openssl/evp.h>

#include <algorithm>
#include <map>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
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

// Before a transaction of a run that applies a migration not said to be schema-only (RunOptions):
// the schema's tables are no longer forced under their policies, so that the owner, who runs the
// migrations with no agency set, sees and changes the rows of every agency (a backfill, rows moved
// to a new table); under FORCE such a migration saw no row and did nothing, silently.
// kTenantIsolation forces every tenant table again in the same transaction, so no other session
// ever sees a table unforced; the runtime role, which owns nothing, is bound by the policies either
// way.
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

namespace {

// How a migration asks to be run: a comment line `-- peerpath-migration: <option>[, <option>]`.
struct RunOptions {
  // It changes the schema only and moves no rows, so the run need not lift FORCE on every tenant
  // table for it (an ACCESS EXCLUSIVE lock on each, which waits for every running call).
  bool schema_only = false;
  // It runs alone, outside the run's transaction (CREATE or DROP INDEX CONCURRENTLY), so that the
  // table's writes go on while it works. Implies schema_only.
  bool concurrently = false;
  // The index a concurrent CREATE INDEX builds, as PostgreSQL names it; empty for other
  // statements.
  std::string builds_index;
};

constexpr absl::Duration kMigrationLockPoll = absl::Milliseconds(50);

constexpr absl::string_view kOptionsPrefix = "-- peerpath-migration:";

// The advisory lock that serialises the migration runs of `schema`, hashed.
std::string LockKey(const std::string& schema) { return "peerpath.migrations." + schema; }

std::string NameOf(const std::string& track, const Migration& m) {
  return absl::StrFormat("%s/%04d_%s", track, m.version, m.name);
}

// The name of the index `statement` builds ("CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS]
// name ..."), as pg_class holds it: folded to lower case unless quoted. Empty if it builds none.
std::string IndexBuilt(absl::string_view statement) {
  const std::vector<absl::string_view> words =
      absl::StrSplit(statement, absl::ByAnyChar(" \t\n\r"), absl::SkipEmpty());
  size_t i = 0;
  auto next_is = [&](absl::string_view word) {
    if (i < words.size() && absl::EqualsIgnoreCase(words[i], word)) {
      ++i;
      return true;
    }
    return false;
  };
  if (!next_is("CREATE")) return "";
  next_is("UNIQUE");
  if (!next_is("INDEX") || !next_is("CONCURRENTLY")) return "";
  if (next_is("IF") && !(next_is("NOT") && next_is("EXISTS"))) return "";
  if (i >= words.size() || absl::EqualsIgnoreCase(words[i], "ON")) return "";
  absl::string_view name = words[i];
  if (absl::ConsumePrefix(&name, "\"") && absl::ConsumeSuffix(&name, "\"")) {
    return std::string(name);
  }
  return absl::AsciiStrToLower(name);
}

// `sql` without its comments (`--` to the end of the line, and `/* */`, nested as PostgreSQL
// nests them), each replaced by a space; with `blank_literals` the text of string literals and
// dollar-quoted bodies too (an empty '' for each), so that only the statements' own words remain.
// Quoted identifiers are kept as they are.
std::string WithoutComments(absl::string_view sql, bool blank_literals) {
  const auto word_char = [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_';
  };
  // The end of the quoted text starting at `start` with `quote`, a doubled quote standing for
  // itself (and, in an E'' literal, a backslash escaping the next character).
  const auto quoted_end = [&](size_t start, char quote, bool backslash_escapes) {
    size_t i = start + 1;
    while (i < sql.size()) {
      if (backslash_escapes && sql[i] == '\\') {
        i += 2;
      } else if (sql[i] == quote) {
        if (i + 1 < sql.size() && sql[i + 1] == quote) {
          i += 2;
        } else {
          return i + 1;
        }
      } else {
        ++i;
      }
    }
    return sql.size();
  };
  std::string out;
  size_t i = 0;
  while (i < sql.size()) {
    const char c = sql[i];
    const char next = i + 1 < sql.size() ? sql[i + 1] : '\0';
    if (c == '-' && next == '-') {
      i = std::min(sql.find('\n', i), sql.size());
      out += ' ';
    } else if (c == '/' && next == '*') {
      int depth = 0;
      while (i < sql.size()) {
        if (sql.substr(i, 2) == "/*") {
          ++depth;
          i += 2;
        } else if (sql.substr(i, 2) == "*/") {
          i += 2;
          if (--depth == 0) break;
        } else {
          ++i;
        }
      }
      out += ' ';
    } else if (c == '\'') {
      const bool escapes =
          i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') && (i < 2 || !word_char(sql[i - 2]));
      const size_t end = quoted_end(i, '\'', escapes);
      absl::StrAppend(&out, blank_literals ? "''" : sql.substr(i, end - i));
      i = end;
    } else if (c == '"') {
      const size_t end = quoted_end(i, '"', false);
      absl::StrAppend(&out, sql.substr(i, end - i));
      i = end;
    } else if (c == '$' && (i == 0 || !word_char(sql[i - 1])) &&
               !absl::ascii_isdigit(static_cast<unsigned char>(next))) {
      // A dollar quote, $tag$ ... $tag$ (a parameter is $ and digits).
      size_t tag_end = i + 1;
      while (tag_end < sql.size() && word_char(sql[tag_end])) ++tag_end;
      if (tag_end < sql.size() && sql[tag_end] == '$') {
        const absl::string_view tag = sql.substr(i, tag_end - i + 1);
        const size_t close = sql.find(tag, tag_end + 1);
        const size_t end = close == absl::string_view::npos ? sql.size() : close + tag.size();
        absl::StrAppend(&out, blank_literals ? "''" : sql.substr(i, end - i));
        i = end;
      } else {
        out += c;
        ++i;
      }
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}

absl::StatusOr<RunOptions> RunOptionsOf(const std::string& track, const Migration& m) {
  RunOptions options;
  for (absl::string_view line : absl::StrSplit(m.sql, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumePrefix(&line, kOptionsPrefix)) continue;
    for (absl::string_view option : absl::StrSplit(line, ',')) {
      option = absl::StripAsciiWhitespace(option);
      if (option == "schema-only") {
        options.schema_only = true;
      } else if (option == "concurrently") {
        options.schema_only = options.concurrently = true;
      } else {
        return absl::FailedPreconditionError(
            absl::StrCat("migration ", NameOf(track, m), ": unknown option \"", option,
                         "\" after \"", kOptionsPrefix, "\" (known: schema-only, concurrently)"));
      }
    }
  }
  if (!options.concurrently) return options;
  // Run outside a transaction, a statement that failed half way is not undone (an index build
  // leaves an invalid index), and one that succeeded may not be recorded yet when the run stops:
  // the next run repeats it, so it must be a no-op the second time: IF [NOT] EXISTS among its own
  // words, not a comment's or a string's.
  const std::string code = absl::AsciiStrToUpper(WithoutComments(m.sql, /*blank_literals=*/true));
  const std::vector<absl::string_view> words =
      absl::StrSplit(code, absl::ByAnyChar(" \t\n\r(),;"), absl::SkipEmpty());
  const std::string statements = absl::StrJoin(words, " ");
  if (!absl::StrContains(statements, "IF NOT EXISTS") &&
      !absl::StrContains(statements, "IF EXISTS")) {
    return absl::FailedPreconditionError(
        absl::StrCat("migration ", NameOf(track, m),
                     " runs concurrently, outside a transaction, so a run stopped after it and "
                     "before recording it repeats it: write it with IF NOT EXISTS (or IF EXISTS)"));
  }
  options.builds_index = IndexBuilt(WithoutComments(m.sql, /*blank_literals=*/false));
  return options;
}

// A migration's failure, its status naming it (the database's message is in the log).
absl::Status FailureOf(const std::string& track, const Migration& m, const std::exception& e) {
  const absl::Status status = StatusFromDatabaseException(e);
  return absl::Status(status.code(),
                      absl::StrCat("migration ", NameOf(track, m), ": ", status.message()));
}

struct Pending {
  const std::string* track = nullptr;
  const Migration* migration = nullptr;
  const RunOptions* options = nullptr;
};

// Records `p` as applied in the ledger, in `tx` (the run's transaction, or the session after a
// concurrent migration), and says so in the log.
void Record(pqxx::transaction_base& tx, const std::string& schema, const Pending& p) {
  const Migration& m = *p.migration;
  tx.exec_params0(
      "INSERT INTO schema_migrations (track, version, name, checksum) VALUES ($1, $2, $3, $4)",
      *p.track, m.version, m.name, MigrationChecksum(m));
  log::Info("migration applied", {{"schema", schema},
                                  {"track", *p.track},
                                  {"version", m.version},
                                  {"name", m.name},
                                  {"concurrently", p.options->concurrently}});
}

// One transaction of a run: every pending migration in order up to the first that runs
// concurrently (returned, not applied), then row-level security and the runtime role's grants.
absl::StatusOr<std::optional<Pending>> ApplyInOneTransaction(
    pqxx::connection& conn, const std::string& schema, const std::vector<MigrationTrack>& tracks,
    const std::map<std::pair<std::string, int>, RunOptions>& options,
    const std::string& runtime_role, MigrationReport& report) {
  pqxx::work tx(conn);
  // A migration (or waiting for another replica's) may take longer than any call may.
  tx.exec0("SET LOCAL statement_timeout TO 0");
  // Serialises migration runs of this schema across replicas; released at commit/rollback. The
  // session holds it already (ApplyMigrations); binaries before this one take only this.
  tx.exec_params("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", LockKey(schema));
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
  // The pending migrations this transaction applies, and the first of those it leaves.
  std::vector<Pending> here;
  std::optional<Pending> concurrent;
  for (const MigrationTrack& track : tracks) {
    for (const Migration& m : *track.migrations) {
      auto it = applied.find({track.name, m.version});
      if (it == applied.end()) {
        if (concurrent) continue;
        const RunOptions& run = options.at({track.name, m.version});
        const Pending pending{&track.name, &m, &run};
        if (run.concurrently) {
          concurrent = pending;
        } else {
          here.push_back(pending);
        }
        continue;
      }
      const std::string checksum = MigrationChecksum(m);
      if (it->second != checksum) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "migration %s in schema %s was changed after it was applied (checksum %s, database "
            "has %s); add a new migration instead of editing an applied one",
            NameOf(track.name, m), schema, checksum, it->second));
      }
      ++report.already_applied;
    }
  }
  const bool moves_rows = std::any_of(here.begin(), here.end(),
                                      [](const Pending& p) { return !p.options->schema_only; });
  if (moves_rows) tx.exec0(kLiftForceForMigrations);
  for (const Pending& p : here) {
    try {
      tx.exec(p.migration->sql);
    } catch (const std::exception& e) {
      return FailureOf(*p.track, *p.migration, e);
    }
    Record(tx, schema, p);
    ++report.applied;
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
    tx.exec0(absl::StrCat(
        "GRANT USAGE ON SCHEMA ", s, " TO ", r, ";",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ", s, " TO ", r, ";",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ", s, " TO ", r, ";",
        "REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM ", r, ";",
        "REVOKE UPDATE, DELETE ON audit_log FROM ", r, ";", "REVOKE DELETE ON outbox FROM ", r, ";",
        // The chain's heads are the chainer's (audit_chain, as the owner) alone.
        "REVOKE ALL ON audit_chain_heads FROM ", r));
  }
  tx.commit();
  return concurrent;
}

// A migration that runs concurrently, alone and outside a transaction, then recorded; the caller
// holds the schema's migration lock for its session. An invalid index of the name it builds is
// what an earlier run's build that failed (or was stopped) left: never used by a read, still
// updated by every write, and in the way of the build's IF NOT EXISTS. It is dropped first,
// concurrently too; other invalid indexes (a DBA's REINDEX CONCURRENTLY at work) are left alone.
absl::Status ApplyConcurrently(pqxx::connection& conn, const std::string& schema,
                               const Pending& p) {
  const Migration& m = *p.migration;
  pqxx::nontransaction session(conn);
  // As the run's transactions do, but for the session: reset before the connection is used again.
  session.exec0("SET statement_timeout TO 0");
  session.exec0("SET search_path TO " + session.quote_name(schema));
  const std::string& index = p.options->builds_index;
  if (!index.empty() &&
      !session
           .exec_params("SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = $1 AND c.relname = $2 AND NOT i.indisvalid",
                        schema, index)
           .empty()) {
    session.exec0("DROP INDEX CONCURRENTLY IF EXISTS " + session.quote_name(index));
    log::Warn("invalid index dropped before a concurrent migration builds it again",
              {{"schema", schema}, {"index", index}, {"track", *p.track}, {"version", m.version}});
  }
  absl::Status status;
  try {
    session.exec(m.sql);
  } catch (const std::exception& e) {
    status = FailureOf(*p.track, m, e);
  }
  if (status.ok()) Record(session, schema, p);
  try {
    session.exec0("RESET search_path");
    session.exec0("RESET statement_timeout");
  } catch (const std::exception&) {
    // A migration that failed with its connection lost fails these too: its status, which names
    // it, is the run's.
    if (status.ok()) throw;
  }
  return status;
}

}  // namespace

absl::StatusOr<MigrationReport> ApplyMigrations(pqxx::connection& conn, const std::string& schema,
                                                const std::vector<MigrationTrack>& tracks,
                                                const std::string& runtime_role) {
  std::map<std::pair<std::string, int>, RunOptions> options;
  for (const MigrationTrack& track : tracks) {
    for (const Migration& m : *track.migrations) {
      absl::StatusOr<RunOptions> o = RunOptionsOf(track.name, m);
      if (!o.ok()) return o.status();
      options[{track.name, m.version}] = *o;
    }
  }
  // The schema's migration lock, held by the session for the whole run: a migration outside a
  // transaction needs it for longer than one. It is polled for, never waited on inside a
  // statement: a concurrent index build waits for every snapshot older than its own to end, and a
  // replica waiting for the lock holds one, so the two would deadlock. Each transaction of the run
  // takes the lock again (at once, the session holding it), as binaries before this one take it.
  const std::string lock_key = LockKey(schema);
  MigrationReport report;
  absl::Status status;
  bool locked = false;
  try {
    for (bool said = false; !locked; said = true) {
      if (said) absl::SleepFor(kMigrationLockPoll);
      pqxx::nontransaction session(conn);
      locked =
          session.exec_params1("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", lock_key)[0]
              .as<bool>();
      session.commit();
      if (!locked && !said) {
        log::Info("waiting for another migration run of the schema", {{"schema", schema}});
      }
    }
    while (true) {
      MigrationReport pass;
      absl::StatusOr<std::optional<Pending>> concurrent =
          ApplyInOneTransaction(conn, schema, tracks, options, runtime_role, pass);
      if (!concurrent.ok()) {
        status = concurrent.status();
        break;
      }
      // Found applied: those this run did not apply in an earlier transaction.
      report.already_applied = pass.already_applied - report.applied;
      report.applied += pass.applied;
      if (!concurrent->has_value()) break;
      status = ApplyConcurrently(conn, schema, **concurrent);
      if (!status.ok()) break;
      ++report.applied;
    }
  } catch (const std::exception& e) {
    status = StatusFromDatabaseException(e);
  }
  if (locked) {
    try {
      pqxx::nontransaction session(conn);
      session.exec_params("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key);
      session.commit();
    } catch (const std::exception& e) {
      // The connection is lost, and the lock with it.
      log::Warn("migration lock not released", {{"schema", schema}, {"error", e.what()}});
    }
  }
  if (!status.ok()) return status;
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
