#pragma once
// The matching model as pure functions: eligibility (hard constraints, status, training,
// acuity-weighted capacity), weighted soft preferences with one human-readable explanation line
// per criterion, continuity, candidate ranking and the AssignBatch objective. No gRPC, no SQL,
// time injected (`today` in the agency's time zone). The proto messages are used as plain data.
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/civil_time.h"
#include "common/identifiers.h"
#include "common/status.h"
#include "peerpath/matching/v1/matching.pb.h"

namespace peerpath::matching {

namespace v1 = ::peerpath::matching::v1;

// Default acuity units of a pathway: crisis_transition 3, early_engagement 2, step_down 2,
// structured_checkin 1, anything else 1.
int AcuityUnitsForPathway(absl::string_view pathway_key);

// AssignBatch urgency factor: routine 1, priority 2, urgent 4.
int UrgencyFactor(v1::Urgency urgency);

// The value AssignBatch maximises for one pair: (100 + score + 100 × continuity) × urgency factor.
double BatchValue(double score, bool continuity, v1::Urgency urgency);

// "es-MX" → "es" (lower case).
std::string PrimaryLanguage(absl::string_view tag);

// Training CERTIFIED and `training_expires_on` today or later.
bool TrainingCurrent(const v1::Supporter& supporter, absl::CivilDay today);

// Units the supporter has free (never negative).
int RemainingUnits(const v1::Supporter& supporter);

// Result of checking one supporter against one request.
struct Evaluation {
  // The first funnel step the supporter fails; nullopt when eligible.
  std::optional<v1::CandidateFilter> failed;
  // 0 to 100: 100 × Σ(weight × satisfaction) / Σ weights over the stated preferences.
  double score = 0;
  // The request's continuity-preferred supporter (eligible or not).
  bool continuity = false;
  // One line per criterion: hard constraints, soft preferences, continuity, capacity.
  std::vector<v1::CriterionExplanation> explanation;

  bool eligible() const { return !failed.has_value(); }
};

// Evaluates `supporter` for `request` (units: request.acuity_units(), resolved). Eligibility is
// checked in funnel order (ACTIVE with an account, training, language, meeting mode, region,
// gender, not excluded, capacity).
Evaluation Evaluate(const v1::Supporter& supporter, const v1::MatchRequest& request,
                    absl::CivilDay today);

// Eligibility only, without scores or explanation (fast): the first funnel step failed, or
// nullopt when eligible. Agrees with Evaluate(...).failed.
std::optional<v1::CandidateFilter> Screen(const v1::Supporter& supporter,
                                          const v1::MatchRequest& request, absl::CivilDay today);

// Scores only (no eligibility): the weighted soft preferences with their explanation lines.
double ScorePreferences(const v1::Supporter& supporter, const v1::Preferences& preferences,
                        std::vector<v1::CriterionExplanation>* explanation);

// Why nobody from `roster` is eligible for `request`: the funnel up to the step that left none.
v1::NoCandidate ExplainNoCandidate(const std::vector<v1::Supporter>& roster,
                                   const v1::MatchRequest& request, absl::CivilDay today);

struct RankedCandidate {
  size_t roster_index = 0;
  Evaluation evaluation;
  double share_in_use = 0;  // Units in use / capacity (1 when no capacity): a tie-break.
};

// Eligible candidates, best first: the eligible continuity-preferred supporter first, then by
// score descending, then lower share of capacity in use, then supporter_id. Only the first
// `explain` are in that order and carry their explanation lines (all carry score and
// continuity); the rest follow in no particular order.
std::vector<RankedCandidate> RankCandidates(const std::vector<v1::Supporter>& roster,
                                            const v1::MatchRequest& request, absl::CivilDay today,
                                            size_t explain = SIZE_MAX);

// The same ranking over `indexes` of a shared, read-only roster whose units in use are given
// apart (by supporter id; absent: 0) instead of in the protos, which must then carry 0 (Screen's
// capacity step is taken with `units_in_use`). Only the first `head` are in order, and none is
// explained: callers explain the ones they show (Evaluate on a copy with its units set).
std::vector<RankedCandidate> RankCandidates(
    const std::vector<v1::Supporter>& roster, const std::vector<int>& indexes,
    const std::unordered_map<std::string, int>& units_in_use, const v1::MatchRequest& request,
    absl::CivilDay today, size_t head);

// The roster indexed for batch candidate generation, so that a request is screened against the
// supporters who can meet its most selective hard constraint instead of the whole roster: the
// ACTIVE supporters with an account and current training, by region and by primary language.
class CandidateIndex {
 public:
  CandidateIndex(const std::vector<v1::Supporter>& roster, absl::CivilDay today);
  // Roster indexes, ascending: a superset of the supporters eligible for `request` (those in its
  // required region, else speaking one of its required languages, else all available). Callers
  // still Screen each one.
  std::vector<int> Candidates(const v1::MatchRequest& request) const;

 private:
  std::vector<int> available_;
  std::unordered_map<std::string, std::vector<int>> by_region_;
  std::unordered_map<std::string, std::vector<int>> by_language_;
};

// Every problem of a profile for CreateSupporter (field names under `prefix`, e.g. "supporter.").
// With `mask` non-empty, only those fields are checked (UpdateSupporter).
std::vector<FieldViolation> ValidateSupporter(const v1::Supporter& supporter,
                                              const std::vector<std::string>& mask = {},
                                              absl::string_view prefix = "supporter.");

// Every problem of a match request's hard constraints, preferences and scalars.
std::vector<FieldViolation> ValidateMatchRequest(const v1::MatchRequest& request,
                                                 absl::string_view prefix = "match_request.");
std::vector<FieldViolation> ValidateHardConstraints(const v1::HardConstraints& hard,
                                                    absl::string_view prefix);
std::vector<FieldViolation> ValidatePreferences(const v1::Preferences& preferences,
                                                absl::string_view prefix);

}  // namespace peerpath::matching
