// How a migration asks to be run (`-- peerpath-migration: ...`): a schema-only one leaves the
// tables it does not change alone, and one that runs concurrently (an index built with CREATE
// INDEX CONCURRENTLY) lets the table's writes go on while it works. A deployment runs migrations
// while the replicas already serving take calls: a concern raised during it must not wait.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/db.h"
#include "common/migrations.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

constexpr char kShortLockWait[] = "?options=-c%20lock_timeout%3D1000";

class MigrationOptions : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    database_ = MigrateWithProbeTable(*db_, "consent");
  }

  // Applies `migrations` as track "probe", as the schema's owner; `url_options` are the owner's
  // connection options (a lock wait that gives up instead of hanging the test). The advisory
  // locks its session still holds afterwards are counted in `locks_held`.
  absl::StatusOr<MigrationReport> Apply(const std::vector<Migration>& migrations,
                                        const std::string& url_options = kShortLockWait,
                                        int* locks_held = nullptr) {
    pqxx::connection owner(db_->OwnerUrlFor("consent") + url_options);
    auto report = ApplyMigrations(owner, "consent", {{"probe", &migrations}}, "peerpath_consent");
    if (locks_held != nullptr) {
      pqxx::nontransaction session(owner);
      *locks_held = session
                        .exec1(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                            "pid = pg_backend_pid()")[0]
                        .as<int>();
    }
    return report;
  }

  absl::Status Insert(const std::string& agency, const std::string& note) {
    return database_->TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
      tx.exec_params0("INSERT INTO probe (agency_id, note) VALUES ($1, $2)", agency, note);
      return absl::OkStatus();
    });
  }

  // An insert as the service makes it, giving up after a second of waiting for a lock.
  absl::Status InsertWaitingAtMostASecond(const std::string& agency) {
    try {
      pqxx::connection conn(db_->UrlFor("consent") + kShortLockWait);
      pqxx::work tx(conn);
      tx.exec_params("SELECT set_config('app.agency_id', $1, true)", agency);
      tx.exec_params0("INSERT INTO consent.probe (agency_id, note) VALUES ($1, 'during')", agency);
      tx.commit();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return absl::UnavailableError(e.what());  // A lock timeout, as the test means it.
    }
  }

  std::vector<int> Recorded() {
    std::vector<int> versions;
    for (const auto& row : db_->AdminQuery("SELECT version FROM consent.schema_migrations WHERE "
                                           "track = 'probe' ORDER BY sequence")) {
      versions.push_back(row[0].as<int>());
    }
    return versions;
  }

  // Whether index `name` of the schema is valid; nullopt when there is none.
  std::optional<bool> IndexValid(const std::string& name) {
    const pqxx::result rows = db_->AdminQuery(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'consent' AND c.relname = '" +
        name + "'");
    if (rows.empty()) return std::nullopt;
    return rows[0][0].as<bool>();
  }

  // Waits (up to 10 s) until a statement of this database (tests running beside this one have
  // their own) whose text holds `text` waits for a lock.
  bool WaitUntilWaiting(const std::string& text) {
    for (int i = 0; i < 200; ++i) {
      if (db_->AdminQuery("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND datname = current_database() AND query LIKE '%" +
                          text + "%'")[0][0]
              .as<int>() > 0) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Database> database_;
};

// A run used to lift FORCE on every tenant table (an ACCESS EXCLUSIVE lock on each, until commit)
// before any migration, so that data migrations see every agency's rows: a migration that only
// adds a table waited for every running read of every table.
TEST_F(MigrationOptions, ASchemaOnlyMigrationWaitsForNoCallOnOtherTables) {
  ASSERT_TRUE(Insert("agency-a", "x").ok());
  ReadInProgress reading(*db_, "consent", "agency-a", "consent.probe");
  ASSERT_EQ(reading.rows_seen(), 1);

  const std::string create = "CREATE TABLE probe_notes (agency_id text NOT NULL, note text)";
  // Not said to be schema-only, it may move rows: FORCE is lifted, which waits for the read.
  const absl::StatusOr<MigrationReport> lifting = Apply({{1, "notes", create}});
  EXPECT_FALSE(lifting.ok());
  EXPECT_EQ(Recorded(), std::vector<int>{});

  const absl::StatusOr<MigrationReport> schema_only =
      Apply({{1, "notes", "-- peerpath-migration: schema-only\n" + create}});
  ASSERT_TRUE(schema_only.ok()) << schema_only.status();
  EXPECT_EQ(schema_only->applied, 1);
  reading.End();
  EXPECT_EQ(Recorded(), (std::vector<int>{1}));
  // The new table is behind the wall like every other, and the old one still is.
  for (const char* table : {"consent.probe_notes", "consent.probe"}) {
    EXPECT_TRUE(
        db_->AdminQuery(absl::StrCat("SELECT relrowsecurity AND relforcerowsecurity FROM "
                                     "pg_class WHERE oid = '",
                                     table, "'::regclass"))[0][0]
            .as<bool>())
        << table;
  }
}

// An index built in the run's transaction holds a SHARE lock on its table until commit: it waits
// for a running write and every new write waits behind it. Built concurrently, outside the
// transaction, writes go on throughout.
TEST_F(MigrationOptions, AnIndexBuiltConcurrentlyLetsTheTablesWritesGoOn) {
  auto build_while_a_write_runs = [&](const std::string& sql, absl::Status& write_during) {
    pqxx::connection writer(db_->UrlFor("consent"));
    pqxx::work writing(writer);  // A write in progress until the build waits for it.
    writing.exec("SELECT set_config('app.agency_id', 'agency-a', true)");
    writing.exec0("INSERT INTO consent.probe (agency_id, note) VALUES ('agency-a', 'before')");
    auto run = std::async(std::launch::async, [&] { return Apply({{1, "by_note", sql}}, ""); });
    EXPECT_TRUE(WaitUntilWaiting("CREATE INDEX"));
    write_during = InsertWaitingAtMostASecond("agency-b");
    writing.commit();
    return run.get();
  };

  absl::Status write_during;
  // The premise: in the transaction, the build keeps the write waiting.
  {
    const absl::StatusOr<MigrationReport> in_transaction = build_while_a_write_runs(
        "-- peerpath-migration: schema-only\n"
        "CREATE INDEX probe_by_note ON probe (agency_id, note)",
        write_during);
    ASSERT_TRUE(in_transaction.ok()) << in_transaction.status();
    EXPECT_FALSE(write_during.ok());
  }
  db_->AdminQuery(
      "DROP INDEX consent.probe_by_note; DELETE FROM consent.schema_migrations WHERE "
      "track = 'probe'");

  const absl::StatusOr<MigrationReport> concurrently = build_while_a_write_runs(
      "-- peerpath-migration: concurrently\n"
      "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_by_note ON probe (agency_id, note)",
      write_during);
  ASSERT_TRUE(concurrently.ok()) << concurrently.status();
  EXPECT_TRUE(write_during.ok()) << write_during;
  EXPECT_EQ(concurrently->applied, 1);
  EXPECT_EQ(IndexValid("probe_by_note"), std::optional<bool>(true));
  EXPECT_EQ(Recorded(), (std::vector<int>{1}));
  EXPECT_EQ(
      db_->AdminQuery("SELECT count(*) FROM consent.probe WHERE note = 'during'")[0][0].as<int>(),
      1);
}

// A concurrent build that fails leaves an invalid index behind, which IF NOT EXISTS would take
// for the index: the next run drops it and builds it again.
TEST_F(MigrationOptions, AFailedConcurrentBuildIsDroppedAndBuiltAgainByTheNextRun) {
  ASSERT_TRUE(Insert("agency-a", "same").ok());
  ASSERT_TRUE(Insert("agency-a", "same").ok());
  const std::vector<Migration> unique = {{1, "unique_notes",
                                          "-- peerpath-migration: concurrently\n"
                                          "create unique index concurrently if not exists\n  "
                                          "Probe_Unique ON probe (agency_id, note)"}};
  int locks_held = -1;
  const absl::StatusOr<MigrationReport> failed = Apply(unique, kShortLockWait, &locks_held);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(locks_held, 0);  // Released on failure too.
  EXPECT_TRUE(absl::StrContains(failed.status().message(), "probe/0001_unique_notes"))
      << failed.status();
  EXPECT_EQ(IndexValid("probe_unique"), std::optional<bool>(false));
  EXPECT_EQ(Recorded(), std::vector<int>{});

  // Another invalid index of the schema, not the migration's (a DBA's rebuild at work), stays.
  {
    auto admin = db_->Admin();
    pqxx::nontransaction dba(*admin);
    EXPECT_THROW(dba.exec0("CREATE UNIQUE INDEX CONCURRENTLY \"Probe_Other\" ON consent.probe "
                           "(agency_id, note)"),
                 std::exception);
  }
  ASSERT_EQ(IndexValid("Probe_Other"), std::optional<bool>(false));
  db_->AdminQuery(
      "UPDATE consent.probe SET note = 'other' WHERE id = (SELECT max(id) FROM "
      "consent.probe)");
  const absl::StatusOr<MigrationReport> built = Apply(unique);
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_EQ(built->applied, 1);
  EXPECT_EQ(IndexValid("probe_unique"), std::optional<bool>(true));
  EXPECT_EQ(IndexValid("Probe_Other"), std::optional<bool>(false));
  EXPECT_EQ(Recorded(), (std::vector<int>{1}));
  EXPECT_FALSE(Insert("agency-a", "same").ok());  // The index is in force.

  const absl::StatusOr<MigrationReport> again = Apply(unique);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->applied, 0);
  EXPECT_EQ(again->already_applied, 1);
}

