#include "services/evaluation/measures.h"

#include <algorithm>
#include <numeric>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/time_util.h"
#include "evaluation/measure_text.h"

namespace peerpath::evaluation {
namespace {

using v1::Dimension;
using v1::Measure;

// Distinct people (or supporters, or ids) of one report: interned ids are dense from 0, so a bit
// per id answers membership, and the members are kept in insertion order for iteration.
class PeopleSet {
 public:
  bool insert(Id id) {
    if (id < 0) return false;  // kNoId is nobody.
    const auto at = static_cast<size_t>(id);
    if (at >= present_.size()) present_.resize(std::max(at + 1, 2 * present_.size()));
    if (present_[at]) return false;
    present_[at] = true;
    members_.push_back(id);
    return true;
  }
  template <typename It>
  void insert(It first, It last) {
    for (; first != last; ++first) insert(*first);
  }
  size_t count(Id id) const {
    const auto at = static_cast<size_t>(id);
    return at < present_.size() && present_[at] ? 1 : 0;
  }
  size_t size() const { return members_.size(); }
  std::vector<Id>::const_iterator begin() const { return members_.begin(); }
  std::vector<Id>::const_iterator end() const { return members_.end(); }

 private:
  std::vector<bool> present_;
  std::vector<Id> members_;
};

constexpr int kCategories = 7;  // peerpath.common.v1.ConcernCategory 1..7.
constexpr int kSeverities = 3;  // peerpath.common.v1.ConcernSeverity 1..3.
constexpr int kSupporterWellbeing = 6;

// ---- Dates and windows ----

// The local day (in `zone`) of t, as days since 1970-01-01 (contact_days' numbering).
int64_t LocalDay(absl::Time t, absl::TimeZone zone) {
  return absl::ToCivilDay(t, zone) - absl::CivilDay(1970, 1, 1);
}

// Per-person lookups over the facts (by interned id), built once per report.
struct PersonIndex {
  std::vector<std::vector<const MatchFact*>> matches;
  std::vector<std::vector<const OutcomeFact*>> outcomes;
  std::vector<std::vector<const AppointmentFact*>> appointments;

  explicit PersonIndex(const ReportFacts& facts)
      : matches(static_cast<size_t>(facts.ids)),
        outcomes(static_cast<size_t>(facts.ids)),
        appointments(static_cast<size_t>(facts.ids)) {
    for (const MatchFact& m : facts.matches) At(matches, m.participant_id).push_back(&m);
    for (const OutcomeFact& o : facts.outcomes) At(outcomes, o.participant_id).push_back(&o);
    for (const AppointmentFact& a : facts.appointments) {
      At(appointments, a.participant_id).push_back(&a);
    }
  }

  template <typename T>
  static std::vector<const T*>& At(std::vector<std::vector<const T*>>& by_id, Id who) {
    return by_id[static_cast<size_t>(who)];
  }

  template <typename T>
  static const std::vector<const T*>& Of(const std::vector<std::vector<const T*>>& by_id, Id who) {
    return by_id[static_cast<size_t>(who)];
  }
};

struct Scope {
  const ReportFacts& facts;
  std::string pathway;  // Empty: every pathway.
  std::string program;  // Empty: every program; kWithoutProgram: enrollments without one.
  PeopleSet people;
  const PersonIndex& index;

