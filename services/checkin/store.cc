#include "services/checkin/store.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string_view>
#include <unordered_map>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/db.h"
#include "common/proto_json.h"
#include "common/time_util.h"
#include "peerpath/matching/v1/events.pb.h"
#include "services/checkin/pathway.h"

// A timestamptz column as microseconds since the epoch (NULL stays NULL).
#define PP_US(x) "(extract(epoch FROM " x ") * 1000000)::int8"
// A microseconds parameter as timestamptz; '' is NULL.
#define PP_TS(p) "to_timestamp(NULLIF(" p ", '')::int8 / 1000000.0)"

namespace peerpath::checkin {
namespace {

std::string EnumText(const google::protobuf::EnumDescriptor* d, int value,
                     absl::string_view prefix) {
  const auto* v = d->FindValueByNumber(value);
  if (v == nullptr) return "";
  std::string name = v->name();
  if (absl::StartsWith(name, prefix)) name = name.substr(prefix.size());
  return absl::AsciiStrToLower(name);
}

int EnumValue(const google::protobuf::EnumDescriptor* d, absl::string_view text,
              absl::string_view prefix) {
  const auto* v = d->FindValueByName(absl::StrCat(prefix, absl::AsciiStrToUpper(text)));
  return v == nullptr ? 0 : v->number();
}

std::string Micros(absl::Time t) { return absl::StrCat(absl::ToUnixMicros(t)); }

absl::Time TimeOf(const pqxx::field& f) { return absl::FromUnixMicros(f.as<int64_t>()); }

common::v1::Date DateOf(absl::string_view text) {
  common::v1::Date date;
  std::vector<std::string> parts = absl::StrSplit(text, '-');
  int y = 0, m = 0, d = 0;
  if (parts.size() == 3 && absl::SimpleAtoi(parts[0], &y) && absl::SimpleAtoi(parts[1], &m) &&
      absl::SimpleAtoi(parts[2], &d)) {
    date.set_year(y);
    date.set_month(m);
    date.set_day(d);
  }
  return date;
}

std::string DateText(const common::v1::Date& d) {
  return absl::StrFormat("%04d-%02d-%02d", d.year(), d.month(), d.day());
}

std::string Json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

void FromJson(const std::string& json, google::protobuf::Message* message) {
  (void)ParseJsonMessage(json, message);
}

// Runs `sql` as the connection's prepared statement `name` (prepared on first use per pooled
// connection): the hot path's large statements are parsed and planned once, not per call.

constexpr char kEnrollmentColumns[] =
    "e.id::text, e.agency_id, e.participant_id, e.pathway_key, e.pathway_version, "
    "coalesce(e.appointment_owner, ''), coalesce(e.receiving_clinician, ''), "
    "coalesce(e.receiving_team, ''), coalesce(e.clinical_follow_up_owner, ''), "
    "e.schedule_kind, coalesce(array_to_string(e.schedule_weekdays, ','), ''), "
    "coalesce(e.schedule_every_days, 0), extract(day FROM e.check_in_window)::int, "
    "e.time_zone, to_char(e.starts_on, 'YYYY-MM-DD'), coalesce(to_char(e.ends_on, "
    "'YYYY-MM-DD'), ''), coalesce(to_char(e.review_on, 'YYYY-MM-DD'), ''), "
    "e.status, e.routine, " PP_US("e.routine_stopped_at") ", e.engagement_stage, " PP_US(
        "e.engagement_stage_changed_at") ", e.failed_attempts_in_a_row, " PP_US("e.last_contact_at") ", "
    "e.gate_results::text, " PP_US("e.enrolled_at") ", e.enrolled_by, " PP_US(
        "e.ended_at") ", coalesce(e.ended_by, ''), coalesce(e.end_reason, ''), "
                      "e.consent_gates_held, e.acuity_units, coalesce(e.program_id, '')";
constexpr int kEnrollmentColumnCount = 33;

v1::Enrollment EnrollmentOf(const pqxx::row& r, int o = 0) {
  v1::Enrollment e;
  e.set_enrollment_id(r[o + 0].c_str());
  e.set_agency_id(r[o + 1].c_str());
  e.set_participant_id(r[o + 2].c_str());
  e.set_pathway_key(r[o + 3].c_str());
  e.set_pathway_version(r[o + 4].as<int>());
  auto* owners = e.mutable_owners();
  owners->set_appointment_owner(r[o + 5].c_str());
  owners->set_receiving_clinician(r[o + 6].c_str());
  owners->set_receiving_team(r[o + 7].c_str());
  owners->set_clinical_follow_up_owner(r[o + 8].c_str());
  auto* schedule = e.mutable_schedule();
  if (std::string(r[o + 9].c_str()) == "weekly") {
    for (absl::string_view d : absl::StrSplit(r[o + 10].c_str(), ',', absl::SkipEmpty())) {
      int day = 0;
      if (absl::SimpleAtoi(d, &day)) schedule->mutable_weekly()->add_weekdays(v1::Weekday(day));
    }
  } else {
    schedule->mutable_every_n_days()->set_interval_days(r[o + 11].as<int>());
  }
  schedule->set_window_days(r[o + 12].as<int>());
  e.set_time_zone(r[o + 13].c_str());
  *e.mutable_starts_on() = DateOf(r[o + 14].c_str());
  if (!std::string(r[o + 15].c_str()).empty()) *e.mutable_ends_on() = DateOf(r[o + 15].c_str());
  if (!std::string(r[o + 16].c_str()).empty()) *e.mutable_review_on() = DateOf(r[o + 16].c_str());
  e.set_status(std::string(r[o + 17].c_str()) == "active" ? v1::ENROLLMENT_STATUS_ACTIVE
                                                          : v1::ENROLLMENT_STATUS_ENDED);
  e.set_routine(r[o + 18].as<bool>());
  if (!r[o + 19].is_null()) *e.mutable_routine_stopped_at() = ToProtoTimestamp(TimeOf(r[o + 19]));
  e.set_engagement_stage(v1::EngagementStage(
      EnumValue(v1::EngagementStage_descriptor(), r[o + 20].c_str(), "ENGAGEMENT_STAGE_")));
  *e.mutable_engagement_stage_changed_at() = ToProtoTimestamp(TimeOf(r[o + 21]));
  e.set_failed_attempts_in_a_row(r[o + 22].as<int>());
  if (!r[o + 23].is_null()) *e.mutable_last_contact_at() = ToProtoTimestamp(TimeOf(r[o + 23]));
  v1::Enrollment gates;
  FromJson(absl::StrCat("{\"gate_results\":", r[o + 24].c_str(), "}"), &gates);
  e.mutable_gate_results()->Swap(gates.mutable_gate_results());
  *e.mutable_enrolled_at() = ToProtoTimestamp(TimeOf(r[o + 25]));
  e.set_enrolled_by(r[o + 26].c_str());
  if (!r[o + 27].is_null()) *e.mutable_ended_at() = ToProtoTimestamp(TimeOf(r[o + 27]));
  e.set_ended_by(r[o + 28].c_str());
  e.set_end_reason(v1::EnrollmentEndReason(EnumValue(v1::EnrollmentEndReason_descriptor(),
                                                     r[o + 29].c_str(), "ENROLLMENT_END_REASON_")));
  e.set_consent_gates_held(r[o + 30].as<bool>());
  e.set_program_id(r[o + 32].c_str());
  return e;
}

constexpr char kCheckInColumns[] =
    "c.id::text, c.agency_id, c.enrollment_id::text, coalesce(c.scheduled_check_in_id::text, ''), "
    "c.participant_id, coalesce(c.supporter_id::text, ''), c.recorded_by, c.recorded_by_role, "
    "c.pathway_key, c.pathway_version, c.answers::text, coalesce(c.wellbeing, 0), "
    "coalesce(c.contact_mode, ''), " PP_US("c.occurred_at") ", " PP_US(
        "c.recorded_at") ", " PP_US("c.window_end") ", (extract(epoch FROM c.late_by) * "
                                                    "1000000)::int8";

v1::CheckIn CheckInOf(const pqxx::row& r) {
  v1::CheckIn c;
  c.set_check_in_id(r[0].c_str());
  c.set_agency_id(r[1].c_str());
  c.set_enrollment_id(r[2].c_str());
  c.set_scheduled_check_in_id(r[3].c_str());
  c.set_participant_id(r[4].c_str());
  c.set_supporter_id(r[5].c_str());
  c.set_recorded_by(r[6].c_str());
  c.set_recorded_by_role(r[7].c_str());
  c.set_pathway_key(r[8].c_str());
  c.set_pathway_version(r[9].as<int>());
  v1::CheckIn answers;
  FromJson(r[10].c_str(), &answers);
  c.mutable_answers()->Swap(answers.mutable_answers());
  c.set_wellbeing_score(r[11].as<int>());
  c.set_contact_mode(
      v1::ContactMode(EnumValue(v1::ContactMode_descriptor(), r[12].c_str(), "CONTACT_MODE_")));
  *c.mutable_occurred_at() = ToProtoTimestamp(TimeOf(r[13]));
  *c.mutable_recorded_at() = ToProtoTimestamp(TimeOf(r[14]));
  if (!r[15].is_null()) *c.mutable_window_end() = ToProtoTimestamp(TimeOf(r[15]));
  if (!r[16].is_null()) {
    c.set_late(true);
    const int64_t us = r[16].as<int64_t>();
    c.mutable_late_by()->set_seconds(us / 1000000);
    c.mutable_late_by()->set_nanos(static_cast<int32_t>((us % 1000000) * 1000));
  }
  return c;
}

v1::PathwayVersion PathwayOf(const pqxx::row& r, int o) {
  v1::PathwayVersion p;
  FromJson(r[o + 0].c_str(), &p);
  p.set_pathway_version_id(r[o + 1].c_str());
  p.set_agency_id(r[o + 2].c_str());
  p.set_pathway_key(r[o + 3].c_str());
  p.set_version(r[o + 4].as<int>());
  *p.mutable_published_at() = ToProtoTimestamp(TimeOf(r[o + 5]));
  p.set_published_by(r[o + 6].c_str());
  return p;
}

constexpr char kPathwayColumns[] =
    "p.definition::text, p.id::text, p.agency_id, p.pathway_key, p.version, " PP_US(
        "p.published_at") ", p.published_by";

}  // namespace

v1::ProgramPolicy LoadPolicy(pqxx::work& tx, const std::string& agency_id,
                             const std::string& default_time_zone) {
  v1::ProgramPolicy policy;
  policy.set_agency_id(agency_id);
  policy.set_time_zone(default_time_zone);
  policy.set_missed_contact_failed_attempts(3);
  policy.mutable_at_risk_after()->set_seconds(28 * 86400);
  policy.mutable_lost_to_follow_up_after()->set_seconds(90 * 86400);
  policy.set_wellbeing_drop_points(2);
  policy.set_updated_by(kDefaultPublisher);
  const pqxx::result r = tx.exec(
      "SELECT time_zone, missed_contact_failed_attempts, extract(epoch FROM at_risk_after)::int8, "
      "extract(epoch FROM lost_to_follow_up_after)::int8, wellbeing_drop_points, " PP_US(
          "updated_at") ", updated_by FROM program_policies");
  if (r.empty()) return policy;
  policy.set_time_zone(r[0][0].c_str());
  policy.set_missed_contact_failed_attempts(r[0][1].as<int>());
  policy.mutable_at_risk_after()->set_seconds(r[0][2].as<int64_t>());
  policy.mutable_lost_to_follow_up_after()->set_seconds(r[0][3].as<int64_t>());
  policy.set_wellbeing_drop_points(r[0][4].as<int>());
  *policy.mutable_updated_at() = ToProtoTimestamp(TimeOf(r[0][5]));
  policy.set_updated_by(r[0][6].c_str());
  return policy;
}

void EnsureDefaultPathways(pqxx::work& tx, const std::string& agency_id) {
  std::vector<std::string> keys, names, definitions, flags, units;
  for (const auto& p : DefaultPathways()) {
    keys.push_back(p.pathway_key());
    definitions.push_back(absl::Base64Escape(Json(p)));
    units.push_back(absl::StrCat(p.acuity_units()));
    flags.push_back(p.requires_end_or_review() ? "t" : "f");
    names.push_back(absl::Base64Escape(p.display_name()));
  }
  // One statement; a concurrent first use by another call inserts nothing twice.
  tx.exec_params0(
      "INSERT INTO pathway_versions (agency_id, pathway_key, version, display_name, definition, "
      "requires_end_or_review, requires_clinical_owner, acuity_units, published_by) "
      "SELECT $1, k, 1, convert_from(decode(n, 'base64'), 'UTF8'), "
      "convert_from(decode(d, 'base64'), 'UTF8')::jsonb, f::boolean, k = 'crisis_transition', "
      "u::smallint, $7 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) "
      "AS x(k, n, d, f, u) ON CONFLICT (agency_id, pathway_key, version) DO NOTHING",
      agency_id, TextArrayLiteral(keys), TextArrayLiteral(names), TextArrayLiteral(definitions),
      TextArrayLiteral(flags), TextArrayLiteral(units), std::string(kDefaultPublisher));
}

std::optional<v1::PathwayVersion> LoadPathway(pqxx::work& tx, const std::string& pathway_key,
                                              int version) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kPathwayColumns,
                   " FROM pathway_versions p WHERE p.pathway_key = $1 AND ($2 = 0 OR p.version = "
                   "$2) ORDER BY p.version DESC LIMIT 1"),
      pathway_key, version);
  if (r.empty()) return std::nullopt;
  return PathwayOf(r[0], 0);
}

