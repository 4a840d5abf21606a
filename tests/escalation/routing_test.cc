// The routing table and the deadline maths: every category × severity of the default policy,
// business hours, weekends, holidays and DST changes, with time passed in.
#include "services/escalation/routing.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "services/escalation/deadlines.h"

namespace peerpath::escalation {
namespace {

using common::v1::CONCERN_CATEGORY_BASIC_NEEDS;
using common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING;
using common::v1::CONCERN_CATEGORY_DISENGAGEMENT;
using common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY;
using common::v1::CONCERN_CATEGORY_ROLE_BOUNDARY;
using common::v1::CONCERN_CATEGORY_SUPPORTER_WELLBEING;
using common::v1::CONCERN_CATEGORY_WELLBEING_DECLINE;
using common::v1::CONCERN_SEVERITY_CRITICAL;
using common::v1::CONCERN_SEVERITY_ROUTINE;
using common::v1::CONCERN_SEVERITY_URGENT;

absl::TimeZone Zone(const char* name) {
  absl::TimeZone zone;
  EXPECT_TRUE(absl::LoadTimeZone(name, &zone)) << name;
  return zone;
}

absl::Time Local(const absl::TimeZone& zone, int y, int mo, int d, int h, int mi = 0) {
  return absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, 0), zone);
}

class Deadlines : public ::testing::Test {
 protected:
  absl::TimeZone chicago_ = Zone("America/Chicago");
  BusinessCalendar calendar_ = DefaultCalendar(chicago_);
};

// 2026-11-20 is a Friday.
TEST_F(Deadlines, BusinessTimeSkipsTheWeekend) {
  EXPECT_EQ(AddBusinessTime(calendar_, Local(chicago_, 2026, 11, 20, 16), absl::Hours(4)),
            Local(chicago_, 2026, 11, 23, 12));
}

TEST_F(Deadlines, BusinessTimeWithinOneDayIsElapsedTime) {
  EXPECT_EQ(AddBusinessTime(calendar_, Local(chicago_, 2026, 11, 18, 10), absl::Hours(3)),
            Local(chicago_, 2026, 11, 18, 13));
}

TEST_F(Deadlines, ThreeBusinessDaysFromFridayEndWednesdaySameTime) {
  EXPECT_EQ(AddBusinessDays(calendar_, Local(chicago_, 2026, 11, 20, 15), 3),
            Local(chicago_, 2026, 11, 25, 15));
}

TEST_F(Deadlines, BusinessDaysSkipHolidays) {
  calendar_.holidays.insert(absl::CivilDay(2026, 11, 26));  // Thanksgiving, Thursday.
  EXPECT_EQ(AddBusinessDays(calendar_, Local(chicago_, 2026, 11, 24, 11), 3),
            Local(chicago_, 2026, 11, 30, 11));
}

TEST_F(Deadlines, RaisedSaturdayWaitsForMondayMorning) {
  const absl::Time saturday = Local(chicago_, 2026, 11, 21, 14);
  EXPECT_FALSE(InBusinessHours(calendar_, saturday));
  EXPECT_EQ(NextBusinessStart(calendar_, saturday), Local(chicago_, 2026, 11, 23, 9));
  EXPECT_EQ(AddBusinessDays(calendar_, saturday, 3), Local(chicago_, 2026, 11, 26, 9));
}

TEST_F(Deadlines, RaisedAfterHoursWaitsForNextMorning) {
  EXPECT_EQ(NextBusinessStart(calendar_, Local(chicago_, 2026, 11, 18, 17)),
            Local(chicago_, 2026, 11, 19, 9));
  EXPECT_EQ(NextBusinessStart(calendar_, Local(chicago_, 2026, 11, 18, 6)),
            Local(chicago_, 2026, 11, 18, 9));
  EXPECT_TRUE(InBusinessHours(calendar_, Local(chicago_, 2026, 11, 18, 9)));
  EXPECT_FALSE(InBusinessHours(calendar_, Local(chicago_, 2026, 11, 18, 17)));
}

TEST_F(Deadlines, BusinessDaysKeepLocalTimeAcrossSpringForward) {
  // 2026-03-08 (Sunday) Chicago goes from CST (-6) to CDT (-5).
  const absl::Time friday = Local(chicago_, 2026, 3, 6, 15);
  const absl::Time wednesday = AddBusinessDays(calendar_, friday, 3);
  EXPECT_EQ(wednesday, Local(chicago_, 2026, 3, 11, 15));
  EXPECT_EQ(wednesday - friday, absl::Hours(5 * 24 - 1));
}