  bool InPeriod(absl::Time t) const { return t >= facts.period_start && t < facts.period_end; }
  // The agency's local day of t.
  int64_t Day(absl::Time t) const { return LocalDay(t, facts.zone); }
  // At u, "within n days after" t: t < u and u's local date at most n days after t's.
  bool WithinAfter(absl::Time t, absl::Time u, int n) const {
    return t < u && Day(u) <= Day(t) + n;
  }
  // The window's last local day (n days after t's) has passed when the report is computed.
  bool WindowComplete(absl::Time t, int n) const { return Day(facts.now) > Day(t) + n; }
  bool ActiveInPeriod(const EnrollmentFact& e) const {
    return e.started_at < facts.period_end && (!e.ended_at || *e.ended_at >= facts.period_start);
  }
  // A record tied to an enrollment (its pathway_key and program_id are the enrollment's).
  template <typename Fact>
  bool TiedInScope(const Fact& f) const {
    if (!pathway.empty() && f.pathway_key != pathway) return false;
    if (program.empty()) return true;
    return program == kWithoutProgram ? f.program_id.empty() : f.program_id == program;
  }
  // A record not tied to an enrollment counts when its person is one of the scope's people.
  bool PersonInScope(Id participant) const {
    return (pathway.empty() && program.empty()) || people.count(participant) > 0;
  }
  // An active match at some moment of [from, to].
  bool MatchedBetween(Id participant, absl::Time from, absl::Time to) const {
    for (const MatchFact* m : PersonIndex::Of(index.matches, participant)) {
      if (m->started_at <= to && (!m->ended_at || *m->ended_at >= from)) return true;
    }
    return false;
  }
};

v1::DimensionValue CohortValue(bool with) {
  v1::DimensionValue d;
  d.set_cohort(with ? v1::COHORT_WITH_PEER_SUPPORT : v1::COHORT_WITHOUT_PEER_SUPPORT);
  return d;
}

ComputedCell Cell(Measure measure, int breakdown, v1::ValueKind kind,
                  std::vector<v1::DimensionValue> dimensions = {}) {
  ComputedCell c;
  c.measure = measure;
  c.breakdown = breakdown;
  c.kind = kind;
  c.dimensions = std::move(dimensions);
  return c;
}

ComputedCell CountCell(Measure measure, int64_t count, const PeopleSet& people) {
  ComputedCell c = Cell(measure, 0, v1::VALUE_KIND_COUNT);
  c.count = count;
  c.people = static_cast<int64_t>(people.size());
  c.people_groups = {c.people};
  return c;
}

// A rate over units (appointments, enrollments, people) with each unit's person: people of the
// denominator, of the numerator and of the denominator without the numerator's.
struct RateUnit {
  Id person = kNoId;
  bool in_numerator = false;
};

ComputedCell RateCell(Measure measure, int breakdown, std::vector<v1::DimensionValue> dimensions,
                      const std::vector<RateUnit>& units) {
  ComputedCell c = Cell(measure, breakdown, v1::VALUE_KIND_RATE, std::move(dimensions));
  PeopleSet all, numerator, rest;
  for (const RateUnit& u : units) {
    all.insert(u.person);
    if (u.in_numerator) {
      ++c.numerator;
      numerator.insert(u.person);
    }
  }
  for (const RateUnit& u : units) {
    if (!numerator.count(u.person)) rest.insert(u.person);
  }
  c.denominator = static_cast<int64_t>(units.size());
  c.people = static_cast<int64_t>(all.size());
  c.people_groups = {c.people, static_cast<int64_t>(numerator.size()),
                     static_cast<int64_t>(rest.size())};
  return c;
}

// A measure with a cohort breakdown: total, with, without.
void AddCohortCells(Measure measure, const std::vector<std::pair<RateUnit, bool>>& units,
                    std::vector<ComputedCell>& out) {
  std::vector<RateUnit> all, with, without;
  for (const auto& [unit, has_support] : units) {
    all.push_back(unit);
    (has_support ? with : without).push_back(unit);
  }
  out.push_back(RateCell(measure, 0, {}, all));
  out.push_back(RateCell(measure, 1, {CohortValue(true)}, with));
  out.push_back(RateCell(measure, 1, {CohortValue(false)}, without));
}

bool IsCrisisEvent(v1::ServiceOutcomeKind kind) {
  return kind == v1::SERVICE_OUTCOME_KIND_CRISIS_CONTACT ||
         kind == v1::SERVICE_OUTCOME_KIND_EMERGENCY_VISIT_MENTAL_ILLNESS ||
         kind == v1::SERVICE_OUTCOME_KIND_HOSPITALIZATION_MENTAL_ILLNESS;
}

// ---- The measures ----

void EnrollmentsStarted(const Scope& s, std::vector<ComputedCell>& out) {
  int64_t count = 0;
  PeopleSet people;
  for (const EnrollmentFact& e : s.facts.enrollments) {
    if (!s.TiedInScope(e) || !s.InPeriod(e.started_at)) continue;
    ++count;
    people.insert(e.participant_id);
  }
  out.push_back(CountCell(v1::MEASURE_ENROLLMENTS_STARTED, count, people));
}

PeopleSet Served(const Scope& s) {
  PeopleSet people;
  for (const EnrollmentFact& e : s.facts.enrollments) {
    if (s.TiedInScope(e) && s.ActiveInPeriod(e)) people.insert(e.participant_id);
  }
  return people;
}

void EngagementAfterIntake(const Scope& s, std::vector<ComputedCell>& out) {
  std::vector<RateUnit> units;
  for (const AppointmentFact& a : s.facts.appointments) {
    if (!a.first_appointment || a.outcome == AppointmentOutcome::kOther) continue;
    if (!s.TiedInScope(a) || !s.InPeriod(a.scheduled_at)) continue;
    units.push_back({a.participant_id, a.peer_contact_before});
  }
  out.push_back(RateCell(v1::MEASURE_ENGAGEMENT_AFTER_INTAKE, 0, {}, units));
}

void FirstAppointmentAttendance(const Scope& s, std::vector<ComputedCell>& out) {
  struct Candidate {
    absl::Time at;
    bool attended;
    bool county;
  };
  std::map<Id, std::vector<Candidate>> by_person;
  for (const OutcomeFact& o : s.facts.outcomes) {
    const bool attended = o.kind == v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_ATTENDED;
    if (!attended && o.kind != v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_MISSED) continue;
    if (!s.InPeriod(o.occurred_at) || !s.PersonInScope(o.participant_id)) continue;
    by_person[o.participant_id].push_back({o.occurred_at, attended, true});
  }
  for (const AppointmentFact& a : s.facts.appointments) {
    if (!a.first_appointment || a.outcome == AppointmentOutcome::kOther) continue;
    if (!s.TiedInScope(a) || !s.InPeriod(a.scheduled_at)) continue;
    by_person[a.participant_id].push_back(
        {a.scheduled_at, a.outcome == AppointmentOutcome::kAttended, false});
  }
  std::vector<std::pair<RateUnit, bool>> units;
  for (auto& [person, candidates] : by_person) {
    std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
      return a.at != b.at ? a.at < b.at : a.county > b.county;
    });
    Candidate first = candidates.front();
    // Both sources on the same local date: the same appointment, the county's outcome wins.
    for (const Candidate& c : candidates) {
      if (c.county && s.Day(c.at) == s.Day(first.at)) {
        first.attended = c.attended;
        break;
      }
    }
    const bool with = s.MatchedBetween(person, first.at - absl::Hours(24 * 30), first.at);
    units.push_back({{person, first.attended}, with});
  }
  AddCohortCells(v1::MEASURE_FIRST_APPOINTMENT_ATTENDANCE, units, out);
}