std::vector<v1::PathwayVersion> ListPathways(pqxx::work& tx, const std::string& pathway_key,
                                             bool latest_only, int limit) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kPathwayColumns,
                   " FROM pathway_versions p WHERE ($1 = '' OR p.pathway_key = $1) AND (NOT $2 OR "
                   "p.version = (SELECT max(q.version) FROM pathway_versions q WHERE "
                   "q.pathway_key = p.pathway_key)) ORDER BY p.pathway_key, p.version DESC "
                   "LIMIT $3"),
      pathway_key, latest_only, limit);
  std::vector<v1::PathwayVersion> out;
  for (const auto& row : r) out.push_back(PathwayOf(row, 0));
  return out;
}

std::optional<v1::PathwayVersion> PublishPathway(pqxx::work& tx, const std::string& agency_id,
                                                 const v1::PathwayVersion& pathway,
                                                 int base_version,
                                                 const std::string& published_by) {
  v1::PathwayVersion definition = pathway;
  definition.clear_pathway_version_id();
  definition.clear_agency_id();
  definition.clear_version();
  definition.clear_published_at();
  definition.clear_published_by();
  if (definition.acuity_units() == 0) definition.set_acuity_units(1);
  bool clinical_owner = false;
  for (const auto& g : definition.gates()) {
    clinical_owner = clinical_owner || g.owner_gate() == v1::OWNER_GATE_CLINICAL_FOLLOW_UP_OWNER;
  }
  const pqxx::result r = tx.exec_params(
      absl::StrCat(
          "WITH p AS (INSERT INTO pathway_versions (agency_id, pathway_key, version, "
          "display_name, definition, requires_end_or_review, requires_clinical_owner, "
          "acuity_units, published_by) SELECT $1, $2, $3 + 1, $4, $5::jsonb, $6, $7, $8, $9 "
          "WHERE (SELECT coalesce(max(version), 0) FROM pathway_versions WHERE pathway_key = $2) "
          "= $3 ON CONFLICT (agency_id, pathway_key, version) DO NOTHING RETURNING *) SELECT ",
          kPathwayColumns, " FROM p"),
      agency_id, definition.pathway_key(), base_version, definition.display_name(),
      Json(definition), definition.requires_end_or_review(), clinical_owner,
      definition.acuity_units(), published_by);
  if (r.empty()) return std::nullopt;
  return PathwayOf(r[0], 0);
}

const char kKnownPeerSupportersSql[] =
    "SELECT x FROM unnest($1::text[]) x WHERE EXISTS (SELECT 1 FROM supporter_matches m WHERE "
    "m.supporter_subject = x) OR EXISTS (SELECT 1 FROM supporter_matches m WHERE m.supporter_id = "
    "(CASE WHEN x ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN "
    "x::uuid END))";

std::set<std::string> KnownPeerSupporters(pqxx::work& tx, const std::vector<std::string>& ids) {
  std::set<std::string> out;
  if (ids.empty()) return out;
  const pqxx::result r = tx.exec_params(kKnownPeerSupportersSql, TextArrayLiteral(ids));
  for (const auto& row : r) out.insert(row[0].c_str());
  return out;
}