TEST_F(Deadlines, BusinessTimeAcrossFallBack) {
  // 2026-11-01 (Sunday) Chicago goes from CDT back to CST: Friday 16:00 + 2 business hours is
  // Monday 10:00 local, 67 elapsed hours (one more than without the change).
  const absl::Time friday = Local(chicago_, 2026, 10, 30, 16);
  const absl::Time monday = AddBusinessTime(calendar_, friday, absl::Hours(2));
  EXPECT_EQ(monday, Local(chicago_, 2026, 11, 2, 10));
  EXPECT_EQ(monday - friday, absl::Hours(67));
}

TEST_F(Deadlines, ElapsedLimitsIgnoreTheClockChange) {
  // 01:50 CST + 15 minutes of elapsed time is 03:05 CDT on the night of the change.
  const absl::Time before = Local(chicago_, 2026, 3, 8, 1, 50);
  EXPECT_EQ(DeadlineAfter(TimeLimit{absl::Minutes(15), 0}, before, false, calendar_),
            Local(chicago_, 2026, 3, 8, 3, 5));
}

TEST_F(Deadlines, BusinessHoursInAnotherZone) {
  BusinessCalendar sydney = DefaultCalendar(Zone("Australia/Sydney"));
  const absl::Time t =
      absl::FromCivil(absl::CivilSecond(2026, 11, 20, 22, 0, 0), absl::UTCTimeZone());
  // Friday 22:00 UTC is Saturday 09:00 in Sydney (AEDT, +11): out of hours until Monday.
  EXPECT_FALSE(InBusinessHours(sydney, t));
  EXPECT_EQ(NextBusinessStart(sydney, t),
            absl::FromCivil(absl::CivilSecond(2026, 11, 23, 9, 0, 0), sydney.zone));
}

TEST_F(Deadlines, CalendarWithoutHoursNeverStarts) {
  BusinessCalendar none{chicago_, {}, {}};
  EXPECT_EQ(NextBusinessStart(none, Local(chicago_, 2026, 11, 18, 10)), absl::InfiniteFuture());
}

TEST(LocalTime, ParsesAndRefuses) {
  EXPECT_EQ(*ParseLocalTime("09:30"), 570);
  EXPECT_EQ(*ParseLocalTime("24:00"), 1440);
  EXPECT_FALSE(ParseLocalTime("24:01").ok());
  EXPECT_FALSE(ParseLocalTime("9:30").ok());
  EXPECT_FALSE(ParseLocalTime("12:60").ok());
  EXPECT_EQ(FormatLocalTime(570), "09:30");
}

class DefaultRouting : public ::testing::Test {
 protected:
  absl::TimeZone chicago_ = Zone("America/Chicago");
  RoutingPolicy policy_ = DefaultPolicy("America/Chicago", chicago_);
  absl::Time wednesday_10_ = Local(chicago_, 2026, 11, 18, 10);
};

struct Expected {
  Category category;
  Severity severity;
  TargetKind first;           // Level 0 of the rule.
  TargetKind routed_unknown;  // Where it goes when no person is known.
  absl::Duration ack;         // From Wednesday 10:00 (business days in hours of elapsed time).
};

