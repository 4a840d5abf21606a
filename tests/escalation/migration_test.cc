// Escalation's data migrations on rows written before them, applied as a deployment applies them:
// by the schema owner, whom the tenant policy binds too (FORCE ROW LEVEL SECURITY), over rows of
// several agencies.
#include <gtest/gtest.h>

#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "escalation/migrations.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

// Versions of a routing policy: (agency, version, created_by, published how long before step 8
// ran (negative: after), flag as stored).
void Publish(const TestDatabase& db, const std::string& agency, int version,
             const std::string& created_by, const std::string& before_step_8, bool flag) {
  db.AdminQuery(
      "INSERT INTO escalation.routing_policies (agency_id, version, rules, time_zone, "
      "business_hours, created_by, created_at, time_zone_set_by_admin) SELECT '" +
      agency + "', " + std::to_string(version) + ", '[]', 'America/Denver', '[]', '" + created_by +
      "', m.applied_at - interval '" + before_step_8 + "', " + (flag ? "true" : "false") +
      " FROM escalation.schema_migrations m WHERE m.track = 'escalation' AND m.version = 8");
}

// agency's versions' flags in version order, as "tf..".
std::string Flags(const TestDatabase& db, const std::string& agency) {
  std::string flags;
  for (const auto& row : db.AdminQuery(
           "SELECT time_zone_set_by_admin FROM escalation.routing_policies WHERE agency_id = '" +
           agency + "' ORDER BY version")) {
    flags += row[0].as<bool>() ? "t" : "f";
  }
  return flags;
}

// A database migrated before this step may hold an admin's zone that step 8 failed to flag (it saw
// no row under FORCE ROW LEVEL SECURITY); step 15 flags it, and the later versions that inherited
// the flag from it, of every agency.
TEST(EscalationMigrations, TimeZonesChosenByAdminsBeforeStep8AreFlaggedByStep15) {
  const auto db = TestDatabase::Create();
  ApplyServiceMigrations(*db, "escalation", MigrationsBefore(escalation::Migrations(), 15));
  // agency-a: an admin's version before step 8 (left unflagged), one after it that named no zone
  // (inherited the missing flag), then the system's own version following the check-in log
  // (keeps its flag), then an admin's version after it that named no zone (inherits the system's).
  Publish(*db, "agency-a", 1, "admin-a", "2 days", false);
  Publish(*db, "agency-a", 2, "admin-a", "-1 day", false);
  Publish(*db, "agency-a", 3, "system:program_policy", "-2 days", false);
  Publish(*db, "agency-a", 4, "admin-a", "-3 days", false);
  // agency-b: the built-in version before step 8, then an admin's version after it that named no
  // zone, then one that named a zone (flagged when published).
  Publish(*db, "agency-b", 1, "system:default", "2 days", false);
  Publish(*db, "agency-b", 2, "admin-b", "-1 day", false);
  Publish(*db, "agency-b", 3, "admin-b", "-2 days", true);

  ApplyServiceMigrations(*db, "escalation", escalation::Migrations());

  EXPECT_EQ(Flags(*db, "agency-a"), "ttff");
  EXPECT_EQ(Flags(*db, "agency-b"), "fft");
  // Run again: nothing changes.
  ApplyServiceMigrations(*db, "escalation", escalation::Migrations());
  EXPECT_EQ(Flags(*db, "agency-a"), "ttff");
}

// A database still before step 8 gets its admins' zones flagged by step 8 itself, for every
// agency, now that the runner lifts FORCE while it migrates.
TEST(EscalationMigrations, Step8FlagsTheZonesAdminsPublishedBeforeIt) {
  const auto db = TestDatabase::Create();
  ApplyServiceMigrations(*db, "escalation", MigrationsBefore(escalation::Migrations(), 8));
  db->AdminQuery(
      "INSERT INTO escalation.routing_policies (agency_id, version, rules, time_zone, "
      "business_hours, created_by) VALUES "
      "('agency-a', 1, '[]', 'America/Denver', '[]', 'admin-a'), "
      "('agency-b', 1, '[]', 'UTC', '[]', 'system:default'), "
      "('agency-b', 2, '[]', 'Europe/Dublin', '[]', 'admin-b')");

  ApplyServiceMigrations(*db, "escalation", escalation::Migrations());

  EXPECT_EQ(Flags(*db, "agency-a"), "t");
  EXPECT_EQ(Flags(*db, "agency-b"), "ft");
  EXPECT_TRUE(db->AdminQuery("SELECT relforcerowsecurity FROM pg_class"
                             " WHERE oid = 'escalation.routing_policies'::regclass")[0][0]
                  .as<bool>());
}

}  // namespace
}  // namespace peerpath::testing