std::optional<v1::Enrollment> InsertEnrollment(pqxx::work& tx, const std::string& agency_id,
                                               const v1::Enrollment& e) {
  const auto& s = e.schedule();
  std::vector<std::string> weekdays;
  for (int d : s.weekly().weekdays()) weekdays.push_back(absl::StrCat(d));
  v1::Enrollment gates;
  *gates.mutable_gate_results() = e.gate_results();
  const pqxx::result r = tx.exec_params(
      absl::StrCat(
          "WITH e AS (INSERT INTO enrollments (id, agency_id, participant_id, pathway_key, "
          "pathway_version, appointment_owner, receiving_clinician, receiving_team, "
          "clinical_follow_up_owner, schedule_kind, schedule_weekdays, schedule_every_days, "
          "check_in_window, time_zone, starts_on, ends_on, review_on, enrolled_by, gate_results, "
          "consent_gates_held, acuity_units, program_id) VALUES ($1::uuid, $2, $3, $4, $5, "
          "NULLIF($6, ''), "
          "NULLIF($7, ''), NULLIF($8, ''), NULLIF($9, ''), $10::text, "
          "CASE WHEN $10::text = 'weekly' THEN $11::smallint[] END, NULLIF($12, 0), "
          "make_interval(days => $13), $14, $15::date, NULLIF($16, '')::date, "
          "NULLIF($17, '')::date, $18, coalesce(($19::jsonb)->'gate_results', '[]'), true, $20, "
          "NULLIF($21, '')) "
          "ON CONFLICT (agency_id, participant_id, pathway_key) WHERE status = 'active' "
          "DO NOTHING RETURNING *) SELECT ",
          kEnrollmentColumns, " FROM e"),
      e.enrollment_id(), agency_id, e.participant_id(), e.pathway_key(), e.pathway_version(),
      e.owners().appointment_owner(), e.owners().receiving_clinician(), e.owners().receiving_team(),
      e.owners().clinical_follow_up_owner(),
      std::string(s.has_weekly() ? "weekly" : "every_n_days"), TextArrayLiteral(weekdays),
      s.every_n_days().interval_days(), std::max(1, s.window_days()), e.time_zone(),
      DateText(e.starts_on()), e.has_ends_on() ? DateText(e.ends_on()) : std::string(),
      e.has_review_on() ? DateText(e.review_on()) : std::string(), e.enrolled_by(), Json(gates), 0,
      e.program_id());
  if (r.empty()) return std::nullopt;
  return EnrollmentOf(r[0]);
}

bool UpdateConsentGates(pqxx::work& tx, const std::string& enrollment_id,
                        const v1::Enrollment& gate_results, bool held) {
  v1::Enrollment gates;
  *gates.mutable_gate_results() = gate_results.gate_results();
  const pqxx::result r = tx.exec_params(
      "WITH old AS (SELECT consent_gates_held FROM enrollments WHERE id = $1::uuid FOR UPDATE) "
      "UPDATE enrollments e SET gate_results = coalesce(($2::jsonb)->'gate_results', '[]'), "
      "consent_gates_held = $3 FROM old WHERE e.id = $1::uuid RETURNING old.consent_gates_held",
      enrollment_id, Json(gates), held);
  return !r.empty() && r[0][0].as<bool>() != held;
}

absl::Time InsertParticipantFeedback(pqxx::work& tx, const std::string& agency_id,
                                     const v1::ParticipantFeedback& f) {
  const pqxx::row r = tx.exec_params1(
      "INSERT INTO participant_feedback (id, agency_id, enrollment_id, participant_id, rating, "
      "comment, given_at, recorded_by, recorded_by_role) VALUES ($1::uuid, $2, $3::uuid, $4, $5, "
      "$6, timestamptz 'epoch' + $7::bigint * interval '1 microsecond', $8, $9) RETURNING " PP_US(
          "recorded_at"),
      f.feedback_id(), agency_id, f.enrollment_id(), f.participant_id(), f.rating(), f.comment(),
      absl::ToUnixMicros(FromProtoTimestamp(f.given_at())), f.recorded_by(), f.recorded_by_role());
  return TimeOf(r[0]);
}

std::vector<v1::ParticipantFeedback> ListParticipantFeedbackOf(pqxx::work& tx,
                                                               const std::string& enrollment_id,
                                                               const FeedbackCursor& after,
                                                               int limit) {
  std::vector<v1::ParticipantFeedback> out;
  // Newest first, ties by id: the page after `after` continues exactly where it ended.
  static const std::string kSql = absl::StrCat(
      "SELECT id::text, enrollment_id::text, participant_id, rating, comment, ", PP_US("given_at"),
      ", ", PP_US("recorded_at"),
      ", recorded_by, recorded_by_role FROM participant_feedback WHERE enrollment_id = $1::uuid "
      "AND ($3 = '' OR given_at < ",
      PEERPATH_SQL_TIME_PARAM(4), " OR (given_at = ", PEERPATH_SQL_TIME_PARAM(4),
      " AND id > NULLIF($3, '')::uuid)) ORDER BY given_at DESC, id LIMIT $2");
  for (const auto& r : tx.exec_params(kSql, enrollment_id, limit, after.id, after.given_micros)) {
    v1::ParticipantFeedback& f = out.emplace_back();
    f.set_feedback_id(r[0].c_str());
    f.set_enrollment_id(r[1].c_str());
    f.set_participant_id(r[2].c_str());
    f.set_rating(r[3].as<int>());
    f.set_comment(r[4].c_str());
    *f.mutable_given_at() = ToProtoTimestamp(TimeOf(r[5]));
    *f.mutable_recorded_at() = ToProtoTimestamp(TimeOf(r[6]));
    f.set_recorded_by(r[7].c_str());
    f.set_recorded_by_role(r[8].c_str());
  }
  return out;
}

std::optional<v1::Enrollment> LoadEnrollment(pqxx::work& tx, const std::string& enrollment_id,
                                             bool lock) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kEnrollmentColumns, " FROM enrollments e WHERE e.id = $1::uuid",
                   lock ? " FOR UPDATE" : ""),
      enrollment_id);
  if (r.empty()) return std::nullopt;
  return EnrollmentOf(r[0]);
}

std::vector<v1::Enrollment> ListEnrollments(pqxx::work& tx, const EnrollmentFilter& f) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kEnrollmentColumns,
                   " FROM enrollments e WHERE e.agency_id = " PEERPATH_SQL_SCOPED_AGENCY
                   " AND ($1 = '' OR e.participant_id = $1) "
                   "AND ($2 = '' OR e.pathway_key = $2) "
                   "AND (cardinality($3::text[]) = 0 OR e.status = ANY ($3::text[])) "
                   "AND ($4 = '' OR EXISTS (SELECT 1 FROM supporter_matches m WHERE m.active AND "
                   "m.participant_id = e.participant_id AND m.supporter_subject = $4)) "
                   "AND ($5 = '' OR EXISTS (SELECT 1 FROM supporter_matches m WHERE m.active AND "
                   "m.participant_id = e.participant_id AND m.supporter_id::text = $5)) "
                   "AND ($6 = '' OR (e.enrolled_at, e.id) < (" PP_TS(
                       "$6") ", $7::uuid)) "
                             "AND ($9 = '' OR EXISTS (SELECT 1 FROM supporter_matches m WHERE "
                             "m.active AND m.participant_id = e.participant_id AND "
                             "m.supervisor_subject = $9)) "
                             "ORDER BY e.enrolled_at DESC, e.id DESC LIMIT $8"),
      f.participant_id, f.pathway_key, TextArrayLiteral(f.statuses), f.supporter_subject,
      f.supporter_id, f.after_id.empty() ? std::string() : absl::StrCat(f.after_enrolled_micros),
      f.after_id.empty() ? std::string("00000000-0000-0000-0000-000000000000") : f.after_id,
      f.limit, f.supervisor_subject);
  std::vector<v1::Enrollment> out;
  for (const auto& row : r) out.push_back(EnrollmentOf(row));
  return out;
}