void MissedContactReconnection(const Scope& s, std::vector<ComputedCell>& out) {
  std::vector<RateUnit> units;
  for (const StageChangeFact& c : s.facts.stage_changes) {
    if (c.lost_to_follow_up || !s.TiedInScope(c) || !s.InPeriod(c.changed_at)) continue;
    if (!s.WindowComplete(c.changed_at, 30)) continue;
    bool reconnected = false;
    auto it = s.facts.reconnections.find(c.enrollment_id);
    if (it != s.facts.reconnections.end()) {
      for (absl::Time at : it->second) reconnected |= s.WithinAfter(c.changed_at, at, 30);
    }
    units.push_back({c.participant_id, reconnected});
  }
  out.push_back(RateCell(v1::MEASURE_MISSED_CONTACT_RECONNECTION, 0, {}, units));
}

void LostToFollowUp(const Scope& s, std::vector<ComputedCell>& out) {
  PeopleSet lost;
  for (const StageChangeFact& c : s.facts.stage_changes) {
    if (c.lost_to_follow_up && s.InPeriod(c.changed_at)) lost.insert(c.enrollment_id);
  }
  std::vector<RateUnit> units;
  for (const EnrollmentFact& e : s.facts.enrollments) {
    if (!s.TiedInScope(e) || !s.ActiveInPeriod(e)) continue;
    units.push_back({e.participant_id, lost.count(e.enrollment_id) > 0});
  }
  out.push_back(RateCell(v1::MEASURE_LOST_TO_FOLLOW_UP, 0, {}, units));
}

bool CrisisWithin(const Scope& s, Id person, absl::Time t, int days) {
  for (const OutcomeFact* o : PersonIndex::Of(s.index.outcomes, person)) {
    if (IsCrisisEvent(o->kind) && s.WithinAfter(t, o->occurred_at, days)) return true;
  }
  return false;
}

void StepDownStability(const Scope& s, Measure measure, int days, std::vector<ComputedCell>& out) {
  std::vector<RateUnit> units;
  for (const EnrollmentFact& e : s.facts.enrollments) {
    if (e.pathway_key != "step_down" || !s.TiedInScope(e)) continue;
    if (!s.InPeriod(e.started_at) || !s.WindowComplete(e.started_at, days)) continue;
    units.push_back({e.participant_id, !CrisisWithin(s, e.participant_id, e.started_at, days)});
  }
  out.push_back(RateCell(measure, 0, {}, units));
}

void CrisisRecontact(const Scope& s, Measure measure, int days, std::vector<ComputedCell>& out) {
  std::map<Id, absl::Time> first;
  for (const OutcomeFact& o : s.facts.outcomes) {
    if (o.kind != v1::SERVICE_OUTCOME_KIND_DISCHARGE ||
        o.setting != v1::DISCHARGE_SETTING_CRISIS_STABILIZATION) {
      continue;
    }
    if (!s.InPeriod(o.occurred_at) || !s.PersonInScope(o.participant_id)) continue;
    if (!s.WindowComplete(o.occurred_at, days)) continue;
    auto [it, inserted] = first.emplace(o.participant_id, o.occurred_at);
    if (!inserted && o.occurred_at < it->second) it->second = o.occurred_at;
  }
  std::vector<std::pair<RateUnit, bool>> units;
  for (const auto& [person, t] : first) {
    const bool with = s.MatchedBetween(person, t - absl::Hours(24 * 30), t + absl::Hours(24 * 14));
    units.push_back({{person, CrisisWithin(s, person, t, days)}, with});
  }
  AddCohortCells(measure, units, out);
}

// A qualifying follow-up of `person` on a local day in [from_day, to_day].
bool FollowUpBetween(const Scope& s, Id person, int64_t from_day, int64_t to_day) {
  for (const OutcomeFact* o : PersonIndex::Of(s.index.outcomes, person)) {
    if (o->kind != v1::SERVICE_OUTCOME_KIND_OUTPATIENT_FOLLOW_UP &&
        o->kind != v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_ATTENDED) {
      continue;
    }
    if (s.Day(o->occurred_at) >= from_day && s.Day(o->occurred_at) <= to_day) return true;
  }
  for (const AppointmentFact* a : PersonIndex::Of(s.index.appointments, person)) {
    if (a->outcome == AppointmentOutcome::kAttended && s.Day(a->scheduled_at) >= from_day &&
        s.Day(a->scheduled_at) <= to_day) {
      return true;
    }
  }
  auto it = s.facts.contact_days.lower_bound({person, from_day});
  return it != s.facts.contact_days.end() && it->first == person && it->second <= to_day;
}

