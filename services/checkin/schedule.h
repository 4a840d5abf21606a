#pragma once
// Check-in schedules as plain functions: which local days a schedule is due on, and the UTC window
// of each occurrence in the enrollment's time zone. Windows run from local midnight of the due
// day for whole local days, so a window spanning a DST change lasts 23 or 25 hours per day.
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "common/status.h"

namespace peerpath::checkin {

struct Schedule {
  enum class Kind { kWeekly, kEveryNDays };
  Kind kind = Kind::kWeekly;
  std::vector<int> weekdays;  // ISO 8601: Monday 1 … Sunday 7 (kWeekly).
  int interval_days = 0;      // N (kEveryNDays), counted from starts_on.
  int window_days = 1;        // 1 to 14.
  absl::CivilDay starts_on;
  std::optional<absl::CivilDay> ends_on;  // Inclusive; none: open-ended.
};

struct Occurrence {
  absl::CivilDay due_on;
  absl::Time window_start;  // Local midnight of due_on.
  absl::Time window_end;    // Local midnight window_days later.
};

// Loads an IANA zone ("America/Los_Angeles"); INVALID_ARGUMENT naming `field` when unknown.
absl::StatusOr<absl::TimeZone> LoadZone(const std::string& name,
                                        const std::string& field = "time_zone");

// ISO weekday of a day: Monday 1 … Sunday 7.
int IsoWeekday(absl::CivilDay day);

// One violation per bad part of a schedule (weekdays 1 to 7 and not repeated, N 1 to 366, window
// 1 to 14 days, ends_on not before starts_on); `prefix` is the request field ("schedule").
std::vector<FieldViolation> ValidateSchedule(const Schedule& schedule, const std::string& prefix);

// True when the schedule has an occurrence due on `day`.
bool IsDueOn(const Schedule& schedule, absl::CivilDay day);

// The occurrence due on `day` (the caller checked IsDueOn).
Occurrence OccurrenceOn(const Schedule& schedule, absl::CivilDay day, const absl::TimeZone& zone);

// Occurrences due on `day`, plus earlier ones whose window is still open at the start of `day`
// (multi-day windows), by window end.
std::vector<Occurrence> OccurrencesOpenOn(const Schedule& schedule, absl::CivilDay day,
                                          const absl::TimeZone& zone);

// The latest occurrence whose window started at or before `t` and that is not after the
// schedule's end: the one a check-in at `t` completes (possibly late, when `t` is past its
// window). nullopt when none started yet.
std::optional<Occurrence> LatestOccurrenceStartedBy(const Schedule& schedule, absl::Time t,
                                                    const absl::TimeZone& zone);

// How late a check-in recorded at `recorded_at` is for an occurrence window ending at
// `window_end`; zero when on time.
absl::Duration LateBy(absl::Time window_end, absl::Time recorded_at);

}  // namespace peerpath::checkin