v1::Enrollment EndEnrollment(pqxx::work& tx, const std::string& enrollment_id,
                             const std::string& reason, const std::string& ended_by) {
  const pqxx::row r = tx.exec_params1(
      absl::StrCat("WITH c AS (UPDATE scheduled_check_ins SET status = 'cancelled', "
                   "status_changed_at = now() WHERE enrollment_id = $1::uuid AND status = 'due' "
                   "RETURNING 1), e AS (UPDATE enrollments SET status = 'ended', ended_at = now(), "
                   "ended_by = $3, end_reason = $2 WHERE id = $1::uuid RETURNING *) "
                   "SELECT ",
                   kEnrollmentColumns, ", (SELECT count(*) FROM c) FROM e"),
      enrollment_id, reason, ended_by);
  return EnrollmentOf(r);
}

std::pair<int, int> EnrollmentCounts(pqxx::work& tx, const std::string& enrollment_id) {
  const pqxx::row r = tx.exec_params1(
      "SELECT (SELECT count(*) FROM check_ins WHERE enrollment_id = $1::uuid), "
      "(SELECT count(*) FROM scheduled_check_ins WHERE enrollment_id = $1::uuid AND "
      "status = 'missed')",
      enrollment_id);
  return {r[0].as<int>(), r[1].as<int>()};
}