void FollowUpAfterEmergencyVisit(const Scope& s, std::vector<ComputedCell>& out) {
  std::map<Id, std::vector<absl::Time>> visits;
  for (const OutcomeFact& o : s.facts.outcomes) {
    if (o.kind != v1::SERVICE_OUTCOME_KIND_EMERGENCY_VISIT_MENTAL_ILLNESS) continue;
    if (!s.InPeriod(o.occurred_at) || !s.PersonInScope(o.participant_id)) continue;
    if (!s.WindowComplete(o.occurred_at, 30)) continue;
    visits[o.participant_id].push_back(o.occurred_at);
  }
  std::vector<std::pair<RateUnit, bool>> units7, units30;
  for (auto& [person, times] : visits) {
    std::sort(times.begin(), times.end());
    std::optional<int64_t> last_counted;
    for (absl::Time t : times) {
      const int64_t day = s.Day(t);
      bool admitted = false;
      for (const OutcomeFact* o : PersonIndex::Of(s.index.outcomes, person)) {
        admitted |= o->kind == v1::SERVICE_OUTCOME_KIND_HOSPITALIZATION_MENTAL_ILLNESS &&
                    s.Day(o->occurred_at) >= day && s.Day(o->occurred_at) <= day + 30;
      }
      if (admitted) continue;
      if (last_counted && day <= *last_counted + 30) continue;
      last_counted = day;
      const bool with =
          s.MatchedBetween(person, t - absl::Hours(24 * 30), t + absl::Hours(24 * 14));
      units7.push_back({{person, FollowUpBetween(s, person, day, day + 7)}, with});
      units30.push_back({{person, FollowUpBetween(s, person, day, day + 30)}, with});
    }
  }
  AddCohortCells(v1::MEASURE_FOLLOW_UP_AFTER_EMERGENCY_VISIT_7D, units7, out);
  AddCohortCells(v1::MEASURE_FOLLOW_UP_AFTER_EMERGENCY_VISIT_30D, units30, out);
}

void FollowUpAfterHospitalization(const Scope& s, std::vector<ComputedCell>& out) {
  std::vector<std::pair<RateUnit, bool>> units7, units30;
  std::vector<const OutcomeFact*> discharges;
  for (const OutcomeFact& o : s.facts.outcomes) {
    if (o.kind != v1::SERVICE_OUTCOME_KIND_DISCHARGE ||
        o.setting != v1::DISCHARGE_SETTING_INPATIENT_MENTAL_HEALTH) {
      continue;
    }
    if (!s.InPeriod(o.occurred_at) || !s.PersonInScope(o.participant_id)) continue;
    if (!s.WindowComplete(o.occurred_at, 30)) continue;
    discharges.push_back(&o);
  }
  std::sort(discharges.begin(), discharges.end(), [](const OutcomeFact* a, const OutcomeFact* b) {
    return a->participant_id != b->participant_id ? a->participant_id < b->participant_id
                                                  : a->occurred_at < b->occurred_at;
  });
  for (const OutcomeFact* d : discharges) {
    bool readmitted = false;
    for (const OutcomeFact* o : PersonIndex::Of(s.index.outcomes, d->participant_id)) {
      readmitted |= o->kind == v1::SERVICE_OUTCOME_KIND_HOSPITALIZATION_MENTAL_ILLNESS &&
                    s.WithinAfter(d->occurred_at, o->occurred_at, 30);
    }
    if (readmitted) continue;
    const int64_t day = s.Day(d->occurred_at);
    const absl::Time t = d->occurred_at;
    const bool with =
        s.MatchedBetween(d->participant_id, t - absl::Hours(24 * 30), t + absl::Hours(24 * 14));
    units7.push_back(
        {{d->participant_id, FollowUpBetween(s, d->participant_id, day + 1, day + 7)}, with});
    units30.push_back(
        {{d->participant_id, FollowUpBetween(s, d->participant_id, day + 1, day + 30)}, with});
  }
  AddCohortCells(v1::MEASURE_FOLLOW_UP_AFTER_HOSPITALIZATION_7D, units7, out);
  AddCohortCells(v1::MEASURE_FOLLOW_UP_AFTER_HOSPITALIZATION_30D, units30, out);
}

std::vector<const ConcernFact*> ScopeConcerns(const Scope& s) {
  std::vector<const ConcernFact*> concerns;
  for (const ConcernFact& c : s.facts.concerns) {
    if (!s.InPeriod(c.opened_at)) continue;
    const bool in_scope = c.enrollment_id == kNoId || c.pathway_key.empty()
                              ? s.PersonInScope(c.participant_id)
                              : s.TiedInScope(c);
    if (in_scope) concerns.push_back(&c);
  }
  return concerns;
}

v1::DimensionValue CategoryValue(int category) {
  v1::DimensionValue d;
  d.set_concern_category(static_cast<common::v1::ConcernCategory>(category));
  return d;
}

v1::DimensionValue SeverityValue(int severity) {
  v1::DimensionValue d;
  d.set_concern_severity(static_cast<common::v1::ConcernSeverity>(severity));
  return d;
}

void ConcernsRaised(const Scope& s, const std::vector<const ConcernFact*>& concerns,
                    const PeopleSet& served, std::vector<ComputedCell>& out) {
  auto cell = [&](int breakdown, std::vector<v1::DimensionValue> dims, int category, int severity) {
    ComputedCell c =
        Cell(v1::MEASURE_CONCERNS_RAISED, breakdown, v1::VALUE_KIND_RATE, std::move(dims));
    PeopleSet people;
    for (const ConcernFact* f : concerns) {
      if (category != 0 && f->category != category) continue;
      if (severity != 0 && f->severity != severity) continue;
      ++c.numerator;
      people.insert(f->participant_id);
    }
    int64_t rest = static_cast<int64_t>(served.size());
    for (const Id p : people) rest -= served.count(p) ? 1 : 0;
    c.denominator = static_cast<int64_t>(served.size());
    c.people = static_cast<int64_t>(people.size());
    c.people_groups = {static_cast<int64_t>(served.size()), c.people, rest};
    out.push_back(std::move(c));
  };
  (void)s;
  cell(0, {}, 0, 0);
  for (int cat = 1; cat <= kCategories; ++cat) cell(1, {CategoryValue(cat)}, cat, 0);
  for (int sev = 1; sev <= kSeverities; ++sev) cell(2, {SeverityValue(sev)}, 0, sev);
  for (int cat = 1; cat <= kCategories; ++cat) {
    for (int sev = 1; sev <= kSeverities; ++sev) {
      cell(3, {CategoryValue(cat), SeverityValue(sev)}, cat, sev);
    }
  }
}

