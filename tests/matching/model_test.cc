// The matching model: eligibility, weighted scores with explanations, ranking, validation.
#include "services/matching/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"

namespace peerpath::matching {
namespace {

const absl::CivilDay kToday(2026, 11, 23);

v1::Supporter Eligible(const std::string& id) {
  v1::Supporter s;
  s.set_supporter_id(id);
  s.set_subject("sub-" + id);
  s.set_display_name("S " + id);
  s.set_status(v1::SUPPORTER_STATUS_ACTIVE);
  s.set_training_status(v1::TRAINING_STATUS_CERTIFIED);
  s.mutable_training_expires_on()->set_year(2027);
  s.mutable_training_expires_on()->set_month(1);
  s.mutable_training_expires_on()->set_day(1);
  s.set_capacity_units(5);
  s.add_languages("en");
  s.add_meeting_modes(v1::MEETING_MODE_PHONE);
  return s;
}

v1::MatchRequest Request() {
  v1::MatchRequest r;
  r.set_participant_id("p-1");
  r.set_acuity_units(1);
  return r;
}

TEST(Evaluate, OnBreakLapsedExcludedOrFullSupportersAreNeverEligible) {
  const v1::MatchRequest request = Request();
  v1::Supporter on_break = Eligible("a");
  on_break.set_status(v1::SUPPORTER_STATUS_ON_BREAK);
  EXPECT_EQ(Evaluate(on_break, request, kToday).failed, v1::CANDIDATE_FILTER_ACTIVE);
  v1::Supporter no_account = Eligible("a");
  no_account.clear_subject();
  EXPECT_EQ(Evaluate(no_account, request, kToday).failed, v1::CANDIDATE_FILTER_ACTIVE);
  v1::Supporter expired = Eligible("a");
  expired.mutable_training_expires_on()->set_year(2026);
  expired.mutable_training_expires_on()->set_month(11);
  expired.mutable_training_expires_on()->set_day(22);
  EXPECT_EQ(Evaluate(expired, request, kToday).failed, v1::CANDIDATE_FILTER_TRAINING_CURRENT);
  v1::Supporter expires_today = Eligible("a");
  expires_today.mutable_training_expires_on()->set_year(2026);
  expires_today.mutable_training_expires_on()->set_month(11);
  expires_today.mutable_training_expires_on()->set_day(23);
  EXPECT_TRUE(Evaluate(expires_today, request, kToday).eligible());
  v1::Supporter lapsed = Eligible("a");
  lapsed.set_training_status(v1::TRAINING_STATUS_LAPSED);
  EXPECT_EQ(Evaluate(lapsed, request, kToday).failed, v1::CANDIDATE_FILTER_TRAINING_CURRENT);
  v1::MatchRequest excluding = Request();
  excluding.mutable_hard_constraints()->add_excluded_supporter_ids("a");
  EXPECT_EQ(Evaluate(Eligible("a"), excluding, kToday).failed, v1::CANDIDATE_FILTER_NOT_EXCLUDED);
  v1::Supporter full = Eligible("a");
  full.set_units_in_use(3);
  v1::MatchRequest crisis = Request();
  crisis.set_acuity_units(3);
  EXPECT_EQ(Evaluate(full, crisis, kToday).failed, v1::CANDIDATE_FILTER_CAPACITY);
  EXPECT_TRUE(Evaluate(full, Request(), kToday).eligible());
}

TEST(Screen, AgreesWithEvaluate) {
  v1::MatchRequest request = Request();
  request.mutable_hard_constraints()->add_languages("es");
  request.set_acuity_units(2);
  std::vector<v1::Supporter> roster = {Eligible("a"), Eligible("b"), Eligible("c"), Eligible("d")};
  roster[1].add_languages("es");
  roster[2].add_languages("es");
  roster[2].set_units_in_use(4);
  roster[3].set_status(v1::SUPPORTER_STATUS_INACTIVE);
  for (const auto& s : roster) {
    EXPECT_EQ(Screen(s, request, kToday), Evaluate(s, request, kToday).failed) << s.supporter_id();
  }
  EXPECT_FALSE(Screen(roster[1], request, kToday).has_value());
}

TEST(Evaluate, HardConstraintsFilterAndExplain) {
  v1::MatchRequest request = Request();
  request.mutable_hard_constraints()->add_languages("es");
  request.mutable_hard_constraints()->add_meeting_modes(v1::MEETING_MODE_IN_PERSON);
  request.mutable_hard_constraints()->set_region("north");
  v1::Supporter s = Eligible("a");
  EXPECT_EQ(Evaluate(s, request, kToday).failed, v1::CANDIDATE_FILTER_LANGUAGE);
  s.add_languages("es-MX");
  EXPECT_EQ(Evaluate(s, request, kToday).failed, v1::CANDIDATE_FILTER_MEETING_MODE);
  s.add_meeting_modes(v1::MEETING_MODE_IN_PERSON);
  EXPECT_EQ(Evaluate(s, request, kToday).failed, v1::CANDIDATE_FILTER_REGION);
  s.set_region("north");
  const Evaluation e = Evaluate(s, request, kToday);
  ASSERT_TRUE(e.eligible());
  ASSERT_GE(e.explanation.size(), 3u);
  EXPECT_EQ(e.explanation[0].text(), "speaks es");
  EXPECT_EQ(e.explanation[1].text(), "meets in person");
  EXPECT_EQ(e.explanation[2].text(), "in region north");
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(e.explanation[i].hard_constraint());
    EXPECT_EQ(e.explanation[i].outcome(), v1::CRITERION_OUTCOME_MET);
  }
}

TEST(Evaluate, WeightedPreferencesScoreAndExplainEachCriterion) {
  v1::MatchRequest request = Request();
  auto* lived = request.mutable_preferences()->mutable_lived_experience();
  lived->add_areas("postpartum_depression");
  lived->add_areas("grief");
  lived->set_weight(3);
  auto* availability = request.mutable_preferences()->mutable_availability();
  for (int day = 1; day <= 5; ++day) {
    auto* w = availability->add_windows();
    w->set_weekday(static_cast<v1::Weekday>(day));
    w->set_start_minute(9 * 60);
    w->set_end_minute(12 * 60);
  }
  auto* age = request.mutable_preferences()->mutable_age_band();
  age->add_age_bands(v1::AGE_BAND_25_34);
  v1::Supporter s = Eligible("a");
  s.add_lived_experience_areas("postpartum_depression");
  s.set_age_band(v1::AGE_BAND_35_44);
  for (int day = 1; day <= 3; ++day) {
    auto* w = s.add_availability();
    w->set_weekday(static_cast<v1::Weekday>(day));
    w->set_start_minute(11 * 60 + 30);  // Overlaps exactly 30 minutes.
    w->set_end_minute(13 * 60);
  }
  const Evaluation e = Evaluate(s, request, kToday);
  ASSERT_TRUE(e.eligible());
  // (3 × 0.5 + 1 × 0.6 + 1 × 0.5) / 5 × 100 = 52.
  EXPECT_NEAR(e.score, 52.0, 1e-9);
  std::vector<std::string> texts;
  for (const auto& line : e.explanation) texts.push_back(line.text());
  EXPECT_EQ(texts, (std::vector<std::string>{
                       "shares lived experience: postpartum depression (1 of 2)",
                       "age band 35-44 next to the wished one",
                       "3 of 5 availability windows overlap", "5 of 5 units free (needs 1)"}));
  EXPECT_EQ(e.explanation[0].outcome(), v1::CRITERION_OUTCOME_PARTIAL);
  EXPECT_NEAR(e.explanation[0].points(), 30.0, 1e-9);
}

TEST(Evaluate, NoPreferencesScoreZeroAndUnknownAgeBandCountsAsZero) {
  EXPECT_EQ(Evaluate(Eligible("a"), Request(), kToday).score, 0);
  v1::MatchRequest request = Request();
  request.mutable_preferences()->mutable_age_band()->add_age_bands(v1::AGE_BAND_25_34);
  const Evaluation e = Evaluate(Eligible("a"), request, kToday);
  EXPECT_EQ(e.score, 0);
  EXPECT_EQ(e.explanation[0].outcome(), v1::CRITERION_OUTCOME_UNKNOWN);
}

TEST(RankCandidates, ContinuityFirstThenScoreThenLowerLoad) {
  std::vector<v1::Supporter> roster = {Eligible("a"), Eligible("b"), Eligible("c"), Eligible("d")};
  roster[0].add_lived_experience_areas("grief");  // best score
  roster[2].set_units_in_use(4);                  // same score as b and d, fuller
  roster[3].set_status(v1::SUPPORTER_STATUS_ON_BREAK);
  v1::MatchRequest request = Request();
  request.mutable_preferences()->mutable_lived_experience()->add_areas("grief");
  request.mutable_preferences()->mutable_continuity()->set_supporter_id("c");
  const auto ranked = RankCandidates(roster, request, kToday);
  std::vector<std::string> order;
  for (const auto& c : ranked) order.push_back(roster[c.roster_index].supporter_id());
  EXPECT_EQ(order, (std::vector<std::string>{"c", "a", "b"}));
  EXPECT_TRUE(ranked[0].evaluation.continuity);
}

TEST(ExplainNoCandidate, NamesTheFirstStepThatLeftNobody) {
  std::vector<v1::Supporter> roster = {Eligible("a"), Eligible("b")};
  roster[1].set_status(v1::SUPPORTER_STATUS_ON_BREAK);
  v1::MatchRequest request = Request();
  request.mutable_hard_constraints()->add_languages("es");
  const v1::NoCandidate why = ExplainNoCandidate(roster, request, kToday);
  EXPECT_EQ(why.reason(), v1::UNMATCHED_REASON_NO_CANDIDATE_SPEAKS_LANGUAGE);
  ASSERT_EQ(why.funnel_size(), 3);
  EXPECT_EQ(why.funnel(0).remaining(), 1);
  EXPECT_EQ(why.funnel(2).remaining(), 0);
  EXPECT_EQ(why.text(), "no candidate speaks es (0 of 1 remaining supporters)");
  roster[0].set_units_in_use(5);
  request.clear_hard_constraints();
  EXPECT_EQ(ExplainNoCandidate(roster, request, kToday).reason(),
            v1::UNMATCHED_REASON_ALL_CANDIDATES_AT_CAPACITY);
}

TEST(Model, AcuityUnitsFollowThePathwayAndUrgencyScalesTheBatchValue) {
  EXPECT_EQ(AcuityUnitsForPathway("crisis_transition"), 3);
  EXPECT_EQ(AcuityUnitsForPathway("step_down"), 2);
  EXPECT_EQ(AcuityUnitsForPathway("structured_checkin"), 1);
  EXPECT_EQ(AcuityUnitsForPathway(""), 1);
  EXPECT_EQ(BatchValue(50, false, v1::URGENCY_ROUTINE), 150);
  EXPECT_EQ(BatchValue(50, true, v1::URGENCY_URGENT), 1000);
}

TEST(Validate, ReportsEveryBadFieldOfASupporter) {
  v1::Supporter s;
  s.set_capacity_units(-1);
  s.set_training_status(v1::TRAINING_STATUS_CERTIFIED);
  s.add_languages("x");
  s.add_meeting_modes(v1::MEETING_MODE_UNSPECIFIED);
  auto* w = s.add_availability();
  w->set_weekday(v1::WEEKDAY_MONDAY);
  w->set_start_minute(600);
  w->set_end_minute(500);
  std::vector<std::string> fields;
  for (const auto& v : ValidateSupporter(s)) fields.push_back(v.field);
  EXPECT_EQ(fields, (std::vector<std::string>{
                        "supporter.display_name", "supporter.languages[0]",
                        "supporter.meeting_modes[0]", "supporter.availability[0].end_minute",
                        "supporter.capacity_units", "supporter.training_expires_on"}));
  EXPECT_TRUE(ValidateSupporter(Eligible("a")).empty());
}

TEST(Validate, ReportsEveryBadFieldOfAMatchRequest) {
  v1::MatchRequest r;
  r.set_acuity_units(101);
  r.mutable_hard_constraints()->add_excluded_supporter_ids("not-a-uuid");
  r.mutable_preferences()->mutable_lived_experience()->set_weight(11);
  std::vector<std::string> fields;
  for (const auto& v : ValidateMatchRequest(r)) fields.push_back(v.field);
  EXPECT_EQ(fields,
            (std::vector<std::string>{"match_request.participant_id", "match_request.acuity_units",
                                      "match_request.hard_constraints.excluded_supporter_ids[0]",
                                      "match_request.preferences.lived_experience.areas",
                                      "match_request.preferences.lived_experience.weight"}));
}

// A random roster and request over small value sets, so that every constraint both passes and
// fails often.
v1::Supporter RandomSupporter(std::mt19937& rng, int i) {
  std::uniform_int_distribution<int> pick(0, 99);
  v1::Supporter s = Eligible(absl::StrCat("s-", i));
  s.clear_languages();
  s.clear_meeting_modes();
  if (pick(rng) < 10) s.set_status(v1::SUPPORTER_STATUS_ON_BREAK);
  if (pick(rng) < 5) s.clear_subject();
  if (pick(rng) < 10) s.set_training_status(v1::TRAINING_STATUS_LAPSED);
  const char* languages[] = {"en", "es-MX", "ES", "tl", "fr-CA"};
  for (const char* l : languages) {
    if (pick(rng) < 35) s.add_languages(l);
  }
  for (int m = 1; m <= 3; ++m) {
    if (pick(rng) < 50) s.add_meeting_modes(static_cast<v1::MeetingMode>(m));
  }
  const char* regions[] = {"north", "south", ""};
  s.set_region(regions[pick(rng) % 3]);
  const char* genders[] = {"female", "male", ""};
  s.set_gender(genders[pick(rng) % 3]);
  s.set_age_band(static_cast<v1::AgeBand>(pick(rng) % 7));
  const char* areas[] = {"grief", "psychosis", "postpartum_depression"};
  for (const char* a : areas) {
    if (pick(rng) < 40) s.add_lived_experience_areas(a);
  }
  for (int w = 0; w < pick(rng) % 3; ++w) {
    auto* window = s.add_availability();
    window->set_weekday(static_cast<v1::Weekday>(1 + pick(rng) % 5));
    window->set_start_minute(540 + 30 * (pick(rng) % 8));
    window->set_end_minute(window->start_minute() + 60 + 30 * (pick(rng) % 4));
  }
  s.set_capacity_units(pick(rng) % 5);
  s.set_units_in_use(pick(rng) % 3);
  return s;
}

v1::MatchRequest RandomRequest(std::mt19937& rng, const std::vector<v1::Supporter>& roster) {
  std::uniform_int_distribution<int> pick(0, 99);
  v1::MatchRequest r = Request();
  r.set_acuity_units(1 + pick(rng) % 3);
  auto& hard = *r.mutable_hard_constraints();
  if (pick(rng) < 40) hard.add_languages(pick(rng) < 50 ? "es" : "EN-us");
  if (pick(rng) < 15) hard.add_languages("tl");
  if (pick(rng) < 30) hard.add_meeting_modes(static_cast<v1::MeetingMode>(1 + pick(rng) % 3));
  if (pick(rng) < 40) hard.set_region(pick(rng) < 50 ? "north" : "south");
  if (pick(rng) < 20) hard.add_genders("female");
  if (pick(rng) < 30 && !roster.empty()) {
    hard.add_excluded_supporter_ids(roster[pick(rng) % roster.size()].supporter_id());
  }
  auto& prefs = *r.mutable_preferences();
  if (pick(rng) < 70) {
    prefs.mutable_lived_experience()->add_areas(pick(rng) < 50 ? "grief" : "psychosis");
    prefs.mutable_lived_experience()->set_weight(pick(rng) % 4);
  }
  if (pick(rng) < 50) {
    prefs.mutable_age_band()->add_age_bands(static_cast<v1::AgeBand>(1 + pick(rng) % 6));
    prefs.mutable_age_band()->set_weight(1 + pick(rng) % 3);
  }
  if (pick(rng) < 40) prefs.mutable_gender()->add_genders("male");
  if (pick(rng) < 50) {
    auto* window = prefs.mutable_availability()->add_windows();
    window->set_weekday(static_cast<v1::Weekday>(1 + pick(rng) % 5));
    window->set_start_minute(600);
    window->set_end_minute(720);
  }
  if (pick(rng) < 30) prefs.mutable_region()->set_region("south");
  if (pick(rng) < 20 && !roster.empty()) {
    prefs.mutable_continuity()->set_supporter_id(roster[pick(rng) % roster.size()].supporter_id());
  }
  return r;
}

TEST(ScorePreferences, WithoutExplanationGivesExactlyTheExplainedScore) {
  // AssignBatch scores every eligible pair without explanation and explains only the assigned
  // ones: both paths must agree to the bit.
  std::mt19937 rng(11);
  std::vector<v1::Supporter> roster;
  for (int i = 0; i < 60; ++i) roster.push_back(RandomSupporter(rng, i));
  for (int round = 0; round < 300; ++round) {
    const v1::MatchRequest request = RandomRequest(rng, roster);
    for (const auto& s : roster) {
      std::vector<v1::CriterionExplanation> lines;
      const double explained = ScorePreferences(s, request.preferences(), &lines);
      EXPECT_EQ(ScorePreferences(s, request.preferences(), nullptr), explained);
      EXPECT_EQ(Evaluate(s, request, kToday).score, explained);
      double points = 0;
      for (const auto& line : lines) points += line.points();
      EXPECT_EQ(points, explained);
    }
  }
}

TEST(CandidateIndex, NeverMissesAnEligibleSupporter) {
  // The index narrows the roster by region or language before screening: it may keep
  // ineligible supporters (Screen drops them) but must never lose an eligible one.
  std::mt19937 rng(5);
  for (int round = 0; round < 50; ++round) {
    std::vector<v1::Supporter> roster;
    for (int i = 0; i < 80; ++i) roster.push_back(RandomSupporter(rng, i));
    const CandidateIndex index(roster, kToday);
    for (int q = 0; q < 40; ++q) {
      const v1::MatchRequest request = RandomRequest(rng, roster);
      const std::vector<int> candidates = index.Candidates(request);
      EXPECT_TRUE(std::is_sorted(candidates.begin(), candidates.end()));
      EXPECT_EQ(std::adjacent_find(candidates.begin(), candidates.end()), candidates.end());
      for (size_t i = 0; i < roster.size(); ++i) {
        if (Screen(roster[i], request, kToday).has_value()) continue;
        EXPECT_TRUE(std::binary_search(candidates.begin(), candidates.end(), static_cast<int>(i)))
            << "round " << round << ": eligible supporter " << i << " missing";
      }
      // RankCandidates (Screen, then Evaluate) agrees with Evaluate alone.
      size_t eligible = 0;
      for (const auto& s : roster) eligible += Evaluate(s, request, kToday).eligible() ? 1 : 0;
      EXPECT_EQ(RankCandidates(roster, request, kToday).size(), eligible);
    }
  }
}

TEST(RankCandidates, UnitsGivenApartRankExactlyAsUnitsInTheProtos) {
  // ProposeMatches ranks a shared roster whose protos carry 0 units, with the units in use read
  // apart: the same candidates, in the same order, with the same scores, as the protos with
  // their units would give.
  std::mt19937 rng(11);
  int compared = 0;
  for (int round = 0; round < 30; ++round) {
    std::vector<v1::Supporter> roster;
    for (int i = 0; i < 60; ++i) roster.push_back(RandomSupporter(rng, i));
    std::uniform_int_distribution<int> load(0, 5);
    std::unordered_map<std::string, int> units;
    std::vector<v1::Supporter> shared = roster;
    for (size_t i = 0; i < roster.size(); ++i) {
      const int in_use = std::min(load(rng), roster[i].capacity_units());
      roster[i].set_units_in_use(in_use);
      if (in_use > 0) units[roster[i].supporter_id()] = in_use;
      shared[i].set_units_in_use(0);
    }
    const CandidateIndex index(shared, kToday);
    for (int q = 0; q < 20; ++q) {
      const v1::MatchRequest request = RandomRequest(rng, roster);
      const size_t head = 1 + static_cast<size_t>(q % 7);
      const auto expected = RankCandidates(roster, request, kToday, head);
      const auto got =
          RankCandidates(shared, index.Candidates(request), units, request, kToday, head);
      ASSERT_EQ(got.size(), expected.size()) << "round " << round;
      for (size_t i = 0; i < std::min(head, got.size()); ++i) {
        EXPECT_EQ(got[i].roster_index, expected[i].roster_index) << "round " << round << " #" << i;
        EXPECT_DOUBLE_EQ(got[i].evaluation.score, expected[i].evaluation.score);
        EXPECT_EQ(got[i].evaluation.continuity, expected[i].evaluation.continuity);
        ++compared;
      }
    }
  }
  EXPECT_GT(compared, 500);  // Not vacuous: most requests have several candidates.
}

}  // namespace
}  // namespace peerpath::matching
