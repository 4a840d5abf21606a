#include "services/evaluation/report_store.h"

#include "absl/strings/string_view.h"
#include "common/db.h"

namespace peerpath::evaluation {
namespace {

absl::Time At(const pqxx::field& f) { return absl::FromUnixMicros(f.as<int64_t>()); }

std::optional<absl::Time> MaybeAt(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return At(f);
}

// Gives each distinct identifier of one report's facts a small dense number (measures.h: Id).
class Interner {
 public:
  Id Of(const pqxx::field& f) {
    auto [it, inserted] = ids_.try_emplace(absl::string_view(f.c_str(), f.size()), next_);
    if (inserted) ++next_;
    return it->second;
  }
  // NULL and the empty text are "none".
  Id MaybeOf(const pqxx::field& f) { return f.is_null() || f.size() == 0 ? kNoId : Of(f); }
  Id size() const { return next_; }

 private:
  absl::flat_hash_map<std::string, Id> ids_;
  Id next_ = 0;
};

// The pathway and program of the enrollments a report's facts name. Appointments, stage changes,
// concerns and feedback take their enrollment's program (concerns its pathway too) from here, not
// from a join with the agency's enrollments in each read: such a join built a hash of every
// enrollment of the agency for each of them (about 5 ms each for 10,000 enrollments, most of their
// time). The period's enrollments are set as they are read; the others named (ended before the
// period, or never known here) are read by id at the end, and one not found has neither, as the
// join's NULL gave.
class EnrollmentLabels {
 public:
  explicit EnrollmentLabels(Interner& ids) : ids_(ids) {}

  // The enrollment's id; it is read by ReadMissing unless Set by then.
  Id Of(const pqxx::field& f) {
    const Id id = ids_.Of(f);
    if (static_cast<size_t>(id) >= known_.size()) known_.resize(id + 1);
    if (!known_[id].has_value()) unknown_.try_emplace(id, f.c_str());
    return id;
  }
  // NULL is none (kNoId).
  Id MaybeOf(const pqxx::field& f) { return f.is_null() ? kNoId : Of(f); }
  void Set(Id id, const std::string& pathway, const std::string& program) {
    if (static_cast<size_t>(id) >= known_.size()) known_.resize(id + 1);
    known_[id] = Labels{pathway, program};
    unknown_.erase(id);
  }
  // One read of the enrollments named and not set (none: no read).
  void ReadMissing(pqxx::work& tx, const std::string& agency) {
    if (unknown_.empty()) return;
    std::vector<std::string> missing;
    missing.reserve(unknown_.size());
    for (const auto& [id, text] : unknown_) missing.push_back(text);
    const pqxx::result rows =
        ExecPrepared(tx, "eval_load_enrollment_labels",
                     "SELECT enrollment_id::text, pathway_key, coalesce(program_id, '') FROM "
                     "enrollments WHERE agency_id = " +
                         agency + " AND enrollment_id = ANY($1::uuid[])",
                     TextArrayLiteral(missing));
    for (const auto& row : rows) {
      Set(ids_.Of(row[0]), row[1].as<std::string>(), row[2].as<std::string>());
    }
    unknown_.clear();
  }
  const std::string& PathwayOf(Id id) const { return Get(id).pathway; }
  const std::string& ProgramOf(Id id) const { return Get(id).program; }

 private:
  struct Labels {
    std::string pathway;
    std::string program;
  };
  const Labels& Get(Id id) const {
    static const Labels* const none = new Labels;
    if (id < 0 || static_cast<size_t>(id) >= known_.size() || !known_[id].has_value()) return *none;
    return *known_[id];
  }

