// What an access decision costs the database, counted in libpq's own protocol trace (PQtrace):
// the inputs of a decision, for any caller and also a peer supporter's relationship with them, are
// one round trip on a connection that has used the statement before.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/db.h"
#include "services/consent/store.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::consent {
namespace {

using peerpath::testing::ServiceProcess;
using peerpath::testing::TestDatabase;

// Round trips `read` makes on `conn`: the messages that ask the server to answer (a simple Query,
// or the Sync that ends an extended-protocol exchange), as libpq traces what it sends ("F").
template <typename Read>
int RoundTrips(pqxx::connection& conn, Read read) {
  char* buffer = nullptr;
  size_t size = 0;
  FILE* trace = open_memstream(&buffer, &size);
  conn.trace(trace);
  read();
  conn.trace(nullptr);
  fclose(trace);
  int trips = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(buffer, size), '\n')) {
    const std::vector<absl::string_view> fields = absl::StrSplit(line, '\t');
    for (size_t i = 0; i + 2 < fields.size(); ++i) {
      if (fields[i] == "F" && (fields[i + 2] == "Sync" || fields[i + 2] == "Query")) ++trips;
    }
  }
  free(buffer);
  return trips;
}

class DecisionRoundTripsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    migrated_ = std::make_unique<ServiceProcess>("consent", db_->UrlFor("consent"));
    ASSERT_TRUE(migrated_->WaitHealth(true)) << migrated_->Log();
    db_->AdminQuery(
        "INSERT INTO consent.consents (agency_id, participant_id, recipient_kind, recipient_id, "
        "purposes, data_categories, valid_from, obtained_method, obtained_by, created_by) VALUES "
        "('agency-a', 'p-1', 'role', 'peer_supporter', '{peer_support}', '{check_in_summaries}', "
        "now() - interval '1 day', 'written', 'staff-1', 'staff-1')");
    db_->AdminQuery(
        "INSERT INTO consent.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, started_at) VALUES ('agency-a', gen_random_uuid(), "
        "gen_random_uuid(), 'peer-7', 'p-1', now())");
    DatabaseOptions options;
    options.url = db_->UrlFor("consent");
    options.schema = "consent";
    conn_ = OpenConnection(options);
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<ServiceProcess> migrated_;
  std::unique_ptr<pqxx::connection> conn_;
};

TEST_F(DecisionRoundTripsTest, ADecisionsInputsAreOneRoundTrip) {
  store::DecisionInputs inputs;
  auto read = [&] {
    pqxx::nontransaction tx(*conn_);
    inputs = store::ReadDecisionInputs(tx, "agency-a", "p-1", "dr-1");
  };
  read();  // Prepares the statement on this connection.
  EXPECT_EQ(RoundTrips(*conn_, read), 1);
  ASSERT_EQ(inputs.consents.size(), 1u);
  // Another agency sees nothing of it.
  pqxx::nontransaction tx(*conn_);
  EXPECT_TRUE(store::ReadDecisionInputs(tx, "agency-b", "p-1", "dr-1").consents.empty());
}

TEST_F(DecisionRoundTripsTest, APeerSupportersInputsAndRelationshipAreOneRoundTrip) {
  std::optional<store::DecisionInputs> matched, unmatched, other_agency;
  auto read = [&] {
    pqxx::nontransaction tx(*conn_);
    matched = store::ReadPeerDecisionInputs(tx, "agency-a", "p-1", "peer-7");
  };
  read();
  EXPECT_EQ(RoundTrips(*conn_, read), 1);
  ASSERT_TRUE(matched.has_value());
  ASSERT_EQ(matched->consents.size(), 1u);
  EXPECT_EQ(matched->consents[0].recipient.id, "peer_supporter");
  EXPECT_EQ(RoundTrips(*conn_,
                       [&] {
                         pqxx::nontransaction tx(*conn_);
                         unmatched = store::ReadPeerDecisionInputs(tx, "agency-a", "p-1", "peer-8");
                       }),
            1);
  EXPECT_FALSE(unmatched.has_value());
  pqxx::nontransaction tx(*conn_);
  EXPECT_FALSE(store::ReadPeerDecisionInputs(tx, "agency-b", "p-1", "peer-7").has_value());
}

