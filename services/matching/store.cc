#include "services/matching/store.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/wire_format_lite.h>

#include <array>
#include <cstdio>
#include <future>
#include <map>

#include "absl/functional/function_ref.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/db.h"
#include "common/identifiers.h"
#include "common/parallel.h"
#include "common/proto_json.h"
#include "common/time_util.h"

namespace peerpath::matching::store {
namespace {

// Arrays travel as text joined with the unit separator (keys and tags never contain it).
constexpr char kSep[] = "\x1f";

std::string Join(const google::protobuf::RepeatedPtrField<std::string>& values) {
  return absl::StrJoin(values, kSep);
}
std::vector<std::string> Split(const pqxx::field& f) {
  if (f.is_null() || f.size() == 0) return {};
  return absl::StrSplit(f.c_str(), kSep[0]);
}
std::string Text(const pqxx::field& f) { return f.is_null() ? std::string() : f.c_str(); }

// Micros since the epoch of a timestamptz column (NULL stays NULL).
std::string Micros(absl::string_view column) {
  return absl::StrCat("(extract(epoch FROM ", column, ") * 1000000)::bigint");
}
bool SetTime(const pqxx::field& f, google::protobuf::Timestamp* out) {
  if (f.is_null()) return false;
  *out = ToProtoTimestamp(absl::FromUnixMicros(f.as<int64_t>()));
  return true;
}
void SetDate(const pqxx::field& f, common::v1::Date* out) {
  int y = 0, m = 0, d = 0;
  if (!f.is_null() && std::sscanf(f.c_str(), "%d-%d-%d", &y, &m, &d) == 3) {
    out->set_year(y);
    out->set_month(m);
    out->set_day(d);
  }
}
std::string DateText(const common::v1::Date& d) {
  if (d.year() == 0) return "";
  return absl::StrFormat("%04d-%02d-%02d", d.year(), d.month(), d.day());
}

template <typename Enum>
struct Names {
  Enum value;
  const char* text;
};

constexpr Names<v1::SupporterStatus> kStatuses[] = {{v1::SUPPORTER_STATUS_ACTIVE, "active"},
                                                    {v1::SUPPORTER_STATUS_ON_BREAK, "on_break"},
                                                    {v1::SUPPORTER_STATUS_INACTIVE, "inactive"}};
constexpr Names<v1::SupporterStatusReason> kReasons[] = {
    {v1::SUPPORTER_STATUS_REASON_JOINED, "joined"},
    {v1::SUPPORTER_STATUS_REASON_PLANNED_BREAK, "planned_break"},
    {v1::SUPPORTER_STATUS_REASON_WELLBEING_BREAK, "wellbeing_break"},
    {v1::SUPPORTER_STATUS_REASON_RETURNED, "returned"},
    {v1::SUPPORTER_STATUS_REASON_LEFT_PROGRAM, "left_program"},
    {v1::SUPPORTER_STATUS_REASON_ADMINISTRATIVE, "administrative"},
    {v1::SUPPORTER_STATUS_REASON_OTHER, "other"}};
constexpr Names<v1::TrainingStatus> kTraining[] = {{v1::TRAINING_STATUS_IN_TRAINING, "in_training"},
                                                   {v1::TRAINING_STATUS_CERTIFIED, "certified"},
                                                   {v1::TRAINING_STATUS_LAPSED, "lapsed"}};
constexpr Names<v1::AgeBand> kAgeBands[] = {
    {v1::AGE_BAND_18_24, "18_24"}, {v1::AGE_BAND_25_34, "25_34"},
    {v1::AGE_BAND_35_44, "35_44"}, {v1::AGE_BAND_45_54, "45_54"},
    {v1::AGE_BAND_55_64, "55_64"}, {v1::AGE_BAND_65_PLUS, "65_plus"}};
constexpr Names<v1::MeetingMode> kModes[] = {{v1::MEETING_MODE_IN_PERSON, "in_person"},
                                             {v1::MEETING_MODE_PHONE, "phone"},
                                             {v1::MEETING_MODE_VIDEO, "video"}};
constexpr Names<v1::Urgency> kUrgencies[] = {{v1::URGENCY_ROUTINE, "routine"},
                                             {v1::URGENCY_PRIORITY, "priority"},
                                             {v1::URGENCY_URGENT, "urgent"}};
constexpr Names<v1::MatchRequestStatus> kRequestStatuses[] = {
    {v1::MATCH_REQUEST_STATUS_OPEN, "open"},
    {v1::MATCH_REQUEST_STATUS_PROPOSED, "proposed"},
    {v1::MATCH_REQUEST_STATUS_ASSIGNED, "assigned"},
    {v1::MATCH_REQUEST_STATUS_CANCELLED, "cancelled"}};
constexpr Names<v1::MatchStatus> kMatchStatuses[] = {{v1::MATCH_STATUS_PROPOSED, "proposed"},
                                                     {v1::MATCH_STATUS_ACTIVE, "active"},
                                                     {v1::MATCH_STATUS_ENDED, "ended"},
                                                     {v1::MATCH_STATUS_DECLINED, "declined"}};
constexpr Names<v1::MatchEndReason> kEndReasons[] = {
    {v1::MATCH_END_REASON_COMPLETED, "completed"},
    {v1::MATCH_END_REASON_POOR_FIT, "poor_fit"},
    {v1::MATCH_END_REASON_SUPPORTER_UNAVAILABLE, "supporter_unavailable"},
    {v1::MATCH_END_REASON_PARTICIPANT_WITHDREW, "participant_withdrew"},
    {v1::MATCH_END_REASON_MOVED_TO_CLINICAL_CARE, "moved_to_clinical_care"}};
constexpr Names<v1::MatchOrigin> kOrigins[] = {
    {v1::MATCH_ORIGIN_PROPOSAL_ACCEPTED, "proposal_accepted"},
    {v1::MATCH_ORIGIN_BATCH_ASSIGNMENT, "batch_assignment"}};

template <typename Enum, size_t N>
std::string ToText(const Names<Enum> (&names)[N], Enum value) {
  for (const auto& n : names) {
    if (n.value == value) return n.text;
  }
  return "";
}
template <typename Enum, size_t N>
Enum FromText(const Names<Enum> (&names)[N], absl::string_view text) {
  for (const auto& n : names) {
    if (text == n.text) return n.value;
  }
  return static_cast<Enum>(0);
}

std::string ModesText(const v1::Supporter& s) {
  std::vector<std::string> modes;
  for (int m : s.meeting_modes()) modes.push_back(ToText(kModes, static_cast<v1::MeetingMode>(m)));
  return absl::StrJoin(modes, kSep);
}

// [{"weekday": 1, "start": "09:00", "end": "12:00"}, ...] as in the schema comment.
std::string AvailabilityJson(const v1::Supporter& s) {
  std::vector<std::string> windows;
  for (const auto& w : s.availability()) {
    windows.push_back(absl::StrFormat(
        R"({"weekday": %d, "start": "%02d:%02d", "end": "%02d:%02d"})", w.weekday(),
        w.start_minute() / 60, w.start_minute() % 60, w.end_minute() / 60, w.end_minute() % 60));
  }
  return absl::StrCat("[", absl::StrJoin(windows, ", "), "]");
}

// The columns ToSupporter reads; `units` is the expression of the units in use (by default a
// sub-select per row; roster reads join them once, as `l.units`).
std::string SupporterColumnsWith(absl::string_view units) {
  return absl::StrCat(
      "s.id, s.agency_id, s.subject, s.display_name, array_to_string(s.lived_experience, "
      "E'\\x1f'), "
      "array_to_string(s.languages, E'\\x1f'), s.gender, s.age_band, s.region, s.area_code, "
      "array_to_string(s.meeting_modes, E'\\x1f'), "
      "(SELECT string_agg(concat_ws(',', w->>'weekday', w->>'start', w->>'end'), ';') "
      "   FROM jsonb_array_elements(s.availability) w), "
      "s.capacity_units, ",
      units,
      ", CASE WHEN s.training_status = 'certified' AND s.training_expires_on < "
      "  (now() AT TIME ZONE 'UTC')::date THEN 'lapsed' ELSE s.training_status END, "
      "to_char(s.training_expires_on, 'YYYY-MM-DD'), s.supervisor_id, s.status, ",
      Micros("s.status_changed_at"), ", ", Micros("s.last_break_started_at"), ", s.version, ",
      Micros("s.created_at"), ", s.created_by, ", Micros("s.updated_at"), ", s.updated_by");
}

const std::string& SupporterColumns() {
  static const std::string* const columns = new std::string(SupporterColumnsWith(
      "(SELECT coalesce(sum(m.units), 0) FROM matches m WHERE m.agency_id = s.agency_id "
      "   AND m.supporter_id = s.id AND m.status = 'active')"));
  return *columns;
}

// SupporterColumns for a read that joins the units in use as `l.units`.
const std::string& SupporterColumnsJoined() {
  static const std::string* const columns =
      new std::string(SupporterColumnsWith("coalesce(l.units, 0)"));
  return *columns;
}

int Minutes(absl::string_view hhmm) {
  std::vector<std::string> parts = absl::StrSplit(hhmm, ':');
  int h = 0, m = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &h) || !absl::SimpleAtoi(parts[1], &m)) {
    return 0;
  }
  return h * 60 + m;
}