TEST_F(DefaultRouting, EveryCategoryAndSeverityHasItsTargetAndDeadline) {
  const TargetKind on_call = v1::TARGET_KIND_CLINICAL_ON_CALL;
  const TargetKind receiving = v1::TARGET_KIND_RECEIVING_CLINICIAN;
  const TargetKind cm = v1::TARGET_KIND_CASE_MANAGEMENT_TEAM;
  const TargetKind sup = v1::TARGET_KIND_SUPPORTER_SUPERVISOR;
  const absl::Duration three_days = absl::Hours(24 * 3 + 24 * 2);  // Wed → Mon across a weekend.
  const std::vector<Expected> table = {
      {CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL, on_call, on_call,
       absl::Minutes(15)},
      {CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_URGENT, receiving, on_call,
       absl::Hours(4)},
      {CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_ROUTINE, receiving, on_call,
       absl::Hours(24)},
      {CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_CRITICAL, on_call, on_call,
       absl::Minutes(15)},
      {CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT, receiving, on_call,
       absl::Hours(4)},
      {CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_ROUTINE, receiving, on_call,
       three_days},
      {CONCERN_CATEGORY_WELLBEING_DECLINE, CONCERN_SEVERITY_CRITICAL, on_call, on_call,
       absl::Minutes(15)},
      {CONCERN_CATEGORY_WELLBEING_DECLINE, CONCERN_SEVERITY_URGENT, receiving, on_call,
       absl::Hours(4)},
      {CONCERN_CATEGORY_WELLBEING_DECLINE, CONCERN_SEVERITY_ROUTINE, receiving, on_call,
       three_days},
      {CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_CRITICAL, cm, cm, absl::Minutes(15)},
      {CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_URGENT, cm, cm, absl::Hours(4)},
      {CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_ROUTINE, cm, cm, three_days},
      {CONCERN_CATEGORY_DISENGAGEMENT, CONCERN_SEVERITY_CRITICAL, cm, cm, absl::Minutes(15)},
      {CONCERN_CATEGORY_DISENGAGEMENT, CONCERN_SEVERITY_URGENT, cm, cm, absl::Hours(4)},
      {CONCERN_CATEGORY_DISENGAGEMENT, CONCERN_SEVERITY_ROUTINE, cm, cm, three_days},
      {CONCERN_CATEGORY_ROLE_BOUNDARY, CONCERN_SEVERITY_CRITICAL, sup, cm, absl::Minutes(15)},
      {CONCERN_CATEGORY_ROLE_BOUNDARY, CONCERN_SEVERITY_URGENT, sup, cm, absl::Hours(4)},
      {CONCERN_CATEGORY_ROLE_BOUNDARY, CONCERN_SEVERITY_ROUTINE, sup, cm, three_days},
      {CONCERN_CATEGORY_SUPPORTER_WELLBEING, CONCERN_SEVERITY_CRITICAL, sup, cm, absl::Minutes(15)},
      {CONCERN_CATEGORY_SUPPORTER_WELLBEING, CONCERN_SEVERITY_URGENT, sup, cm, absl::Hours(4)},
      {CONCERN_CATEGORY_SUPPORTER_WELLBEING, CONCERN_SEVERITY_ROUTINE, sup, cm, three_days},
  };
  EXPECT_EQ(policy_.rules.size(), table.size());
  for (const Expected& e : table) {
    SCOPED_TRACE(absl::StrCat(e.category, "x", e.severity));
    const RoutingRule* rule = RuleFor(policy_, e.category, e.severity);
    ASSERT_NE(rule, nullptr);
    EXPECT_EQ(rule->target.kind, e.first);
    auto routed = RouteFrom(*rule, 0, PersonDirectory{}, policy_.calendar, wednesday_10_);
    ASSERT_TRUE(routed.ok()) << routed.status();
    EXPECT_EQ(routed->target.kind, e.routed_unknown);
    EXPECT_EQ(routed->ack_deadline - wednesday_10_, e.ack);
    EXPECT_EQ(routed->notify_at, wednesday_10_);
    if (e.first != e.routed_unknown) {
      EXPECT_EQ(routed->skipped_levels, std::vector<int>{0});
    }
  }
  EXPECT_TRUE(ValidatePolicy(policy_).empty());
  EXPECT_EQ(SafetyRuleViolation(policy_), "");
}

TEST_F(DefaultRouting, KnownReceivingClinicianGetsTheUrgentConcern) {
  PersonDirectory people;
  people.receiving_clinician = "dr-lee";
  auto routed =
      RouteFrom(*RuleFor(policy_, CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT), 0,
                people, policy_.calendar, wednesday_10_);
  ASSERT_TRUE(routed.ok());
  EXPECT_EQ(routed->level, 0);
  EXPECT_EQ(routed->target, (Target{v1::TARGET_KIND_RECEIVING_CLINICIAN, "dr-lee"}));
}

TEST_F(DefaultRouting, PeerSupporterIsNeverAnOwner) {
  PersonDirectory people;
  people.supervisor = "sam";
  people.peer_supporters = {"sam"};  // Known as a peer supporter: skipped.
  auto routed =
      RouteFrom(*RuleFor(policy_, CONCERN_CATEGORY_ROLE_BOUNDARY, CONCERN_SEVERITY_URGENT), 0,
                people, policy_.calendar, wednesday_10_);
  ASSERT_TRUE(routed.ok());
  EXPECT_EQ(routed->target.kind, v1::TARGET_KIND_CASE_MANAGEMENT_TEAM);
}

