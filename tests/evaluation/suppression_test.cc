// Small-cell suppression (services/evaluation/suppression.h): primary suppression at k, the
// differencing attacks complementary suppression must stop, and CSV formatting of reports.
#include "services/evaluation/suppression.h"

#include <gtest/gtest.h>

#include "services/evaluation/evaluation_service.h"
#include "services/evaluation/measures.h"

namespace peerpath::evaluation {
namespace {

SuppressionCell Count(int64_t people) { return {{people}, people, "", false}; }

std::vector<bool> Suppressed(const std::vector<SuppressionCell>& cells) {
  std::vector<bool> out;
  for (const auto& c : cells) out.push_back(c.suppressed);
  return out;
}

TEST(SuppressionTest, TenIsSuppressedElevenIsShown) {
  std::vector<SuppressionCell> cells = {Count(10), Count(11), Count(0)};
  Suppress(cells, {}, 11);
  EXPECT_EQ(Suppressed(cells), (std::vector<bool>{true, false, true}));
}

TEST(SuppressionTest, ConfigurableMinimumAbove11) {
  std::vector<SuppressionCell> cells = {Count(11), Count(20)};
  Suppress(cells, {}, 20);
  EXPECT_EQ(Suppressed(cells), (std::vector<bool>{true, false}));
}

TEST(SuppressionTest, RateNeedsNumeratorAndRestAboveK) {
  // 30 people, 25 in the numerator: the 5 outside it would show (everybody but 5).
  std::vector<SuppressionCell> cells = {{{30, 25, 5}, 30, "", false},
                                        {{30, 15, 15}, 30, "", false}};
  Suppress(cells, {}, 11);
  EXPECT_EQ(Suppressed(cells), (std::vector<bool>{true, false}));
}

TEST(SuppressionTest, DifferencingFromTheTotalIsBlocked) {
  // total 50 = 30 + 12 + 8: with only the 8 hidden, 50 - 30 - 12 gives it back.
  std::vector<SuppressionCell> cells = {Count(50), Count(30), Count(12), Count(8)};
  Suppress(cells, {{0, {1, 2, 3}}}, 11);
  // The smallest other part goes too, and the two hidden parts hold 20 >= 11 people.
  EXPECT_EQ(Suppressed(cells), (std::vector<bool>{false, false, true, true}));
}

TEST(SuppressionTest, HiddenPartsTogetherReachK) {
  // total 40 = 25 + 5 + 0 + 10: hiding 5, 0, 10 (primary) holds 15 people; enough.
  std::vector<SuppressionCell> cells = {Count(40), Count(25), Count(5), Count(0), Count(10)};
  Suppress(cells, {{0, {1, 2, 3, 4}}}, 11);
  EXPECT_EQ(Suppressed(cells), (std::vector<bool>{false, false, true, true, true}));
  // total 30 = 25 + 5 + 0: the hidden parts hold 5 people, so the 25 goes as well.
  std::vector<SuppressionCell> small = {Count(30), Count(25), Count(5), Count(0)};
  Suppress(small, {{0, {1, 2, 3}}}, 11);
  EXPECT_EQ(Suppressed(small), (std::vector<bool>{false, true, true, true}));
}

TEST(SuppressionTest, HiddenTotalWithShownPartsHidesAPart) {
  std::vector<SuppressionCell> cells = {Count(22), Count(11), Count(11)};
  cells[0].suppressed = true;  // E.g. unavailable.
  Suppress(cells, {{0, {1, 2}}}, 11);
  EXPECT_EQ(Suppressed(cells), (std::vector<bool>{true, true, false}));
}

TEST(SuppressionTest, SuppressionPropagatesAcrossGroups) {
  // A 2x2 table with margins: cells 0..3 (a b / c d), rows 4 5, columns 6 7, total 8.
  // Hiding `a` (5) makes b, c and then d go (each row and column needs two hidden cells).
  std::vector<SuppressionCell> cells = {Count(5),  Count(20), Count(30), Count(40), Count(25),
                                        Count(70), Count(35), Count(60), Count(95)};
  const std::vector<AdditiveGroup> groups = {{4, {0, 1}}, {5, {2, 3}}, {6, {0, 2}},
                                             {7, {1, 3}}, {8, {4, 5}}, {8, {6, 7}}};
  Suppress(cells, groups, 11);
  for (const AdditiveGroup& g : groups) {
    int hidden = 0;
    for (int p : g.parts) hidden += cells[p].suppressed ? 1 : 0;
    hidden += cells[g.total].suppressed ? 1 : 0;
    EXPECT_NE(hidden, 1) << "a group with one hidden member gives it back";
  }
  EXPECT_TRUE(cells[0].suppressed);
}

TEST(SuppressionTest, SharedGroupsAreSuppressedTogether) {
  std::vector<SuppressionCell> cells = {{{5}, 5, "served", false}, {{40}, 40, "served", false}};
  Suppress(cells, {}, 11);
  EXPECT_TRUE(cells[1].suppressed);
}

TEST(MeasuresTest, NearestRankPercentiles) {
  const std::vector<int64_t> values = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  EXPECT_EQ(NearestRank(values, 50), 6);   // ceil(6) = 6th
  EXPECT_EQ(NearestRank(values, 90), 11);  // ceil(10.8) = 11th
  EXPECT_EQ(NearestRank(std::vector<int64_t>{7}, 90), 7);
}

TEST(MeasuresTest, DefinitionsComeFromTheProto) {
  ASSERT_EQ(Measures().size(), 25u);
  const v1::MeasureDefinition d = DefinitionOf(Measures()[8]);
  EXPECT_EQ(d.measure_id(), "crisis_recontact_30d");
  EXPECT_NE(d.numerator_definition().find("Index: a DISCHARGE with setting CRISIS_STABILIZATION"),
            std::string::npos);
  EXPECT_EQ(d.denominator_definition().rfind("Denominator: people of the scope", 0), 0u);
  EXPECT_EQ(d.people_definition(), "People: the persons of the denominator.");
  EXPECT_EQ(d.breakdowns_size(), 2);
  EXPECT_TRUE(d.unavailable_reason().empty());
  // Every measure is computable since the check-in service records person feedback.
  for (const MeasureInfo& m : Measures()) EXPECT_TRUE(DefinitionOf(m).unavailable_reason().empty());
}

TEST(CsvTest, RowsFollowTheColumnsAndNeverShowSuppressedValues) {
  v1::ProgramReport report;
  report.set_agency_id("=agency,1");
  report.mutable_period()->mutable_start_date()->set_year(2026);
  report.mutable_period()->mutable_start_date()->set_month(3);
  report.mutable_period()->mutable_start_date()->set_day(1);
  report.mutable_period_range()->mutable_end_time()->set_seconds(1775001600);  // 2026-04-01
  report.set_definitions_version(1);
  report.set_time_zone("UTC");
  v1::ReportCell shown;
  shown.set_measure(v1::MEASURE_CRISIS_RECONTACT_30D);
  shown.set_measure_id("crisis_recontact_30d");
  shown.add_dimensions()->set_cohort(v1::COHORT_WITH_PEER_SUPPORT);
  shown.mutable_rate()->set_numerator(1);
  shown.mutable_rate()->set_denominator(3);
  shown.mutable_rate()->set_rate(1.0 / 3);
  EXPECT_EQ(CsvRow(report, shown),
            "\"'=agency,1\",2026-03-01,2026-03-31,,,crisis_recontact_30d,Crisis re-contact within "
            "30 days after crisis stabilization,proportion,with_peer_support,,,,,false,,1,3,"
            "0.3333,,,,,1,false,UTC\r\n");
  v1::ReportCell hidden;
  hidden.set_measure(v1::MEASURE_ENROLLMENTS_STARTED);
  hidden.set_measure_id("enrollments_started");
  hidden.set_suppressed(true);
  EXPECT_EQ(CsvRow(report, hidden),
            "\"'=agency,1\",2026-03-01,2026-03-31,,,enrollments_started,Enrollments started,"
            "count,,,,,,true,,,,,,,,,1,false,UTC\r\n");
  const std::string header = CsvHeader();
  EXPECT_EQ(std::count(header.begin(), header.end(), ','), 24);
  // The last day is local: Auckland's April starts at 11:00Z on 31 March (UTC+13).
  report.set_time_zone("Pacific/Auckland");
  report.mutable_period_range()->mutable_end_time()->set_seconds(1775001600 - 13 * 3600);
  EXPECT_EQ(CsvRow(report, hidden),
            "\"'=agency,1\",2026-03-01,2026-03-31,,,enrollments_started,Enrollments started,"
            "count,,,,,,true,,,,,,,,,1,false,Pacific/Auckland\r\n");
}

}  // namespace
}  // namespace peerpath::evaluation