v1::Supporter ToSupporter(const pqxx::row& row) {
  v1::Supporter s;
  s.set_supporter_id(row[0].c_str());
  s.set_agency_id(row[1].c_str());
  s.set_subject(Text(row[2]));
  s.set_display_name(row[3].c_str());
  for (auto& v : Split(row[4])) s.add_lived_experience_areas(std::move(v));
  for (auto& v : Split(row[5])) s.add_languages(std::move(v));
  s.set_gender(Text(row[6]));
  s.set_age_band(FromText(kAgeBands, Text(row[7])));
  s.set_region(Text(row[8]));
  s.set_area_code(Text(row[9]));
  for (auto& v : Split(row[10])) s.add_meeting_modes(FromText(kModes, v));
  if (!row[11].is_null()) {
    for (absl::string_view window : absl::StrSplit(row[11].c_str(), ';')) {
      std::vector<std::string> parts = absl::StrSplit(window, ',');
      if (parts.size() != 3) continue;
      auto* w = s.add_availability();
      int weekday = 0;
      (void)absl::SimpleAtoi(parts[0], &weekday);
      w->set_weekday(static_cast<v1::Weekday>(weekday));
      w->set_start_minute(Minutes(parts[1]));
      w->set_end_minute(Minutes(parts[2]));
    }
  }
  s.set_capacity_units(row[12].as<int>());
  s.set_units_in_use(row[13].as<int>());
  s.set_training_status(FromText(kTraining, row[14].c_str()));
  SetDate(row[15], s.mutable_training_expires_on());
  if (s.training_expires_on().year() == 0) s.clear_training_expires_on();
  s.set_supervisor_subject(Text(row[16]));
  s.set_status(FromText(kStatuses, row[17].c_str()));
  SetTime(row[18], s.mutable_status_changed_at());
  if (!SetTime(row[19], s.mutable_last_break_started_at())) s.clear_last_break_started_at();
  s.set_version(row[20].as<int64_t>());
  SetTime(row[21], s.mutable_created_at());
  s.set_created_by(row[22].c_str());
  SetTime(row[23], s.mutable_updated_at());
  s.set_updated_by(row[24].c_str());
  return s;
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

void FromJson(const pqxx::field& f, google::protobuf::Message* message) {
  if (f.is_null()) return;
  (void)ParseJsonMessage(absl::string_view(f.c_str(), f.size()), message);
}

// The request's columns for ToRequest. `with_match`: the request's started match (its id), which
// only an ASSIGNED request has; without it the column is NULL.
const std::string& RequestColumns(bool with_match = true) {
  static const std::string* const common = new std::string(absl::StrCat(
      "r.id, r.agency_id, r.participant_id, r.pathway_key, r.acuity_units, r.hard_constraints, "
      "r.preferences, array_to_string(r.excluded_supporter_ids, E'\\x1f'), "
      "r.preferred_supporter_id, r.previous_match_id, r.urgency, r.status, r.cancel_reason, ",
      Micros("r.requested_at"), ", r.requested_by, ", Micros("r.updated_at")));
  static const std::string* const columns = new std::string(absl::StrCat(
      *common,
      // By the participant's matches (matches_by_participant): matches are not indexed by request.
      ", (SELECT m.id FROM matches m WHERE m.agency_id = r.agency_id"
      "   AND m.participant_id = r.participant_id AND m.request_id = r.id"
      "   AND m.status IN ('active', 'ended') LIMIT 1)"));
  static const std::string* const without_match = new std::string(absl::StrCat(*common, ", NULL"));
  return with_match ? *columns : *without_match;
}

v1::MatchRequest ToRequest(const pqxx::row& row) {
  v1::MatchRequest r;
  r.set_match_request_id(row[0].c_str());
  r.set_agency_id(row[1].c_str());
  r.set_participant_id(row[2].c_str());
  r.set_pathway_key(Text(row[3]));
  r.set_acuity_units(row[4].as<int>());
  FromJson(row[5], r.mutable_hard_constraints());
  FromJson(row[6], r.mutable_preferences());
  r.mutable_hard_constraints()->clear_excluded_supporter_ids();
  for (auto& id : Split(row[7]))
    r.mutable_hard_constraints()->add_excluded_supporter_ids(std::move(id));
  if (!row[8].is_null())
    r.mutable_preferences()->mutable_continuity()->set_supporter_id(row[8].c_str());
  r.set_previous_match_id(Text(row[9]));
  r.set_urgency(FromText(kUrgencies, row[10].c_str()));
  r.set_status(FromText(kRequestStatuses, row[11].c_str()));
  r.set_cancel_reason(Text(row[12]));
  SetTime(row[13], r.mutable_requested_at());
  r.set_requested_by(row[14].c_str());
  SetTime(row[15], r.mutable_updated_at());
  r.set_match_id(Text(row[16]));
  return r;
}

const std::string& MatchColumns() {
  static const std::string* const columns = new std::string(absl::StrCat(
      "m.id, m.agency_id, m.request_id, m.supporter_id, "
      "(SELECT s.subject FROM supporters s WHERE s.agency_id = m.agency_id AND s.id = "
      "m.supporter_id), "
      "m.participant_id, m.units, m.score, "
      "(SELECT string_agg(e::text, E'\\x1f' ORDER BY o) FROM jsonb_array_elements(m.explanation) "
      "   WITH ORDINALITY AS x(e, o)), "
      "m.status, m.origin, m.batch_id, ",
      Micros("m.proposed_at"), ", m.proposed_by, ", Micros("m.started_at"), ", m.started_by, ",
      Micros("m.ended_at"), ", m.ended_by, m.end_reason, ", Micros("m.declined_at"), ", m.rank, ",
      "(SELECT ", Micros("f.rematch_suggested_at"),
      " FROM follow_ups f WHERE f.agency_id = m.agency_id AND f.match_id = m.id), m.continuity, "
      "m.explanation_pb"));
  return *columns;
}

v1::Match ToMatch(const pqxx::row& row) {
  v1::Match m;
  m.set_match_id(row[0].c_str());
  m.set_agency_id(row[1].c_str());
  m.set_match_request_id(row[2].c_str());
  m.set_supporter_id(row[3].c_str());
  m.set_supporter_subject(Text(row[4]));
  m.set_participant_id(row[5].c_str());
  m.set_units(row[6].as<int>());
  m.set_score(row[7].is_null() ? 0 : row[7].as<double>());
  if (!row[23].is_null()) {
    // Since migration 0006: a serialized Match holding only the explanation lines.
    (void)m.MergeFromString(pqxx::binarystring(row[23]).str());
  } else if (!row[8].is_null()) {
    for (absl::string_view line : absl::StrSplit(row[8].c_str(), kSep[0])) {
      (void)ParseJsonMessage(line, m.add_explanation());
    }
  }
  m.set_status(FromText(kMatchStatuses, row[9].c_str()));
  m.set_origin(FromText(kOrigins, Text(row[10])));
  m.set_batch_id(Text(row[11]));
  SetTime(row[12], m.mutable_proposed_at());
  m.set_proposed_by(row[13].c_str());
  if (!SetTime(row[14], m.mutable_started_at())) m.clear_started_at();
  m.set_started_by(Text(row[15]));
  if (!SetTime(row[16], m.mutable_ended_at())) m.clear_ended_at();
  m.set_ended_by(Text(row[17]));
  m.set_end_reason(FromText(kEndReasons, Text(row[18])));
  if (!SetTime(row[19], m.mutable_declined_at())) m.clear_declined_at();
  m.set_rank(row[20].as<int>());
  if (!SetTime(row[21], m.mutable_rematch_suggested_at())) m.clear_rematch_suggested_at();
  return m;
}

// `text` as a JSON string literal.
std::string JsonString(absl::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&out, absl::StrFormat("\\u%04x", static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

// The lines as matches.explanation_pb stores them (migration 0006): a serialized Match holding
// only them. Binary, not jsonb: a batch stores thousands of explanations, and PostgreSQL building
// jsonb values of them cost more than the rest of the rows.
// Written field by field, as Match's serializer would, rather than by copying the lines into a
// Match first.
std::string ExplanationBytes(const std::vector<v1::CriterionExplanation>& lines) {
  using google::protobuf::internal::WireFormatLite;
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    for (const auto& line : lines) {
      out.WriteTag(WireFormatLite::MakeTag(v1::Match::kExplanationFieldNumber,
                                           WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
      out.WriteVarint32(static_cast<uint32_t>(line.ByteSizeLong()));
      line.SerializeWithCachedSizes(&out);
    }
  }
  return bytes;
}

// Proposals as a JSON array of records for json_to_recordset (at most 20 rows): each with the id
// of its stored match (`stored`, in the same order) and its explanation (`explanation_pb`,
// base64).
std::string ProposalRowsJson(const std::vector<NewMatch>& proposals,
                             const std::vector<v1::Match>& stored) {
  std::string rows = "[";
  for (size_t i = 0; i < proposals.size(); ++i) {
    const NewMatch& m = proposals[i];
    absl::StrAppend(&rows, i == 0 ? "{" : ",{", "\"id\":", JsonString(stored[i].match_id()),
                    ",\"request_id\":", JsonString(m.request_id),
                    ",\"supporter_id\":", JsonString(m.supporter_id),
                    ",\"participant_id\":", JsonString(m.participant_id), ",\"units\":", m.units,
                    ",\"score\":", absl::StrFormat("%.17g", m.score), ",\"rank\":", m.rank,
                    ",\"continuity\":", m.continuity ? "true" : "false", ",\"explanation_pb\":\"",
                    absl::Base64Escape(ExplanationBytes(m.explanation)), "\"}");
  }
  return rows + "]";
}

// AssignBatch's rows `matches[begin, end)` as one binary array per column, for unnest: PostgreSQL
// copies binary elements, where it parsed text arrays (the uuids and doubles of thousands of rows)
// and before that JSON records (about 7 µs a row measured for json_to_recordset). The explanations
// go as one binary parameter: `explanations` holds them one after another, `explanation_at`
// (0-based) and `explanation_len` say where (integers: a bytea parameter is at most 1 GB). The
// explanations are serialized on every core.
struct BatchRows {
  explicit BatchRows(size_t n)
      : ids(BinaryArray::Of::kUuid, n * 20),
        follow_up_ids(BinaryArray::Of::kUuid, n * 20),
        request_ids(BinaryArray::Of::kUuid, n * 20),
        supporter_ids(BinaryArray::Of::kUuid, n * 20),
        participant_ids(BinaryArray::Of::kText, n * 24),
        units(BinaryArray::Of::kInt4, n * 8),
        scores(BinaryArray::Of::kFloat8, n * 12),
        continuity(BinaryArray::Of::kBool, n * 5),
        explanation_at(BinaryArray::Of::kInt4, n * 8),
        explanation_len(BinaryArray::Of::kInt4, n * 8) {}

  BinaryArray ids, follow_up_ids, request_ids, supporter_ids, participant_ids, units, scores,
      continuity, explanation_at, explanation_len;
  std::string explanations;
};

BatchRows EncodeBatchRows(const std::vector<NewMatch>& matches, size_t begin, size_t end,
                          const std::vector<std::string>& match_ids,
                          const std::vector<std::string>& follow_up_ids) {
  const size_t n = end - begin;
  std::vector<std::string> bytes(n);
  ForEachRange(n, LoopThreads(), 500, [&](size_t from, size_t to) {
    for (size_t k = from; k < to; ++k) bytes[k] = ExplanationBytes(matches[begin + k].explanation);
  });
  BatchRows rows(n);
  for (size_t k = 0; k < n; ++k) {
    const NewMatch& m = matches[begin + k];
    rows.ids.AddUuid(match_ids[begin + k]);
    rows.follow_up_ids.AddUuid(follow_up_ids[begin + k]);
    rows.request_ids.AddUuid(m.request_id);
    rows.supporter_ids.AddUuid(m.supporter_id);
    rows.participant_ids.AddText(m.participant_id);
    rows.units.AddInt4(m.units);
    rows.scores.AddFloat8(m.score);
    rows.continuity.AddBool(m.continuity);
    rows.explanation_at.AddInt4(static_cast<int32_t>(rows.explanations.size()));
    rows.explanation_len.AddInt4(static_cast<int32_t>(bytes[k].size()));
    rows.explanations += bytes[k];
  }
  return rows;
}

const std::string& FollowUpColumns() {
  static const std::string* const columns = new std::string(absl::StrCat(
      "f.id, f.match_id, m.participant_id, m.supporter_id, to_char(f.due_on, 'YYYY-MM-DD'), "
      "f.participant_rating, f.participant_comments, ",
      Micros("f.participant_recorded_at"), ", f.participant_recorded_by, ",
      "f.supporter_rating, f.supporter_comments, ", Micros("f.supporter_recorded_at"),
      ", f.supporter_recorded_by, ", Micros("f.rematch_suggested_at"),
      ", to_char(f.due_on, 'YYYY-MM-DD')"));
  return *columns;
}

v1::FollowUp ToFollowUp(const pqxx::row& row) {
  v1::FollowUp f;
  f.set_follow_up_id(row[0].c_str());
  f.set_match_id(row[1].c_str());
  f.set_participant_id(row[2].c_str());
  f.set_supporter_id(row[3].c_str());
  SetDate(row[4], f.mutable_due_on());
  if (!row[5].is_null()) {
    auto* a = f.mutable_participant_answer();
    a->set_rating(row[5].as<int>());
    a->set_comment(Text(row[6]));
    SetTime(row[7], a->mutable_recorded_at());
    a->set_recorded_by(Text(row[8]));
  }
  if (!row[9].is_null()) {
    auto* a = f.mutable_supporter_answer();
    a->set_rating(row[9].as<int>());
    a->set_comment(Text(row[10]));
    SetTime(row[11], a->mutable_recorded_at());
    a->set_recorded_by(Text(row[12]));
  }
  if (!SetTime(row[13], f.mutable_rematch_suggested_at())) f.clear_rematch_suggested_at();
  return f;
}

constexpr char kFollowUpFrom[] =
    " FROM follow_ups f JOIN matches m ON m.agency_id = f.agency_id AND m.id = f.match_id ";

}  // namespace

std::string StatusText(v1::SupporterStatus status) { return ToText(kStatuses, status); }
std::string ReasonText(v1::SupporterStatusReason reason) { return ToText(kReasons, reason); }
std::string EndReasonText(v1::MatchEndReason reason) { return ToText(kEndReasons, reason); }
std::string RequestStatusText(v1::MatchRequestStatus status) {
  return ToText(kRequestStatuses, status);
}
std::string UrgencyText(v1::Urgency urgency) { return ToText(kUrgencies, urgency); }
std::string MatchStatusText(v1::MatchStatus status) { return ToText(kMatchStatuses, status); }

// --- Supporters -------------------------------------------------------------------------------

v1::Supporter InsertSupporter(pqxx::work& tx, const std::string& agency, const v1::Supporter& s,
                              const std::string& actor) {
  const pqxx::row row = tx.exec_params1(
      "WITH s AS ("
      "  INSERT INTO supporters (agency_id, subject, display_name, lived_experience, languages,"
      "    gender, age_band, region, area_code, meeting_modes, availability, capacity_units,"
      "    training_status, training_expires_on, supervisor_id, created_by, updated_by)"
      "  VALUES ($1, NULLIF($2, ''), $3, string_to_array($4, E'\\x1f'), string_to_array($5, "
      "E'\\x1f'),"
      "    NULLIF($6, ''), NULLIF($7, ''), NULLIF($8, ''), NULLIF($9, ''),"
      "    string_to_array($10, E'\\x1f'), $11::jsonb, $12, $13, NULLIF($14, '')::date,"
      "    NULLIF($15, ''), $16, $16)"
      "  RETURNING id, agency_id),"
      " h AS (INSERT INTO supporter_status_history (agency_id, supporter_id, status, reason, "
      "changed_by)"
      "  SELECT agency_id, id, 'active', 'joined', $16 FROM s)"
      "SELECT id FROM s",
      agency, s.subject(), s.display_name(), Join(s.lived_experience_areas()), Join(s.languages()),
      s.gender(), ToText(kAgeBands, s.age_band()), s.region(), s.area_code(), ModesText(s),
      AvailabilityJson(s), s.capacity_units(), ToText(kTraining, s.training_status()),
      DateText(s.training_expires_on()), s.supervisor_subject(), actor);
  return *FindSupporter(tx, row[0].c_str(), false);
}

std::optional<v1::Supporter> FindSupporter(pqxx::work& tx, const std::string& id, bool lock) {
  const pqxx::result rows = tx.exec_params(
      absl::StrCat("SELECT ", SupporterColumns(), " FROM supporters s WHERE s.id = $1::uuid",
                   lock ? " FOR UPDATE" : ""),
      id);
  if (rows.empty()) return std::nullopt;
  return ToSupporter(rows[0]);
}

std::optional<v1::Supporter> FindSupporterBySubject(pqxx::work& tx, const std::string& subject) {
  const pqxx::result rows = tx.exec_params(
      absl::StrCat("SELECT ", SupporterColumns(), " FROM supporters s WHERE s.subject = $1"),
      subject);
  if (rows.empty()) return std::nullopt;
  return ToSupporter(rows[0]);
}

std::vector<v1::SupporterStatusChange> StatusHistory(pqxx::work& tx, const std::string& id) {
  std::vector<v1::SupporterStatusChange> history;
  for (const auto& row :
       tx.exec_params(absl::StrCat("SELECT previous_status, status, reason, note, changed_by, ",
                                   Micros("changed_at"),
                                   " FROM supporter_status_history WHERE supporter_id = $1::uuid"
                                   " ORDER BY changed_at DESC, id LIMIT 100"),
                      id)) {
    v1::SupporterStatusChange change;
    change.set_previous_status(FromText(kStatuses, Text(row[0])));
    change.set_status(FromText(kStatuses, row[1].c_str()));
    change.set_reason(FromText(kReasons, row[2].c_str()));
    change.set_note(row[3].c_str());
    change.set_changed_by(row[4].c_str());
    SetTime(row[5], change.mutable_changed_at());
    history.push_back(std::move(change));
  }
  return history;
}

v1::Supporter UpdateSupporter(pqxx::work& tx, const v1::Supporter& s,
                              const std::vector<std::string>& paths, const std::string& actor) {
  // Only the columns `paths` names are written: a value derived on read (training reported as
  // LAPSED after its expiry) is never stored by an update that did not ask for it.
  tx.exec_params0(
      "UPDATE supporters AS s SET"
      "  subject = CASE WHEN 'subject' = ANY (mask.paths) THEN NULLIF($2, '') ELSE s.subject END,"
      "  display_name = CASE WHEN 'display_name' = ANY (mask.paths) THEN $3 ELSE s.display_name "
      "END,"
      "  lived_experience = CASE WHEN 'lived_experience_areas' = ANY (mask.paths) THEN "
      "string_to_array($4, E'\\x1f') ELSE s.lived_experience END,"
      "  languages = CASE WHEN 'languages' = ANY (mask.paths) THEN string_to_array($5, E'\\x1f') "
      "ELSE s.languages END,"
      "  gender = CASE WHEN 'gender' = ANY (mask.paths) THEN NULLIF($6, '') ELSE s.gender END,"
      "  age_band = CASE WHEN 'age_band' = ANY (mask.paths) THEN NULLIF($7, '') ELSE s.age_band "
      "END,"
      "  region = CASE WHEN 'region' = ANY (mask.paths) THEN NULLIF($8, '') ELSE s.region END,"
      "  area_code = CASE WHEN 'area_code' = ANY (mask.paths) THEN NULLIF($9, '') ELSE s.area_code "
      "END,"
      "  meeting_modes = CASE WHEN 'meeting_modes' = ANY (mask.paths) THEN string_to_array($10, "
      "E'\\x1f') ELSE s.meeting_modes END,"
      "  availability = CASE WHEN 'availability' = ANY (mask.paths) THEN $11::jsonb ELSE "
      "s.availability END,"
      "  capacity_units = CASE WHEN 'capacity_units' = ANY (mask.paths) THEN $12::integer ELSE "
      "s.capacity_units END,"
      "  training_status = CASE WHEN 'training_status' = ANY (mask.paths) THEN $13 ELSE "
      "s.training_status END,"
      "  training_expires_on = CASE WHEN 'training_expires_on' = ANY (mask.paths) THEN NULLIF($14, "
      "'')::date ELSE s.training_expires_on END,"
      "  supervisor_id = CASE WHEN 'supervisor_subject' = ANY (mask.paths) THEN NULLIF($15, '') "
      "ELSE s.supervisor_id END,"
      "  version = s.version + 1, updated_at = now(), updated_by = $16"
      " FROM (SELECT string_to_array($17, E'\\x1f') AS paths) AS mask"
      " WHERE s.id = $1::uuid",
      s.supporter_id(), s.subject(), s.display_name(), Join(s.lived_experience_areas()),
      Join(s.languages()), s.gender(), ToText(kAgeBands, s.age_band()), s.region(), s.area_code(),
      ModesText(s), AvailabilityJson(s), s.capacity_units(), ToText(kTraining, s.training_status()),
      DateText(s.training_expires_on()), s.supervisor_subject(), actor, absl::StrJoin(paths, kSep));
  return *FindSupporter(tx, s.supporter_id(), false);
}

v1::SupporterStatusChange ChangeStatus(pqxx::work& tx, const std::string& agency,
                                       const v1::Supporter& before, v1::SupporterStatus status,
                                       v1::SupporterStatusReason reason, const std::string& note,
                                       const std::string& actor) {
  const pqxx::row row = tx.exec_params1(
      absl::StrCat(
          "WITH u AS (UPDATE supporters SET status = $3, status_changed_at = now(),"
          "  last_break_started_at = CASE WHEN $3 = 'on_break' THEN now() ELSE "
          "last_break_started_at END,"
          "  version = version + 1, updated_at = now(), updated_by = $6"
          "  WHERE id = $2::uuid RETURNING id)"
          " INSERT INTO supporter_status_history (agency_id, supporter_id, previous_status, status,"
          "  reason, note, changed_by)"
          " SELECT $1, id, $4, $3, $5, $7, $6 FROM u RETURNING ",
          Micros("changed_at")),
      agency, before.supporter_id(), ToText(kStatuses, status), ToText(kStatuses, before.status()),
      ToText(kReasons, reason), actor, note);
  v1::SupporterStatusChange change;
  change.set_previous_status(before.status());
  change.set_status(status);
  change.set_reason(reason);
  change.set_note(note);
  change.set_changed_by(actor);
  SetTime(row[0], change.mutable_changed_at());
  return change;
}

int ActiveMatchCount(pqxx::work& tx, const std::string& supporter_id) {
  return tx
      .exec_params1(
          "SELECT count(*) FROM matches WHERE supporter_id = $1::uuid AND status = 'active'",
          supporter_id)[0]
      .as<int>();
}

std::vector<v1::Supporter> ListSupporters(pqxx::work& tx, const SupporterFilter& filter,
                                          const std::string& after_name,
                                          const std::string& after_id, int limit) {
  std::vector<v1::Supporter> out;
  for (const auto& row : tx.exec_params(
           absl::StrCat("SELECT ", SupporterColumns(),
                        " FROM supporters s WHERE ($1 = '' OR s.status = ANY (string_to_array($1, "
                        "E'\\x1f')))"
                        " AND ($2 = '' OR s.supervisor_id = $2) AND ($3 = '' OR s.subject = $3)"
                        " AND ($4 = '' OR EXISTS (SELECT 1 FROM unnest(s.languages) l"
                        "      WHERE lower(split_part(l, '-', 1)) = $4))"
                        " AND ($5 = '' OR s.region = $5)"
                        " AND ($6 = '' OR (s.display_name, s.id) > ($6, NULLIF($7, '')::uuid))"
                        " ORDER BY s.display_name, s.id LIMIT $8"),
           absl::StrJoin(filter.statuses, kSep), filter.supervisor_subject, filter.subject,
           filter.language, filter.region, after_name, after_id, limit)) {
    out.push_back(ToSupporter(row));
  }
  return out;
}

std::vector<v1::Supporter> ActiveRoster(pqxx::work& tx) {
  std::vector<v1::Supporter> out;
  // The units in use of the whole roster aggregated once and joined (not a sub-select per row).
  for (const auto& row : tx.exec(absl::StrCat(
           "WITH l AS (SELECT supporter_id, sum(units) AS units FROM matches "
           "  WHERE status = 'active' GROUP BY supporter_id) SELECT ",
           SupporterColumnsJoined(),
           " FROM supporters s LEFT JOIN l ON l.supporter_id = s.id WHERE s.status = 'active'"
           " ORDER BY s.id"))) {
    out.push_back(ToSupporter(row));
  }
  return out;
}

int64_t RosterVersion(pqxx::work& tx, const std::string& agency_id, bool lock) {
  // Locked first, then read in a statement of its own: its snapshot is taken after the locks.
  if (lock) tx.exec("SELECT id FROM supporters WHERE status = 'active' ORDER BY id FOR UPDATE");
  return tx
      .exec_params1(
          "SELECT coalesce((SELECT version FROM roster_versions WHERE agency_id = $1), 0)",
          agency_id)[0]
      .as<int64_t>();
}

std::unordered_map<std::string, int> UnitsInUse(pqxx::work& tx,
                                                const std::vector<std::string>& supporter_ids) {
  std::unordered_map<std::string, int> out;
  // Two prepared statements rather than one with an optional filter, which a generic plan could
  // not use as an index condition (and which was planned at every ProposeMatches call).
  const pqxx::result rows =
      supporter_ids.empty()
          ? ExecPrepared(tx, "matching_units_in_use",
                         "SELECT supporter_id::text, sum(units) FROM matches WHERE status = "
                         "'active' GROUP BY supporter_id")
          : ExecPrepared(tx, "matching_units_in_use_of",
                         "SELECT supporter_id::text, sum(units) FROM matches WHERE status = "
                         "'active' AND supporter_id = ANY ($1::uuid[]) GROUP BY supporter_id",
                         TextArrayLiteral(supporter_ids));
  for (const auto& row : rows) out.emplace(row[0].c_str(), row[1].as<int>());
  return out;
}

int RosterSize(pqxx::work& tx) { return tx.exec1("SELECT count(*) FROM supporters")[0].as<int>(); }

std::vector<std::string> ExistingSupporters(pqxx::work& tx, const std::vector<std::string>& ids) {
  std::vector<std::string> out;
  for (const auto& row :
       tx.exec_params("SELECT id FROM supporters WHERE id = ANY (string_to_array($1, ',')::uuid[])",
                      absl::StrJoin(ids, ","))) {
    out.push_back(row[0].c_str());
  }
  return out;
}

// --- Match requests ---------------------------------------------------------------------------

v1::MatchRequest InsertMatchRequest(pqxx::work& tx, const std::string& agency,
                                    const v1::MatchRequest& r, const std::string& actor) {
  v1::HardConstraints hard = r.hard_constraints();
  hard.clear_excluded_supporter_ids();
  const pqxx::row row = tx.exec_params1(
      "INSERT INTO match_requests (agency_id, participant_id, pathway_key, acuity_units,"
      "  hard_constraints, preferences, excluded_supporter_ids, preferred_supporter_id,"
      "  previous_match_id, urgency, requested_by)"
      " VALUES ($1, $2, NULLIF($3, ''), $4, $5::json, $6::json,"
      "  string_to_array($7, ',')::uuid[], NULLIF($8, '')::uuid, NULLIF($9, '')::uuid, $10, $11)"
      " RETURNING id",
      agency, r.participant_id(), r.pathway_key(), r.acuity_units(), ToJson(hard),
      ToJson(r.preferences()), absl::StrJoin(r.hard_constraints().excluded_supporter_ids(), ","),
      r.preferences().continuity().supporter_id(), r.previous_match_id(),
      ToText(kUrgencies, r.urgency()), actor);
  return *FindMatchRequest(tx, row[0].c_str(), false);
}

std::optional<v1::MatchRequest> FindMatchRequest(pqxx::work& tx, const std::string& id, bool lock) {
  // Prepared, as the other per-call reads of a request: planning it costs more than running it.
  static const std::string* const read = new std::string(
      absl::StrCat("SELECT ", RequestColumns(), " FROM match_requests r WHERE r.id = $1::uuid"));
  static const std::string* const locked = new std::string(*read + " FOR UPDATE");
  const pqxx::result rows =
      ExecPrepared(tx, lock ? "matching_find_request_locked" : "matching_find_request",
                   lock ? *locked : *read, id);
  if (rows.empty()) return std::nullopt;
  return ToRequest(rows[0]);
}

std::optional<ProposalContext> LockRequestForProposal(pqxx::work& tx, const std::string& agency_id,
                                                      const std::string& request_id) {
  // Prepared: every ProposeMatches call runs it, and planning it took 0.19 ms against 0.06 ms of
  // execution (pg_stat_statements with track_planning).
  static const std::string* const sql = new std::string(
      absl::StrCat("SELECT ", RequestColumns(),
                   ", coalesce((SELECT v.version FROM roster_versions v WHERE v.agency_id = $2), "
                   "0), " PEERPATH_SQL_MICROS(
                       "now()") " FROM match_requests r"
                                " WHERE r.id = $1::uuid AND r.agency_id = $2 FOR UPDATE OF r"));
  const pqxx::result rows =
      ExecPrepared(tx, "matching_lock_request_for_proposal", *sql, request_id, agency_id);
  if (rows.empty()) return std::nullopt;
  constexpr int kRequestColumns = 17;  // ToRequest's.
  return ProposalContext{ToRequest(rows[0]), rows[0][kRequestColumns].as<int64_t>(),
                         rows[0][kRequestColumns + 1].as<int64_t>()};
}

std::optional<std::string> RequestInProgress(pqxx::work& tx, const std::string& participant) {
  const pqxx::result rows = tx.exec_params(
      "SELECT id FROM match_requests WHERE participant_id = $1 AND status IN ('open', 'proposed')",
      participant);
  if (rows.empty()) return std::nullopt;
  return std::string(rows[0][0].c_str());
}

std::optional<std::string> PreviousSupporter(pqxx::work& tx, const std::string& participant) {
  const pqxx::result rows = tx.exec_params(
      "SELECT supporter_id FROM matches WHERE participant_id = $1 AND status = 'ended'"
      " ORDER BY ended_at DESC LIMIT 1",
      participant);
  if (rows.empty()) return std::nullopt;
  return std::string(rows[0][0].c_str());
}

constexpr char kSetRequestStatus[] =
    "UPDATE match_requests SET status = $2, cancel_reason = NULLIF($3, ''), updated_at = now()"
    " WHERE id = $1::uuid";

void SetRequestStatus(pqxx::work& tx, const std::string& id, const std::string& status,
                      const std::string& cancel_reason) {
  ExecPrepared(tx, "matching_set_request_status", kSetRequestStatus, id, status, cancel_reason);
}

void SetRequestStatus(DeferredWrites& writes, const std::string& id, const std::string& status,
                      const std::string& cancel_reason) {
  writes.Exec("matching_set_request_status", kSetRequestStatus, id, status, cancel_reason);
}

pqxx::result SelectRequestsToAssign(pqxx::work& tx, bool include_proposed, bool lock) {
  return tx.exec(absl::StrCat(
      // OPEN and PROPOSED requests have no started match: no lookup per request.
      "SELECT ", RequestColumns(/*with_match=*/false),
      " FROM match_requests r WHERE r.status IN ('open'", include_proposed ? ", 'proposed'" : "",
      ") ORDER BY r.requested_at, r.id", lock ? " FOR UPDATE" : ""));
}

std::vector<v1::MatchRequest> ParseRequests(const pqxx::result& rows) {
  // Parsing their constraints and preferences (JSON) is most of the time: on every core.
  std::vector<v1::MatchRequest> out(rows.size());
  ForEachRange(out.size(), LoopThreads(), 500, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) out[i] = ToRequest(rows[i]);
  });
  return out;
}

std::vector<v1::MatchRequest> ListMatchRequests(pqxx::work& tx, const RequestFilter& filter,
                                                const std::string& after_micros,
                                                const std::string& after_id, int limit) {
  std::vector<v1::MatchRequest> out;
  for (const auto& row : tx.exec_params(
           absl::StrCat("SELECT ", RequestColumns(),
                        " FROM match_requests r"
                        " WHERE ($1 = '' OR r.status = ANY (string_to_array($1, E'\\x1f')))"
                        " AND ($2 = '' OR r.urgency = ANY (string_to_array($2, E'\\x1f')))"
                        " AND ($3 = '' OR r.participant_id = $3)"
                        " AND ($4 = '' OR r.requested_by = $4)"
                        " AND ($5 = '' OR (",
                        Micros("r.requested_at"),
                        ", r.id) > (NULLIF($5, '')::bigint, NULLIF($6, '')::uuid))"
                        " ORDER BY r.requested_at, r.id LIMIT $7"),
           absl::StrJoin(filter.statuses, kSep), absl::StrJoin(filter.urgencies, kSep),
           filter.participant_id, filter.requested_by, after_micros, after_id, limit)) {
    out.push_back(ToRequest(row));
  }
  return out;
}

// --- Matches ----------------------------------------------------------------------------------

namespace {

// A match as InsertProposals and InsertBatchMatches store it, before its status: `id`, the
// pair, its score and explanation, proposed by `actor` at `now_us` (the transaction's time).
v1::Match NewMatchProto(const NewMatch& n, const std::string& id, const std::string& agency,
                        const std::string& actor, int64_t now_us) {
  v1::Match m;
  m.set_match_id(id);
  m.set_agency_id(agency);
  m.set_match_request_id(n.request_id);
  m.set_supporter_id(n.supporter_id);
  m.set_supporter_subject(n.supporter_subject);
  m.set_participant_id(n.participant_id);
  m.set_units(n.units);
  m.set_score(n.score);
  for (const auto& line : n.explanation) *m.add_explanation() = line;
  *m.mutable_proposed_at() = ToProtoTimestamp(absl::FromUnixMicros(now_us));
  m.set_proposed_by(actor);
  return m;
}

}  // namespace

std::vector<v1::Match> InsertProposals(DeferredWrites& writes, const std::string& agency,
                                       const std::vector<NewMatch>& proposals,
                                       const std::string& actor, int64_t now_us) {
  if (proposals.empty()) return {};
  std::vector<v1::Match> out(proposals.size());
  for (size_t i = 0; i < proposals.size(); ++i) {
    v1::Match& m = out[i] = NewMatchProto(proposals[i], RandomUuid(), agency, actor, now_us);
    m.set_status(v1::MATCH_STATUS_PROPOSED);
    m.set_rank(proposals[i].rank);
  }
  const std::string rows = ProposalRowsJson(proposals, out);
  writes.Exec("matching_insert_proposals",
              "INSERT INTO matches (id, agency_id, request_id, supporter_id, participant_id, units,"
              "  score, explanation_pb, proposed_by, proposed_at, rank, continuity)"
              " SELECT id, $2, request_id, supporter_id, participant_id, units, score,"
              "  decode(explanation_pb, 'base64'), $3, " PEERPATH_SQL_TIME_PARAM(4) ","
              "  rank, continuity"
              " FROM json_to_recordset($1::json) AS x(id uuid, request_id uuid,"
              "  supporter_id uuid, participant_id text, units integer, score double precision,"
              "  rank integer, continuity boolean, explanation_pb text)",
              rows, agency, actor, now_us);
  return out;
}

// AssignBatch's insert, for the rows of one statement (see InsertBatchMatches).
constexpr char kInsertBatchMatches[] =
    "WITH x AS (SELECT * FROM unnest($1::uuid[], $9::uuid[], $10::uuid[], $11::uuid[],"
    "  $12::text[], $13::integer[], $14::double precision[], $15::boolean[], $16::integer[],"
    "  $17::integer[]) AS x(id, follow_up_id, request_id, supporter_id, participant_id, units,"
    "  score, continuity, explanation_at, explanation_len)),"
    " m AS (INSERT INTO matches (id, agency_id, request_id, supporter_id, participant_id, units,"
    "  score, explanation_pb, proposed_by, proposed_at, rank, continuity, status, started_at,"
    "  started_by, origin, batch_id)"
    "  SELECT id, $2, request_id, supporter_id, participant_id, units, score,"
    "   substring($7::bytea FROM explanation_at + 1 FOR explanation_len), $3,"
    "   " PEERPATH_SQL_TIME_PARAM(5) ", 0, continuity, 'active', " PEERPATH_SQL_TIME_PARAM(5) ","
    "   $3, 'batch_assignment', $4::uuid FROM x),"
    " f AS (INSERT INTO follow_ups (id, agency_id, match_id, due_on)"
    "  SELECT follow_up_id, $2, id, $6::date FROM x),"
    // Only the requests that were PROPOSED have proposals to decline: looked up by request, and
    // not at all when there are none (a one-time filter), never by a scan of the agency's
    // matches, which only grow.
    // ($18: their participants, whose matches are indexed).
    " d AS (UPDATE matches p SET status = 'declined', declined_at = now()"
    "  WHERE cardinality($8::uuid[]) > 0 AND p.agency_id = $2"
    "   AND p.participant_id = ANY($18::text[]) AND p.request_id = ANY($8::uuid[])"
    "   AND p.status = 'proposed'),"
    // The batch's row with every match id ($19), in the first statement only (empty in the rest).
    " b AS (INSERT INTO match_batches (agency_id, id, created_at, created_by, match_ids)"
    "  SELECT $2, $4::uuid, " PEERPATH_SQL_TIME_PARAM(5) ", $3, $19::uuid[]"
    "  WHERE cardinality($19::uuid[]) > 0)"
    // A batch assigns each request once: a plain join, no de-duplication of thousands of rows.
    " UPDATE match_requests q SET status = 'assigned', cancel_reason = NULL, updated_at = now()"
    " FROM x WHERE q.id = x.request_id";

// Rows in the first of InsertBatchMatches' two statements: few, so that PostgreSQL starts early.
constexpr size_t kFirstStatementRows = 1000;

void InsertBatchMatches(pqxx::work& tx, const std::string& agency,
                        const std::vector<NewMatch>& matches, const std::string& batch_id,
                        const std::string& actor,
                        absl::FunctionRef<void(const std::vector<StartedMatch>&)> meanwhile) {
  if (matches.empty()) return meanwhile({});
  // The rows are known here but for the transaction's time and the follow-ups' due day: read
  // those, choose the ids, and build the results without reading the rows back (their
  // explanations would be read and decoded again, thousands of them).
  const pqxx::row clock = tx.exec1("SELECT " PEERPATH_SQL_MICROS(
      "now()") ", to_char((now() AT TIME ZONE 'UTC')::date + 14, "
               "'YYYY-MM-DD')");
  const int64_t now_us = clock[0].as<int64_t>();
  const std::string due_on = clock[1].c_str();
  std::vector<std::string> match_ids(matches.size()), follow_up_ids(matches.size());
  ForEachRange(matches.size(), LoopThreads(), 500, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      match_ids[i] = RandomUuid();
      follow_up_ids[i] = RandomUuid();
    }
  });
  BinaryArray all_ids(BinaryArray::Of::kUuid, match_ids.size() * 20);
  for (const std::string& id : match_ids) all_ids.AddUuid(id);
  // Two statements: the first few rows, sent as soon as they are encoded, and the rest, encoded
  // while PostgreSQL inserts the first. Each runs on another thread while this one works on;
  // the transaction is used by that thread alone until it is joined (the future's destructor
  // joins it also when this thread throws).
  auto insert = [&](const BatchRows& rows, size_t begin, size_t end) {
    BinaryArray proposed(BinaryArray::Of::kUuid), participants(BinaryArray::Of::kText);
    for (size_t i = begin; i < end; ++i) {
      if (!matches[i].request_proposed) continue;
      proposed.AddUuid(matches[i].request_id);
      participants.AddText(matches[i].participant_id);
    }
    return std::async(std::launch::async, [&, begin, proposed = proposed.Bytes(),
                                           participants = participants.Bytes()] {
      tx.exec_params0(kInsertBatchMatches, rows.ids.Bytes(), agency, actor, batch_id, now_us,
                      due_on, pqxx::binarystring(rows.explanations), proposed,
                      rows.follow_up_ids.Bytes(), rows.request_ids.Bytes(),
                      rows.supporter_ids.Bytes(), rows.participant_ids.Bytes(), rows.units.Bytes(),
                      rows.scores.Bytes(), rows.continuity.Bytes(), rows.explanation_at.Bytes(),
                      rows.explanation_len.Bytes(), participants,
                      (begin == 0 ? all_ids : BinaryArray(BinaryArray::Of::kUuid)).Bytes());
    });
  };
  const size_t first = std::min(matches.size(), kFirstStatementRows);
  // Declared before the future, so that they outlive a statement still running when this thread
  // throws (locals are destroyed in reverse order, the future joining its thread).
  BatchRows first_rows = EncodeBatchRows(matches, 0, first, match_ids, follow_up_ids), rest_rows(0);
  // The rows are read once into a CTE that four statements share: with the default work_mem a
  // batch of thousands spills it to temporary files; this transaction may use more.
  tx.exec0("SET LOCAL work_mem = '64MB'");
  std::future<void> running = insert(first_rows, 0, first);
  rest_rows = EncodeBatchRows(matches, first, matches.size(), match_ids, follow_up_ids);
  std::vector<StartedMatch> out(matches.size());
  v1::FollowUp due;
  SetDate(clock[1], due.mutable_due_on());
  ForEachRange(matches.size(), LoopThreads(), 500, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const NewMatch& n = matches[i];
      v1::Match& m = out[i].match = NewMatchProto(n, match_ids[i], agency, actor, now_us);
      m.set_status(v1::MATCH_STATUS_ACTIVE);
      m.set_origin(v1::MATCH_ORIGIN_BATCH_ASSIGNMENT);
      m.set_batch_id(batch_id);
      *m.mutable_started_at() = m.proposed_at();
      m.set_started_by(actor);
      v1::FollowUp& f = out[i].follow_up = due;
      f.set_follow_up_id(follow_up_ids[i]);
      f.set_match_id(match_ids[i]);
      f.set_participant_id(n.participant_id);
      f.set_supporter_id(n.supporter_id);
    }
  });
  running.get();
  if (first < matches.size()) {
    running = insert(rest_rows, first, matches.size());
  }
  meanwhile(out);
  if (running.valid()) running.get();
}

