#pragma once

// Reading the read models for a report, and the service outcomes county systems report.

#include <functional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/evaluation/measures.h"

namespace peerpath::evaluation {

// The rows of the check-in rollups a report reads (contact days around the period's index events,
// wellbeing per enrollment and month): the larger half of its reading, which BuildProgramReport
// fetches on a second connection while LoadFacts reads the rest.
struct RollupRows {
  pqxx::result contact_days;
  pqxx::result wellbeing;
};
RollupRows FetchRollupRows(pqxx::work& tx, absl::Time period_start, absl::Time period_end);

// Loads what a report of the agency (the transaction's) for [period_start, period_end) reads:
// rows per enrollment, appointment, match, concern, outcome and per person-day or month, never
// per check-in event. `rollups_elsewhere`, when set, is asked for the rollup rows after the rest
// is read; when it is unset or fails they are fetched in `tx`.
absl::StatusOr<ReportFacts> LoadFacts(
    pqxx::work& tx, absl::Time period_start, absl::Time period_end, absl::Time now,
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
