// Matching's data migrations on rows written before them, applied as a deployment applies them:
// by the schema owner, whom the tenant policy binds too (FORCE ROW LEVEL SECURITY), over rows of
// several agencies.
#include <gtest/gtest.h>

#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "matching/migrations.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

TEST(MatchingMigrations, BatchesBeforeBatchRowsAreBackfilledAndRequestCriteriaKeptAsJson) {
  const auto db = TestDatabase::Create();
  ApplyServiceMigrations(*db, "matching", MigrationsBefore(matching::Migrations(), 9));
  // Two agencies' batches (three matches, one), a match started by hand (no batch), and a
  // request's criteria as the service wrote them.
  db->AdminQuery(
      "INSERT INTO matching.supporters (id, agency_id, display_name, capacity_units, created_by,"
      "  updated_by) VALUES ('00000000-0000-0000-0000-00000000000a', 'agency-a', 'A', 8, 't', 't'),"
      " ('00000000-0000-0000-0000-00000000000b', 'agency-b', 'B', 8, 't', 't');"
      "INSERT INTO matching.match_requests (agency_id, participant_id, requested_by,"
      "  hard_constraints, preferences)"
      " SELECT CASE WHEN i < 5 THEN 'agency-a' ELSE 'agency-b' END, 'p-' || i, 't',"
      "  '{\"region\": \"north\", \"languages\": [\"es\"]}', '{\"age_band\": {\"weight\": 1}}'"
      " FROM generate_series(1, 5) i;"
      "INSERT INTO matching.matches (id, agency_id, request_id, supporter_id, participant_id,"
      "  units, proposed_by, status, started_at, started_by, origin, batch_id, explanation_pb)"
      " SELECT ('00000000-0000-0000-0001-00000000000' || substr(r.participant_id, 3))::uuid,"
      "  r.agency_id, r.id, CASE WHEN r.agency_id = 'agency-a'"
      "   THEN '00000000-0000-0000-0000-00000000000a' ELSE '00000000-0000-0000-0000-00000000000b'"
      "   END::uuid, r.participant_id, 1, 'sup', 'active', now(), 'supervisor-' || r.agency_id,"
      "  CASE WHEN r.participant_id = 'p-4' THEN 'proposal_accepted' ELSE 'batch_assignment' END,"
      "  CASE WHEN r.participant_id = 'p-4' THEN NULL WHEN r.agency_id = 'agency-a'"
      "   THEN '00000000-0000-0000-0002-00000000000a' ELSE '00000000-0000-0000-0002-00000000000b'"
      "   END::uuid, '\\x00'"
      " FROM matching.match_requests r");

  ApplyServiceMigrations(*db, "matching", matching::Migrations());

  const pqxx::result batches = db->AdminQuery(
      "SELECT agency_id, id::text, created_by, match_ids::text FROM matching.match_batches"
      " ORDER BY agency_id");
  ASSERT_EQ(batches.size(), 2u) << "one row per batch, of every agency";
  EXPECT_EQ(batches[0][0].as<std::string>(), "agency-a");
  EXPECT_EQ(batches[0][1].as<std::string>(), "00000000-0000-0000-0002-00000000000a");
  EXPECT_EQ(batches[0][2].as<std::string>(), "supervisor-agency-a");
  EXPECT_EQ(batches[0][3].as<std::string>(),
            "{00000000-0000-0000-0001-000000000001,00000000-0000-0000-0001-000000000002,"
            "00000000-0000-0000-0001-000000000003}")
      << "the batch's matches, not the one started by hand";
  EXPECT_EQ(batches[1][0].as<std::string>(), "agency-b");
  EXPECT_EQ(batches[1][3].as<std::string>(), "{00000000-0000-0000-0001-000000000005}");
  // The tenant policy binds the owner again once the migrations are done.
  EXPECT_TRUE(db->AdminQuery("SELECT relforcerowsecurity FROM pg_class"
                             " WHERE oid = 'matching.matches'::regclass")[0][0]
                  .as<bool>());
  // The criteria kept, now json.
  const pqxx::result criteria = db->AdminQuery(
      "SELECT pg_typeof(hard_constraints)::text, hard_constraints::jsonb ="
      " '{\"region\": \"north\", \"languages\": [\"es\"]}'::jsonb, preferences::jsonb ="
      " '{\"age_band\": {\"weight\": 1}}'::jsonb FROM matching.match_requests");
  ASSERT_EQ(criteria.size(), 5u);
  for (const auto& row : criteria) {
    EXPECT_EQ(row[0].as<std::string>(), "json");
    EXPECT_TRUE(row[1].as<bool>());
    EXPECT_TRUE(row[2].as<bool>());
  }
}

}  // namespace
}  // namespace peerpath::testing