void TimeToAcknowledge(const std::vector<const ConcernFact*>& concerns,
                       std::vector<ComputedCell>& out) {
  auto cell = [&](int breakdown, std::vector<v1::DimensionValue> dims, int severity) {
    ComputedCell c = Cell(v1::MEASURE_TIME_TO_ACKNOWLEDGE, breakdown,
                          v1::VALUE_KIND_DURATION_SUMMARY, std::move(dims));
    PeopleSet people;
    for (const ConcernFact* f : concerns) {
      if (severity != 0 && f->severity != severity) continue;
      if (!f->acknowledged_at) continue;
      c.micros.push_back(absl::ToInt64Microseconds(*f->acknowledged_at - f->opened_at));
      people.insert(f->participant_id);
    }
    std::sort(c.micros.begin(), c.micros.end());
    c.people = static_cast<int64_t>(people.size());
    c.people_groups = {c.people};
    out.push_back(std::move(c));
  };
  cell(0, {}, 0);
  for (int sev = 1; sev <= kSeverities; ++sev) cell(1, {SeverityValue(sev)}, sev);
}

void DeadlineBreaches(const std::vector<const ConcernFact*>& concerns,
                      std::vector<ComputedCell>& out) {
  auto cell = [&](int breakdown, std::vector<v1::DimensionValue> dims, int severity) {
    std::vector<RateUnit> units;
    for (const ConcernFact* f : concerns) {
      if (severity == 0 || f->severity == severity)
        units.push_back({f->participant_id, f->breached});
    }
    out.push_back(RateCell(v1::MEASURE_DEADLINE_BREACHES, breakdown, std::move(dims), units));
  };
  cell(0, {}, 0);
  for (int sev = 1; sev <= kSeverities; ++sev) cell(1, {SeverityValue(sev)}, sev);
}

void EmergencyAccesses(const Scope& s, std::vector<ComputedCell>& out) {
  int64_t count = 0;
  PeopleSet people;
  for (const auto& [person, at] : s.facts.emergency_accesses) {
    if (!s.InPeriod(at) || !s.PersonInScope(person)) continue;
    ++count;
    people.insert(person);
  }
  out.push_back(CountCell(v1::MEASURE_EMERGENCY_ACCESSES, count, people));
}

ComputedCell NumericCell(Measure measure, int breakdown, std::vector<v1::DimensionValue> dims,
                         std::vector<double> values, int64_t people) {
  ComputedCell c = Cell(measure, breakdown, v1::VALUE_KIND_NUMERIC_SUMMARY, std::move(dims));
  std::sort(values.begin(), values.end());
  c.numbers = std::move(values);
  c.people = people;
  c.people_groups = {people};
  return c;
}

void MatchSatisfaction(const Scope& s, std::vector<ComputedCell>& out) {
  for (bool participant_side : {true, false}) {
    std::vector<double> values;
    PeopleSet raters;
    for (const RatingFact& r : s.facts.ratings) {
      if (r.participant_side != participant_side || !s.InPeriod(r.recorded_at)) continue;
      if (!s.PersonInScope(r.participant_id)) continue;
      values.push_back(r.rating);
      raters.insert(participant_side ? r.participant_id : r.supporter_id);
    }
    v1::DimensionValue rater;
    rater.set_rater(participant_side ? v1::RATER_PARTICIPANT : v1::RATER_SUPPORTER);
    out.push_back(NumericCell(v1::MEASURE_MATCH_SATISFACTION, 0, {rater}, std::move(values),
                              static_cast<int64_t>(raters.size())));
  }
}

void RematchRate(const Scope& s, std::vector<ComputedCell>& out) {
  PeopleSet rematch_requests;
  for (const MatchFact& m : s.facts.matches) {
    if (m.rematch_request_id != kNoId) rematch_requests.insert(m.rematch_request_id);
  }
  std::vector<RateUnit> units;
  for (const MatchFact& m : s.facts.matches) {
    if (!s.InPeriod(m.started_at) || !s.PersonInScope(m.participant_id)) continue;
    units.push_back({m.participant_id, rematch_requests.count(m.match_request_id) > 0});
  }
  out.push_back(RateCell(v1::MEASURE_REMATCH_RATE, 0, {}, units));
}

PeopleSet SupporterPopulation(const Scope& s) {
  PeopleSet supporters;
  for (const MatchFact& m : s.facts.matches) {
    if (!s.PersonInScope(m.participant_id)) continue;
    if (m.started_at < s.facts.period_end && (!m.ended_at || *m.ended_at >= s.facts.period_start)) {
      supporters.insert(m.supporter_id);
    }
  }
  return supporters;
}