// Found among the participant's matches (matches_by_participant): matches are not indexed by
// request.
constexpr char kDeclineProposals[] =
    "UPDATE matches SET status = 'declined', declined_at = now()"
    " WHERE participant_id = $3 AND request_id = $1::uuid AND status = 'proposed'"
    " AND ($2 = '' OR id <> NULLIF($2, '')::uuid)";

void DeclineProposals(pqxx::work& tx, const std::string& participant_id,
                      const std::string& request_id, const std::string& except_match_id) {
  ExecPrepared(tx, "matching_decline_proposals", kDeclineProposals, request_id, except_match_id,
               participant_id);
}

void DeclineProposals(DeferredWrites& writes, const std::string& participant_id,
                      const std::string& request_id, const std::string& except_match_id) {
  writes.Exec("matching_decline_proposals", kDeclineProposals, request_id, except_match_id,
              participant_id);
}

std::optional<v1::Match> FindMatch(pqxx::work& tx, const std::string& id, bool lock) {
  const pqxx::result rows = tx.exec_params(
      absl::StrCat("SELECT ", MatchColumns(), " FROM matches m WHERE m.id = $1::uuid",
                   lock ? " FOR UPDATE" : ""),
      id);
  if (rows.empty()) return std::nullopt;
  return ToMatch(rows[0]);
}