namespace {

// Published pathway versions never change: RecordCheckIn keeps the ones it has read, by id, and
// check_in_context_2 leaves out the row of every version the agency's list here names. Bounded:
// past kMaxCachedPathways versions it starts again.
class PathwayCache {
 public:
  std::shared_ptr<const v1::PathwayVersion> Find(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : it->second;
  }
  // The ids held for `agency_id` as a uuid[] literal.
  std::string KnownLiteral(const std::string& agency_id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ids_of_agency_.find(agency_id);
    return "{" + (it == ids_of_agency_.end() ? "" : absl::StrJoin(it->second, ",")) + "}";
  }
  void Put(const v1::PathwayVersion& pathway) {
    constexpr size_t kMaxCachedPathways = 4096;
    std::lock_guard<std::mutex> lock(mu_);
    if (by_id_.contains(pathway.pathway_version_id())) return;
    if (by_id_.size() >= kMaxCachedPathways) {
      by_id_.clear();
      ids_of_agency_.clear();
    }
    by_id_[pathway.pathway_version_id()] = std::make_shared<const v1::PathwayVersion>(pathway);
    ids_of_agency_[pathway.agency_id()].push_back(pathway.pathway_version_id());
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const v1::PathwayVersion>> by_id_;
  std::unordered_map<std::string, std::vector<std::string>> ids_of_agency_;
};

PathwayCache& Pathways() {
  static PathwayCache* const cache = new PathwayCache();
  return *cache;
}

// The columns both reads select, from a row `c` of check_in_context_2 or check_in_contexts.
const std::string& ContextColumns() {
  static const std::string* const columns = new std::string(absl::StrCat(
      kEnrollmentColumns, ", ", kPathwayColumns,
      ", c.now_us, c.o_supporter_id, c.o_supporter_subject, c.o_wellbeing_drop_points, "
      "c.o_latest_wellbeing, c.o_occurrences, c.o_missed_contact_failed_attempts, "
      "c.o_supervisor_subject, c.en_version, c.o_idempotency_method, "
      "c.o_idempotency_request_hash, c.o_idempotency_response, c.pw_id::text"));
  return *columns;
}
// The enrollment's and the pathway version's rows as columns.
constexpr char kContextRows[] =
    " LEFT JOIN LATERAL (SELECT (c.en).*) e ON true LEFT JOIN LATERAL (SELECT (c.pw).*) p ON true";

// One read's row as CheckInRead; false when the read left out the pathway version's row (the
// cache held it) and the cache has dropped it since: read again naming no version.
bool ParseContextRow(const pqxx::row& row, CheckInRead& read) {
  read = CheckInRead{};
  const int o = kEnrollmentColumnCount + 7;
  if (!row[o + 9].is_null()) {
    read.earlier_call =
        StoredIdempotentCall{row[o + 9].c_str(), row[o + 10].c_str(), row[o + 11].c_str()};
  }
  if (row[0].is_null()) return true;
  std::shared_ptr<const v1::PathwayVersion> cached;
  if (row[kEnrollmentColumnCount + 1].is_null()) {
    cached = Pathways().Find(row[o + 12].c_str());
    if (cached == nullptr) return false;
  }
  CheckInContext& c = read.context.emplace();
  c.enrollment = EnrollmentOf(row);
  if (cached != nullptr) {
    c.pathway = *cached;
  } else {
    c.pathway = PathwayOf(row, kEnrollmentColumnCount);
    Pathways().Put(c.pathway);
  }
  c.now = TimeOf(row[o]);
  if (!row[o + 1].is_null()) {
    c.supporter = ActiveSupporter{row[o + 1].c_str(), row[o + 2].c_str(), row[o + 7].c_str()};
  }
  c.wellbeing_drop_points = row[o + 3].as<int>();
  if (!row[o + 4].is_null()) {
    for (absl::string_view item : absl::StrSplit(row[o + 4].c_str(), ',')) {
      std::pair<std::string, std::string> parts = absl::StrSplit(item, ':');
      int64_t us = 0;
      int score = 0;
      if (absl::SimpleAtoi(parts.first, &us) && absl::SimpleAtoi(parts.second, &score)) {
        c.latest_wellbeing.push_back({absl::FromUnixMicros(us), score});
      }
    }
  }
  if (!row[o + 5].is_null()) {
    for (absl::string_view item : absl::StrSplit(row[o + 5].c_str(), ',')) {
      std::vector<std::string> parts = absl::StrSplit(item, ' ');
      if (parts.size() != 4) continue;
      const common::v1::Date d = DateOf(parts[1]);
      int64_t us = 0;
      (void)absl::SimpleAtoi(parts[3], &us);
      c.occurrences.push_back({parts[0], absl::CivilDay(d.year(), d.month(), d.day()), parts[2],
                               absl::FromUnixMicros(us)});
    }
  }
  c.missed_contact_failed_attempts = row[o + 6].as<int>();
  c.enrollment_version = row[o + 8].c_str();
  return true;
}

std::string UtcDay(absl::Time t) { return absl::FormatTime("%Y-%m-%d", t, absl::UTCTimeZone()); }

// Runs `read_with(known)` naming as known the pathway versions the cache holds for the agency,
// and once more naming none when a row left out a version the cache has dropped meanwhile
// (`read_with` answers nullopt then).
template <typename Result, typename ReadWith>
Result ReadNamingCachedPathways(const std::string& agency_id, ReadWith read_with) {
  std::optional<Result> result = read_with(Pathways().KnownLiteral(agency_id));
  if (!result) result = read_with("{}");
  if (!result) throw std::runtime_error("a check-in read left out a pathway version not named");
  return std::move(*result);
}

}  // namespace

CheckInRead LoadCheckInContext(pqxx::transaction_base& tx, const std::string& agency_id,
                               const std::string& enrollment_id,
                               const std::string& scheduled_check_in_id, absl::Time occurred_at,
                               const std::string& idempotency_key, bool lock) {
  static const std::string kSql = absl::StrCat(
      "SELECT ", ContextColumns(),
      " FROM check_in_context_2($1, $2::uuid, $3, $4::date, $5, $6, $7::uuid[]) c", kContextRows);
  return ReadNamingCachedPathways<CheckInRead>(
      agency_id, [&](const std::string& known) -> std::optional<CheckInRead> {
        const pqxx::result r =
            ExecPrepared(tx, "checkin_context_2", kSql, agency_id, enrollment_id,
                         scheduled_check_in_id, UtcDay(occurred_at), idempotency_key, lock, known);
        CheckInRead read;
        if (r.empty() || ParseContextRow(r[0], read)) return read;
        return std::nullopt;
      });
}

std::vector<CheckInRead> LoadCheckInContexts(
    pqxx::transaction_base& tx, const std::string& agency_id,
    const std::vector<const CheckInContextQuery*>& queries) {
  static const std::string kSql = absl::StrCat(
      "SELECT ", ContextColumns(),
      ", c.n FROM check_in_contexts($1, $2::uuid[], $3::text[], $4::date[], $5::text[], "
      "$6::uuid[]) c",
      kContextRows, " ORDER BY c.n");
  std::vector<std::string> enrollments, scheduled, days, keys;
  for (const CheckInContextQuery* q : queries) {
    if (q->agency_id != agency_id) {
      throw std::invalid_argument("LoadCheckInContexts: a check-in of another agency in the batch");
    }
    enrollments.push_back(q->enrollment_id);
    scheduled.push_back(q->scheduled_check_in_id);
    days.push_back(UtcDay(q->occurred_at));
    keys.push_back(q->idempotency_key);
  }
  return ReadNamingCachedPathways<std::vector<CheckInRead>>(
      agency_id, [&](const std::string& known) -> std::optional<std::vector<CheckInRead>> {
        const pqxx::result r = ExecPrepared(
            tx, "checkin_contexts", kSql, agency_id, TextArrayLiteral(enrollments),
            TextArrayLiteral(scheduled), TextArrayLiteral(days), TextArrayLiteral(keys), known);
        if (r.size() != queries.size()) {
          throw std::runtime_error(
              "check_in_contexts answered a count of items unlike the batch's");
        }
        std::vector<CheckInRead> reads(queries.size());
        bool complete = true;
        for (size_t i = 0; i < r.size(); ++i) {
          if (r[i][r[i].size() - 1].as<int64_t>() != static_cast<int64_t>(i) + 1) {
            throw std::runtime_error("check_in_contexts answered its items out of order");
          }
          complete = ParseContextRow(r[i], reads[i]) && complete;
        }
        if (!complete) return std::nullopt;
        return reads;
      });
}

const std::string& OutboxEvents::Add(std::unique_ptr<google::protobuf::Message> event) {
  events_.push_back(std::move(event));
  ids_.push_back(RandomUuid());
  return ids_.back();
}

std::vector<std::string> OutboxEvents::Types() const {
  std::vector<std::string> types;
  for (const auto& e : events_) types.push_back(e->GetDescriptor()->full_name());
  return types;
}

std::vector<std::string> OutboxEvents::Payloads() const {
  std::vector<std::string> payloads;
  for (const auto& e : events_) payloads.push_back(absl::Base64Escape(e->SerializeAsString()));
  return payloads;
}

std::string OutboxEvents::TypesLiteral() const { return TextArrayLiteral(Types()); }
std::string OutboxEvents::PayloadsLiteral() const { return TextArrayLiteral(Payloads()); }
std::string OutboxEvents::IdsLiteral() const { return TextArrayLiteral(ids_); }

namespace {

// The check-in's answers as the JSON object stored in check_ins.answers.
std::string AnswersJson(const v1::CheckIn& c) {
  v1::CheckIn answers;
  *answers.mutable_answers() = c.answers();
  std::string json = Json(answers);
  return json.empty() ? "{}" : json;
}

int64_t LateMicros(const v1::CheckIn& c) {
  return c.late_by().seconds() * 1000000 + c.late_by().nanos() / 1000;
}

bool CompletesOccurrence(const CheckInWrite& w) {
  return !w.check_in.scheduled_check_in_id().empty() && !w.occurrence_due_on.empty();
}

// One item of record_check_ins (migration 0011): a check_in_write as a JSON object.
nlohmann::json CheckInWriteJson(int n, const CheckInWrite& w) {
  const v1::CheckIn& c = w.check_in;
  nlohmann::json j = {
      {"n", n},
      {"check_in", c.check_in_id()},
      {"enrollment", c.enrollment_id()},
      {"enrollment_version", w.enrollment_version},
      {"scheduled", c.scheduled_check_in_id()},
      {"participant", c.participant_id()},
      {"supporter", c.supporter_id()},
      {"recorded_by", c.recorded_by()},
      {"recorded_by_role", c.recorded_by_role()},
      {"pathway_key", c.pathway_key()},
      {"pathway_version", c.pathway_version()},
      {"answers", nlohmann::json::parse(AnswersJson(c))},
      {"wellbeing", c.wellbeing_score()},
      {"contact_mode", EnumText(v1::ContactMode_descriptor(), c.contact_mode(), "CONTACT_MODE_")},
      {"occurred_us", absl::ToUnixMicros(FromProtoTimestamp(c.occurred_at()))},
      {"recorded_us", absl::ToUnixMicros(FromProtoTimestamp(c.recorded_at()))},
      {"late_us", c.late() ? nlohmann::json(LateMicros(c)) : nlohmann::json()},
      {"fired_rule_ids", w.fired_rule_ids},
      {"reconnection", w.reconnection},
      {"stops_routine", w.stops_routine},
      {"due_on", CompletesOccurrence(w) ? nlohmann::json(w.occurrence_due_on) : nlohmann::json()},
      {"window_start_us", CompletesOccurrence(w)
                              ? nlohmann::json(absl::ToUnixMicros(w.occurrence_window_start))
                              : nlohmann::json()},
      {"window_end_us", c.has_window_end()
                            ? nlohmann::json(absl::ToUnixMicros(FromProtoTimestamp(c.window_end())))
                            : nlohmann::json()},
      {"event_types", w.events.Types()},
      {"event_payloads", w.events.Payloads()},
      {"event_ids", w.events.Ids()},
      {"idempotency_key", w.idempotency_key},
      {"method", w.method},
      {"request_hash", w.request_hash_hex},
      {"response", absl::Base64Escape(w.response_bytes)},
      {"actor", w.audit.actor},
      {"actor_role", w.audit.actor_role},
      {"action", w.audit.action},
      {"request_id", w.audit.request_id},
  };
  return j;
}

}  // namespace

void WriteCheckIn(pqxx::transaction_base& tx, const CheckInWrite& w) {
  const v1::CheckIn& c = w.check_in;
  const bool completes_occurrence = CompletesOccurrence(w);
  std::optional<int64_t> late_us;
  if (c.late()) late_us = LateMicros(c);
  std::optional<int64_t> window_end_us;
  if (c.has_window_end()) window_end_us = absl::ToUnixMicros(FromProtoTimestamp(c.window_end()));
  ExecPrepared(
      tx, "checkin_write",
      "SELECT record_check_in($1, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9, $10, $11, "
      "$12::jsonb, $13, $14, $15, $16, $17, $18::text[], $19, $20, $21, $22, $23, $24::text[], "
      "$25::text[], $26::text[], $27, $28, $29, $30, $31, $32, $33, $34)",
      w.agency_id, c.check_in_id(), c.enrollment_id(), w.enrollment_version,
      c.scheduled_check_in_id(), c.participant_id(), c.supporter_id(), c.recorded_by(),
      c.recorded_by_role(), c.pathway_key(), c.pathway_version(), AnswersJson(c),
      c.wellbeing_score(),
      EnumText(v1::ContactMode_descriptor(), c.contact_mode(), "CONTACT_MODE_"),
      absl::ToUnixMicros(FromProtoTimestamp(c.occurred_at())),
      absl::ToUnixMicros(FromProtoTimestamp(c.recorded_at())), late_us,
      TextArrayLiteral(w.fired_rule_ids), w.reconnection, w.stops_routine,
      completes_occurrence ? std::optional<std::string>(w.occurrence_due_on) : std::nullopt,
      completes_occurrence ? std::optional<int64_t>(absl::ToUnixMicros(w.occurrence_window_start))
                           : std::nullopt,
      window_end_us, w.events.TypesLiteral(), w.events.PayloadsLiteral(), w.events.IdsLiteral(),
      w.idempotency_key, w.method, w.request_hash_hex, absl::Base64Escape(w.response_bytes),
      w.audit.actor, w.audit.actor_role, w.audit.action, w.audit.request_id);
}

std::vector<CheckInWriteOutcome> WriteCheckIns(pqxx::transaction_base& tx,
                                               const std::string& agency_id,
                                               const std::vector<const CheckInWrite*>& writes) {
  nlohmann::json items = nlohmann::json::array();
  for (std::size_t n = 0; n < writes.size(); ++n) {
    if (writes[n]->agency_id != agency_id) {
      throw std::invalid_argument("WriteCheckIns: a check-in of another agency in the batch");
    }
    items.push_back(CheckInWriteJson(static_cast<int>(n), *writes[n]));
  }
  const pqxx::result rows = ExecPrepared(tx, "checkin_write_batch",
                                         "SELECT n, outcome FROM record_check_ins($1, $2::jsonb)",
                                         agency_id, items.dump());
  std::vector<CheckInWriteOutcome> outcomes(writes.size(), CheckInWriteOutcome::kStale);
  if (rows.size() != writes.size()) {
    throw std::runtime_error("record_check_ins answered a count of items unlike the batch's");
  }
  for (const pqxx::row& r : rows) {
    const int n = r[0].as<int>();
    const std::string_view outcome = r[1].c_str();
    if (n < 0 || n >= static_cast<int>(writes.size())) {
      throw std::runtime_error("record_check_ins answered an item it was not given");
    }
    outcomes[n] = outcome == "recorded"      ? CheckInWriteOutcome::kRecorded
                  : outcome == "key_claimed" ? CheckInWriteOutcome::kKeyClaimed
                                             : CheckInWriteOutcome::kStale;
  }
  return outcomes;
}

void WriteContactAttempt(pqxx::work& tx, const ContactAttemptWrite& w) {
  const v1::ContactAttempt& a = w.attempt;
  const pqxx::row r = tx.exec_params1(
      "WITH ca AS (INSERT INTO contact_attempts (id, agency_id, enrollment_id, participant_id, "
      "supporter_id, attempted_by, channel, outcome, is_reconnection, attempted_at, recorded_at) "
      "VALUES ($2::uuid, $1, $3::uuid, $4, NULLIF($5::text, '')::uuid, $6, $7, $8, $9, " PP_TS(
          "$10") ", now()) RETURNING 1), "
                 "en AS (UPDATE enrollments SET engagement_stage = $11, "
                 "engagement_stage_changed_at = " PP_TS("$12") ", failed_attempts_in_a_row = $13, "
      "last_contact_at = " PP_TS("$14") " WHERE id = $3::uuid RETURNING 1), "
      "ev AS (INSERT INTO outbox (event_id, agency_id, event_type, aggregate_id, payload) "
      "SELECT i::uuid, $1, t, $3, decode(p, 'base64') FROM unnest($15::text[], $16::text[], "
      "$17::text[]) WITH ORDINALITY AS x(t, p, i, n) ORDER BY n RETURNING 1), "
      "idem AS (UPDATE idempotency_keys SET response = decode($18, 'base64') WHERE agency_id = "
      "$1 AND idempotency_key = $19 RETURNING 1) "
      "SELECT audit_append($1, $20::text, $21::text, $22::text, 'contact_attempt'::text, "
      "$2::text, $4::text, 'allowed'::text, $23::text), (SELECT count(*) FROM ca), "
      "(SELECT count(*) FROM en), (SELECT count(*) FROM ev), (SELECT count(*) FROM idem)",
      w.agency_id, a.contact_attempt_id(), a.enrollment_id(), a.participant_id(), a.supporter_id(),
      a.attempted_by(), EnumText(v1::ContactChannel_descriptor(), a.channel(), "CONTACT_CHANNEL_"),
      EnumText(v1::ContactOutcome_descriptor(), a.outcome(), "CONTACT_OUTCOME_"),
      a.is_reconnection(), Micros(FromProtoTimestamp(a.attempted_at())),
      EnumText(v1::EngagementStage_descriptor(), w.stage, "ENGAGEMENT_STAGE_"),
      Micros(w.stage_changed_at), w.failed_attempts_in_a_row,
      w.last_contact_at ? Micros(*w.last_contact_at) : std::string(), w.events.TypesLiteral(),
      w.events.PayloadsLiteral(), w.events.IdsLiteral(), absl::Base64Escape(w.response_bytes),
      w.idempotency_key, w.audit.actor, w.audit.actor_role, w.audit.action, w.audit.request_id);
  if (r[1].as<int>() != 1 || r[2].as<int>() != 1 || r[4].as<int>() != 1) {
    throw std::runtime_error("contact attempt write incomplete");
  }
}

namespace {

constexpr char kAppointmentColumns[] =
    "a.id::text, a.agency_id, a.enrollment_id::text, a.participant_id, a.kind, " PP_US(
        "a.scheduled_at") ", a.owner_id, a.outcome, " PP_US("a.outcome_recorded_at") ", "
    "coalesce(a.outcome_recorded_by, ''), coalesce(a.rescheduled_to::text, ''), coalesce((SELECT "
    "f.id::text FROM appointments f WHERE f.rescheduled_to = a.id), ''), " PP_US(
        "a.created_at") ", a.created_by";

v1::Appointment AppointmentOf(const pqxx::row& r) {
  v1::Appointment a;
  a.set_appointment_id(r[0].c_str());
  a.set_agency_id(r[1].c_str());
  a.set_enrollment_id(r[2].c_str());
  a.set_participant_id(r[3].c_str());
  a.set_kind(v1::AppointmentKind(
      EnumValue(v1::AppointmentKind_descriptor(), r[4].c_str(), "APPOINTMENT_KIND_")));
  *a.mutable_scheduled_at() = ToProtoTimestamp(TimeOf(r[5]));
  a.set_owner_id(r[6].c_str());
  a.set_outcome(v1::AppointmentOutcome(
      EnumValue(v1::AppointmentOutcome_descriptor(), r[7].c_str(), "APPOINTMENT_OUTCOME_")));
  if (!r[8].is_null()) *a.mutable_outcome_recorded_at() = ToProtoTimestamp(TimeOf(r[8]));
  a.set_outcome_recorded_by(r[9].c_str());
  a.set_rescheduled_to_appointment_id(r[10].c_str());
  a.set_rescheduled_from_appointment_id(r[11].c_str());
  *a.mutable_created_at() = ToProtoTimestamp(TimeOf(r[12]));
  a.set_created_by(r[13].c_str());
  return a;
}

}  // namespace

v1::Appointment InsertAppointment(pqxx::work& tx, const std::string& agency_id,
                                  const v1::Appointment& a, const std::string& created_by,
                                  const std::string& rescheduled_from) {
  tx.exec_params0(
      "INSERT INTO appointments (id, agency_id, enrollment_id, participant_id, kind, "
      "scheduled_at, owner_id, created_by) VALUES ($1::uuid, $2, $3::uuid, $4, $5, " PP_TS(
          "$6") ", $7, $8)",
      a.appointment_id(), agency_id, a.enrollment_id(), a.participant_id(),
      EnumText(v1::AppointmentKind_descriptor(), a.kind(), "APPOINTMENT_KIND_"),
      Micros(FromProtoTimestamp(a.scheduled_at())), a.owner_id(), created_by);
  if (!rescheduled_from.empty()) {
    tx.exec_params0("UPDATE appointments SET rescheduled_to = $2::uuid WHERE id = $1::uuid",
                    rescheduled_from, a.appointment_id());
  }
  return *LoadAppointment(tx, a.appointment_id());
}

std::vector<v1::Appointment> ListAppointments(pqxx::work& tx, const AppointmentFilter& f) {
  std::vector<std::string> kinds, outcomes;
  for (auto k : f.kinds)
    kinds.push_back(EnumText(v1::AppointmentKind_descriptor(), k, "APPOINTMENT_KIND_"));
  for (auto o : f.outcomes) {
    outcomes.push_back(EnumText(v1::AppointmentOutcome_descriptor(), o, "APPOINTMENT_OUTCOME_"));
  }
  const pqxx::result r = tx.exec_params(
      absl::StrCat(
          "SELECT ", kAppointmentColumns,
          " FROM appointments a WHERE ($1 = '' OR a.enrollment_id = NULLIF($1, '')::uuid) "
          "AND ($2 = '' OR a.participant_id = $2) AND ($3 = '' OR a.owner_id = $3) "
          "AND (cardinality($4::text[]) = 0 OR a.kind = ANY ($4::text[])) "
          "AND (cardinality($5::text[]) = 0 OR a.outcome = ANY ($5::text[])) "
          "AND ($6 = '' OR a.scheduled_at >= " PP_TS(
              "$6") ") "
                    "AND ($7 = '' OR a.scheduled_at < " PP_TS(
                        "$7") ") "
                              "AND ($8 = '' OR EXISTS (SELECT 1 FROM supporter_matches m WHERE "
                              "m.active AND "
                              "m.participant_id = a.participant_id AND m.supporter_subject = $8)) "
                              "AND ($9 = '' OR EXISTS (SELECT 1 FROM supporter_matches m WHERE "
                              "m.active AND "
                              "m.participant_id = a.participant_id AND m.supervisor_subject = $9)) "
                              "AND ($10 = '' OR (a.scheduled_at, a.id) > (" PP_TS(
                                  "$10") ", $11::uuid)) "
                                         "ORDER BY a.scheduled_at, a.id LIMIT $12"),
      f.enrollment_id, f.participant_id, f.owner_id, TextArrayLiteral(kinds),
      TextArrayLiteral(outcomes), f.scheduled_from_micros, f.scheduled_to_micros,
      f.supporter_subject, f.supervisor_subject, f.after_micros,
      f.after_id.empty() ? std::string("00000000-0000-0000-0000-000000000000") : f.after_id,
      f.limit);
  std::vector<v1::Appointment> out;
  for (const auto& row : r) out.push_back(AppointmentOf(row));
  return out;
}

std::vector<v1::WellbeingPoint> WellbeingPoints(pqxx::work& tx, const std::string& participant_id,
                                                const std::string& enrollment_id,
                                                const std::string& from_micros,
                                                const std::string& to_micros, int limit) {
  const pqxx::result r = tx.exec_params(
      "SELECT id::text, enrollment_id::text, " PP_US("occurred_at") ", wellbeing FROM check_ins "
      "WHERE participant_id = $1 AND wellbeing IS NOT NULL "
      "AND ($2 = '' OR enrollment_id = NULLIF($2, '')::uuid) "
      "AND ($3 = '' OR occurred_at >= " PP_TS("$3") ") "
      "AND ($4 = '' OR occurred_at < " PP_TS("$4") ") "
      "ORDER BY occurred_at DESC, recorded_at DESC, id DESC LIMIT $5",
      participant_id, enrollment_id, from_micros, to_micros, limit);
  std::vector<v1::WellbeingPoint> out;
  for (auto it = r.rbegin(); it != r.rend(); ++it) {
    v1::WellbeingPoint p;
    p.set_check_in_id((*it)[0].c_str());
    p.set_enrollment_id((*it)[1].c_str());
    *p.mutable_occurred_at() = ToProtoTimestamp(TimeOf((*it)[2]));
    p.set_score((*it)[3].as<int>());
    out.push_back(std::move(p));
  }
  return out;
}

std::optional<v1::Appointment> LoadAppointment(pqxx::work& tx, const std::string& id) {
  const pqxx::result r =
      tx.exec_params(absl::StrCat("SELECT ", kAppointmentColumns,
                                  " FROM appointments a WHERE a.id = $1::uuid FOR UPDATE OF a"),
                     id);
  if (r.empty()) return std::nullopt;
  return AppointmentOf(r[0]);
}

v1::Appointment SetAppointmentOutcome(pqxx::work& tx, const std::string& id,
                                      const std::string& outcome, const std::string& recorded_by,
                                      const std::string& rescheduled_to) {
  tx.exec_params0(
      "UPDATE appointments SET outcome = $2, outcome_recorded_at = now(), outcome_recorded_by = "
      "$3 WHERE id = $1::uuid",
      id, outcome, recorded_by);
  (void)rescheduled_to;
  return *LoadAppointment(tx, id);
}

bool PeerContactBefore(pqxx::work& tx, const std::string& enrollment_id, absl::Time t) {
  return tx
      .exec_params1(
          "SELECT EXISTS (SELECT 1 FROM check_ins WHERE enrollment_id = $1::uuid AND "
          "occurred_at < " PP_TS("$2") ") OR EXISTS (SELECT 1 FROM contact_attempts WHERE "
          "enrollment_id = $1::uuid AND outcome = 'reached' AND attempted_at < " PP_TS("$2") ")",
          enrollment_id, Micros(t))[0]
      .as<bool>();
}

std::vector<v1::EnrollmentRoutineStoppedEvent> StopRoutineEngagement(
    pqxx::work& tx, const std::string& participant_id, const std::string& enrollment_id,
    const std::string& concern_id, absl::Time stopped_at) {
  const pqxx::result r = tx.exec_params(
      "WITH e AS (UPDATE enrollments SET routine = false, routine_stopped_at = " PP_TS("$3")
      " WHERE status = 'active' AND routine AND participant_id = $1 AND ($2 = '' OR id::text = "
      "$2) RETURNING id, participant_id, pathway_key), c AS (UPDATE scheduled_check_ins s SET "
      "status = 'cancelled', status_changed_at = now() FROM e WHERE s.enrollment_id = e.id AND "
      "s.status = 'due' RETURNING s.enrollment_id) SELECT e.id::text, e.participant_id, "
      "e.pathway_key, (SELECT count(*) FROM c WHERE c.enrollment_id = e.id) FROM e",
      participant_id, enrollment_id, Micros(stopped_at));
  std::vector<v1::EnrollmentRoutineStoppedEvent> out;
  for (const auto& row : r) {
    v1::EnrollmentRoutineStoppedEvent e;
    e.set_enrollment_id(row[0].c_str());
    e.set_participant_id(row[1].c_str());
    e.set_pathway_key(row[2].c_str());
    e.set_cause(v1::ROUTINE_STOP_CAUSE_SAFETY_CONCERN);
    e.set_concern_id(concern_id);
    e.set_cancelled_occurrences(row[3].as<int>());
    *e.mutable_stopped_at() = ToProtoTimestamp(stopped_at);
    out.push_back(std::move(e));
  }
  return out;
}

v1::Enrollment ResumeRoutine(pqxx::work& tx, const std::string& enrollment_id) {
  tx.exec_params0("UPDATE enrollments SET routine = true WHERE id = $1::uuid", enrollment_id);
  return *LoadEnrollment(tx, enrollment_id);
}

// A loose index scan: one descent of the active enrollments' index per agency, from the last
// agency found to the next, instead of reading every active enrollment of every agency.
const char kActiveAgenciesSql[] = R"sql(
    WITH RECURSIVE agencies(agency_id) AS (
      (SELECT agency_id FROM enrollments WHERE status = 'active' ORDER BY agency_id LIMIT 1)
      UNION ALL
      SELECT (SELECT e.agency_id FROM enrollments e
              WHERE e.status = 'active' AND e.agency_id > a.agency_id
              ORDER BY e.agency_id LIMIT 1)
      FROM agencies a WHERE a.agency_id IS NOT NULL)
    SELECT agency_id FROM agencies WHERE agency_id IS NOT NULL)sql";

