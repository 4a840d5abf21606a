#include "services/evaluation/read_models.h"

#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/agency_time_zones.h"
#include "common/db.h"
#include "common/identifiers.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/consent/v1/events.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "peerpath/matching/v1/events.pb.h"

namespace peerpath::evaluation {
namespace {

// A timestamp parameter: microseconds since the epoch, turned back into a timestamptz exactly.

int64_t Micros(const google::protobuf::Timestamp& ts) {
  return absl::ToUnixMicros(FromProtoTimestamp(ts));
}

// SQL for the time zone of the agency $1 as the log has told it so far (UTC until it has).
#define EVAL_SQL_AGENCY_ZONE \
  "coalesce((SELECT time_zone FROM agency_time_zones WHERE agency_id = $1), 'UTC')"

template <typename Payload>
absl::Status Unpack(const common::v1::Event& event, Payload& payload) {
  if (!event.payload().UnpackTo(&payload)) {
    return absl::InvalidArgumentError(absl::StrCat("unreadable payload of type ", event.type()));
  }
  return absl::OkStatus();
}

absl::Status RequireUuids(std::initializer_list<std::pair<const char*, const std::string*>> ids) {
  for (const auto& [field, value] : ids) {
    if (!IsUuid(*value)) return absl::InvalidArgumentError(absl::StrCat(field, " is not a UUID"));
  }
  return absl::OkStatus();
}

absl::Status RequireText(std::initializer_list<std::pair<const char*, const std::string*>> ids) {
  for (const auto& [field, value] : ids) {
    if (value->empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  }
  return absl::OkStatus();
}

// Claims the event id; false when it was applied before.
bool Claim(pqxx::work& tx, const common::v1::Event& event) {
  return !ExecPrepared(tx, "eval_claim",
                       "INSERT INTO applied_events (agency_id, event_id) VALUES ($1, $2::uuid) "
                       "ON CONFLICT DO NOTHING RETURNING 1",
                       event.agency_id(), event.event_id())
              .empty();
}

// Reads `Payload`, checks it, claims the event and applies it: a second delivery changes nothing.
template <typename Payload, typename Check, typename Apply>
absl::Status ApplyOnce(pqxx::work& tx, const common::v1::Event& event, Check check, Apply apply) {
  Payload e;
  if (auto st = Unpack(event, e); !st.ok()) return st;
  if (auto st = check(e); !st.ok()) return st;
  if (Claim(tx, event)) apply(e);
  return absl::OkStatus();
}

absl::Status CheckConcernIds(const std::string& concern, const std::string& enrollment) {
  if (!IsUuid(concern)) return absl::InvalidArgumentError("concern_id is not a UUID");
  if (!enrollment.empty() && !IsUuid(enrollment)) {
    return absl::InvalidArgumentError("enrollment_id is not a UUID");
  }
  return absl::OkStatus();
}

// A peer support contact (a check-in or a REACHED attempt), with a wellbeing score (1 to 5) or 0,
// in one round trip with the claim of the event id: the bulk of the traffic. Its local day and
// month are taken in the agency's time zone as stored at this point of the log (kLocalTime).
void ApplyContact(pqxx::work& tx, const common::v1::Event& event, const std::string& participant,
                  const std::string& supporter, int64_t at, int score,
                  const std::string& enrollment, const std::string& pathway,
                  const std::string& source_id) {
  ExecPrepared(
      tx, "eval_contact",
      "WITH fresh AS (INSERT INTO applied_events (agency_id, event_id) VALUES ($1, $2::uuid) "
      "  ON CONFLICT DO NOTHING RETURNING 1), "
      "l AS (SELECT local::date AS day, date_trunc('month', local)::date AS month FROM (SELECT " PEERPATH_SQL_TIME_PARAM(5) " AT TIME ZONE " EVAL_SQL_AGENCY_ZONE " AS local) x), "
      "d AS (INSERT INTO contact_days (agency_id, participant_id, day) "
      "  SELECT $1, $3, l.day FROM fresh, l ON CONFLICT DO NOTHING RETURNING 1), "
      "s AS (INSERT INTO supporter_contacts_month (agency_id, supporter_id, month, contacts) "
      "  SELECT $1, $4, l.month, 1 FROM fresh, l WHERE $4 <> '' "
      "  ON CONFLICT (agency_id, month, supporter_id) "
      "  DO UPDATE SET contacts = supporter_contacts_month.contacts + 1 RETURNING 1), "
      "wf AS (INSERT INTO wellbeing_first (agency_id, enrollment_id, first_at, first_id, "
      "  first_score) SELECT $1, $7::uuid, " PEERPATH_SQL_TIME_PARAM(5) ", $9::uuid, $6::smallint FROM fresh WHERE $6::smallint > 0 "
      "  ON CONFLICT (agency_id, enrollment_id) DO UPDATE SET first_at = EXCLUDED.first_at, "
      "  first_id = EXCLUDED.first_id, first_score = EXCLUDED.first_score "
      "  WHERE (EXCLUDED.first_at, EXCLUDED.first_id) < "
      "        (wellbeing_first.first_at, wellbeing_first.first_id) RETURNING 1), "
      "wm AS (INSERT INTO wellbeing_month (agency_id, enrollment_id, participant_id, pathway_key, "
      "  month, scores, last_at, last_id, last_score) "
      "  SELECT $1, $7::uuid, $3, $8, l.month, 1, " PEERPATH_SQL_TIME_PARAM(5) ", $9::uuid, $6::smallint FROM fresh, l "
      "  WHERE $6::smallint > 0 ON CONFLICT (agency_id, month, enrollment_id) DO UPDATE SET "
      "  scores = wellbeing_month.scores + 1, "
      "  last_score = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_id) > "
      "    (wellbeing_month.last_at, wellbeing_month.last_id) THEN EXCLUDED.last_score "
      "    ELSE wellbeing_month.last_score END, "
      "  last_id = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_id) > "
      "    (wellbeing_month.last_at, wellbeing_month.last_id) THEN EXCLUDED.last_id "
      "    ELSE wellbeing_month.last_id END, "
      "  last_at = GREATEST(EXCLUDED.last_at, wellbeing_month.last_at) RETURNING 1) "
      "SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM s) + (SELECT count(*) FROM wf) + "
      "(SELECT count(*) FROM wm)",
      event.agency_id(), event.event_id(), participant, supporter, at, score, enrollment, pathway,
      source_id);
}

absl::Status ApplyEnrollment(pqxx::work& tx, const common::v1::Event& event,
                             const std::string& enrollment, const std::string& participant,
                             const std::string& pathway, int64_t started, const int64_t* ended,
                             const std::string& program = "") {
  if (auto st = RequireUuids({{"enrollment_id", &enrollment}}); !st.ok()) return st;
  if (auto st = RequireText({{"participant_id", &participant}, {"pathway_key", &pathway}});
      !st.ok()) {
    return st;
  }
  if (!Claim(tx, event)) return absl::OkStatus();
  if (ended == nullptr) {
    ExecPrepared(tx, "eval_enrollment_started",
                 "INSERT INTO enrollments (agency_id, enrollment_id, participant_id, pathway_key, "
                 "started_at, program_id) VALUES ($1, $2::uuid, $3, $4, " PEERPATH_SQL_TIME_PARAM(5) ", "
                 "NULLIF($6, '')) "
                 "ON CONFLICT (agency_id, enrollment_id) DO UPDATE SET "
                 "participant_id = EXCLUDED.participant_id, pathway_key = EXCLUDED.pathway_key, "
                 "started_at = EXCLUDED.started_at, program_id = EXCLUDED.program_id",
                 event.agency_id(), enrollment, participant, pathway, started, program);
  } else {
    ExecPrepared(tx, "eval_enrollment_ended",
                 "INSERT INTO enrollments (agency_id, enrollment_id, participant_id, pathway_key, "
                 "started_at, ended_at) VALUES ($1, $2::uuid, $3, $4, " PEERPATH_SQL_TIME_PARAM(5) ", "
                 "GREATEST(" PEERPATH_SQL_TIME_PARAM(5) ", " PEERPATH_SQL_TIME_PARAM(6) ")) "
                 "ON CONFLICT (agency_id, enrollment_id) DO UPDATE SET "
                 "ended_at = GREATEST(enrollments.started_at, EXCLUDED.ended_at)",
                 event.agency_id(), enrollment, participant, pathway, started, *ended);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ApplyCheckInEvent(pqxx::work& tx, const common::v1::Event& event) {
  namespace c = checkin::v1;
  const std::string& type = event.type();
  if (type == "peerpath.checkin.v1.EnrollmentStartedEvent") {
    c::EnrollmentStartedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (!e.program_id().empty() && !IsProgramId(e.program_id())) {
      return absl::InvalidArgumentError("program_id: 1 to 64 characters of [A-Za-z0-9_.:-]");
    }
    auto st = ApplyEnrollment(tx, event, e.enrollment_id(), e.participant_id(), e.pathway_key(),
                              Micros(e.enrolled_at()), nullptr, e.program_id());
    // The agency's zone at enrollment; one the tz database does not know is left out (the
    // enrollment still counts).
    if (st.ok() && IsTimeZoneName(e.time_zone())) {
      NoteAgencyTimeZone(tx, event.agency_id(), e.time_zone(), event.position());
    }
    return st;
  }
  if (type == "peerpath.checkin.v1.ProgramPolicyChangedEvent") {
    c::ProgramPolicyChangedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (!IsTimeZoneName(e.time_zone())) {
      return absl::InvalidArgumentError("time_zone is not an IANA time zone");
    }
    if (Claim(tx, event))
      NoteAgencyTimeZone(tx, event.agency_id(), e.time_zone(), event.position());
    return absl::OkStatus();
  }
  if (type == "peerpath.checkin.v1.EnrollmentEndedEvent") {
    c::EnrollmentEndedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    const int64_t ended = Micros(e.ended_at());
    return ApplyEnrollment(tx, event, e.enrollment_id(), e.participant_id(), e.pathway_key(),
                           Micros(e.enrolled_at()), &ended);
  }
  if (type == "peerpath.checkin.v1.CheckInRecordedEvent") {
    c::CheckInRecordedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (auto st = RequireUuids(
            {{"check_in_id", &e.check_in_id()}, {"enrollment_id", &e.enrollment_id()}});
        !st.ok()) {
      return st;
    }
    if (auto st = RequireText({{"participant_id", &e.participant_id()}}); !st.ok()) return st;
    const int score =
        e.wellbeing_score() >= 1 && e.wellbeing_score() <= 5 ? e.wellbeing_score() : 0;
    ApplyContact(tx, event, e.participant_id(), e.supporter_id(), Micros(e.occurred_at()), score,
                 e.enrollment_id(), e.pathway_key(), e.check_in_id());
    return absl::OkStatus();
  }
  if (type == "peerpath.checkin.v1.ContactAttemptRecordedEvent") {
    c::ContactAttemptRecordedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (e.outcome() != c::CONTACT_OUTCOME_REACHED) {
      Claim(tx, event);
      return absl::OkStatus();
    }
    if (auto st = RequireUuids({{"contact_attempt_id", &e.contact_attempt_id()},
                                {"enrollment_id", &e.enrollment_id()}});
        !st.ok()) {
      return st;
    }
    if (auto st = RequireText({{"participant_id", &e.participant_id()}}); !st.ok()) return st;
    ApplyContact(tx, event, e.participant_id(), e.supporter_id(), Micros(e.attempted_at()), 0,
                 e.enrollment_id(), e.pathway_key(), e.contact_attempt_id());
    return absl::OkStatus();
  }
  if (type == "peerpath.checkin.v1.FeedbackRecordedEvent") {
    c::FeedbackRecordedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (auto st = RequireUuids(
            {{"feedback_id", &e.feedback_id()}, {"enrollment_id", &e.enrollment_id()}});
        !st.ok()) {
      return st;
    }
    if (auto st = RequireText({{"participant_id", &e.participant_id()}}); !st.ok()) return st;
    if (e.rating() < 1 || e.rating() > 5) {
      return absl::InvalidArgumentError("rating is not between 1 and 5");
    }
    if (!Claim(tx, event)) return absl::OkStatus();
    ExecPrepared(tx, "eval_feedback",
                 "INSERT INTO participant_feedback (agency_id, feedback_id, enrollment_id, "
                 "participant_id, pathway_key, rating, given_at) VALUES ($1, $2::uuid, $3::uuid, "
                 "$4, $5, $6, " PEERPATH_SQL_TIME_PARAM(7) ") ON CONFLICT DO NOTHING",
                 event.agency_id(), e.feedback_id(), e.enrollment_id(), e.participant_id(),
                 e.pathway_key(), e.rating(), Micros(e.given_at()));
    return absl::OkStatus();
  }
  if (type == "peerpath.checkin.v1.ReconnectionRecordedEvent") {
    c::ReconnectionRecordedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (auto st = RequireUuids({{"enrollment_id", &e.enrollment_id()}}); !st.ok()) return st;
    if (!Claim(tx, event)) return absl::OkStatus();
    ExecPrepared(tx, "eval_reconnection",
                 "INSERT INTO reconnections (agency_id, enrollment_id, reconnected_at) "
                 "VALUES ($1, $2::uuid, " PEERPATH_SQL_TIME_PARAM(3) ") ON CONFLICT DO NOTHING",
                 event.agency_id(), e.enrollment_id(), Micros(e.reconnected_at()));
    return absl::OkStatus();
  }
  if (type == "peerpath.checkin.v1.EngagementStageChangedEvent") {
    c::EngagementStageChangedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    const char* stage = nullptr;
    if (e.to_stage() == c::ENGAGEMENT_STAGE_MISSED_CONTACT &&
        e.cause() == c::ENGAGEMENT_STAGE_CHANGE_CAUSE_FAILED_ATTEMPTS) {
      stage = "missed_contact";
    } else if (e.to_stage() == c::ENGAGEMENT_STAGE_LOST_TO_FOLLOW_UP) {
      stage = "lost_to_follow_up";
    }
    if (stage == nullptr) {
      Claim(tx, event);
      return absl::OkStatus();
    }
    if (auto st = RequireUuids({{"enrollment_id", &e.enrollment_id()}}); !st.ok()) return st;
    if (auto st = RequireText(
            {{"participant_id", &e.participant_id()}, {"pathway_key", &e.pathway_key()}});
        !st.ok()) {
      return st;
    }
    if (!Claim(tx, event)) return absl::OkStatus();
    ExecPrepared(tx, "eval_stage_change",
                 "INSERT INTO stage_changes (agency_id, enrollment_id, participant_id, "
                 "pathway_key, to_stage, changed_at) VALUES ($1, $2::uuid, $3, $4, "
                 "$5, " PEERPATH_SQL_TIME_PARAM(6) ") ON CONFLICT DO NOTHING",
                 event.agency_id(), e.enrollment_id(), e.participant_id(), e.pathway_key(),
                 std::string(stage), Micros(e.changed_at()));
    return absl::OkStatus();
  }
  if (type == "peerpath.checkin.v1.AppointmentOutcomeRecordedEvent") {
    c::AppointmentOutcomeRecordedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (auto st = RequireUuids(
            {{"appointment_id", &e.appointment_id()}, {"enrollment_id", &e.enrollment_id()}});
        !st.ok()) {
      return st;
    }
    if (auto st = RequireText(
            {{"participant_id", &e.participant_id()}, {"pathway_key", &e.pathway_key()}});
        !st.ok()) {
      return st;
    }
    const char* outcome = nullptr;
    switch (e.outcome()) {
      case c::APPOINTMENT_OUTCOME_ATTENDED:
        outcome = "attended";
        break;
      case c::APPOINTMENT_OUTCOME_MISSED:
        outcome = "missed";
        break;
      case c::APPOINTMENT_OUTCOME_CANCELLED:
        outcome = "cancelled";
        break;
      case c::APPOINTMENT_OUTCOME_RESCHEDULED:
        outcome = "rescheduled";
        break;
      default:
        return absl::InvalidArgumentError("appointment outcome without a final outcome");
    }
    if (!Claim(tx, event)) return absl::OkStatus();
    // An appointment's outcome is recorded once; a later record of the same appointment wins.
    ExecPrepared(tx, "eval_appointment",
                 "INSERT INTO appointments (agency_id, appointment_id, enrollment_id, "
                 "participant_id, pathway_key, first_appointment, outcome, scheduled_at, "
                 "peer_contact_before) VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6, $7, " PEERPATH_SQL_TIME_PARAM(8)
                 ", $9) ON CONFLICT (agency_id, appointment_id) DO UPDATE SET "
                 "outcome = EXCLUDED.outcome, scheduled_at = EXCLUDED.scheduled_at, "
                 "peer_contact_before = EXCLUDED.peer_contact_before",
                 event.agency_id(), e.appointment_id(), e.enrollment_id(), e.participant_id(),
                 e.pathway_key(), e.kind() == c::APPOINTMENT_KIND_FIRST_APPOINTMENT,
                 std::string(outcome), Micros(e.scheduled_at()), e.peer_contact_before());
    return absl::OkStatus();
  }
  Claim(tx, event);
  return absl::OkStatus();
}

namespace {

// The contacts of a batch, applied in one statement over arrays (Flush).
class ContactRows {
 public:
  void Add(const common::v1::Event& event, const std::string& participant,
           const std::string& supporter, int64_t at, int score, const std::string& enrollment,
           const std::string& pathway, const std::string& source) {
    agency_ = event.agency_id();
    ids_.push_back(event.event_id());
    participants_.push_back(participant);
    supporters_.push_back(supporter);
    ats_.push_back(absl::StrCat(at));
    scores_.push_back(absl::StrCat(score));
    enrollments_.push_back(enrollment);
    pathways_.push_back(pathway);
    sources_.push_back(source);
  }

  void Flush(pqxx::work& tx) {
    if (ids_.empty()) return;
    ExecPrepared(
        tx, "eval_contact_batch",
        "WITH input AS (SELECT DISTINCT ON (event_id) * FROM unnest($2::uuid[], $3::text[], "
        "  $4::text[], $5::bigint[], $6::smallint[], $7::uuid[], $8::text[], $9::uuid[]) "
        "  AS t(event_id, participant, supporter, at, score, enrollment, pathway, source_id)), "
        "fresh AS (INSERT INTO applied_events (agency_id, event_id) SELECT $1, event_id FROM input "
        "  ON CONFLICT DO NOTHING RETURNING event_id), "
        "zone AS (SELECT " EVAL_SQL_AGENCY_ZONE
        " AS name), "
        "timed AS (SELECT input.*, timestamptz 'epoch' + input.at * interval '1 microsecond' AS ts "
        "  FROM input JOIN fresh USING (event_id)), "
        "rows AS (SELECT timed.*, (ts AT TIME ZONE zone.name)::date AS day, "
        "  date_trunc('month', ts AT TIME ZONE zone.name)::date AS month FROM timed, zone), "
        "d AS (INSERT INTO contact_days (agency_id, participant_id, day) "
        "  SELECT DISTINCT $1, participant, day FROM rows ON CONFLICT DO NOTHING RETURNING 1), "
        "s AS (INSERT INTO supporter_contacts_month AS m (agency_id, supporter_id, month, "
        "  contacts) SELECT $1, supporter, month, count(*) FROM rows WHERE supporter <> '' "
        "  GROUP BY 2, 3 ON CONFLICT (agency_id, month, supporter_id) "
        "  DO UPDATE SET contacts = m.contacts + EXCLUDED.contacts RETURNING 1), "
        "wf AS (INSERT INTO wellbeing_first AS w (agency_id, enrollment_id, first_at, first_id, "
        "  first_score) SELECT DISTINCT ON (enrollment) $1, enrollment, ts, source_id, score "
        "  FROM rows WHERE score > 0 ORDER BY enrollment, ts, source_id "
        "  ON CONFLICT (agency_id, enrollment_id) DO UPDATE SET first_at = EXCLUDED.first_at, "
        "  first_id = EXCLUDED.first_id, first_score = EXCLUDED.first_score "
        "  WHERE (EXCLUDED.first_at, EXCLUDED.first_id) < (w.first_at, w.first_id) RETURNING 1), "
        "wm AS (INSERT INTO wellbeing_month AS w (agency_id, enrollment_id, participant_id, "
        "  pathway_key, month, scores, last_at, last_id, last_score) "
        "  SELECT DISTINCT ON (enrollment, month) $1, enrollment, participant, pathway, month, "
        "  count(*) OVER (PARTITION BY enrollment, month), ts, source_id, score FROM rows "
        "  WHERE score > 0 ORDER BY enrollment, month, ts DESC, source_id DESC "
        "  ON CONFLICT (agency_id, month, enrollment_id) DO UPDATE SET "
        "  scores = w.scores + EXCLUDED.scores, "
        "  last_score = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_id) > (w.last_at, w.last_id) "
        "    THEN EXCLUDED.last_score ELSE w.last_score END, "
        "  last_id = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_id) > (w.last_at, w.last_id) "
        "    THEN EXCLUDED.last_id ELSE w.last_id END, "
        "  last_at = GREATEST(EXCLUDED.last_at, w.last_at) RETURNING 1) "
        "SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM s) + (SELECT count(*) FROM wf) + "
        "(SELECT count(*) FROM wm)",
        agency_, TextArrayLiteral(ids_), TextArrayLiteral(participants_),
        TextArrayLiteral(supporters_), TextArrayLiteral(ats_), TextArrayLiteral(scores_),
        TextArrayLiteral(enrollments_), TextArrayLiteral(pathways_), TextArrayLiteral(sources_));
    *this = ContactRows();
  }

 private:
  std::string agency_;
  std::vector<std::string> ids_, participants_, supporters_, ats_, scores_, enrollments_, pathways_,
      sources_;
};

// Events that may name the agency's time zone: the contacts before them are dated first.
bool MayChangeTimeZone(const common::v1::Event& event) {
  return event.type() == "peerpath.checkin.v1.ProgramPolicyChangedEvent" ||
         event.type() == "peerpath.checkin.v1.EnrollmentStartedEvent";
}

}  // namespace

absl::Status ApplyCheckInBatch(pqxx::work& tx,
                               const std::vector<const common::v1::Event*>& events) {
  ContactRows contacts;
  for (const common::v1::Event* event : events) {
    std::string participant, supporter, enrollment, pathway, source;
    int64_t at = 0;
    int score = 0;
    if (event->type() == "peerpath.checkin.v1.CheckInRecordedEvent") {
      checkin::v1::CheckInRecordedEvent e;
      if (auto st = Unpack(*event, e); !st.ok()) return st;
      participant = e.participant_id();
      supporter = e.supporter_id();
      enrollment = e.enrollment_id();
      pathway = e.pathway_key();
      source = e.check_in_id();
      at = Micros(e.occurred_at());
      score = e.wellbeing_score() >= 1 && e.wellbeing_score() <= 5 ? e.wellbeing_score() : 0;
    } else if (event->type() == "peerpath.checkin.v1.ContactAttemptRecordedEvent") {
      checkin::v1::ContactAttemptRecordedEvent e;
      if (auto st = Unpack(*event, e); !st.ok()) return st;
      if (e.outcome() != checkin::v1::CONTACT_OUTCOME_REACHED) {
        if (auto st = ApplyCheckInEvent(tx, *event); !st.ok()) return st;
        continue;
      }
      participant = e.participant_id();
      supporter = e.supporter_id();
      enrollment = e.enrollment_id();
      pathway = e.pathway_key();
      source = e.contact_attempt_id();
      at = Micros(e.attempted_at());
    } else {
      if (MayChangeTimeZone(*event)) contacts.Flush(tx);
      if (auto st = ApplyCheckInEvent(tx, *event); !st.ok()) return st;
      continue;
    }
    if (!IsUuid(event->event_id()) || !IsUuid(enrollment) || !IsUuid(source)) {
      return absl::InvalidArgumentError("event, enrollment or contact id is not a UUID");
    }
    if (participant.empty()) return absl::InvalidArgumentError("participant_id is empty");
    contacts.Add(*event, participant, supporter, at, score, enrollment, pathway, source);
  }
  contacts.Flush(tx);
  return absl::OkStatus();
}

ConsumerOptions CheckInConsumerOptions() {
  return ConsumerOptions{
      .source = "checkin", .apply_batch = ApplyCheckInBatch, .runs_by_agency = true};
}

absl::Status ApplyMatchingEvent(pqxx::work& tx, const common::v1::Event& event) {
  namespace m = matching::v1;
  const std::string& type = event.type();
  // Both ends of a match name it and its two people.
  auto match_ids = [](const auto& e) {
    if (auto st = RequireUuids({{"match_id", &e.match_id()}}); !st.ok()) return st;
    return RequireText(
        {{"supporter_id", &e.supporter_id()}, {"participant_id", &e.participant_id()}});
  };
  if (type == "peerpath.matching.v1.MatchStartedEvent") {
    return ApplyOnce<m::MatchStartedEvent>(tx, event, match_ids, [&](const auto& e) {
      ExecPrepared(tx, "eval_match_started",
                   "INSERT INTO matches (agency_id, match_id, supporter_id, participant_id, "
                   "match_request_id, previous_match_id, started_at) VALUES ($1, $2::uuid, $3, "
                   "$4, $5, $6, " PEERPATH_SQL_TIME_PARAM(7) ") ON CONFLICT (agency_id, match_id) DO UPDATE SET "
                   "match_request_id = EXCLUDED.match_request_id, "
                   "previous_match_id = EXCLUDED.previous_match_id, "
                   "started_at = EXCLUDED.started_at",
                   event.agency_id(), e.match_id(), e.supporter_id(), e.participant_id(),
                   e.match_request_id(), e.previous_match_id(), Micros(e.started_at()));
    });
  }
  if (type == "peerpath.matching.v1.MatchEndedEvent") {
    return ApplyOnce<m::MatchEndedEvent>(tx, event, match_ids, [&](const auto& e) {
      ExecPrepared(tx, "eval_match_ended",
                   "INSERT INTO matches (agency_id, match_id, supporter_id, participant_id, "
                   "started_at, ended_at, rematch_request_id) VALUES ($1, $2::uuid, $3, $4, "
                   PEERPATH_SQL_TIME_PARAM(5) ", GREATEST(" PEERPATH_SQL_TIME_PARAM(5) ", " PEERPATH_SQL_TIME_PARAM(6) "), $7) "
                   "ON CONFLICT (agency_id, match_id) DO UPDATE SET "
                   "ended_at = EXCLUDED.ended_at, rematch_request_id = EXCLUDED.rematch_request_id",
                   event.agency_id(), e.match_id(), e.supporter_id(), e.participant_id(),
                   Micros(e.started_at()), Micros(e.ended_at()), e.rematch_request_id());
    });
  }
  if (type == "peerpath.matching.v1.FollowUpRecordedEvent") {
    m::FollowUpRecordedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (auto st = RequireUuids({{"follow_up_id", &e.follow_up_id()}, {"match_id", &e.match_id()}});
        !st.ok()) {
      return st;
    }
    if (e.rating() < 1 || e.rating() > 5) return absl::InvalidArgumentError("rating not 1 to 5");
    if (e.side() != m::FOLLOW_UP_SIDE_PARTICIPANT && e.side() != m::FOLLOW_UP_SIDE_SUPPORTER) {
      return absl::InvalidArgumentError("follow-up side unspecified");
    }
    if (!Claim(tx, event)) return absl::OkStatus();
    ExecPrepared(
        tx, "eval_follow_up",
        "INSERT INTO follow_up_ratings (agency_id, follow_up_id, match_id, "
        "participant_id, supporter_id, side, rating, recorded_at) VALUES ($1, $2::uuid, "
        "$3::uuid, $4, $5, $6, $7, " PEERPATH_SQL_TIME_PARAM(8) ") ON CONFLICT DO NOTHING",
        event.agency_id(), e.follow_up_id(), e.match_id(), e.participant_id(), e.supporter_id(),
        std::string(e.side() == m::FOLLOW_UP_SIDE_PARTICIPANT ? "participant" : "supporter"),
        e.rating(), Micros(e.recorded_at()));
    return absl::OkStatus();
  }
  Claim(tx, event);
  return absl::OkStatus();
}

namespace {

// Upserts what one concern event knows; columns it does not carry keep what is stored. `field`
// names what else the event means: acknowledged, closed or breached.
void UpsertConcern(pqxx::work& tx, const common::v1::Event& event, const std::string& concern,
                   const std::string& participant, const std::string& enrollment, int category,
                   int severity, const google::protobuf::Timestamp* opened,
                   const google::protobuf::Timestamp* acknowledged,
                   const google::protobuf::Timestamp* closed, bool breached) {
  auto ts = [](const google::protobuf::Timestamp* t) -> std::optional<int64_t> {
    if (t == nullptr || (t->seconds() == 0 && t->nanos() == 0)) return std::nullopt;
    return Micros(*t);
  };
  auto text = [](const std::string& s) -> std::optional<std::string> {
    if (s.empty()) return std::nullopt;
    return s;
  };
  auto code = [](int v) -> std::optional<int> {
    if (v == 0) return std::nullopt;
    return v;
  };
  ExecPrepared(
      tx, "eval_concern",
      "INSERT INTO concerns AS c (agency_id, concern_id, participant_id, enrollment_id, category, "
      "severity, opened_at, acknowledged_at, closed_at, breached) VALUES ($1, $2::uuid, $3, "
      "$4::uuid, $5, $6, " PEERPATH_SQL_TIME_PARAM(7) ", " PEERPATH_SQL_TIME_PARAM(8) ", " PEERPATH_SQL_TIME_PARAM(9) ", $10) "
      "ON CONFLICT (agency_id, concern_id) DO UPDATE SET "
      "participant_id = coalesce(c.participant_id, EXCLUDED.participant_id), "
      "enrollment_id = coalesce(c.enrollment_id, EXCLUDED.enrollment_id), "
      "category = coalesce(c.category, EXCLUDED.category), "
      "severity = coalesce(c.severity, EXCLUDED.severity), "
      "opened_at = coalesce(c.opened_at, EXCLUDED.opened_at), "
      "acknowledged_at = LEAST(c.acknowledged_at, EXCLUDED.acknowledged_at), "
      "closed_at = LEAST(c.closed_at, EXCLUDED.closed_at), "
      "breached = c.breached OR EXCLUDED.breached",
      event.agency_id(), concern, text(participant), text(enrollment), code(category),
      code(severity), ts(opened), ts(acknowledged), ts(closed), breached);
}

}  // namespace

absl::Status ApplyEscalationEvent(pqxx::work& tx, const common::v1::Event& event) {
  namespace e1 = escalation::v1;
  const std::string& type = event.type();
  // Only the concern id to check (the event names no participant or enrollment).
  auto concern_only = [](const auto& e) { return CheckConcernIds(e.concern_id(), ""); };
  // A breach marks the concern (escalations and re-alerts alike).
  auto breached = [&](const auto& e) {
    UpsertConcern(tx, event, e.concern_id(), "", "", e.category(), e.severity(), nullptr, nullptr,
                  nullptr, true);
  };
  if (type == "peerpath.escalation.v1.ConcernOpenedEvent") {
    return ApplyOnce<e1::ConcernOpenedEvent>(
        tx, event,
        [](const auto& e) {
          if (auto st = CheckConcernIds(e.concern_id(), e.enrollment_id()); !st.ok()) return st;
          return RequireText({{"participant_id", &e.participant_id()}});
        },
        [&](const auto& e) {
          UpsertConcern(tx, event, e.concern_id(), e.participant_id(), e.enrollment_id(),
                        e.category(), e.severity(), &e.opened_at(), nullptr, nullptr, false);
        });
  }
  if (type == "peerpath.escalation.v1.ConcernRoutedEvent") {
    return ApplyOnce<e1::ConcernRoutedEvent>(tx, event, concern_only, [&](const auto& e) {
      // The latest acknowledgement deadline (each escalation moves it later): the overdue gauge.
      ExecPrepared(tx, "eval_concern_routed",
                   "INSERT INTO concerns AS c (agency_id, concern_id, ack_deadline) VALUES ($1, "
                   "$2::uuid, " PEERPATH_SQL_TIME_PARAM(3) ") ON CONFLICT (agency_id, concern_id) DO UPDATE SET "
                   "ack_deadline = GREATEST(c.ack_deadline, EXCLUDED.ack_deadline)",
                   event.agency_id(), e.concern_id(), Micros(e.ack_deadline()));
    });
  }
  if (type == "peerpath.escalation.v1.ConcernAcknowledgedEvent") {
    return ApplyOnce<e1::ConcernAcknowledgedEvent>(tx, event, concern_only, [&](const auto& e) {
      UpsertConcern(tx, event, e.concern_id(), "", "", e.category(), e.severity(), &e.opened_at(),
                    &e.acknowledged_at(), nullptr, false);
    });
  }
  if (type == "peerpath.escalation.v1.ConcernEscalatedEvent") {
    return ApplyOnce<e1::ConcernEscalatedEvent>(tx, event, concern_only, breached);
  }
  if (type == "peerpath.escalation.v1.ConcernReAlertedEvent") {
    return ApplyOnce<e1::ConcernReAlertedEvent>(tx, event, concern_only, breached);
  }
  // Resolved or cancelled: closed at that time.
  auto closed_check = [](const auto& e) {
    return CheckConcernIds(e.concern_id(), e.enrollment_id());
  };
  if (type == "peerpath.escalation.v1.ConcernResolvedEvent") {
    return ApplyOnce<e1::ConcernResolvedEvent>(tx, event, closed_check, [&](const auto& e) {
      UpsertConcern(tx, event, e.concern_id(), e.participant_id(), e.enrollment_id(), e.category(),
                    e.severity(), &e.opened_at(), nullptr, &e.resolved_at(), false);
    });
  }
  if (type == "peerpath.escalation.v1.ConcernCancelledEvent") {
    return ApplyOnce<e1::ConcernCancelledEvent>(tx, event, closed_check, [&](const auto& e) {
      UpsertConcern(tx, event, e.concern_id(), e.participant_id(), e.enrollment_id(), e.category(),
                    e.severity(), &e.opened_at(), nullptr, &e.cancelled_at(), false);
    });
  }
  Claim(tx, event);
  return absl::OkStatus();
}

absl::Status ApplyConsentEvent(pqxx::work& tx, const common::v1::Event& event) {
  if (event.type() == "peerpath.consent.v1.EmergencyAccessGrantedEvent") {
    consent::v1::EmergencyAccessGrantedEvent e;
    if (auto st = Unpack(event, e); !st.ok()) return st;
    if (auto st = RequireUuids({{"emergency_access_id", &e.emergency_access_id()}}); !st.ok()) {
      return st;
    }
    if (auto st = RequireText({{"participant_id", &e.participant_id()}}); !st.ok()) return st;
    if (!Claim(tx, event)) return absl::OkStatus();
    ExecPrepared(tx, "eval_emergency_access",
                 "INSERT INTO emergency_accesses (agency_id, emergency_access_id, participant_id, "
                 "granted_at) VALUES ($1, $2::uuid, $3, " PEERPATH_SQL_TIME_PARAM(
                     4) ") ON CONFLICT DO NOTHING",
                 event.agency_id(), e.emergency_access_id(), e.participant_id(),
                 Micros(e.granted_at()));
    return absl::OkStatus();
  }
  Claim(tx, event);
  return absl::OkStatus();
}

absl::Status ResetReadModels(pqxx::work& tx) {
  tx.exec("SELECT set_config('app.evaluation_replay', 'on', true)");
  for (const char* table :
       {"applied_events", "enrollments", "stage_changes", "reconnections", "appointments",
        "contact_days", "supporter_contacts_month", "wellbeing_first", "wellbeing_month", "matches",
        "follow_up_ratings", "concerns", "emergency_accesses", "participant_feedback",
        "agency_time_zones"}) {
    tx.exec0(absl::StrCat("DELETE FROM ", table));
  }
  tx.exec0(
      "DELETE FROM consumer_positions WHERE source IN ('checkin', 'matching', 'escalation', "
      "'consent')");
  tx.exec0(
      "DELETE FROM consumer_failures WHERE source IN ('checkin', 'matching', 'escalation', "
      "'consent')");
  return absl::OkStatus();
}

}  // namespace peerpath::evaluation