std::optional<v1::Match> ActiveMatchOf(pqxx::work& tx, const std::string& participant) {
  const pqxx::result rows = tx.exec_params(
      absl::StrCat("SELECT ", MatchColumns(),
                   " FROM matches m WHERE m.participant_id = $1 AND m.status = 'active'"),
      participant);
  if (rows.empty()) return std::nullopt;
  return ToMatch(rows[0]);
}

v1::Match StartMatch(pqxx::work& tx, const std::string& agency, const std::string& match_id,
                     const std::string& actor) {
  tx.exec_params0(
      "WITH m AS (UPDATE matches SET status = 'active', started_at = now(), started_by = $3,"
      "  origin = 'proposal_accepted' WHERE id = $2::uuid RETURNING id)"
      " INSERT INTO follow_ups (agency_id, match_id, due_on)"
      " SELECT $1, id, (now() AT TIME ZONE 'UTC')::date + 14 FROM m",
      agency, match_id, actor);
  return *FindMatch(tx, match_id, false);
}

v1::Match EndMatch(pqxx::work& tx, const std::string& match_id, const std::string& reason,
                   const std::string& actor) {
  tx.exec_params0(
      "UPDATE matches SET status = 'ended', ended_at = greatest(now(), started_at), ended_by = $3,"
      " end_reason = $2 WHERE id = $1::uuid",
      match_id, reason, actor);
  return *FindMatch(tx, match_id, false);
}

