#include "services/matching/model.h"

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <set>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace peerpath::matching {
namespace {

using v1::CandidateFilter;
using v1::CriterionExplanation;
using v1::CriterionOutcome;
using v1::MatchCriterion;

bool IsKey(absl::string_view key, size_t min_len, size_t max_len) {
  if (key.size() < min_len || key.size() > max_len) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool IsLanguageTag(absl::string_view tag) {
  if (tag.size() < 2 || tag.size() > 35) return false;
  return std::all_of(tag.begin(), tag.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-';
  });
}

std::string Readable(absl::string_view key) { return absl::StrReplaceAll(key, {{"_", " "}}); }

const char* ModeName(int mode) {
  switch (mode) {
    case v1::MEETING_MODE_IN_PERSON:
      return "in person";
    case v1::MEETING_MODE_PHONE:
      return "phone";
    case v1::MEETING_MODE_VIDEO:
      return "video";
    default:
      return "unknown";
  }
}

const char* AgeBandName(int band) {
  switch (band) {
    case v1::AGE_BAND_18_24:
      return "18-24";
    case v1::AGE_BAND_25_34:
      return "25-34";
    case v1::AGE_BAND_35_44:
      return "35-44";
    case v1::AGE_BAND_45_54:
      return "45-54";
    case v1::AGE_BAND_55_64:
      return "55-64";
    case v1::AGE_BAND_65_PLUS:
      return "65+";
    default:
      return "unknown";
  }
}

CriterionExplanation HardLine(MatchCriterion criterion, bool met, std::string text) {
  CriterionExplanation line;
  line.set_criterion(criterion);
  line.set_hard_constraint(true);
  line.set_outcome(met ? v1::CRITERION_OUTCOME_MET : v1::CRITERION_OUTCOME_NOT_MET);
  line.set_text(std::move(text));
  return line;
}

CriterionOutcome OutcomeOf(double satisfaction) {
  if (satisfaction >= 1) return v1::CRITERION_OUTCOME_MET;
  if (satisfaction <= 0) return v1::CRITERION_OUTCOME_NOT_MET;
  return v1::CRITERION_OUTCOME_PARTIAL;
}

int EffectiveWeight(int weight) { return weight == 0 ? 1 : weight; }

bool Overlaps30(const v1::AvailabilityWindow& a, const v1::AvailabilityWindow& b) {
  if (a.weekday() != b.weekday()) return false;
  return std::min(a.end_minute(), b.end_minute()) - std::max(a.start_minute(), b.start_minute()) >=
         30;
}

bool SpeaksAny(const v1::Supporter& supporter,
               const google::protobuf::RepeatedPtrField<std::string>& wanted, std::string* which) {
  for (const std::string& want : wanted) {
    for (const std::string& spoken : supporter.languages()) {
      if (PrimaryLanguage(spoken) == PrimaryLanguage(want)) {
        *which = PrimaryLanguage(want);
        return true;
      }
    }
  }
  return false;
}

bool Contains(const google::protobuf::RepeatedPtrField<std::string>& values, const std::string& v) {
  return std::find(values.begin(), values.end(), v) != values.end();
}

// Checks the hard constraints in funnel order; appends one MET line per stated constraint.
std::optional<CandidateFilter> CheckHard(const v1::Supporter& s, const v1::MatchRequest& r,
                                         absl::CivilDay today,
                                         std::vector<CriterionExplanation>* lines) {
  if (s.status() != v1::SUPPORTER_STATUS_ACTIVE || s.subject().empty()) {
    return v1::CANDIDATE_FILTER_ACTIVE;
  }
  if (!TrainingCurrent(s, today)) return v1::CANDIDATE_FILTER_TRAINING_CURRENT;
  const v1::HardConstraints& hard = r.hard_constraints();
  if (!hard.languages().empty()) {
    std::string which;
    if (!SpeaksAny(s, hard.languages(), &which)) return v1::CANDIDATE_FILTER_LANGUAGE;
    if (lines != nullptr) {
      lines->push_back(
          HardLine(v1::MATCH_CRITERION_LANGUAGE, true, absl::StrCat("speaks ", which)));
    }
  }
  if (!hard.meeting_modes().empty()) {
    int which = 0;
    for (int want : hard.meeting_modes()) {
      for (int offered : s.meeting_modes()) {
        if (want == offered && which == 0) which = want;
      }
    }
    if (which == 0) return v1::CANDIDATE_FILTER_MEETING_MODE;
    if (lines != nullptr) {
      lines->push_back(HardLine(v1::MATCH_CRITERION_MEETING_MODE, true,
                                absl::StrCat("meets ", ModeName(which))));
    }
  }
  if (!hard.region().empty()) {
    if (s.region() != hard.region()) return v1::CANDIDATE_FILTER_REGION;
    if (lines != nullptr) {
      lines->push_back(HardLine(v1::MATCH_CRITERION_REGION, true,
                                absl::StrCat("in region ", Readable(hard.region()))));
    }
  }
  if (!hard.genders().empty()) {
    if (s.gender().empty() || !Contains(hard.genders(), s.gender())) {
      return v1::CANDIDATE_FILTER_GENDER;
    }
    if (lines != nullptr) {
      lines->push_back(HardLine(v1::MATCH_CRITERION_GENDER, true,
                                absl::StrCat("gender ", Readable(s.gender()))));
    }
  }
  if (Contains(hard.excluded_supporter_ids(), s.supporter_id())) {
    return v1::CANDIDATE_FILTER_NOT_EXCLUDED;
  }
  const int units = std::max(1, r.acuity_units());
  if (RemainingUnits(s) < units) return v1::CANDIDATE_FILTER_CAPACITY;
  return std::nullopt;
}

}  // namespace

int AcuityUnitsForPathway(absl::string_view pathway_key) {
  if (pathway_key == "crisis_transition") return 3;
  if (pathway_key == "early_engagement" || pathway_key == "step_down") return 2;
  return 1;
}

int UrgencyFactor(v1::Urgency urgency) {
  switch (urgency) {
    case v1::URGENCY_URGENT:
      return 4;
    case v1::URGENCY_PRIORITY:
      return 2;
    default:
      return 1;
  }
}

double BatchValue(double score, bool continuity, v1::Urgency urgency) {
  return (100.0 + score + (continuity ? 100.0 : 0.0)) * UrgencyFactor(urgency);
}

std::string PrimaryLanguage(absl::string_view tag) {
  const size_t dash = tag.find('-');
  return absl::AsciiStrToLower(tag.substr(0, dash));
}

bool TrainingCurrent(const v1::Supporter& supporter, absl::CivilDay today) {
  if (supporter.training_status() != v1::TRAINING_STATUS_CERTIFIED) return false;
  const auto& d = supporter.training_expires_on();
  if (d.year() == 0) return false;
  // Compared field by field (stored dates are valid): building a CivilDay per supporter showed
  // in ProposeMatches' profile over a 10,000-supporter roster.
  return std::make_tuple(d.year(), d.month(), d.day()) >=
         std::make_tuple(static_cast<int>(today.year()), today.month(), today.day());
}

int RemainingUnits(const v1::Supporter& supporter) {
  return std::max(0, supporter.capacity_units() - supporter.units_in_use());
}

double ScorePreferences(const v1::Supporter& s, const v1::Preferences& p,
                        std::vector<CriterionExplanation>* lines) {
  // The numbers first; a line's text (and its proto) only when an explanation is wanted: batch
  // assignment scores every eligible pair and explains only the pairs it assigns.
  struct Soft {
    MatchCriterion criterion;
    int weight;
    double satisfaction;
    bool unknown;
    std::string text;
  };
  const bool explain = lines != nullptr;
  Soft soft[5];
  int count = 0;
  auto add = [&](MatchCriterion criterion, int weight, double sat, bool unknown, std::string text) {
    soft[count++] = {criterion, weight, sat, unknown, std::move(text)};
  };
  if (p.has_lived_experience() && !p.lived_experience().areas().empty()) {
    const auto& pref = p.lived_experience();
    int shared = 0;
    std::vector<std::string> names;
    for (const std::string& area : pref.areas()) {
      if (!Contains(s.lived_experience_areas(), area)) continue;
      ++shared;
      if (explain) names.push_back(Readable(area));
    }
    const double sat = static_cast<double>(shared) / pref.areas_size();
    add(v1::MATCH_CRITERION_LIVED_EXPERIENCE, EffectiveWeight(pref.weight()), sat, false,
        !explain      ? std::string()
        : shared == 0 ? absl::StrCat("shares none of the wished lived experience (0 of ",
                                     pref.areas_size(), ")")
                      : absl::StrCat("shares lived experience: ", absl::StrJoin(names, ", "), " (",
                                     shared, " of ", pref.areas_size(), ")"));
  }
  if (p.has_age_band() && !p.age_band().age_bands().empty()) {
    const auto& pref = p.age_band();
    double sat = 0;
    const bool unknown = s.age_band() == v1::AGE_BAND_UNSPECIFIED;
    if (!unknown) {
      for (int band : pref.age_bands()) {
        if (band == s.age_band()) sat = 1;
        if (std::abs(band - s.age_band()) == 1) sat = std::max(sat, 0.5);
      }
    }
    add(v1::MATCH_CRITERION_AGE_BAND, EffectiveWeight(pref.weight()), sat, unknown,
        !explain ? std::string()
        : unknown
            ? "age band not stated"
            : absl::StrCat("age band ", AgeBandName(s.age_band()),
                           sat >= 1 ? " as wished"
                                    : (sat > 0 ? " next to the wished one" : " not as wished")));
  }
  if (p.has_gender() && !p.gender().genders().empty()) {
    const auto& pref = p.gender();
    const bool unknown = s.gender().empty();
    const double sat = !unknown && Contains(pref.genders(), s.gender()) ? 1 : 0;
    add(v1::MATCH_CRITERION_GENDER, EffectiveWeight(pref.weight()), sat, unknown,
        !explain  ? std::string()
        : unknown ? "gender not stated"
                  : absl::StrCat("gender ", Readable(s.gender()),
                                 sat > 0 ? " as wished" : " not as wished"));
  }
  if (p.has_availability() && !p.availability().windows().empty()) {
    const auto& pref = p.availability();
    int overlapping = 0;
    for (const auto& want : pref.windows()) {
      for (const auto& have : s.availability()) {
        if (Overlaps30(want, have)) {
          ++overlapping;
          break;
        }
      }
    }
    const double sat = static_cast<double>(overlapping) / pref.windows_size();
    add(v1::MATCH_CRITERION_AVAILABILITY, EffectiveWeight(pref.weight()), sat, false,
        !explain ? std::string()
                 : absl::StrCat(overlapping, " of ", pref.windows_size(),
                                " availability windows overlap"));
  }
  if (p.has_region() && !p.region().region().empty()) {
    const auto& pref = p.region();
    const double sat = s.region() == pref.region() ? 1 : 0;
    add(v1::MATCH_CRITERION_REGION, EffectiveWeight(pref.weight()), sat, s.region().empty(),
        !explain ? std::string()
        : sat > 0
            ? absl::StrCat("from the participant's region (", Readable(pref.region()), ")")
            : absl::StrCat("not from the participant's region (", Readable(pref.region()), ")"));
  }
  double total_weight = 0;
  for (int i = 0; i < count; ++i) total_weight += soft[i].weight;
  double score = 0;
  for (int i = 0; i < count; ++i) {
    const double points = 100.0 * soft[i].weight * soft[i].satisfaction / total_weight;
    score += points;
    if (!explain) continue;
    CriterionExplanation line;
    line.set_criterion(soft[i].criterion);
    line.set_weight(soft[i].weight);
    line.set_satisfaction(soft[i].satisfaction);
    line.set_outcome(soft[i].unknown ? v1::CRITERION_OUTCOME_UNKNOWN
                                     : OutcomeOf(soft[i].satisfaction));
    line.set_text(std::move(soft[i].text));
    line.set_points(points);
    lines->push_back(std::move(line));
  }
  return score;
}

std::optional<v1::CandidateFilter> Screen(const v1::Supporter& supporter,
                                          const v1::MatchRequest& request, absl::CivilDay today) {
  return CheckHard(supporter, request, today, nullptr);
}

Evaluation Evaluate(const v1::Supporter& s, const v1::MatchRequest& r, absl::CivilDay today) {
  Evaluation result;
  result.failed = CheckHard(s, r, today, &result.explanation);
  result.score = ScorePreferences(s, r.preferences(), &result.explanation);
  const auto& continuity = r.preferences().continuity();
  if (!continuity.supporter_id().empty()) {
    result.continuity = continuity.supporter_id() == s.supporter_id();
    CriterionExplanation line;
    line.set_criterion(v1::MATCH_CRITERION_CONTINUITY);
    line.set_outcome(result.continuity ? v1::CRITERION_OUTCOME_MET : v1::CRITERION_OUTCOME_NOT_MET);
    line.set_text(result.continuity ? "the participant's previous supporter (continuity)"
                                    : "not the participant's previous supporter");
    result.explanation.push_back(std::move(line));
  } else if (continuity.prefer_previous_supporter()) {
    CriterionExplanation line;
    line.set_criterion(v1::MATCH_CRITERION_CONTINUITY);
    line.set_outcome(v1::CRITERION_OUTCOME_UNKNOWN);
    line.set_text("no previous supporter");
    result.explanation.push_back(std::move(line));
  }
  CriterionExplanation capacity;
  capacity.set_criterion(v1::MATCH_CRITERION_CAPACITY);
  capacity.set_outcome(RemainingUnits(s) >= std::max(1, r.acuity_units())
                           ? v1::CRITERION_OUTCOME_MET
                           : v1::CRITERION_OUTCOME_NOT_MET);
  capacity.set_text(absl::StrCat(RemainingUnits(s), " of ", s.capacity_units(),
                                 " units free (needs ", std::max(1, r.acuity_units()), ")"));
  result.explanation.push_back(std::move(capacity));
  return result;
}

v1::NoCandidate ExplainNoCandidate(const std::vector<v1::Supporter>& roster,
                                   const v1::MatchRequest& request, absl::CivilDay today) {
  // How far each supporter got: the step it failed (or past the last step when eligible).
  std::vector<int> failed_at;
  for (const auto& s : roster) {
    auto failed = CheckHard(s, request, today, nullptr);
    failed_at.push_back(failed.has_value() ? static_cast<int>(*failed) : 100);
  }
  v1::NoCandidate result;
  static constexpr v1::CandidateFilter kSteps[] = {
      v1::CANDIDATE_FILTER_ACTIVE,       v1::CANDIDATE_FILTER_TRAINING_CURRENT,
      v1::CANDIDATE_FILTER_LANGUAGE,     v1::CANDIDATE_FILTER_MEETING_MODE,
      v1::CANDIDATE_FILTER_REGION,       v1::CANDIDATE_FILTER_GENDER,
      v1::CANDIDATE_FILTER_NOT_EXCLUDED, v1::CANDIDATE_FILTER_CAPACITY};
  static constexpr v1::UnmatchedReason kReasons[] = {
      v1::UNMATCHED_REASON_NO_ACTIVE_SUPPORTER,
      v1::UNMATCHED_REASON_NO_TRAINED_SUPPORTER,
      v1::UNMATCHED_REASON_NO_CANDIDATE_SPEAKS_LANGUAGE,
      v1::UNMATCHED_REASON_NO_CANDIDATE_MEETING_MODE,
      v1::UNMATCHED_REASON_NO_CANDIDATE_IN_REGION,
      v1::UNMATCHED_REASON_NO_CANDIDATE_GENDER,
      v1::UNMATCHED_REASON_ALL_CANDIDATES_EXCLUDED,
      v1::UNMATCHED_REASON_ALL_CANDIDATES_AT_CAPACITY};
  static constexpr const char* kTexts[] = {
      "no supporter is active with an account",
      "no active supporter has current training",
      "no candidate speaks the required language",
      "no candidate offers a required meeting mode",
      "no candidate is in the required region",
      "no candidate has a required gender",
      "every remaining candidate is excluded by the request",
      "every remaining candidate lacks capacity for the request's acuity units"};
  int before = static_cast<int>(roster.size());
  for (size_t i = 0; i < std::size(kSteps); ++i) {
    const int remaining = static_cast<int>(
        std::count_if(failed_at.begin(), failed_at.end(), [&](int f) { return f > kSteps[i]; }));
    auto* step = result.add_funnel();
    step->set_filter(kSteps[i]);
    step->set_remaining(remaining);
    if (remaining == 0) {
      result.set_reason(kReasons[i]);
      std::string text = kTexts[i];
      if (kSteps[i] == v1::CANDIDATE_FILTER_LANGUAGE) {
        text = absl::StrCat("no candidate speaks ",
                            absl::StrJoin(request.hard_constraints().languages(), " or "));
      }
      result.set_text(absl::StrCat(text, " (0 of ", before, " remaining supporters)"));
      return result;
    }
    before = remaining;
  }
  return result;
}

namespace {

// RankCandidates over `indexes` of `roster`, with each supporter's units in use from `in_use`;
// nothing explained yet, only the first `head` in order.
template <typename InUse>
std::vector<RankedCandidate> Rank(const std::vector<v1::Supporter>& roster,
                                  const std::vector<int>& indexes, InUse in_use,
                                  const v1::MatchRequest& request, absl::CivilDay today,
                                  size_t head) {
  std::vector<RankedCandidate> ranked;
  ranked.reserve(indexes.size());
  const std::string& previous = request.preferences().continuity().supporter_id();
  const int units = std::max(1, request.acuity_units());
  // Each candidate's share of capacity in use is looked up once (the sort compares it often).
  for (int index : indexes) {
    const size_t i = static_cast<size_t>(index);
    if (Screen(roster[i], request, today).has_value()) continue;
    const int used = in_use(i);
    if (roster[i].capacity_units() - used < units) continue;  // Screen's capacity step.
    RankedCandidate c{i, {}};
    c.evaluation.score = ScorePreferences(roster[i], request.preferences(), nullptr);
    c.evaluation.continuity = !previous.empty() && previous == roster[i].supporter_id();
    c.share_in_use = roster[i].capacity_units() == 0
                         ? 1.0
                         : static_cast<double>(used) / roster[i].capacity_units();
    ranked.push_back(std::move(c));
  }
  auto load = [](const RankedCandidate& c) { return c.share_in_use; };
  auto better = [&](const RankedCandidate& a, const RankedCandidate& b) {
    if (a.evaluation.continuity != b.evaluation.continuity) return a.evaluation.continuity;
    if (a.evaluation.score != b.evaluation.score) return a.evaluation.score > b.evaluation.score;
    if (load(a) != load(b)) return load(a) < load(b);
    return roster[a.roster_index].supporter_id() < roster[b.roster_index].supporter_id();
  };
  // Only the shown head needs its order (10,000 candidates, 5 shown: a partial sort).
  if (head < ranked.size()) {
    std::partial_sort(ranked.begin(), ranked.begin() + static_cast<std::ptrdiff_t>(head),
                      ranked.end(), better);
  } else {
    std::sort(ranked.begin(), ranked.end(), better);
  }
  return ranked;
}

}  // namespace

std::vector<RankedCandidate> RankCandidates(const std::vector<v1::Supporter>& roster,
                                            const v1::MatchRequest& request, absl::CivilDay today,
                                            size_t explain) {
  std::vector<int> all(roster.size());
  std::iota(all.begin(), all.end(), 0);
  std::vector<RankedCandidate> ranked = Rank(
      roster, all, [&](size_t i) { return roster[i].units_in_use(); }, request, today, explain);
  // Explained (the same score, with its lines) only as far as the caller shows them.
  for (size_t i = 0; i < ranked.size() && i < explain; ++i) {
    ranked[i].evaluation = Evaluate(roster[ranked[i].roster_index], request, today);
  }
  return ranked;
}

std::vector<RankedCandidate> RankCandidates(
    const std::vector<v1::Supporter>& roster, const std::vector<int>& indexes,
    const std::unordered_map<std::string, int>& units_in_use, const v1::MatchRequest& request,
    absl::CivilDay today, size_t head) {
  return Rank(
      roster, indexes,
      [&](size_t i) {
        auto it = units_in_use.find(roster[i].supporter_id());
        return it == units_in_use.end() ? 0 : it->second;
      },
      request, today, head);
}

CandidateIndex::CandidateIndex(const std::vector<v1::Supporter>& roster, absl::CivilDay today) {
  for (size_t i = 0; i < roster.size(); ++i) {
    const v1::Supporter& s = roster[i];
    if (s.status() != v1::SUPPORTER_STATUS_ACTIVE || s.subject().empty()) continue;
    if (!TrainingCurrent(s, today)) continue;
    const int index = static_cast<int>(i);
    available_.push_back(index);
    by_region_[s.region()].push_back(index);
    std::vector<std::string> languages;
    for (const std::string& tag : s.languages()) languages.push_back(PrimaryLanguage(tag));
    std::sort(languages.begin(), languages.end());
    languages.erase(std::unique(languages.begin(), languages.end()), languages.end());
    for (auto& language : languages) by_language_[std::move(language)].push_back(index);
  }
}

std::vector<int> CandidateIndex::Candidates(const v1::MatchRequest& request) const {
  static const std::vector<int>* const kNone = new std::vector<int>();
  const v1::HardConstraints& hard = request.hard_constraints();
  if (!hard.region().empty()) {
    const auto it = by_region_.find(hard.region());
    return it == by_region_.end() ? *kNone : it->second;
  }
  if (!hard.languages().empty()) {
    std::vector<int> out;
    for (const std::string& tag : hard.languages()) {
      const auto it = by_language_.find(PrimaryLanguage(tag));
      if (it != by_language_.end()) out.insert(out.end(), it->second.begin(), it->second.end());
    }
    if (hard.languages_size() > 1) {
      std::sort(out.begin(), out.end());
      out.erase(std::unique(out.begin(), out.end()), out.end());
    }
    return out;
  }
  return available_;
}

namespace {

void CheckWindows(const google::protobuf::RepeatedPtrField<v1::AvailabilityWindow>& windows,
                  const std::string& field, size_t max_count, bool no_same_day_overlap,
                  std::vector<FieldViolation>* out) {
  if (windows.size() > static_cast<int>(max_count)) {
    out->push_back({field, absl::StrCat("at most ", max_count, " windows")});
  }
  for (int i = 0; i < windows.size(); ++i) {
    const auto& w = windows[i];
    const std::string f = absl::StrCat(field, "[", i, "]");
    if (w.weekday() < 1 || w.weekday() > 7) out->push_back({f + ".weekday", "required, 1 to 7"});
    if (w.start_minute() < 0 || w.start_minute() > 1439) {
      out->push_back({f + ".start_minute", "must be 0 to 1439"});
    }
    if (w.end_minute() <= w.start_minute() || w.end_minute() > 1440) {
      out->push_back({f + ".end_minute", "must be after start_minute and at most 1440"});
    }
    if (no_same_day_overlap) {
      for (int j = 0; j < i; ++j) {
        const auto& o = windows[j];
        if (o.weekday() == w.weekday() && o.start_minute() < w.end_minute() &&
            w.start_minute() < o.end_minute()) {
          out->push_back({f, absl::StrCat("overlaps ", field, "[", j, "] on the same day")});
        }
      }
    }
  }
}

void CheckKeys(const google::protobuf::RepeatedPtrField<std::string>& keys,
               const std::string& field, int max_count, std::vector<FieldViolation>* out) {
  if (keys.size() > max_count)
    out->push_back({field, absl::StrCat("at most ", max_count, " values")});
  std::set<std::string> seen;
  for (int i = 0; i < keys.size(); ++i) {
    if (!IsKey(keys[i], 1, 64)) {
      out->push_back({absl::StrCat(field, "[", i, "]"), "1 to 64 characters of [a-z0-9_]"});
    } else if (!seen.insert(keys[i]).second) {
      out->push_back({absl::StrCat(field, "[", i, "]"), "duplicate value"});
    }
  }
}

void CheckWeight(int weight, const std::string& field, std::vector<FieldViolation>* out) {
  if (weight < 0 || weight > 10) out->push_back({field, "must be 1 to 10 (0 means 1)"});
}

bool InMask(const std::vector<std::string>& mask, absl::string_view field) {
  return mask.empty() || std::find(mask.begin(), mask.end(), "*") != mask.end() ||
         std::find(mask.begin(), mask.end(), field) != mask.end();
}

}  // namespace

std::vector<FieldViolation> ValidateSupporter(const v1::Supporter& s,
                                              const std::vector<std::string>& mask,
                                              absl::string_view prefix) {
  std::vector<FieldViolation> out;
  const std::string p(prefix);
  if (InMask(mask, "subject") && s.subject().size() > 128) {
    out.push_back({p + "subject", "at most 128 characters"});
  }
  if (InMask(mask, "display_name") && (s.display_name().empty() || s.display_name().size() > 200)) {
    out.push_back({p + "display_name", "required, 1 to 200 characters"});
  }
  if (InMask(mask, "lived_experience_areas")) {
    CheckKeys(s.lived_experience_areas(), p + "lived_experience_areas", 32, &out);
  }
  if (InMask(mask, "languages")) {
    if (s.languages_size() > 16) out.push_back({p + "languages", "at most 16 languages"});
    for (int i = 0; i < s.languages_size(); ++i) {
      if (!IsLanguageTag(s.languages(i))) {
        out.push_back(
            {absl::StrCat(p, "languages[", i, "]"), "a BCP 47 tag of 2 to 35 characters"});
      }
    }
  }
  if (InMask(mask, "gender") && !s.gender().empty() && !IsKey(s.gender(), 1, 64)) {
    out.push_back({p + "gender", "0 to 64 characters of [a-z0-9_]"});
  }
  if (InMask(mask, "age_band") && !v1::AgeBand_IsValid(s.age_band())) {
    out.push_back({p + "age_band", "unknown age band"});
  }
  if (InMask(mask, "region") && !s.region().empty() && !IsKey(s.region(), 1, 64)) {
    out.push_back({p + "region", "0 to 64 characters of [a-z0-9_]"});
  }
  if (InMask(mask, "area_code") && s.area_code().size() > 16) {
    out.push_back({p + "area_code", "at most 16 characters"});
  }
  if (InMask(mask, "meeting_modes")) {
    std::set<int> seen;
    for (int i = 0; i < s.meeting_modes_size(); ++i) {
      const int m = s.meeting_modes(i);
      if (m < 1 || m > 3) {
        out.push_back({absl::StrCat(p, "meeting_modes[", i, "]"), "unspecified or unknown mode"});
      } else if (!seen.insert(m).second) {
        out.push_back({absl::StrCat(p, "meeting_modes[", i, "]"), "duplicate mode"});
      }
    }
  }
  if (InMask(mask, "availability"))
    CheckWindows(s.availability(), p + "availability", 28, true, &out);
  if (InMask(mask, "capacity_units") && (s.capacity_units() < 0 || s.capacity_units() > 1000)) {
    out.push_back({p + "capacity_units", "must be 0 to 1000"});
  }
  if (InMask(mask, "training_status") && (s.training_status() < 1 || s.training_status() > 3)) {
    out.push_back({p + "training_status", "required: IN_TRAINING, CERTIFIED or LAPSED"});
  }
  if (InMask(mask, "training_expires_on") || InMask(mask, "training_status")) {
    const auto& d = s.training_expires_on();
    const bool set = s.has_training_expires_on() && d.year() != 0;
    if (set) {
      const absl::CivilDay day(d.year(), d.month(), d.day());
      if (day.year() != d.year() || day.month() != d.month() || day.day() != d.day()) {
        out.push_back({p + "training_expires_on", "not a valid date"});
      }
    } else if (s.training_status() == v1::TRAINING_STATUS_CERTIFIED) {
      out.push_back({p + "training_expires_on", "required with CERTIFIED"});
    }
  }
  if (InMask(mask, "supervisor_subject") && s.supervisor_subject().size() > 128) {
    out.push_back({p + "supervisor_subject", "at most 128 characters"});
  }
  return out;
}

std::vector<FieldViolation> ValidateHardConstraints(const v1::HardConstraints& hard,
                                                    absl::string_view prefix) {
  std::vector<FieldViolation> out;
  const std::string p(prefix);
  if (hard.languages_size() > 8) out.push_back({p + "languages", "at most 8 languages"});
  for (int i = 0; i < hard.languages_size(); ++i) {
    if (!IsLanguageTag(hard.languages(i))) {
      out.push_back({absl::StrCat(p, "languages[", i, "]"), "a BCP 47 tag of 2 to 35 characters"});
    }
  }
  if (hard.meeting_modes_size() > 3) out.push_back({p + "meeting_modes", "at most 3 modes"});
  for (int i = 0; i < hard.meeting_modes_size(); ++i) {
    if (hard.meeting_modes(i) < 1 || hard.meeting_modes(i) > 3) {
      out.push_back({absl::StrCat(p, "meeting_modes[", i, "]"), "unspecified or unknown mode"});
    }
  }
  if (!hard.region().empty() && !IsKey(hard.region(), 1, 64)) {
    out.push_back({p + "region", "0 to 64 characters of [a-z0-9_]"});
  }
  CheckKeys(hard.genders(), p + "genders", 8, &out);
  if (hard.excluded_supporter_ids_size() > 100) {
    out.push_back({p + "excluded_supporter_ids", "at most 100 supporters"});
  }
  for (int i = 0; i < hard.excluded_supporter_ids_size(); ++i) {
    if (!IsUuid(hard.excluded_supporter_ids(i))) {
      out.push_back({absl::StrCat(p, "excluded_supporter_ids[", i, "]"), "must be a UUID"});
    }
  }
  return out;
}

std::vector<FieldViolation> ValidatePreferences(const v1::Preferences& pref,
                                                absl::string_view prefix) {
  std::vector<FieldViolation> out;
  const std::string p(prefix);
  if (pref.has_lived_experience()) {
    if (pref.lived_experience().areas().empty()) {
      out.push_back({p + "lived_experience.areas", "1 to 32 areas"});
    }
    CheckKeys(pref.lived_experience().areas(), p + "lived_experience.areas", 32, &out);
    CheckWeight(pref.lived_experience().weight(), p + "lived_experience.weight", &out);
  }
  if (pref.has_age_band()) {
    const auto& bands = pref.age_band().age_bands();
    if (bands.empty() || bands.size() > 6)
      out.push_back({p + "age_band.age_bands", "1 to 6 bands"});
    for (int i = 0; i < bands.size(); ++i) {
      if (bands[i] < 1 || bands[i] > 6) {
        out.push_back({absl::StrCat(p, "age_band.age_bands[", i, "]"), "unspecified or unknown"});
      }
    }
    CheckWeight(pref.age_band().weight(), p + "age_band.weight", &out);
  }
  if (pref.has_gender()) {
    if (pref.gender().genders().empty()) out.push_back({p + "gender.genders", "1 to 8 genders"});
    CheckKeys(pref.gender().genders(), p + "gender.genders", 8, &out);
    CheckWeight(pref.gender().weight(), p + "gender.weight", &out);
  }
  if (pref.has_availability()) {
    if (pref.availability().windows().empty()) {
      out.push_back({p + "availability.windows", "1 to 28 windows"});
    }
    CheckWindows(pref.availability().windows(), p + "availability.windows", 28, false, &out);
    CheckWeight(pref.availability().weight(), p + "availability.weight", &out);
  }
  if (pref.has_region()) {
    if (!IsKey(pref.region().region(), 1, 64)) {
      out.push_back({p + "region.region", "1 to 64 characters of [a-z0-9_]"});
    }
    CheckWeight(pref.region().weight(), p + "region.weight", &out);
  }
  if (pref.has_continuity() && !pref.continuity().supporter_id().empty() &&
      !IsUuid(pref.continuity().supporter_id())) {
    out.push_back({p + "continuity.supporter_id", "must be a UUID"});
  }
  return out;
}

std::vector<FieldViolation> ValidateMatchRequest(const v1::MatchRequest& r,
                                                 absl::string_view prefix) {
  std::vector<FieldViolation> out;
  const std::string p(prefix);
  if (r.participant_id().empty() || r.participant_id().size() > 128) {
    out.push_back({p + "participant_id", "required, 1 to 128 characters"});
  }
  if (!r.pathway_key().empty() && !IsKey(r.pathway_key(), 1, 64)) {
    out.push_back({p + "pathway_key", "0 to 64 characters of [a-z0-9_]"});
  }
  if (r.acuity_units() < 0 || r.acuity_units() > 100) {
    out.push_back({p + "acuity_units", "must be 1 to 100 (0 means the pathway's default)"});
  }
  if (!v1::Urgency_IsValid(r.urgency())) out.push_back({p + "urgency", "unknown urgency"});
  for (auto& v : ValidateHardConstraints(r.hard_constraints(), p + "hard_constraints.")) {
    out.push_back(std::move(v));
  }
  for (auto& v : ValidatePreferences(r.preferences(), p + "preferences.")) {
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace peerpath::matching
