// Schedules as pure functions, in the agency's time zone, including across DST changes.
#include "services/checkin/schedule.h"

#include <gtest/gtest.h>

namespace peerpath::checkin {
namespace {

absl::TimeZone LosAngeles() {
  auto zone = LoadZone("America/Los_Angeles");
  EXPECT_TRUE(zone.ok());
  return *zone;
}

Schedule Weekly(std::vector<int> days, absl::CivilDay starts, int window = 1) {
  Schedule s;
  s.kind = Schedule::Kind::kWeekly;
  s.weekdays = std::move(days);
  s.starts_on = starts;
  s.window_days = window;
  return s;
}

Schedule EveryN(int n, absl::CivilDay starts, int window = 1) {
  Schedule s;
  s.kind = Schedule::Kind::kEveryNDays;
  s.interval_days = n;
  s.starts_on = starts;
  s.window_days = window;
  return s;
}

TEST(Schedule, WeeklyIsDueOnItsWeekdaysOnly) {
  // 2026-11-02 is a Monday.
  const Schedule s = Weekly({1, 4}, absl::CivilDay(2026, 11, 2));
  EXPECT_TRUE(IsDueOn(s, absl::CivilDay(2026, 11, 2)));
  EXPECT_FALSE(IsDueOn(s, absl::CivilDay(2026, 11, 3)));
  EXPECT_TRUE(IsDueOn(s, absl::CivilDay(2026, 11, 5)));
  EXPECT_FALSE(IsDueOn(s, absl::CivilDay(2026, 10, 29)));  // Before the start.
}

TEST(Schedule, EveryNDaysCountsFromTheStartAndStopsAtTheEnd) {
  Schedule s = EveryN(3, absl::CivilDay(2026, 11, 1));
  s.ends_on = absl::CivilDay(2026, 11, 7);
  EXPECT_TRUE(IsDueOn(s, absl::CivilDay(2026, 11, 1)));
  EXPECT_FALSE(IsDueOn(s, absl::CivilDay(2026, 11, 2)));
  EXPECT_TRUE(IsDueOn(s, absl::CivilDay(2026, 11, 4)));
  EXPECT_TRUE(IsDueOn(s, absl::CivilDay(2026, 11, 7)));
  EXPECT_FALSE(IsDueOn(s, absl::CivilDay(2026, 11, 10)));  // After the end.
}

TEST(Schedule, WindowAcrossFallBackLasts25Hours) {
  // US DST ends Sunday 2026-11-01 at 02:00 local: that local day has 25 hours.
  const absl::TimeZone zone = LosAngeles();
  const Schedule s = Weekly({7}, absl::CivilDay(2026, 10, 1));
  const Occurrence o = OccurrenceOn(s, absl::CivilDay(2026, 11, 1), zone);
  EXPECT_EQ(o.window_end - o.window_start, absl::Hours(25));
  // Local midnight before the change is UTC-7, after it UTC-8.
  EXPECT_EQ(absl::FormatTime("%Y-%m-%dT%H:%M", o.window_start, absl::UTCTimeZone()),
            "2026-11-01T07:00");
  EXPECT_EQ(absl::FormatTime("%Y-%m-%dT%H:%M", o.window_end, absl::UTCTimeZone()),
            "2026-11-02T08:00");
}

TEST(Schedule, WindowAcrossSpringForwardLasts23Hours) {
  // US DST starts Sunday 2026-03-08 at 02:00 local.
  const absl::TimeZone zone = LosAngeles();
  const Schedule s = EveryN(7, absl::CivilDay(2026, 3, 1));
  ASSERT_TRUE(IsDueOn(s, absl::CivilDay(2026, 3, 8)));
  const Occurrence o = OccurrenceOn(s, absl::CivilDay(2026, 3, 8), zone);
  EXPECT_EQ(o.window_end - o.window_start, absl::Hours(23));
  // The weekly check-in stays at local midnight on both sides of the change.
  const Occurrence before = OccurrenceOn(s, absl::CivilDay(2026, 3, 1), zone);
  const Occurrence after = OccurrenceOn(s, absl::CivilDay(2026, 3, 15), zone);
  EXPECT_EQ(absl::ToCivilHour(before.window_start, zone).hour(), 0);
  EXPECT_EQ(absl::ToCivilHour(after.window_start, zone).hour(), 0);
  EXPECT_EQ(after.window_start - before.window_start, absl::Hours(14 * 24 - 1));
}

TEST(Schedule, MultiDayWindowStaysOpenOnLaterDays) {
  const absl::TimeZone zone = LosAngeles();
  const Schedule s = Weekly({1}, absl::CivilDay(2026, 11, 2), /*window=*/3);
  EXPECT_EQ(OccurrencesOpenOn(s, absl::CivilDay(2026, 11, 4), zone).size(), 1u);
  EXPECT_EQ(OccurrencesOpenOn(s, absl::CivilDay(2026, 11, 5), zone).size(), 0u);
  const auto open = OccurrencesOpenOn(s, absl::CivilDay(2026, 11, 3), zone);
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].due_on, absl::CivilDay(2026, 11, 2));
}

TEST(Schedule, CheckInCompletesTheLatestStartedOccurrenceAndLatenessIsMeasured) {
  const absl::TimeZone zone = LosAngeles();
  const Schedule s = Weekly({1}, absl::CivilDay(2026, 11, 2));
  // Recorded on Wednesday for Monday's occurrence: late by a day and 10 hours.
  const absl::Time wednesday_10am = absl::FromCivil(absl::CivilSecond(2026, 11, 4, 10, 0, 0), zone);
  const auto o = LatestOccurrenceStartedBy(s, wednesday_10am, zone);
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->due_on, absl::CivilDay(2026, 11, 2));
  EXPECT_EQ(LateBy(o->window_end, wednesday_10am), absl::Hours(34));
  EXPECT_EQ(LateBy(o->window_end, o->window_start + absl::Hours(1)), absl::ZeroDuration());
  // Before the first occurrence there is nothing to complete.
  EXPECT_FALSE(LatestOccurrenceStartedBy(
                   s, absl::FromCivil(absl::CivilSecond(2026, 11, 1, 12, 0, 0), zone), zone)
                   .has_value());
}

TEST(Schedule, ValidationNamesEachBadPart) {
  Schedule s = Weekly({1, 1, 9}, absl::CivilDay(2026, 11, 2), 15);
  s.ends_on = absl::CivilDay(2026, 11, 1);
  const auto violations = ValidateSchedule(s, "schedule");
  ASSERT_EQ(violations.size(), 4u);
  EXPECT_EQ(violations[0].field, "schedule.weekly.weekdays[1]");
  EXPECT_EQ(violations[1].field, "schedule.weekly.weekdays[2]");
  EXPECT_EQ(violations[2].field, "schedule.window_days");
  EXPECT_EQ(violations[3].field, "ends_on");
  EXPECT_EQ(ValidateSchedule(EveryN(0, absl::CivilDay(2026, 1, 1)), "schedule")[0].field,
            "schedule.every_n_days.interval_days");
  EXPECT_FALSE(LoadZone("Mars/Olympus").ok());
}

}  // namespace
}  // namespace peerpath::checkin