std::vector<std::string> AgenciesWithActiveEnrollments(pqxx::work& tx) {
  std::vector<std::string> out;
  for (const auto& row : tx.exec(kActiveAgenciesSql)) out.push_back(row[0].c_str());
  return out;
}

std::vector<v1::CheckInMissedEvent> MarkMissedOccurrences(pqxx::work& tx) {
  const pqxx::result r = tx.exec(
      "WITH m AS (UPDATE scheduled_check_ins s SET status = 'missed', status_changed_at = now() "
      "FROM enrollments e WHERE e.id = s.enrollment_id AND s.status = 'due' AND s.window_end < "
      "now() RETURNING s.id, s.enrollment_id, e.participant_id, e.pathway_key, s.due_on, "
      "s.window_end) SELECT m.id::text, m.enrollment_id::text, m.participant_id, m.pathway_key, "
      "to_char(m.due_on, 'YYYY-MM-DD'), " PP_US("m.window_end") ", coalesce((SELECT "
      "sm.supporter_id::text FROM supporter_matches sm WHERE sm.participant_id = "
      "m.participant_id AND sm.active ORDER BY sm.started_at DESC NULLS LAST LIMIT 1), '') "
      "FROM m ORDER BY m.window_end");
  std::vector<v1::CheckInMissedEvent> out;
  for (const auto& row : r) {
    v1::CheckInMissedEvent e;
    e.set_scheduled_check_in_id(row[0].c_str());
    e.set_enrollment_id(row[1].c_str());
    e.set_participant_id(row[2].c_str());
    e.set_pathway_key(row[3].c_str());
    *e.mutable_due_on() = DateOf(row[4].c_str());
    *e.mutable_window_end() = ToProtoTimestamp(TimeOf(row[5]));
    e.set_supporter_id(row[6].c_str());
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<v1::Enrollment> EnrollmentsSilentSince(pqxx::work& tx, absl::Time cutoff) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kEnrollmentColumns,
                   " FROM enrollments e WHERE e.agency_id = " PEERPATH_SQL_SCOPED_AGENCY
                   " AND e.status = 'active' AND e.engagement_stage <> "
                   "'lost_to_follow_up' AND coalesce(e.last_contact_at, e.enrolled_at) < " PP_TS(
                       "$1") " ORDER BY e.id FOR UPDATE SKIP LOCKED"),
      Micros(cutoff));
  std::vector<v1::Enrollment> out;
  for (const auto& row : r) out.push_back(EnrollmentOf(row));
  return out;
}