void SupporterWorkload(const Scope& s, const PeopleSet& supporters,
                       std::vector<ComputedCell>& out) {
  const bool ended = s.facts.now >= s.facts.period_end;
  const absl::Time at = ended ? s.facts.period_end : s.facts.now;
  absl::flat_hash_map<Id, int64_t> active;
  for (const MatchFact& m : s.facts.matches) {
    if (!supporters.count(m.supporter_id)) continue;
    if (m.started_at < at && (!m.ended_at || *m.ended_at >= at)) ++active[m.supporter_id];
  }
  std::vector<double> matches, contacts;
  // Weeks of the period that have passed: elapsed local days (today included) / 7.
  const int64_t days =
      std::max<int64_t>(1, s.Day(ended ? s.facts.period_end : s.facts.now + absl::Hours(24)) -
                               s.Day(s.facts.period_start));
  for (const Id supporter : supporters) {
    matches.push_back(static_cast<double>(active[supporter]));
    auto it = s.facts.supporter_contacts.find(supporter);
    const double n = it == s.facts.supporter_contacts.end() ? 0.0 : static_cast<double>(it->second);
    contacts.push_back(n / (static_cast<double>(days) / 7.0));
  }
  const auto people = static_cast<int64_t>(supporters.size());
  out.push_back(
      NumericCell(v1::MEASURE_SUPPORTER_ACTIVE_MATCHES, 0, {}, std::move(matches), people));
  out.push_back(
      NumericCell(v1::MEASURE_SUPPORTER_CONTACTS_PER_WEEK, 0, {}, std::move(contacts), people));
}

void SupporterWellbeingFlags(const Scope& s, const PeopleSet& supporters,
                             std::vector<ComputedCell>& out) {
  PeopleSet flagged;
  for (const ConcernFact& c : s.facts.concerns) {
    if (c.category != kSupporterWellbeing || !s.InPeriod(c.opened_at)) continue;
    for (const MatchFact* m : PersonIndex::Of(s.index.matches, c.participant_id)) {
      if (m->started_at <= c.opened_at && (!m->ended_at || *m->ended_at > c.opened_at)) {
        flagged.insert(m->supporter_id);
      }
    }
  }
  std::vector<RateUnit> units;
  for (const Id supporter : supporters) {
    units.push_back({supporter, flagged.count(supporter) > 0});
  }
  out.push_back(RateCell(v1::MEASURE_SUPPORTER_WELLBEING_FLAGS, 0, {}, units));
}

void WellbeingTrend(const Scope& s, std::vector<ComputedCell>& out) {
  absl::flat_hash_map<Id, Id> active;  // Enrollment -> participant.
  for (const EnrollmentFact& e : s.facts.enrollments) {
    if (s.TiedInScope(e) && s.ActiveInPeriod(e)) {
      active.emplace(e.enrollment_id, e.participant_id);
    }
  }
  struct Unit {
    Id person;
    int direction;  // WellbeingDirection.
  };
  std::vector<Unit> units;
  for (const WellbeingFact& w : s.facts.wellbeing) {
    auto participant = active.find(w.enrollment_id);
    if (participant == active.end() || w.scores_in_period < 1) continue;
    // At least two scores up to the end of the period.
    if (w.scores_in_period < 2 && !w.first_before_period) continue;
    const int direction = w.last_score > w.first_score    ? v1::WELLBEING_DIRECTION_IMPROVED
                          : w.last_score == w.first_score ? v1::WELLBEING_DIRECTION_UNCHANGED
                                                          : v1::WELLBEING_DIRECTION_DECLINED;
    units.push_back({participant->second, direction});
  }
  for (int direction = v1::WELLBEING_DIRECTION_IMPROVED;
       direction <= v1::WELLBEING_DIRECTION_DECLINED; ++direction) {
    std::vector<RateUnit> rate_units;
    for (const Unit& u : units) rate_units.push_back({u.person, u.direction == direction});
    v1::DimensionValue d;
    d.set_wellbeing_direction(static_cast<v1::WellbeingDirection>(direction));
    out.push_back(RateCell(v1::MEASURE_WELLBEING_TREND, 0, {d}, rate_units));
  }
}

void PersonFeedback(const Scope& s, std::vector<ComputedCell>& out) {
  std::vector<double> ratings;
  PeopleSet raters;
  for (const FeedbackFact& f : s.facts.feedback) {
    if (!s.TiedInScope(f) || !s.InPeriod(f.given_at)) continue;
    ratings.push_back(f.rating);
    raters.insert(f.participant_id);
  }
  out.push_back(NumericCell(v1::MEASURE_PERSON_FEEDBACK, 0, {}, std::move(ratings),
                            static_cast<int64_t>(raters.size())));
}

std::string Lower(const std::string& text) { return absl::AsciiStrToLower(text); }

google::protobuf::Duration DurationOfMicros(int64_t micros) {
  google::protobuf::Duration d;
  d.set_seconds(micros / 1000000);
  d.set_nanos(static_cast<int32_t>((micros % 1000000) * 1000));
  return d;
}

// The sentence(s) of `text` from `label` up to the next of `stops`; empty when absent.
std::string Clause(const std::string& text, const std::string& label,
                   const std::vector<std::string>& stops) {
  const size_t begin = text.find(label);
  if (begin == std::string::npos) return "";
  size_t end = text.size();
  for (const std::string& stop : stops) {
    const size_t at = text.find(stop, begin + label.size());
    if (at != std::string::npos) end = std::min(end, at);
  }
  return std::string(absl::StripAsciiWhitespace(text.substr(begin, end - begin)));
}

}  // namespace

