#pragma once

// The measures of evaluation.proto computed from the read models' facts for one agency and
// period: pure functions over plain structs (report_store.cc loads them), so a test can compute a
// report by hand from the same facts. Times are instants; local dates are dates in the agency's
// time zone (ReportFacts::zone).

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "peerpath/evaluation/v1/evaluation.pb.h"

namespace peerpath::evaluation {

// Version of the definitions (ListMeasureDefinitionsResponse.definitions_version).
inline constexpr int kDefinitionsVersion = 1;

struct MeasureInfo {
  v1::Measure measure;
  std::string id;    // "crisis_recontact_30d"
  std::string name;  // For people.
  v1::MeasureUnit unit;
  v1::ValueKind value_kind;
  std::vector<std::vector<v1::Dimension>> breakdowns;  // Report order; {} is the total.
  // Empty when computable; otherwise why not (what the producers do not emit yet).
  std::string unavailable_reason;
};

// Every measure, in Measure order.
const std::vector<MeasureInfo>& Measures();
// The definition as ListMeasureDefinitions returns it (text from the proto's comments).
v1::MeasureDefinition DefinitionOf(const MeasureInfo& info);

// ---- Facts (one agency) ----

// The participants, supporters, enrollments and match requests of one report's facts are
// interned: LoadFacts gives each distinct identifier a small number, dense from 0 (reports count
// people and never show who they are, so the text is not needed after loading). kNoId: none.
using Id = int32_t;
inline constexpr Id kNoId = -1;

struct EnrollmentFact {
  Id enrollment_id = kNoId;
  Id participant_id = kNoId;
  std::string pathway_key;
  std::string program_id;  // Empty when none.
  absl::Time started_at;
  std::optional<absl::Time> ended_at;
};

enum class AppointmentOutcome { kAttended, kMissed, kOther };

struct AppointmentFact {
  Id enrollment_id = kNoId;
  Id participant_id = kNoId;
  std::string pathway_key;
  std::string program_id;  // The enrollment's; empty when none.
  bool first_appointment = false;
  AppointmentOutcome outcome = AppointmentOutcome::kOther;
  absl::Time scheduled_at;
  bool peer_contact_before = false;
};

struct StageChangeFact {
  Id enrollment_id = kNoId;
  Id participant_id = kNoId;
  std::string pathway_key;
  std::string program_id;          // The enrollment's; empty when none.
  bool lost_to_follow_up = false;  // Else: to MISSED_CONTACT after failed attempts.
  absl::Time changed_at;
};

struct OutcomeFact {
  Id participant_id = kNoId;
  v1::ServiceOutcomeKind kind = v1::SERVICE_OUTCOME_KIND_UNSPECIFIED;
  v1::DischargeSetting setting = v1::DISCHARGE_SETTING_UNSPECIFIED;
  absl::Time occurred_at;
};

struct MatchFact {
  Id supporter_id = kNoId;
  Id participant_id = kNoId;
  Id match_request_id = kNoId;
  absl::Time started_at;
  std::optional<absl::Time> ended_at;
  Id rematch_request_id = kNoId;  // Set when ended by Rematch.
};

struct RatingFact {
  Id participant_id = kNoId;
  Id supporter_id = kNoId;
  bool participant_side = true;
  int rating = 0;
  absl::Time recorded_at;
};

struct ConcernFact {
  Id participant_id = kNoId;
  Id enrollment_id = kNoId;  // kNoId when not tied to one.
  std::string pathway_key;   // Of that enrollment; empty when untied or not known.
  std::string program_id;    // Of that enrollment; empty when none.
  int category = 0;          // peerpath.common.v1.ConcernCategory
  int severity = 0;          // peerpath.common.v1.ConcernSeverity
  absl::Time opened_at;
  std::optional<absl::Time> acknowledged_at;
  bool breached = false;
};

// A participant's rating of their peer support (check-in FeedbackRecordedEvent).
struct FeedbackFact {
  Id participant_id = kNoId;
  std::string pathway_key;  // The enrollment's.
  std::string program_id;   // The enrollment's; empty when none.
  int rating = 0;
  absl::Time given_at;
};

// Of an enrollment with scores in the period (its participant and pathway: the enrollment's).
struct WellbeingFact {
  Id enrollment_id = kNoId;
  int64_t scores_in_period = 0;
  bool first_before_period = false;  // The first score ever was recorded before the period.
  int first_score = 0;
  int last_score = 0;  // Latest in the period.
};

// Everything a report of one agency and period reads (report_store.cc: LoadFacts).
struct ReportFacts {
  absl::Time period_start;                    // Local midnight of the first day.
  absl::Time period_end;                      // Local midnight after the last day.
  absl::TimeZone zone = absl::UTCTimeZone();  // The agency's: local dates are its dates.
  absl::Time now;                             // When the report is computed.
  std::vector<EnrollmentFact> enrollments;    // Started before period_end, not ended before start.
  std::vector<AppointmentFact> appointments;
  std::vector<StageChangeFact> stage_changes;
  Id ids = 0;  // How many identifiers were interned (every Id of the facts is below it).
  absl::flat_hash_map<Id, std::vector<absl::Time>> reconnections;  // By enrollment.
  std::vector<OutcomeFact> outcomes;  // Of the period, 31 days before and 91 days after.
  std::vector<MatchFact> matches;
  std::vector<RatingFact> ratings;                            // Recorded in the period.
  std::vector<ConcernFact> concerns;                          // Opened in the period.
  std::vector<std::pair<Id, absl::Time>> emergency_accesses;  // In the period.
  absl::flat_hash_map<Id, int64_t> supporter_contacts;        // In the period.
  // (participant, local day number since 1970-01-01): for each index event of the period, the first
  // contact day on or after its day and after it (all FollowUpBetween needs).
  std::set<std::pair<Id, int64_t>> contact_days;
  std::vector<WellbeingFact> wellbeing;
  std::vector<FeedbackFact> feedback;  // Given in the period.
};

// A computed cell, before suppression.
struct ComputedCell {
  v1::Measure measure = v1::MEASURE_UNSPECIFIED;
  int breakdown = 0;  // Index into MeasureInfo::breakdowns.
  std::vector<v1::DimensionValue> dimensions;
  v1::ValueKind kind = v1::VALUE_KIND_UNSPECIFIED;
  bool unavailable = false;
  int64_t count = 0;
  int64_t numerator = 0;
  int64_t denominator = 0;
  std::vector<double> numbers;         // NUMERIC_SUMMARY values.
  std::vector<int64_t> micros;         // DURATION_SUMMARY values.
  int64_t people = 0;                  // Distinct people behind the cell.
  std::vector<int64_t> people_groups;  // Every group whose size decides suppression.
  std::string shared_key;              // Cells showing the same group of people.
};

// A report scope: the enrollments of a program and/or pathway (evaluation.proto, "Scope").
inline constexpr char kWithoutProgram[] = "\n";  // Never a program id (common/identifiers.h).
struct ScopeKey {
  std::string program;  // Empty: every program; kWithoutProgram: enrollments without a program.
  std::string pathway;  // Empty: every pathway.
  bool operator==(const ScopeKey&) const = default;
};

// Every cell of each scope ({} is the agency), in report order; the facts' per-person lookups are
// built once for all of them.
std::vector<std::vector<ComputedCell>> ComputeScopes(const ReportFacts& facts,
                                                     const std::vector<ScopeKey>& scopes);

// Fills a ReportCell from a computed one (suppressed: no value).
void ToReportCell(const ComputedCell& cell, bool suppressed, v1::ReportCell& out);

// Nearest-rank percentile of sorted values: the value at rank ceil(n * percent / 100).
template <typename T>
T NearestRank(const std::vector<T>& sorted, int percent) {
  const size_t n = sorted.size();
  size_t rank = (n * static_cast<size_t>(percent) + 99) / 100;
  if (rank == 0) rank = 1;
  return sorted[rank - 1];
}

}  // namespace peerpath::evaluation
