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
  const std::string agency = "current_setting('app.agency_id', true)";
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
            "AND o.occurred_at >= " PEERPATH_SQL_TIME_PARAM(
                1) " AND o.occurred_at < " PEERPATH_SQL_TIME_PARAM(2),
        p0, p1, window.zone_name);
  }
  if (parts == RollupParts::kContactDays) return rows;
  // Per enrollment and month of the period: scores, the latest, and the first ever.
  rows.wellbeing = ExecPrepared(
      tx, "eval_load_wellbeing",
      "SELECT m.enrollment_id::text, m.scores, m.month - date '2000-01-01', m.last_score, "
      "f.first_at < " PEERPATH_SQL_TIME_PARAM(
          1) ", f.first_score "
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
  const std::string agency = "current_setting('app.agency_id', true)";
  Interner ids;

  for (const auto& row : ExecPrepared(
           tx, "eval_load_enrollments",
           "SELECT enrollment_id::text, participant_id, pathway_key, " PEERPATH_SQL_MICROS(
               "started_at") ", " PEERPATH_SQL_MICROS("ended_at") ", coalesce(program_id, '') FROM "
                                                                  "enrollments WHERE agency_id = " +
               agency +
               " AND started_at < " PEERPATH_SQL_TIME_PARAM(
                   2) " AND (ended_at IS NULL OR ended_at >= " PEERPATH_SQL_TIME_PARAM(1) ")",
           p0, p1)) {
    f.enrollments.push_back({ids.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>(),
                             row[5].as<std::string>(), At(row[3]), MaybeAt(row[4])});
  }
  // Appointments of the period, and attended ones up to 31 days after it (follow-ups).
  for (const auto& row : ExecPrepared(
           tx, "eval_load_appointments",
           "SELECT a.enrollment_id::text, a.participant_id, a.pathway_key, a.first_appointment, "
           "a.outcome, " PEERPATH_SQL_MICROS(
               "a.scheduled_at") ", a.peer_contact_before, "
                                 "coalesce(e.program_id, '') FROM "
                                 "appointments a LEFT JOIN enrollments e ON "
                                 "e.agency_id = a.agency_id AND "
                                 "e.enrollment_id = a.enrollment_id WHERE "
                                 "a.agency_id = " +
               agency +
               " AND a.scheduled_at >= " PEERPATH_SQL_TIME_PARAM(
                   1) " AND a.scheduled_at < " PEERPATH_SQL_TIME_PARAM(2) " + interval '32 days'",
           p0, p1)) {
    const std::string outcome = row[4].as<std::string>();
    f.appointments.push_back({ids.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>(),
                              row[7].as<std::string>(), row[3].as<bool>(),
                              outcome == "attended" ? AppointmentOutcome::kAttended
                              : outcome == "missed" ? AppointmentOutcome::kMissed
                                                    : AppointmentOutcome::kOther,
                              At(row[5]), row[6].as<bool>()});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_stage_changes",
           "SELECT s.enrollment_id::text, s.participant_id, s.pathway_key, s.to_stage, "
           "" PEERPATH_SQL_MICROS("s.changed_at") ", coalesce(e.program_id, '') FROM stage_changes "
                                                  "s LEFT JOIN enrollments e ON e.agency_id = "
                                                  "s.agency_id AND e.enrollment_id = "
                                                  "s.enrollment_id WHERE s.agency_id = " +
               agency +
               " AND s.changed_at >= " PEERPATH_SQL_TIME_PARAM(
                   1) " AND s.changed_at < " PEERPATH_SQL_TIME_PARAM(2),
           p0, p1)) {
    f.stage_changes.push_back({ids.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>(),
                               row[5].as<std::string>(),
                               row[3].as<std::string>() == "lost_to_follow_up", At(row[4])});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_reconnections",
           "SELECT enrollment_id::text, " PEERPATH_SQL_MICROS(
               "reconnected_at") " FROM reconnections "
                                 "WHERE agency_id = " +
               agency +
               " AND reconnected_at >= " PEERPATH_SQL_TIME_PARAM(
                   1) " AND "
                      "reconnected_at < " PEERPATH_SQL_TIME_PARAM(2) " + interval '32 days'",
           p0, p1)) {
    f.reconnections[ids.Of(row[0])].push_back(At(row[1]));
  }
  for (const auto& row :
       ExecPrepared(tx, "eval_load_outcomes",
                    "SELECT participant_id, kind, discharge_setting, " PEERPATH_SQL_MICROS(
                        "occurred_at") " FROM service_outcomes WHERE agency_id = " +
                        agency +
                        " AND occurred_at >= " PEERPATH_SQL_TIME_PARAM(
                            1) " - interval '32 days' AND "
                               "occurred_at "
                               "< " PEERPATH_SQL_TIME_PARAM(2) " + interval '92 days'",
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
                        " AND started_at < " PEERPATH_SQL_TIME_PARAM(
                            2) " + interval '15 days' AND (ended_at IS NULL OR "
                               "ended_at >= " PEERPATH_SQL_TIME_PARAM(1) " - interval '31 days')",
                    p0, p1)) {
    f.matches.push_back({ids.Of(row[0]), ids.Of(row[1]), ids.MaybeOf(row[2]), At(row[3]),
                         MaybeAt(row[4]), ids.MaybeOf(row[5])});
  }
  for (const auto& row :
       ExecPrepared(tx, "eval_load_ratings",
                    "SELECT participant_id, supporter_id, side, rating, " PEERPATH_SQL_MICROS(
                        "recorded_at") " FROM follow_up_ratings WHERE agency_id = " +
                        agency +
                        " AND recorded_at >= " PEERPATH_SQL_TIME_PARAM(
                            1) " AND recorded_at < " PEERPATH_SQL_TIME_PARAM(2),
                    p0, p1)) {
    f.ratings.push_back({ids.Of(row[0]), ids.Of(row[1]), row[2].as<std::string>() == "participant",
                         row[3].as<int>(), At(row[4])});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_concerns",
           "SELECT c.participant_id, coalesce(c.enrollment_id::text, ''), "
           "coalesce(e.pathway_key, ''), c.category, c.severity, " PEERPATH_SQL_MICROS(
               "c.opened_at") ", " PEERPATH_SQL_MICROS("c.acknowledged_at") ", c.breached, "
                                                                            "coalesce(e.program_id,"
                                                                            " '') "
                                                                            "FROM concerns c "
                                                                            "LEFT JOIN enrollments "
                                                                            "e "
                                                                            "ON e.agency_id = "
                                                                            "c.agency_id "
                                                                            "AND e.enrollment_id = "
                                                                            "c.enrollment_id "
                                                                            "WHERE c.agency_id = " +
               agency +
               " AND c.opened_at >= " PEERPATH_SQL_TIME_PARAM(
                   1) " AND c.opened_at < " PEERPATH_SQL_TIME_PARAM(2) " AND c.participant_id IS "
                                                                       "NOT NULL AND c.category IS "
                                                                       "NOT NULL AND c.severity IS "
                                                                       "NOT NULL",
           p0, p1)) {
    f.concerns.push_back({ids.Of(row[0]), ids.MaybeOf(row[1]), row[2].as<std::string>(),
                          row[8].as<std::string>(), row[3].as<int>(), row[4].as<int>(), At(row[5]),
                          MaybeAt(row[6]), row[7].as<bool>()});
  }
  for (const auto& row : ExecPrepared(
           tx, "eval_load_accesses",
           "SELECT participant_id, " PEERPATH_SQL_MICROS("granted_at") " FROM emergency_accesses "
                                                                       "WHERE agency_id = " +
               agency +
               " AND granted_at >= " PEERPATH_SQL_TIME_PARAM(
                   1) " AND granted_at < " PEERPATH_SQL_TIME_PARAM(2),
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
  for (const auto& row : ExecPrepared(
           tx, "eval_load_feedback",
           "SELECT f.participant_id, f.pathway_key, coalesce(e.program_id, ''), "
           "f.rating, " PEERPATH_SQL_MICROS(
               "f.given_at") " FROM participant_feedback f LEFT JOIN enrollments e ON "
                             "e.agency_id = f.agency_id AND e.enrollment_id = f.enrollment_id "
                             "WHERE f.agency_id = " +
               agency +
               " AND f.given_at >= " PEERPATH_SQL_TIME_PARAM(
                   1) " AND f.given_at < " PEERPATH_SQL_TIME_PARAM(2),
           p0, p1)) {
    f.feedback.push_back({ids.Of(row[0]), row[1].as<std::string>(), row[2].as<std::string>(),
                          row[3].as<int>(), At(row[4])});
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