int UnitsInUse(pqxx::work& tx, const std::string& supporter_id) {
  return tx
      .exec_params1(
          "SELECT coalesce(sum(units), 0) FROM matches WHERE supporter_id = $1::uuid"
          " AND status = 'active'",
          supporter_id)[0]
      .as<int>();
}

std::vector<v1::Match> ListMatches(pqxx::work& tx, const MatchFilter& filter,
                                   const std::string& after_micros, int after_rank,
                                   const std::string& after_id, int limit) {
  std::vector<v1::Match> out;
  const std::string proposed = Micros("m.proposed_at");
  for (const auto& row : tx.exec_params(
           absl::StrCat(
               "SELECT ", MatchColumns(),
               " FROM matches m"
               " WHERE ($1 = '' OR m.participant_id = $1)"
               " AND ($2 = '' OR m.supporter_id = NULLIF($2, '')::uuid)"
               " AND ($3 = '' OR m.status = ANY (string_to_array($3, E'\\x1f')))"
               // Matches are indexed by neither request nor batch: a request's are among its
               // participant's, and a batch's row holds their ids.
               " AND ($4 = '' OR (m.request_id = NULLIF($4, '')::uuid AND m.participant_id ="
               "   (SELECT q.participant_id FROM match_requests q"
               "     WHERE q.id = NULLIF($4, '')::uuid)))"
               " AND ($5 = '' OR (m.batch_id = NULLIF($5, '')::uuid AND m.id = ANY ("
               "   (SELECT b.match_ids FROM match_batches b WHERE b.id = NULLIF($5, "
               "'')::uuid)::uuid[])))"
               " AND (NOT $6 OR (m.status = 'active' AND EXISTS (SELECT 1 FROM follow_ups f"
               "   WHERE f.agency_id = m.agency_id AND f.match_id = m.id"
               "   AND f.rematch_suggested_at IS NOT NULL)))"
               " AND ($7 = '' OR (m.status IN ('active', 'ended') AND EXISTS (SELECT 1 FROM"
               "   supporters s WHERE s.agency_id = m.agency_id AND s.id = m.supporter_id"
               "   AND s.subject = $7)))"
               " AND ($8 = '' OR ",
               proposed, " < NULLIF($8, '')::bigint OR (", proposed,
               " = NULLIF($8, '')::bigint AND (m.rank, m.id) > ($9, NULLIF($10, '')::uuid)))"
               " ORDER BY m.proposed_at DESC, m.rank, m.id LIMIT $11"),
           filter.participant_id, filter.supporter_id, absl::StrJoin(filter.statuses, kSep),
           filter.request_id, filter.batch_id, filter.rematch_suggested_only,
           filter.supporter_subject, after_micros, after_rank, after_id, limit)) {
    out.push_back(ToMatch(row));
  }
  return out;
}