void SetEngagementStage(pqxx::work& tx, const std::string& enrollment_id,
                        v1::EngagementStage stage) {
  tx.exec_params0(
      "UPDATE enrollments SET engagement_stage = $2, engagement_stage_changed_at = now() WHERE "
      "id = $1::uuid",
      enrollment_id, EnumText(v1::EngagementStage_descriptor(), stage, "ENGAGEMENT_STAGE_"));
}

v1::ProgramPolicy StorePolicy(pqxx::work& tx, const std::string& agency_id,
                              const v1::ProgramPolicy& p, const std::string& updated_by) {
  tx.exec_params0(
      "INSERT INTO program_policies (agency_id, time_zone, missed_contact_failed_attempts, "
      "at_risk_after, lost_to_follow_up_after, wellbeing_drop_points, updated_at, updated_by) "
      "VALUES ($1, $2, $3, make_interval(secs => $4), make_interval(secs => $5), $6, now(), $7) "
      "ON CONFLICT (agency_id) DO UPDATE SET time_zone = EXCLUDED.time_zone, "
      "missed_contact_failed_attempts = EXCLUDED.missed_contact_failed_attempts, "
      "at_risk_after = EXCLUDED.at_risk_after, lost_to_follow_up_after = "
      "EXCLUDED.lost_to_follow_up_after, wellbeing_drop_points = EXCLUDED.wellbeing_drop_points, "
      "updated_at = now(), updated_by = EXCLUDED.updated_by",
      agency_id, p.time_zone(), p.missed_contact_failed_attempts(),
      static_cast<double>(p.at_risk_after().seconds()),
      static_cast<double>(p.lost_to_follow_up_after().seconds()), p.wellbeing_drop_points(),
      updated_by);
  return LoadPolicy(tx, agency_id, p.time_zone());
}

