#pragma once

// Reading the read models for a report, and the service outcomes county systems report.

#include <functional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/evaluation/measures.h"

namespace peerpath::evaluation {

// A report's period: [start, end) are local midnights in the agency's time zone.
struct ReportWindow {
  absl::Time start;
  absl::Time end;
  std::string zone_name;  // IANA name, as stored.
  absl::TimeZone zone;
};

// The agency's (the transaction's) time zone as the check-in log last named it; "UTC" until then.
std::string AgencyTimeZone(pqxx::work& tx);

// The rows of the check-in rollups a report reads (contact days around the period's index events,
// wellbeing per enrollment and month): the larger half of its reading, which BuildProgramReport
// fetches on other connections (one part each when the pool allows) while LoadFacts reads the
// rest.
struct RollupRows {
  pqxx::result contact_days;
  pqxx::result wellbeing;
};
enum class RollupParts { kBoth, kContactDays, kWellbeing };
RollupRows FetchRollupRows(pqxx::work& tx, const ReportWindow& window,
                           RollupParts parts = RollupParts::kBoth);

// Loads what a report of the agency (the transaction's) for the window reads:
// rows per enrollment, appointment, match, concern, outcome and per person-day or month, never
// per check-in event. `rollups_elsewhere`, when set, is asked for the rollup rows after the rest
// is read; when it is unset or fails they are fetched in `tx`.
absl::StatusOr<ReportFacts> LoadFacts(
    pqxx::work& tx, const ReportWindow& window, absl::Time now,
    const std::function<absl::StatusOr<RollupRows>()>& rollups_elsewhere = {});

// The agency's pathway keys and program ids ever carried by an enrollment, sorted.
std::vector<std::string> KnownPathways(pqxx::work& tx);
std::vector<std::string> KnownPrograms(pqxx::work& tx);
// Every (program, pathway) pair the agency's enrollments have, kWithoutProgram for enrollments
// without a program.
std::vector<ScopeKey> ProgramPathwayScopes(pqxx::work& tx);

// ServiceOutcomeKind as stored (migrations/0001) and back.
std::string OutcomeKindName(v1::ServiceOutcomeKind kind);
v1::ServiceOutcomeKind OutcomeKindFromName(const std::string& name);

}  // namespace peerpath::evaluation