std::optional<v1::Match> ActiveMatchOfSubject(pqxx::work& tx, const std::string& subject,
                                              const std::string& participant) {
  const pqxx::result rows = tx.exec_params(
      absl::StrCat("SELECT ", MatchColumns(),
                   " FROM matches m JOIN supporters s ON s.agency_id = m.agency_id"
                   "  AND s.id = m.supporter_id"
                   " WHERE m.participant_id = $2 AND m.status = 'active' AND s.subject = $1"),
      subject, participant);
  if (rows.empty()) return std::nullopt;
  return ToMatch(rows[0]);
}

// --- Follow-ups -------------------------------------------------------------------------------

std::optional<v1::FollowUp> FindFollowUp(pqxx::work& tx, const std::string& match_id, bool lock) {
  const pqxx::result rows =
      tx.exec_params(absl::StrCat("SELECT ", FollowUpColumns(), kFollowUpFrom,
                                  " WHERE f.match_id = $1::uuid", lock ? " FOR UPDATE OF f" : ""),
                     match_id);
  if (rows.empty()) return std::nullopt;
  return ToFollowUp(rows[0]);
}

v1::FollowUp RecordFollowUpSide(pqxx::work& tx, const std::string& follow_up_id,
                                v1::FollowUpSide side, int rating, const std::string& comment,
                                const std::string& actor) {
  const bool participant = side == v1::FOLLOW_UP_SIDE_PARTICIPANT;
  const std::string prefix = participant ? "participant" : "supporter";
  const pqxx::row row = tx.exec_params1(
      absl::StrCat("UPDATE follow_ups SET ", prefix, "_rating = $2, ", prefix,
                   "_comments = NULLIF($3, ''), ", prefix, "_recorded_at = now(), ", prefix,
                   "_recorded_by = $4 WHERE id = $1::uuid RETURNING match_id"),
      follow_up_id, rating, comment, actor);
  return *FindFollowUp(tx, row[0].c_str(), false);
}