  Interner& ids_;
  std::vector<std::optional<Labels>> known_;
  absl::flat_hash_map<Id, std::string> unknown_;
};

}  // namespace

std::string OutcomeKindName(v1::ServiceOutcomeKind kind) {
  switch (kind) {
    case v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_ATTENDED:
      return "first_appointment_attended";
    case v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_MISSED:
      return "first_appointment_missed";
    case v1::SERVICE_OUTCOME_KIND_CRISIS_CONTACT:
      return "crisis_contact";
    case v1::SERVICE_OUTCOME_KIND_EMERGENCY_VISIT_MENTAL_ILLNESS:
      return "emergency_visit";
    case v1::SERVICE_OUTCOME_KIND_HOSPITALIZATION_MENTAL_ILLNESS:
      return "hospitalization";
    case v1::SERVICE_OUTCOME_KIND_DISCHARGE:
      return "discharge";
    case v1::SERVICE_OUTCOME_KIND_OUTPATIENT_FOLLOW_UP:
      return "outpatient_follow_up";
    default:
      return "";
  }
}

v1::ServiceOutcomeKind OutcomeKindFromName(const std::string& name) {
  for (int k = 1; k <= 7; ++k) {
    const auto kind = static_cast<v1::ServiceOutcomeKind>(k);
    if (OutcomeKindName(kind) == name) return kind;
  }
  return v1::SERVICE_OUTCOME_KIND_UNSPECIFIED;
}

namespace {

// The report's reads filter thousands of rows by agency and time. Their bounds are computed once
// per statement (an InitPlan, as a sub-SELECT): written inline, PostgreSQL evaluates
// current_setting() and the (STABLE) timestamp arithmetic again for every row it filters, which
// cost more than reading the rows (13 ms against 3 ms for 20,000 rows).
//
// $n, microseconds since the epoch, as a timestamptz shifted by `shift` ("" or "+ interval ...").
#define EVAL_BOUND(n, shift) "(SELECT " PEERPATH_SQL_TIME_PARAM(n) shift ")"
// The transaction's agency.
constexpr char kAgency[] = "(SELECT current_setting('app.agency_id', true))";

// The first local day of the period and the local day after it, as YYYY-MM-DD (the rollups'
// local days and months).
std::pair<std::string, std::string> LocalDays(const ReportWindow& w) {
  return {absl::FormatCivilTime(absl::ToCivilDay(w.start, w.zone)),
          absl::FormatCivilTime(absl::ToCivilDay(w.end, w.zone))};
}

}  // namespace

std::string AgencyTimeZone(pqxx::work& tx) {
  const pqxx::result r = ExecPrepared(tx, "eval_agency_time_zone",
                                      "SELECT time_zone FROM agency_time_zones "
                                      "WHERE agency_id = current_setting('app.agency_id', true)");
  return r.empty() ? "UTC" : r[0][0].as<std::string>();
}

RollupRows FetchRollupRows(pqxx::work& tx, const ReportWindow& window, RollupParts parts) {
  const int64_t p0 = absl::ToUnixMicros(window.start);
  const int64_t p1 = absl::ToUnixMicros(window.end);
  const auto [first_day, day_after] = LocalDays(window);
  const std::string agency = kAgency;
  RollupRows rows;
  // The follow-up measures ask whether a person had a contact on a day in [from, to], where from
  // is an index event's day (emergency visit) or the day after (discharge): the answer is the
  // first contact day on or after `from`. So for each index event of the period only those two
  // days are read (an index probe each), never every contact day of the window.
  if (parts != RollupParts::kWellbeing) {
    rows.contact_days = ExecPrepared(
        tx, "eval_load_contact_days",
        "SELECT DISTINCT o.participant_id, (f.day - date '1970-01-01')::bigint "
        "FROM service_outcomes o CROSS JOIN (VALUES (0), (1)) AS k(shift) "
        "CROSS JOIN LATERAL (SELECT d.day FROM contact_days d WHERE d.agency_id = o.agency_id "
        "  AND d.participant_id = o.participant_id "
        "  AND d.day >= (o.occurred_at AT TIME ZONE $3)::date + k.shift "
        "  ORDER BY d.day LIMIT 1) f "
        "WHERE o.agency_id = " +
            agency +
            " AND o.kind IN ('emergency_visit', 'discharge') "
            "AND o.occurred_at >= " EVAL_BOUND(1, "") " AND o.occurred_at < " EVAL_BOUND(2, ""),
        p0, p1, window.zone_name);
  }
  if (parts == RollupParts::kContactDays) return rows;
  // Per enrollment and month of the period: scores, the latest, and the first ever.
  rows.wellbeing = ExecPrepared(
      tx, "eval_load_wellbeing",
      "SELECT m.enrollment_id::text, m.scores, m.month - date '2000-01-01', m.last_score, "
      "f.first_at < " EVAL_BOUND(
          1,
          "") ", f.first_score "
              "FROM wellbeing_month m "
              "JOIN wellbeing_first f "
              "ON f.agency_id = "
              "m.agency_id AND "
              "f.enrollment_id = "
              "m.enrollment_id "
              "WHERE m.agency_id = " +
          agency + " AND m.month >= $2::date AND m.month < $3::date",
      p0, first_day, day_after);
  return rows;
}

absl::StatusOr<ReportFacts> LoadFacts(
    pqxx::work& tx, const ReportWindow& window, absl::Time now,
    const std::function<absl::StatusOr<RollupRows>()>& rollups_elsewhere) {
  ReportFacts f;
  f.period_start = window.start;
  f.period_end = window.end;
  f.zone = window.zone;
  f.now = now;
  const int64_t p0 = absl::ToUnixMicros(window.start);
  const int64_t p1 = absl::ToUnixMicros(window.end);
  const auto [first_day, day_after] = LocalDays(window);
  const std::string agency = kAgency;
  Interner ids;
  EnrollmentLabels labels(ids);

  for (const auto& row : ExecPrepared(
           tx, "eval_load_enrollments",
           "SELECT enrollment_id::text, participant_id, pathway_key, " PEERPATH_SQL_MICROS(
               "started_at") ", " PEERPATH_SQL_MICROS("ended_at") ", coalesce(program_id, '') FROM "
                                                                  "enrollments WHERE agency_id = " +
               agency +
               " AND started_at < " EVAL_BOUND(
                   2, "") " AND (ended_at IS NULL OR ended_at >= " EVAL_BOUND(1, "") ")",
           p0, p1)) {
    f.enrollments.push_back({ids.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>(),
                             row[5].as<std::string>(), At(row[3]), MaybeAt(row[4])});
    labels.Set(f.enrollments.back().enrollment_id, f.enrollments.back().pathway_key,
               f.enrollments.back().program_id);
  }
  // Appointments of the period, and attended ones up to 31 days after it (follow-ups).
  for (const auto& row : ExecPrepared(
           tx, "eval_load_appointments",
           "SELECT enrollment_id::text, participant_id, pathway_key, first_appointment, outcome, "
           "" PEERPATH_SQL_MICROS("scheduled_at") ", peer_contact_before FROM appointments WHERE "
                                                  "agency_id = " +
               agency +
               " AND scheduled_at >= " EVAL_BOUND(1, "") " AND scheduled_at < " EVAL_BOUND(
                   2, " + interval '32 days'"),
           p0, p1)) {
    const std::string outcome = row[4].as<std::string>();
    f.appointments.push_back({labels.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>(), "",
                              row[3].as<bool>(),
                              outcome == "attended" ? AppointmentOutcome::kAttended
                              : outcome == "missed" ? AppointmentOutcome::kMissed
                                                    : AppointmentOutcome::kOther,
                              At(row[5]), row[6].as<bool>()});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_stage_changes",
           "SELECT enrollment_id::text, participant_id, pathway_key, "
           "to_stage, " PEERPATH_SQL_MICROS("changed_at") " FROM stage_changes WHERE agency_id = " +
               agency +
               " AND changed_at >= " EVAL_BOUND(1, "") " AND changed_at < " EVAL_BOUND(2, ""),
           p0, p1)) {
    f.stage_changes.push_back({labels.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>(), "",
                               row[3].as<std::string>() == "lost_to_follow_up", At(row[4])});
  }
  for (const auto& row :
       ExecPrepared(tx, "eval_load_reconnections",
                    "SELECT enrollment_id::text, " PEERPATH_SQL_MICROS(
                        "reconnected_at") " FROM reconnections "
                                          "WHERE agency_id = " +
                        agency +
                        " AND reconnected_at >= " EVAL_BOUND(1, "") " AND "
                                                                    "reconnected_at < " EVAL_BOUND(
                                                                        2, " + interval '32 days'"),
                    p0, p1)) {
    f.reconnections[ids.Of(row[0])].push_back(At(row[1]));
  }
  for (const auto& row :
       ExecPrepared(tx, "eval_load_outcomes",
                    "SELECT participant_id, kind, discharge_setting, " PEERPATH_SQL_MICROS(
                        "occurred_at") " FROM service_outcomes WHERE agency_id = " +
                        agency +
                        " AND occurred_at >= " EVAL_BOUND(
                            1, " - interval '32 days'") " AND "
                                                        "occurred_at "
                                                        "< " EVAL_BOUND(2, " + interval '92 days'"),
                    p0, p1)) {
    OutcomeFact o;
    o.participant_id = ids.Of(row[0]);
    o.kind = OutcomeKindFromName(row[1].as<std::string>());
    const std::string setting = row[2].is_null() ? "" : row[2].as<std::string>();
    o.setting = setting == "inpatient_mental_health" ? v1::DISCHARGE_SETTING_INPATIENT_MENTAL_HEALTH
                : setting == "crisis_stabilization"  ? v1::DISCHARGE_SETTING_CRISIS_STABILIZATION
                                                     : v1::DISCHARGE_SETTING_UNSPECIFIED;
    o.occurred_at = At(row[3]);
    f.outcomes.push_back(std::move(o));
  }
  for (const auto& row :
       ExecPrepared(tx, "eval_load_matches",
                    "SELECT supporter_id, participant_id, match_request_id, " PEERPATH_SQL_MICROS(
                        "started_at") ", " PEERPATH_SQL_MICROS("ended_at") ", rematch_request_id "
                                                                           "FROM matches "
                                                                           "WHERE agency_id = " +
                        agency +
                        " AND started_at < " EVAL_BOUND(
                            2, " + interval '15 days'") " AND (ended_at IS NULL OR "
                                                        "ended_at >= " EVAL_BOUND(
                                                            1, " - interval '31 days'") ")",
                    p0, p1)) {
    f.matches.push_back({ids.Of(row[0]), ids.Of(row[1]), ids.MaybeOf(row[2]), At(row[3]),
                         MaybeAt(row[4]), ids.MaybeOf(row[5])});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_ratings",
           "SELECT participant_id, supporter_id, side, rating, " PEERPATH_SQL_MICROS(
               "recorded_at") " FROM follow_up_ratings WHERE agency_id = " +
               agency +
               " AND recorded_at >= " EVAL_BOUND(1, "") " AND recorded_at < " EVAL_BOUND(2, ""),
           p0, p1)) {
    f.ratings.push_back({ids.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>() == "participant",
                         row[3].as<int>(), At(row[4])});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_concerns",
           "SELECT participant_id, enrollment_id::text, category, severity, " PEERPATH_SQL_MICROS(
               "opened_at") ", " PEERPATH_SQL_MICROS("acknowledged_at") ", breached FROM concerns "
                                                                        "WHERE agency_id = " +
               agency +
               " AND opened_at >= " EVAL_BOUND(1, "") " AND opened_at < " EVAL_BOUND(
                   2, "") " AND participant_id IS NOT NULL AND category IS NOT NULL AND "
                          "severity IS NOT NULL",
           p0, p1)) {
    f.concerns.push_back({ids.Of(row[0]), labels.MaybeOf(row[1]), "", "", row[2].as<int>(),
                          row[3].as<int>(), At(row[4]), MaybeAt(row[5]), row[6].as<bool>()});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_accesses",
           "SELECT participant_id, " PEERPATH_SQL_MICROS("granted_at") " FROM emergency_accesses "
                                                                       "WHERE agency_id = " +
               agency +
               " AND granted_at >= " EVAL_BOUND(1, "") " AND granted_at < " EVAL_BOUND(2, ""),
           p0, p1)) {
    f.emergency_accesses.emplace_back(ids.Of(row[0]), At(row[1]));
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_supporter_contacts",
           "SELECT supporter_id, sum(contacts)::bigint FROM supporter_contacts_month "
           "WHERE agency_id = " +
               agency + " AND month >= $1::date AND month < $2::date GROUP BY supporter_id",
           first_day, day_after)) {
    f.supporter_contacts[ids.Of(row[0])] = row[1].as<int64_t>();
  }
  std::vector<Id> feedback_enrollments;
  for (const auto& row : ExecPrepared(
           tx, "eval_load_feedback",
           "SELECT participant_id, pathway_key, enrollment_id::text, rating, " PEERPATH_SQL_MICROS(
               "given_at") " FROM participant_feedback WHERE agency_id = " +
               agency + " AND given_at >= " EVAL_BOUND(1, "") " AND given_at < " EVAL_BOUND(2, ""),
           p0, p1)) {
    f.feedback.push_back(
        {ids.Of(row[0]), row[1].as<std::string>(), "", row[3].as<int>(), At(row[4])});
    feedback_enrollments.push_back(labels.Of(row[2]));
  }
  // The enrollments named above that the period's enrollments did not include (ended before it,
  // or not known here): read by id, the few there are.
  labels.ReadMissing(tx, agency);
  for (AppointmentFact& a : f.appointments) a.program_id = labels.ProgramOf(a.enrollment_id);
  for (StageChangeFact& c : f.stage_changes) c.program_id = labels.ProgramOf(c.enrollment_id);
  for (ConcernFact& c : f.concerns) {
    c.pathway_key = labels.PathwayOf(c.enrollment_id);
    c.program_id = labels.ProgramOf(c.enrollment_id);
  }
  for (size_t i = 0; i < f.feedback.size(); ++i) {
    f.feedback[i].program_id = labels.ProgramOf(feedback_enrollments[i]);
  }
  // The rollups: fetched here, or on a second connection while the above ran (BuildProgramReport).
  RollupRows fetched;
  const RollupRows* rollups = nullptr;
  if (rollups_elsewhere) {
    absl::StatusOr<RollupRows> got = rollups_elsewhere();
    if (got.ok()) {
      fetched = std::move(*got);
      rollups = &fetched;
    }
  }
  if (rollups == nullptr) {
    fetched = FetchRollupRows(tx, window);
    rollups = &fetched;
  }
  for (const auto& row : rollups->contact_days) {
    f.contact_days.emplace(ids.Of(row[0]), row[1].as<int64_t>());
  }
  // Per enrollment with scores in the period: how many, the latest, and its first ever score.
  // One row per enrollment and month of the period; a period of several months is summed here
  // (months never share a time, so the latest is the row with the latest `last_at`).
  absl::flat_hash_map<Id, size_t> wellbeing_of;
  std::vector<int> last_month;
  for (const auto& row : rollups->wellbeing) {
    const Id enrollment = ids.Of(row[0]);
    const int month = row[2].as<int>();
    auto [it, inserted] = wellbeing_of.try_emplace(enrollment, f.wellbeing.size());
    if (inserted) {
      f.wellbeing.push_back({enrollment, row[1].as<int64_t>(), row[4].as<bool>(), row[5].as<int>(),
                             row[3].as<int>()});
      last_month.push_back(month);
      continue;
    }
    WellbeingFact& w = f.wellbeing[it->second];
    w.scores_in_period += row[1].as<int64_t>();
    if (month > last_month[it->second]) {
      last_month[it->second] = month;
      w.last_score = row[3].as<int>();
    }
  }
  f.ids = ids.size();
  return f;
}