// A concurrent migration that fails with its connection lost (the server restarted, the session
// ended by an administrator) is named in the run's error, as any failed migration is: the run's
// reset of its session settings fails too, and its error took the migration's place.
TEST_F(MigrationOptions, AConcurrentMigrationThatLosesItsConnectionIsNamedInTheError) {
  const std::vector<Migration> lost = {{1, "lost_connection",
                                        "-- peerpath-migration: concurrently\n"
                                        "DROP INDEX IF EXISTS nothing_here;\n"
                                        "SELECT pg_terminate_backend(pg_backend_pid())"}};
  const absl::StatusOr<MigrationReport> failed = Apply(lost);
  ASSERT_FALSE(failed.ok());
  EXPECT_TRUE(absl::StrContains(failed.status().message(), "probe/0001_lost_connection"))
      << failed.status();
  EXPECT_EQ(Recorded(), std::vector<int>{});
}

// What a concurrent migration's comments and strings hold never decides how it runs: quotes in
// a comment start no string, a `--` in a string starts no comment, and the index it builds is
// named from its statement, after a block comment spanning lines.
TEST_F(MigrationOptions, AConcurrentMigrationIsReadWithItsCommentsAndStringsAside) {
  const std::vector<Migration> migrations = {
      {1, "commented",
       "-- peerpath-migration: concurrently\n"
       "-- The note's index (it's for the list's filter).\n"
       "/* Built concurrently: /* nested */ writes go on.\n   Second line. */\n"
       "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"Probe_Notes\" ON probe (note) "
       "WHERE note <> '--' -- the placeholder\n"}};
  const absl::StatusOr<MigrationReport> applied = Apply(migrations);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(applied->applied, 1);
  EXPECT_EQ(IndexValid("Probe_Notes"), std::optional<bool>(true));
  EXPECT_EQ(Recorded(), std::vector<int>{1});
}