std::optional<v1::CheckIn> LoadCheckIn(pqxx::work& tx, const std::string& check_in_id) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kCheckInColumns, " FROM check_ins c WHERE c.id = $1::uuid"),
      check_in_id);
  if (r.empty()) return std::nullopt;
  return CheckInOf(r[0]);
}

const std::string& ListCheckInsSql() {
  // The enrollment is compared as a uuid: a cast on the column's side kept the index on
  // (agency, enrollment, occurred_at) out of reach, and a list by enrollment read the whole
  // table.
  static const std::string* const sql = new std::string(
      absl::StrCat("SELECT ", kCheckInColumns,
                   " FROM check_ins c WHERE ($1 = '' OR c.enrollment_id = NULLIF($1, '')::uuid) "
                   "AND ($2 = '' OR c.participant_id = $2) "
                   "AND ($3 = '' OR EXISTS (SELECT 1 FROM supporter_matches m WHERE m.active AND "
                   "m.participant_id = c.participant_id AND m.supporter_subject = $3)) "
                   "AND (NOT $4 OR c.late_by IS NOT NULL) "
                   "AND ($8 = '' OR EXISTS (SELECT 1 FROM supporter_matches m WHERE m.active AND "
                   "m.participant_id = c.participant_id AND m.supervisor_subject = $8)) "
                   "AND ($5 = '' OR (c.occurred_at, c.id) < (" PP_TS(
                       "$5") ", $6::uuid)) "
                             "ORDER BY c.occurred_at DESC, c.id DESC LIMIT $7"));
  return *sql;
}

std::vector<v1::CheckIn> ListCheckIns(pqxx::work& tx, const CheckInFilter& f) {
  const pqxx::result r = tx.exec_params(
      ListCheckInsSql(), f.enrollment_id, f.participant_id, f.supporter_subject, f.late_only,
      f.after_id.empty() ? std::string() : absl::StrCat(f.after_occurred_micros),
      f.after_id.empty() ? std::string("00000000-0000-0000-0000-000000000000") : f.after_id,
      f.limit, f.supervisor_subject);
  std::vector<v1::CheckIn> out;
  for (const auto& row : r) out.push_back(CheckInOf(row));
  return out;
}

std::vector<v1::Enrollment> EnrollmentsOfSupporter(pqxx::work& tx, const std::string& subject,
                                                   const std::string& supporter_id,
                                                   const std::string& supervisor_subject) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kEnrollmentColumns,
                   " FROM enrollments e WHERE e.agency_id = " PEERPATH_SQL_SCOPED_AGENCY
                   " AND e.status = 'active' AND e.routine AND EXISTS "
                   "(SELECT 1 FROM supporter_matches m WHERE m.active AND m.participant_id = "
                   "e.participant_id AND (m.supporter_subject = $1 OR m.supporter_id::text = $2) "
                   "AND ($3 = '' OR m.supervisor_subject = $3))"),
      subject, supporter_id, supervisor_subject);
  std::vector<v1::Enrollment> out;
  for (const auto& row : r) out.push_back(EnrollmentOf(row));
  return out;
}

// The arrays are typed as the columns they are joined with: a cast in the join clause (text to
// uuid or date, not leakproof) is kept out of the index scan by row-level security, and each
// ListDueCheckIns read every occurrence of the agency.
const char kAskedOccurrencesSql[] =
    "SELECT s.id::text, s.enrollment_id::text, e.participant_id, e.pathway_key, "
    "to_char(s.due_on, 'YYYY-MM-DD'), " PP_US("s.window_start") ", " PP_US("s.window_end")
    ", CASE WHEN s.status = 'due' AND s.window_end < now() THEN 'missed' ELSE s.status END, "
    "coalesce((SELECT c.id::text FROM check_ins c WHERE c.scheduled_check_in_id = s.id), '') "
    "FROM unnest($1::uuid[], $2::date[]) AS u(e, d) JOIN scheduled_check_ins s ON "
    "s.enrollment_id = u.e AND s.due_on = u.d JOIN enrollments e ON e.id = s.enrollment_id "
    "ORDER BY s.window_end, e.participant_id, s.enrollment_id";

std::vector<v1::ScheduledCheckIn> MaterializeOccurrences(pqxx::work& tx,
                                                         const std::string& agency_id,
                                                         const std::vector<OccurrenceRow>& rows) {
  std::vector<v1::ScheduledCheckIn> out;
  if (rows.empty()) return out;
  std::vector<std::string> enrollments, days, starts, ends;
  for (const auto& row : rows) {
    enrollments.push_back(row.enrollment_id);
    days.push_back(absl::FormatCivilTime(row.due_on));
    starts.push_back(Micros(row.window_start));
    ends.push_back(Micros(row.window_end));
  }
  // Creates what is missing, then reads every asked occurrence with its state; DUE past its
  // window shows as MISSED.
  tx.exec_params0(
      "INSERT INTO scheduled_check_ins (agency_id, enrollment_id, due_on, window_start, "
      "window_end) SELECT $1, e::uuid, d::date, to_timestamp(s::int8 / 1000000.0), "
      "to_timestamp(x::int8 / 1000000.0) FROM unnest($2::text[], $3::text[], $4::text[], "
      "$5::text[]) AS u(e, d, s, x) ON CONFLICT (agency_id, enrollment_id, due_on) DO NOTHING",
      agency_id, TextArrayLiteral(enrollments), TextArrayLiteral(days), TextArrayLiteral(starts),
      TextArrayLiteral(ends));
  const pqxx::result r =
      tx.exec_params(kAskedOccurrencesSql, TextArrayLiteral(enrollments), TextArrayLiteral(days));
  for (const auto& row : r) {
    v1::ScheduledCheckIn s;
    s.set_scheduled_check_in_id(row[0].c_str());
    s.set_enrollment_id(row[1].c_str());
    s.set_participant_id(row[2].c_str());
    s.set_pathway_key(row[3].c_str());
    *s.mutable_due_on() = DateOf(row[4].c_str());
    *s.mutable_window_start() = ToProtoTimestamp(TimeOf(row[5]));
    *s.mutable_window_end() = ToProtoTimestamp(TimeOf(row[6]));
    s.set_status(v1::ScheduledCheckInStatus(EnumValue(
        v1::ScheduledCheckInStatus_descriptor(), row[7].c_str(), "SCHEDULED_CHECK_IN_STATUS_")));
    s.set_check_in_id(row[8].c_str());
    out.push_back(std::move(s));
  }
  return out;
}

void AppendAuditRow(pqxx::work& tx, const std::string& agency_id, const AuditEntry& entry) {
  (void)AppendAudit(tx, agency_id, entry);
}

}  // namespace peerpath::checkin