namespace {

// The distinct non-null values of `column` among the agency's enrollments, in order: a skip scan
// over the (agency_id, column) index, one probe per value.
std::vector<std::string> DistinctEnrollmentValues(pqxx::work& tx, const char* name,
                                                  const std::string& column) {
  const std::string next = "SELECT " + column +
                           " FROM enrollments WHERE agency_id = current_setting('app.agency_id', "
                           "true) AND " +
                           column + " > k.v ORDER BY " + column + " LIMIT 1";
  std::vector<std::string> out;
  for (const auto& row : ExecPrepared(
           tx, name,
           "WITH RECURSIVE k(v) AS ((SELECT " + column +
               " FROM enrollments WHERE agency_id = current_setting('app.agency_id', true) AND " +
               column + " IS NOT NULL ORDER BY " + column + " LIMIT 1) UNION ALL SELECT (" + next +
               ") FROM k WHERE k.v IS NOT NULL) SELECT v FROM k WHERE v IS NOT NULL")) {
    out.push_back(row[0].as<std::string>());
  }
  return out;
}

}  // namespace

std::vector<std::string> KnownPathways(pqxx::work& tx) {
  return DistinctEnrollmentValues(tx, "eval_known_pathways", "pathway_key");
}

std::vector<std::string> KnownPrograms(pqxx::work& tx) {
  return DistinctEnrollmentValues(tx, "eval_known_programs", "program_id");
}

std::vector<ScopeKey> ProgramPathwayScopes(pqxx::work& tx) {
  std::vector<ScopeKey> out;
  for (const auto& row :
       ExecPrepared(tx, "eval_program_pathways",
                    "SELECT DISTINCT coalesce(program_id, ''), pathway_key FROM enrollments WHERE "
                    "agency_id = current_setting('app.agency_id', true) ORDER BY 1, 2")) {
    const std::string program = row[0].as<std::string>();
    out.push_back({program.empty() ? kWithoutProgram : program, row[1].as<std::string>()});
  }
  return out;
}

}  // namespace peerpath::evaluation