// Concurrent and transactional migrations apply in their order, each once, with two replicas
// migrating at once; a second run changes nothing.
TEST_F(MigrationOptions, MigrationsApplyInOrderOnceAcrossReplicas) {
  const std::vector<Migration> steps = {
      {1, "tags",
       "-- peerpath-migration: schema-only\n"
       "CREATE TABLE probe_tags (id serial PRIMARY KEY, agency_id text NOT NULL, "
       "tag text NOT NULL)"},
      {2, "tags_by_name",
       "-- peerpath-migration: concurrently\n"
       "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS probe_tags_by_name ON probe_tags "
       "(agency_id, tag)"},
      // Relies on the index before it.
      {3, "tags_seeded",
       "INSERT INTO probe_tags (agency_id, tag) SELECT DISTINCT agency_id, 'seen' FROM probe "
       "ON CONFLICT (agency_id, tag) DO NOTHING"},
      {4, "tags_by_id",
       "-- peerpath-migration: concurrently\n"
       "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_tags_by_id ON probe_tags (id)"},
  };
  ASSERT_TRUE(Insert("agency-a", "x").ok());
  ASSERT_TRUE(Insert("agency-b", "y").ok());
  auto replica = [&] { return Apply(steps, ""); };
  auto first = std::async(std::launch::async, replica);
  auto second = std::async(std::launch::async, replica);
  const absl::StatusOr<MigrationReport> a = first.get();
  const absl::StatusOr<MigrationReport> b = second.get();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->applied + b->applied, 4);
  EXPECT_EQ(Recorded(), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(IndexValid("probe_tags_by_name"), std::optional<bool>(true));
  EXPECT_EQ(IndexValid("probe_tags_by_id"), std::optional<bool>(true));
  // The data migration saw both agencies' rows (FORCE lifted for it), and the new table is
  // behind the wall.
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.probe_tags")[0][0].as<int>(), 2);
  EXPECT_TRUE(db_->AdminQuery("SELECT relforcerowsecurity FROM pg_class WHERE oid = "
                              "'consent.probe_tags'::regclass")[0][0]
                  .as<bool>());

  // The session that ran it is left without the migration lock, for whatever it does next.
  int locks_held = -1;
  const absl::StatusOr<MigrationReport> again = Apply(steps, kShortLockWait, &locks_held);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(locks_held, 0);
  EXPECT_EQ(again->applied, 0);
  EXPECT_EQ(again->already_applied, 4);
}