TEST_F(DefaultRouting, ImmediateSafetyRefusesANonClinicalOwner) {
  RoutingRule rule =
      *RuleFor(policy_, CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL);
  rule.target = Target{v1::TARGET_KIND_SUPPORTER_SUPERVISOR, ""};
  PersonDirectory people;
  people.supervisor = "sup-1";
  auto routed = RouteFrom(rule, 0, people, policy_.calendar, wednesday_10_);
  EXPECT_EQ(routed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(routed.status().message().find("peer supporter"), std::string::npos);
  RoutingPolicy bad = policy_;
  for (RoutingRule& r : bad.rules) {
    if (r.category == CONCERN_CATEGORY_IMMEDIATE_SAFETY) r.target = rule.target;
  }
  EXPECT_NE(SafetyRuleViolation(bad), "");
}

TEST_F(DefaultRouting, RoutineOutOfHoursStartsItsClockOnMonday) {
  const absl::Time saturday = Local(chicago_, 2026, 11, 21, 14);
  auto routed = RouteFrom(*RuleFor(policy_, CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_ROUTINE),
                          0, PersonDirectory{}, policy_.calendar, saturday);
  ASSERT_TRUE(routed.ok());
  EXPECT_EQ(routed->notify_at, Local(chicago_, 2026, 11, 23, 9));
  EXPECT_EQ(routed->ack_deadline, Local(chicago_, 2026, 11, 26, 9));
  // Critical concerns never wait.
  auto critical =
      RouteFrom(*RuleFor(policy_, CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_CRITICAL), 0,
                PersonDirectory{}, policy_.calendar, saturday);
  EXPECT_EQ(critical->notify_at, saturday);
  EXPECT_EQ(critical->ack_deadline, saturday + absl::Minutes(15));
}

TEST_F(DefaultRouting, EscalationFollowsTheChainThenIsExhausted) {
  const RoutingRule& rule =
      *RuleFor(policy_, CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT);
  PersonDirectory people;
  people.receiving_clinician = "dr-lee";
  auto next = RouteFrom(rule, 1, people, policy_.calendar, wednesday_10_);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->level, 1);
  EXPECT_EQ(next->target.kind, v1::TARGET_KIND_CLINICAL_ON_CALL);
  EXPECT_EQ(RouteFrom(rule, 2, people, policy_.calendar, wednesday_10_).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(DefaultRouting, WhoActsForATarget) {
  Actor clinician;
  clinician.subject = "dr-lee";
  clinician.clinician = true;
  Actor case_manager;
  case_manager.subject = "cm-1";
  case_manager.case_manager = true;
  EXPECT_TRUE(ActsFor(clinician, {v1::TARGET_KIND_CLINICAL_ON_CALL, "clinical-on-call"}));
  EXPECT_FALSE(ActsFor(case_manager, {v1::TARGET_KIND_CLINICAL_ON_CALL, "clinical-on-call"}));
  EXPECT_TRUE(ActsFor(clinician, {v1::TARGET_KIND_RECEIVING_CLINICIAN, "dr-lee"}));
  EXPECT_FALSE(ActsFor(clinician, {v1::TARGET_KIND_RECEIVING_CLINICIAN, "dr-kim"}));
  const RoutingRule& rule =
      *RuleFor(policy_, CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT);
  EXPECT_EQ(HigherLevelFor(rule, 0, clinician), 1);
  EXPECT_EQ(HigherLevelFor(rule, 1, clinician), std::nullopt);
  EXPECT_EQ(HigherLevelFor(rule, 0, case_manager), std::nullopt);
}

TEST_F(DefaultRouting, PolicyValidationNamesEveryProblem) {
  RoutingPolicy bad = policy_;
  bad.rules[0].target = Target{};
  bad.rules[1].ack_deadline = TimeLimit{absl::Seconds(5), 0};
  bad.rules[2].business_hours_only = true;
  bad.rules[2].severity = CONCERN_SEVERITY_CRITICAL;
  const auto violations = ValidatePolicy(bad);
  std::vector<std::string> fields;
  for (const auto& v : violations) fields.push_back(v.field);
  EXPECT_NE(std::find(fields.begin(), fields.end(), "policy.rules[0].target.kind"), fields.end());
  EXPECT_NE(std::find(fields.begin(), fields.end(), "policy.rules[1].ack_deadline"), fields.end());
  EXPECT_NE(std::find(fields.begin(), fields.end(), "policy.rules[2].business_hours_only"),
            fields.end());
}

}  // namespace
}  // namespace peerpath::escalation