v1::FollowUp MarkRematchSuggested(pqxx::work& tx, const std::string& follow_up_id) {
  const pqxx::row row = tx.exec_params1(
      "UPDATE follow_ups SET rematch_suggested_at = now() WHERE id = $1::uuid RETURNING match_id",
      follow_up_id);
  return *FindFollowUp(tx, row[0].c_str(), false);
}

std::vector<v1::FollowUp> DueFollowUps(pqxx::work& tx, const DueFilter& filter,
                                       const std::string& after_due_on, const std::string& after_id,
                                       int limit) {
  std::vector<v1::FollowUp> out;
  const absl::CivilDay d = filter.due_on_or_before;
  const std::string due = absl::StrFormat("%04d-%02d-%02d", d.year(), d.month(), d.day());
  for (const auto& row : tx.exec_params(
           absl::StrCat(
               "SELECT ", FollowUpColumns(), kFollowUpFrom,
               " WHERE m.status = 'active' AND f.due_on <= $1::date"
               " AND (CASE $2 WHEN 'participant' THEN f.participant_rating IS NULL"
               "      WHEN 'supporter' THEN f.supporter_rating IS NULL"
               "      ELSE f.participant_rating IS NULL OR f.supporter_rating IS NULL END)"
               " AND ($3 = '' OR m.supporter_id = NULLIF($3, '')::uuid)"
               " AND ($4 = '' OR (f.due_on, f.id) > (NULLIF($4, '')::date, NULLIF($5, '')::uuid))"
               " ORDER BY f.due_on, f.id LIMIT $6"),
           due,
           filter.missing_side == v1::FOLLOW_UP_SIDE_PARTICIPANT ? "participant"
           : filter.missing_side == v1::FOLLOW_UP_SIDE_SUPPORTER ? "supporter"
                                                                 : "",
           filter.supporter_id, after_due_on, after_id, limit)) {
    out.push_back(ToFollowUp(row));
  }
  return out;
}