const std::vector<MeasureInfo>& Measures() {
  using enum v1::Dimension;
  static const auto* const measures = [] {
    struct Row {
      Measure measure;
      const char* name;
      v1::MeasureUnit unit;
      v1::ValueKind kind;
      std::vector<std::vector<Dimension>> breakdowns;
      const char* unavailable = "";
    };
    const std::vector<std::vector<Dimension>> total = {{}};
    const std::vector<std::vector<Dimension>> cohort = {{}, {DIMENSION_COHORT}};
    const std::vector<Row> rows = {
        {v1::MEASURE_ENROLLMENTS_STARTED, "Enrollments started", v1::MEASURE_UNIT_COUNT,
         v1::VALUE_KIND_COUNT, total},
        {v1::MEASURE_PARTICIPANTS_SERVED, "Participants served", v1::MEASURE_UNIT_COUNT,
         v1::VALUE_KIND_COUNT, total},
        {v1::MEASURE_ENGAGEMENT_AFTER_INTAKE,
         "Engagement after intake: peer support contact before the first appointment",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, total},
        {v1::MEASURE_FIRST_APPOINTMENT_ATTENDANCE,
         "First-appointment attendance, with vs without peer support", v1::MEASURE_UNIT_PROPORTION,
         v1::VALUE_KIND_RATE, cohort},
        {v1::MEASURE_MISSED_CONTACT_RECONNECTION, "Missed-contact reconnection rate",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, total},
        {v1::MEASURE_LOST_TO_FOLLOW_UP, "Lost to follow-up", v1::MEASURE_UNIT_PROPORTION,
         v1::VALUE_KIND_RATE, total},
        {v1::MEASURE_STEP_DOWN_STABILITY_30D, "Step-down stability within 30 days",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, total},
        {v1::MEASURE_STEP_DOWN_STABILITY_90D, "Step-down stability within 90 days",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, total},
        {v1::MEASURE_CRISIS_RECONTACT_30D,
         "Crisis re-contact within 30 days after crisis stabilization", v1::MEASURE_UNIT_PROPORTION,
         v1::VALUE_KIND_RATE, cohort},
        {v1::MEASURE_CRISIS_RECONTACT_90D,
         "Crisis re-contact within 90 days after crisis stabilization", v1::MEASURE_UNIT_PROPORTION,
         v1::VALUE_KIND_RATE, cohort},
        {v1::MEASURE_FOLLOW_UP_AFTER_EMERGENCY_VISIT_7D,
         "Follow-up within 7 days after an emergency visit for mental illness",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, cohort},
        {v1::MEASURE_FOLLOW_UP_AFTER_EMERGENCY_VISIT_30D,
         "Follow-up within 30 days after an emergency visit for mental illness",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, cohort},
        {v1::MEASURE_FOLLOW_UP_AFTER_HOSPITALIZATION_7D,
         "Follow-up within 7 days after a hospitalisation for mental illness",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, cohort},
        {v1::MEASURE_FOLLOW_UP_AFTER_HOSPITALIZATION_30D,
         "Follow-up within 30 days after a hospitalisation for mental illness",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, cohort},
        {v1::MEASURE_CONCERNS_RAISED,
         "Concerns raised per 100 participants served",
         v1::MEASURE_UNIT_PER_100,
         v1::VALUE_KIND_RATE,
         {{},
          {DIMENSION_CONCERN_CATEGORY},
          {DIMENSION_CONCERN_SEVERITY},
          {DIMENSION_CONCERN_CATEGORY, DIMENSION_CONCERN_SEVERITY}}},
        {v1::MEASURE_TIME_TO_ACKNOWLEDGE,
         "Time to acknowledge a concern",
         v1::MEASURE_UNIT_DURATION,
         v1::VALUE_KIND_DURATION_SUMMARY,
         {{}, {DIMENSION_CONCERN_SEVERITY}}},
        {v1::MEASURE_DEADLINE_BREACHES,
         "Deadline breaches",
         v1::MEASURE_UNIT_PROPORTION,
         v1::VALUE_KIND_RATE,
         {{}, {DIMENSION_CONCERN_SEVERITY}}},
        {v1::MEASURE_EMERGENCY_ACCESSES, "Emergency (break-glass) accesses", v1::MEASURE_UNIT_COUNT,
         v1::VALUE_KIND_COUNT, total},
        {v1::MEASURE_MATCH_SATISFACTION,
         "Match satisfaction at the two-week follow-up",
         v1::MEASURE_UNIT_RATING,
         v1::VALUE_KIND_NUMERIC_SUMMARY,
         {{DIMENSION_RATER}}},
        {v1::MEASURE_REMATCH_RATE, "Re-match rate", v1::MEASURE_UNIT_PROPORTION,
         v1::VALUE_KIND_RATE, total},
        {v1::MEASURE_SUPPORTER_ACTIVE_MATCHES, "Supporter workload: active matches per supporter",
         v1::MEASURE_UNIT_PER_SUPPORTER, v1::VALUE_KIND_NUMERIC_SUMMARY, total},
        {v1::MEASURE_SUPPORTER_CONTACTS_PER_WEEK,
         "Supporter workload: peer support contacts per week", v1::MEASURE_UNIT_PER_WEEK,
         v1::VALUE_KIND_NUMERIC_SUMMARY, total},
        {v1::MEASURE_SUPPORTER_WELLBEING_FLAGS, "Supporter wellbeing flags",
         v1::MEASURE_UNIT_PROPORTION, v1::VALUE_KIND_RATE, total},
        {v1::MEASURE_WELLBEING_TREND,
         "Wellbeing trend",
         v1::MEASURE_UNIT_PROPORTION,
         v1::VALUE_KIND_RATE,
         {{DIMENSION_WELLBEING_DIRECTION}}},
        {v1::MEASURE_PERSON_FEEDBACK, "Person feedback", v1::MEASURE_UNIT_RATING,
         v1::VALUE_KIND_NUMERIC_SUMMARY, total},
    };
    auto* out = new std::vector<MeasureInfo>;
    for (const Row& row : rows) {
      out->push_back({row.measure, Lower(std::string(v1::Measure_Name(row.measure)).substr(8)),
                      row.name, row.unit, row.kind, row.breakdowns, row.unavailable});
    }
    return out;
  }();
  return *measures;
}

