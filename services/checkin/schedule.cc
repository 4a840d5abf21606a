#include "services/checkin/schedule.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"

namespace peerpath::checkin {

absl::StatusOr<absl::TimeZone> LoadZone(const std::string& name, const std::string& field) {
  absl::TimeZone zone;
  if (name.empty() || !absl::LoadTimeZone(name, &zone)) {
    return InvalidArgument("unknown time zone",
                           {{field, "must be an IANA time zone, e.g. America/Los_Angeles"}});
  }
  return zone;
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
  return 0;
}

std::vector<FieldViolation> ValidateSchedule(const Schedule& schedule, const std::string& prefix) {
  std::vector<FieldViolation> violations;
  if (schedule.kind == Schedule::Kind::kWeekly) {
    if (schedule.weekdays.empty()) {
      violations.push_back({prefix + ".weekly.weekdays", "at least one weekday"});
    }
    std::set<int> seen;
    for (size_t i = 0; i < schedule.weekdays.size(); ++i) {
      const int d = schedule.weekdays[i];
      if (d < 1 || d > 7) {
        violations.push_back({absl::StrCat(prefix, ".weekly.weekdays[", i, "]"),
                              "must be a weekday (Monday to Sunday)"});
      } else if (!seen.insert(d).second) {
        violations.push_back(
            {absl::StrCat(prefix, ".weekly.weekdays[", i, "]"), "weekday given twice"});
      }
    }
  } else if (schedule.interval_days < 1 || schedule.interval_days > 366) {
    violations.push_back({prefix + ".every_n_days.interval_days", "must be 1 to 366"});
  }
  if (schedule.window_days < 1 || schedule.window_days > 14) {
    violations.push_back({prefix + ".window_days", "must be 0 (one day) or 1 to 14"});
  }
  if (schedule.ends_on && *schedule.ends_on < schedule.starts_on) {
    violations.push_back({"ends_on", "must be on or after starts_on"});
  }
  return violations;
}

bool IsDueOn(const Schedule& schedule, absl::CivilDay day) {
  if (day < schedule.starts_on) return false;
  if (schedule.ends_on && day > *schedule.ends_on) return false;
  if (schedule.kind == Schedule::Kind::kWeekly) {
    return std::find(schedule.weekdays.begin(), schedule.weekdays.end(), IsoWeekday(day)) !=
           schedule.weekdays.end();
  }
  return schedule.interval_days > 0 && (day - schedule.starts_on) % schedule.interval_days == 0;
}

Occurrence OccurrenceOn(const Schedule& schedule, absl::CivilDay day, const absl::TimeZone& zone) {
  // FromCivil picks the first valid instant for a midnight skipped by a DST change.
  return Occurrence{
      .due_on = day,
      .window_start = absl::FromCivil(absl::CivilSecond(day), zone),
      .window_end =
          absl::FromCivil(absl::CivilSecond(day + std::max(1, schedule.window_days)), zone),
  };
}

std::vector<Occurrence> OccurrencesOpenOn(const Schedule& schedule, absl::CivilDay day,
                                          const absl::TimeZone& zone) {
  std::vector<Occurrence> out;
  const int window = std::max(1, schedule.window_days);
  // A window of W days opened on day - k (k < W) is still open at the start of `day`.
  for (int k = window - 1; k >= 0; --k) {
    const absl::CivilDay due = day - k;
    if (IsDueOn(schedule, due)) out.push_back(OccurrenceOn(schedule, due, zone));
  }
  std::sort(out.begin(), out.end(),
            [](const Occurrence& a, const Occurrence& b) { return a.window_end < b.window_end; });
  return out;
}

std::optional<Occurrence> LatestOccurrenceStartedBy(const Schedule& schedule, absl::Time t,
                                                    const absl::TimeZone& zone) {
  absl::CivilDay day = absl::ToCivilDay(t, zone);
  if (schedule.ends_on && day > *schedule.ends_on) day = *schedule.ends_on;
  // At most one full period back (weekly: 7 days; every N: N days).
  const int span = schedule.kind == Schedule::Kind::kWeekly ? 7 : schedule.interval_days;
  for (int k = 0; k <= span && day - k >= schedule.starts_on; ++k) {
    if (IsDueOn(schedule, day - k)) return OccurrenceOn(schedule, day - k, zone);
  }
  return std::nullopt;
}

absl::Duration LateBy(absl::Time window_end, absl::Time recorded_at) {
  return recorded_at > window_end ? recorded_at - window_end : absl::ZeroDuration();
}

}  // namespace peerpath::checkin