// A decision's inputs keep to their indexes as the tables grow: the functions' plans, settled on
// this connection (after five calls) while the agency had 60 consents, emergency accesses and
// matches, used after 20,000 more of each (the consents expired an hour ago, not yet marked so
// by the expiry sweep, as after a sweep missed or a date on which many expire): first as they were
// (no analyse in between, as until autovacuum catches up with a burst), then made again after a
// VACUUM, which tells the planner the tables' new sizes while their columns' statistics are still
// the old ones (as autovacuum's vacuum of a burst, before its analyse). A decision reads a few rows
// and index pages of each table, none whole.
TEST_F(DecisionRoundTripsTest, ADecisionsInputsKeepToTheirIndexesAsTheTablesGrow) {
  // Nothing else reads the tables while the test counts: the service only migrated, and
  // autovacuum is left out of them; the test does what it would (an analyse, a vacuum).
  migrated_.reset();
  const std::vector<std::string> tables = {"consents", "emergency_accesses", "supporter_matches"};
  peerpath::testing::AutovacuumOff(*db_, "consent", tables);
  const auto grow = [&](int from, int count) {
    const std::string series =
        absl::StrCat("generate_series(", from, ", ", from + count - 1, ") g");
    db_->AdminQuery(absl::StrCat(
        "INSERT INTO consent.consents (agency_id, participant_id, recipient_kind, recipient_id, "
        "purposes, data_categories, valid_from, valid_until, obtained_method, obtained_by, "
        "created_by) SELECT 'agency-a', 'p-' || g, 'role', 'peer_supporter', '{peer_support}', "
        "'{check_in_summaries}', now() - interval '1 day', CASE WHEN g > 61 THEN now() - "
        "interval '1 hour' END, 'written', 'staff-1', 'staff-1' FROM ",
        series,
        "; INSERT INTO consent.emergency_accesses (agency_id, participant_id, clinician_id, "
        "concern_id, reason, data_categories, expires_at) SELECT 'agency-a', 'p-' || g, 'dr-' "
        "|| (g % 50), gen_random_uuid(), 'safety', '{check_in_summaries}', now() + interval '1 "
        "hour' FROM ",
        series,
        "; INSERT INTO consent.supporter_matches (agency_id, match_id, supporter_id, "
        "supporter_subject, participant_id, started_at) SELECT 'agency-a', gen_random_uuid(), "
        "gen_random_uuid(), 'peer-' || (g % 500), 'p-' || g, now() FROM ",
        series));
  };
  // Other participants' rows when the plans settle: what autovacuum's first analyse of a new
  // agency's tables sees (in a table analysed at one row, every column looks unique).
  grow(2, 60);
  db_->AdminQuery(
      "ANALYZE consent.consents; ANALYZE consent.emergency_accesses; ANALYZE "
      "consent.supporter_matches");
  const std::vector<std::string> reads = {
      "SELECT * FROM consent.decision_inputs('agency-a', 'p-1', 'dr-1')",
      "SELECT * FROM consent.peer_decision_inputs('agency-a', 'p-1', 'peer-7')"};
  for (int i = 0; i < 6; ++i) {
    for (const std::string& sql : reads) pqxx::work(*conn_).exec(sql);
  }
  grow(62, 20000);
  const auto expect_few = [&](const std::string& plans) {
    for (const std::string& sql : reads) {
      peerpath::testing::ExpectFewReads(*conn_, "consent", sql, tables, 50, 10, plans);
    }
  };
  expect_few("on the plans settled before");
  peerpath::testing::Vacuum(*db_, "consent", tables);
  expect_few("on plans made again after a vacuum");
}

}  // namespace
}  // namespace peerpath::consent
