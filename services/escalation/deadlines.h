#pragma once

// Deadline maths of the escalation service: business hours in the agency's time zone, business
// days, and the acknowledgement and resolution deadlines of a routing rule. Pure functions; the
// time is always passed in, so weekends, holidays and DST changes can be tested.

#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"

namespace peerpath::escalation {

// One weekly window of business hours, local time of the agency.
struct BusinessWindow {
  int weekday = 1;       // ISO 8601: 1 = Monday ... 7 = Sunday.
  int start_minute = 0;  // Minutes after local midnight, 0..1439.
  int end_minute = 0;    // After start_minute; 1440 is the end of the day.
};

// The agency's business calendar.
struct BusinessCalendar {
  absl::TimeZone zone;
  std::vector<BusinessWindow> windows;
  std::set<absl::CivilDay> holidays;
};

// A time limit: elapsed time, or business days (only on business-hours-only rules).
struct TimeLimit {
  absl::Duration duration = absl::ZeroDuration();
  int business_days = 0;  // > 0: the limit is in business days and `duration` is unused.
};

// "HH:MM" (00:00..24:00) → minutes after midnight; INVALID_ARGUMENT otherwise.
absl::StatusOr<int> ParseLocalTime(const std::string& text);
std::string FormatLocalTime(int minutes);

// Monday to Friday 09:00-17:00 in `zone`, no holidays.
BusinessCalendar DefaultCalendar(absl::TimeZone zone);

// ISO weekday (1 = Monday) of a civil day.
int IsoWeekday(absl::CivilDay day);

// True when `t` falls inside business hours (a holiday has none).
bool InBusinessHours(const BusinessCalendar& calendar, absl::Time t);

// `t` itself when inside business hours, else the next start of business hours;
// absl::InfiniteFuture() when the calendar has no business hours at all.
absl::Time NextBusinessStart(const BusinessCalendar& calendar, absl::Time t);

// The time at which `elapsed` of business time has passed since `start` (time outside business
// hours does not count): 4 hours from Friday 16:00 with 09:00-17:00 hours is Monday 12:00.
absl::Time AddBusinessTime(const BusinessCalendar& calendar, absl::Time start,
                           absl::Duration elapsed);

// The same local business time on the `days`-th following business day (holidays and days
// without hours are skipped); a start out of hours counts from the next start of business hours.
// Friday 15:00 + 3 business days is Wednesday 15:00.
absl::Time AddBusinessDays(const BusinessCalendar& calendar, absl::Time start, int days);

// When a limit that starts at `start` ends. With `business_hours_only`, only business time counts
// and business days are allowed; otherwise the limit is elapsed time.
absl::Time DeadlineAfter(const TimeLimit& limit, absl::Time start, bool business_hours_only,
                         const BusinessCalendar& calendar);

// When a target is notified and its clock starts: at once, or for a business-hours-only rule the
// next start of business hours.
absl::Time NotifyAt(bool business_hours_only, const BusinessCalendar& calendar, absl::Time now);

}  // namespace peerpath::escalation