Workload LoadWorkload(pqxx::work& tx, const std::string& supporter_id, absl::CivilDay today) {
  const pqxx::row row = tx.exec_params1(
      "SELECT count(*) FILTER (WHERE m.status = 'active'),"
      "  coalesce(sum(m.units) FILTER (WHERE m.status = 'active'), 0),"
      "  (SELECT count(*) FROM follow_ups f JOIN matches a ON a.agency_id = f.agency_id"
      "    AND a.id = f.match_id WHERE a.supporter_id = $1::uuid AND a.status = 'active'"
      "    AND f.due_on <= $2::date AND f.supporter_rating IS NULL)"
      " FROM matches m WHERE m.supporter_id = $1::uuid",
      supporter_id, absl::StrFormat("%04d-%02d-%02d", today.year(), today.month(), today.day()));
  return {row[0].as<int>(), row[1].as<int>(), row[2].as<int>()};
}

void RecordCheckIn(pqxx::work& tx, const std::string& agency, const std::string& check_in_id,
                   const std::string& supporter_ref, int64_t occurred_at_micros) {
  tx.exec_params0(
      "INSERT INTO supporter_check_ins (agency_id, check_in_id, supporter_ref, occurred_at)"
      " VALUES ($1, $2, $3, to_timestamp($4::double precision / 1000000))"
      " ON CONFLICT DO NOTHING",
      agency, check_in_id, supporter_ref, occurred_at_micros);
}

void RecordConcernOpened(pqxx::work& tx, const std::string& agency, const std::string& concern_id,
                         const std::string& raised_by) {
  tx.exec_params0(
      "INSERT INTO supporter_concerns (agency_id, concern_id, raised_by) VALUES ($1, $2, $3)"
      " ON CONFLICT DO NOTHING",
      agency, concern_id, raised_by);
}

void RecordConcernClosed(pqxx::work& tx, const std::string& agency, const std::string& concern_id) {
  tx.exec_params0(
      "UPDATE supporter_concerns SET open = false WHERE agency_id = $1 AND concern_id = $2", agency,
      concern_id);
}

void AdvanceActivity(pqxx::work& tx, const std::string& agency, const std::string& source,
                     int64_t occurred_at_micros) {
  tx.exec_params0(
      "INSERT INTO activity_as_of (agency_id, source, as_of)"
      " VALUES ($1, $2, to_timestamp($3::double precision / 1000000))"
      " ON CONFLICT (agency_id, source) DO UPDATE SET as_of = greatest(activity_as_of.as_of,"
      " excluded.as_of)",
      agency, source, occurred_at_micros);
}

Activity LoadActivity(pqxx::work& tx, const std::string& supporter_id, const std::string& subject) {
  const pqxx::row row = tx.exec_params1(
      absl::StrCat(
          "SELECT (SELECT count(*) FROM supporter_check_ins WHERE supporter_ref IN ($1, $2)"
          "   AND occurred_at > now() - interval '7 days' AND occurred_at <= now()),"
          " (SELECT count(*) FROM supporter_concerns WHERE open AND raised_by IN ($1, $2)),"
          " (SELECT ",
          Micros("min(as_of)"), " FROM activity_as_of)"),
      supporter_id, subject.empty() ? supporter_id : subject);
  Activity activity;
  activity.check_ins_last_7_days = row[0].as<int>();
  activity.open_concerns_raised = row[1].as<int>();
  if (!row[2].is_null()) activity.as_of_micros = row[2].as<int64_t>();
  return activity;
}

bool TryLockBatch(pqxx::work& tx, const std::string& agency) {
  return tx
      .exec_params1(
          "SELECT pg_try_advisory_xact_lock(hashtext('peerpath.matching.batch'),"
          " hashtext($1))",
          agency)[0]
      .as<bool>();
}

std::vector<std::string> ParticipantsWithActiveMatch(pqxx::work& tx) {
  std::vector<std::string> out;
  for (const auto& row : tx.exec("SELECT participant_id FROM matches WHERE status = 'active'")) {
    out.push_back(row[0].c_str());
  }
  return out;
}

}  // namespace peerpath::matching::store
