#include "services/escalation/deadlines.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace peerpath::escalation {
namespace {

// Far enough for any sane calendar (30 business days with long holiday runs), bounded so a
// calendar without hours cannot loop for ever.
constexpr int kMaxDaysScanned = 800;

struct Interval {
  absl::Time start;
  absl::Time end;
};

absl::Time LocalToAbsolute(const absl::TimeZone& zone, absl::CivilSecond civil) {
  // In a DST gap (the clock jumps forward) the skipped local time maps to the instant of the
  // transition; in an overlap the first occurrence is used.
  const absl::TimeZone::TimeInfo info = zone.At(civil);
  if (info.kind == absl::TimeZone::TimeInfo::SKIPPED) return info.trans;
  return info.pre;
}

// The business intervals of one local day, in order.
std::vector<Interval> IntervalsOn(const BusinessCalendar& calendar, absl::CivilDay day) {
  std::vector<Interval> intervals;
  if (calendar.holidays.contains(day)) return intervals;
  const int weekday = IsoWeekday(day);
  for (const BusinessWindow& w : calendar.windows) {
    if (w.weekday != weekday) continue;
    const absl::CivilSecond midnight(day);
    intervals.push_back({LocalToAbsolute(calendar.zone, midnight + w.start_minute * 60),
                         LocalToAbsolute(calendar.zone, midnight + w.end_minute * 60)});
  }
  std::sort(intervals.begin(), intervals.end(),
            [](const Interval& a, const Interval& b) { return a.start < b.start; });
  return intervals;
}

bool IsBusinessDay(const BusinessCalendar& calendar, absl::CivilDay day) {
  return !IntervalsOn(calendar, day).empty();
}

}  // namespace

absl::StatusOr<int> ParseLocalTime(const std::string& text) {
  int hours = 0;
  int minutes = 0;
  if (text.size() != 5 || text[2] != ':' || !absl::SimpleAtoi(text.substr(0, 2), &hours) ||
      !absl::SimpleAtoi(text.substr(3, 2), &minutes) || hours < 0 || hours > 24 || minutes < 0 ||
      minutes > 59 || (hours == 24 && minutes != 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("'%s' is not a local time HH:MM between 00:00 and 24:00", text));
  }
  return hours * 60 + minutes;
}

std::string FormatLocalTime(int minutes) {
  return absl::StrFormat("%02d:%02d", minutes / 60, minutes % 60);
}

BusinessCalendar DefaultCalendar(absl::TimeZone zone) {
  BusinessCalendar calendar;
  calendar.zone = zone;
  for (int day = 1; day <= 5; ++day) calendar.windows.push_back({day, 9 * 60, 17 * 60});
  return calendar;
}

int IsoWeekday(absl::CivilDay day) {
  switch (absl::GetWeekday(day)) {
    case absl::Weekday::monday:
      return 1;
    case absl::Weekday::tuesday:
      return 2;
    case absl::Weekday::wednesday:
      return 3;
    case absl::Weekday::thursday:
      return 4;
    case absl::Weekday::friday:
      return 5;
    case absl::Weekday::saturday:
      return 6;
    case absl::Weekday::sunday:
      return 7;
  }
  return 1;
}

bool InBusinessHours(const BusinessCalendar& calendar, absl::Time t) {
  const absl::CivilDay day = absl::ToCivilDay(t, calendar.zone);
  for (const Interval& i : IntervalsOn(calendar, day)) {
    if (t >= i.start && t < i.end) return true;
  }
  return false;
}

absl::Time NextBusinessStart(const BusinessCalendar& calendar, absl::Time t) {
  // Start a day early: a window ending at local midnight may belong to the previous day.
  absl::CivilDay day = absl::ToCivilDay(t, calendar.zone) - 1;
  for (int scanned = 0; scanned < kMaxDaysScanned; ++scanned, ++day) {
    for (const Interval& i : IntervalsOn(calendar, day)) {
      if (t < i.end) return std::max(t, i.start);
    }
  }
  return absl::InfiniteFuture();
}

absl::Time AddBusinessTime(const BusinessCalendar& calendar, absl::Time start,
                           absl::Duration elapsed) {
  absl::Duration remaining = elapsed;
  absl::CivilDay day = absl::ToCivilDay(start, calendar.zone) - 1;
  for (int scanned = 0; scanned < kMaxDaysScanned; ++scanned, ++day) {
    for (const Interval& i : IntervalsOn(calendar, day)) {
      const absl::Time from = std::max(start, i.start);
      if (from >= i.end) continue;
      const absl::Duration available = i.end - from;
      if (remaining <= available) return from + remaining;
      remaining -= available;
    }
  }
  return absl::InfiniteFuture();
}

absl::Time AddBusinessDays(const BusinessCalendar& calendar, absl::Time start, int days) {
  const absl::Time from = NextBusinessStart(calendar, start);
  if (from == absl::InfiniteFuture()) return from;
  const absl::CivilSecond local = absl::ToCivilSecond(from, calendar.zone);
  const absl::CivilDay start_day(local);
  const absl::Duration time_of_day = absl::Seconds(local - absl::CivilSecond(start_day));
  absl::CivilDay day = start_day;
  int counted = 0;
  for (int scanned = 0; counted < days && scanned < kMaxDaysScanned; ++scanned) {
    ++day;
    if (IsBusinessDay(calendar, day)) ++counted;
  }
  if (counted < days) return absl::InfiniteFuture();
  const absl::Time end =
      LocalToAbsolute(calendar.zone, absl::CivilSecond(day) + absl::ToInt64Seconds(time_of_day));
  // That day may have shorter hours: then the limit ends when its business time next resumes.
  return NextBusinessStart(calendar, end);
}

absl::Time DeadlineAfter(const TimeLimit& limit, absl::Time start, bool business_hours_only,
                         const BusinessCalendar& calendar) {
  if (limit.business_days > 0) return AddBusinessDays(calendar, start, limit.business_days);
  if (business_hours_only) return AddBusinessTime(calendar, start, limit.duration);
  return start + limit.duration;
}

absl::Time NotifyAt(bool business_hours_only, const BusinessCalendar& calendar, absl::Time now) {
  return business_hours_only ? NextBusinessStart(calendar, now) : now;
}

}  // namespace peerpath::escalation