// A migration that asks for what the runner cannot do is refused before anything applies, naming
// the migration and what is wrong.
TEST_F(MigrationOptions, MalformedOptionsAreRefusedBeforeAnythingApplies) {
  const Migration fine = {1, "fine", "CREATE TABLE probe_fine (agency_id text NOT NULL)"};
  const absl::StatusOr<MigrationReport> unknown =
      Apply({fine, {2, "typo", "-- peerpath-migration: concurently\nSELECT 1"}});
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "probe/0002_typo")) << unknown.status();
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "\"concurently\"")) << unknown.status();

  const absl::StatusOr<MigrationReport> not_repeatable =
      Apply({fine,
             {2, "once",
              "-- peerpath-migration: concurrently\n"
              "-- Not IF NOT EXISTS, whatever a comment says.\n"
              "CREATE INDEX CONCURRENTLY probe_once ON probe (note)"}});
  EXPECT_EQ(not_repeatable.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(not_repeatable.status().message(), "probe/0002_once"))
      << not_repeatable.status();
  EXPECT_TRUE(absl::StrContains(not_repeatable.status().message(), "IF NOT EXISTS"))
      << not_repeatable.status();
  EXPECT_EQ(Recorded(), std::vector<int>{});

  // Words in a block comment or a string are not the statement's.
  for (const std::string& sql :
       {std::string("-- peerpath-migration: concurrently\n/* IF NOT EXISTS, it says */\n"
                    "CREATE INDEX CONCURRENTLY probe_block ON probe (note)"),
        std::string("-- peerpath-migration: concurrently\n"
                    "CREATE INDEX CONCURRENTLY probe_literal ON probe (note) "
                    "WHERE note <> 'IF NOT EXISTS'"),
        std::string("-- peerpath-migration: concurrently\n"
                    "CREATE INDEX CONCURRENTLY probe_dollar ON probe (note) "
                    "WHERE note <> $q$ IF EXISTS $q$")}) {
    const absl::StatusOr<MigrationReport> commented = Apply({fine, {2, "commented", sql}});
    EXPECT_EQ(commented.status().code(), absl::StatusCode::kFailedPrecondition) << sql;
    EXPECT_TRUE(absl::StrContains(commented.status().message(), "IF NOT EXISTS"))
        << commented.status();
  }
  EXPECT_EQ(Recorded(), std::vector<int>{});

  // Outside a transaction, two statements would be two steps that can stop between them:
  // PostgreSQL refuses a concurrent build among others, and the migration is not recorded.
  const absl::StatusOr<MigrationReport> two_statements =
      Apply({{1, "two",
              "-- peerpath-migration: concurrently\n"
              "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_a ON probe (note);\n"
              "CREATE INDEX CONCURRENTLY IF NOT EXISTS probe_b ON probe (id)"}});
  EXPECT_FALSE(two_statements.ok());
  EXPECT_TRUE(absl::StrContains(two_statements.status().message(), "probe/0001_two"))
      << two_statements.status();
  EXPECT_EQ(Recorded(), std::vector<int>{});
  EXPECT_EQ(IndexValid("probe_a"), std::nullopt);
}

}  // namespace
}  // namespace peerpath::testing