v1::MeasureDefinition DefinitionOf(const MeasureInfo& info) {
  v1::MeasureDefinition d;
  d.set_measure(info.measure);
  d.set_measure_id(info.id);
  d.set_name(info.name);
  d.set_unit(info.unit);
  d.set_value_kind(info.value_kind);
  const auto& comments = MeasureComments();
  auto it = comments.find(static_cast<int>(info.measure));
  const std::string text = it == comments.end() ? "" : it->second;
  d.set_numerator_definition(text);
  d.set_denominator_definition(
      Clause(text, "Denominator:", {" Numerator:", " Rate:", " People:", " Breakdowns:"}));
  if (d.denominator_definition().empty()) {
    d.set_denominator_definition(Clause(text, "Population:", {" Values:"}));
  }
  d.set_people_definition(Clause(text, "People:", {" Breakdowns:"}));
  for (const auto& dims : info.breakdowns) {
    v1::Breakdown* b = d.add_breakdowns();
    for (Dimension dim : dims) b->add_dimensions(dim);
  }
  d.set_unavailable_reason(info.unavailable_reason);
  return d;
}

namespace {

std::vector<ComputedCell> ComputeOne(const ReportFacts& facts, const PersonIndex& index,
                                     const ScopeKey& key) {
  Scope s{facts, key.pathway, key.program, {}, index};
  const PeopleSet served = Served(s);
  s.people.insert(served.begin(), served.end());
  std::vector<ComputedCell> out;
  EnrollmentsStarted(s, out);
  out.push_back(
      CountCell(v1::MEASURE_PARTICIPANTS_SERVED, static_cast<int64_t>(served.size()), served));
  EngagementAfterIntake(s, out);
  FirstAppointmentAttendance(s, out);
  MissedContactReconnection(s, out);
  LostToFollowUp(s, out);
  StepDownStability(s, v1::MEASURE_STEP_DOWN_STABILITY_30D, 30, out);
  StepDownStability(s, v1::MEASURE_STEP_DOWN_STABILITY_90D, 90, out);
  CrisisRecontact(s, v1::MEASURE_CRISIS_RECONTACT_30D, 30, out);
  CrisisRecontact(s, v1::MEASURE_CRISIS_RECONTACT_90D, 90, out);
  FollowUpAfterEmergencyVisit(s, out);
  FollowUpAfterHospitalization(s, out);
  const std::vector<const ConcernFact*> concerns = ScopeConcerns(s);
  ConcernsRaised(s, concerns, served, out);
  TimeToAcknowledge(concerns, out);
  DeadlineBreaches(concerns, out);
  EmergencyAccesses(s, out);
  MatchSatisfaction(s, out);
  RematchRate(s, out);
  const PeopleSet supporters = SupporterPopulation(s);
  SupporterWorkload(s, supporters, out);
  SupporterWellbeingFlags(s, supporters, out);
  WellbeingTrend(s, out);
  PersonFeedback(s, out);
  return out;
}

}  // namespace

std::vector<std::vector<ComputedCell>> ComputeScopes(const ReportFacts& facts,
                                                     const std::vector<ScopeKey>& scopes) {
  const PersonIndex index(facts);
  std::vector<std::vector<ComputedCell>> out;
  for (const ScopeKey& key : scopes) out.push_back(ComputeOne(facts, index, key));
  return out;
}

void ToReportCell(const ComputedCell& cell, bool suppressed, v1::ReportCell& out) {
  out.set_measure(cell.measure);
  out.set_measure_id(Lower(std::string(v1::Measure_Name(cell.measure)).substr(8)));
  for (const v1::DimensionValue& d : cell.dimensions) *out.add_dimensions() = d;
  out.set_unavailable(cell.unavailable);
  out.set_suppressed(suppressed || cell.unavailable);
  if (out.suppressed()) return;
  switch (cell.kind) {
    case v1::VALUE_KIND_COUNT:
      out.mutable_count()->set_count(cell.count);
      break;
    case v1::VALUE_KIND_RATE: {
      v1::RateValue* r = out.mutable_rate();
      r->set_numerator(cell.numerator);
      r->set_denominator(cell.denominator);
      const double rate =
          static_cast<double>(cell.numerator) / static_cast<double>(cell.denominator);
      const bool per_100 = cell.measure == v1::MEASURE_CONCERNS_RAISED;
      r->set_rate(per_100 ? 100.0 * static_cast<double>(cell.numerator) /
                                static_cast<double>(cell.denominator)
                          : rate);
      break;
    }
    case v1::VALUE_KIND_DURATION_SUMMARY: {
      v1::DurationSummary* d = out.mutable_duration_summary();
      d->set_count(static_cast<int64_t>(cell.micros.size()));
      *d->mutable_median() = DurationOfMicros(NearestRank(cell.micros, 50));
      *d->mutable_p90() = DurationOfMicros(NearestRank(cell.micros, 90));
      break;
    }
    case v1::VALUE_KIND_NUMERIC_SUMMARY: {
      v1::NumericSummary* n = out.mutable_numeric_summary();
      n->set_count(static_cast<int64_t>(cell.numbers.size()));
      n->set_mean(std::accumulate(cell.numbers.begin(), cell.numbers.end(), 0.0) /
                  static_cast<double>(cell.numbers.size()));
      n->set_median(NearestRank(cell.numbers, 50));
      n->set_p90(NearestRank(cell.numbers, 90));
      break;
    }
    default:
      break;
  }
}

}  // namespace peerpath::evaluation
