#pragma once
// Every SQL statement of the check-in service, and nothing else. Functions run inside a
// transaction the caller opened for one agency (Database::TransactForAgency): row-level security
// shows them only that agency's rows.
#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/audit.h"
#include "common/idempotency.h"
#include "common/identifiers.h"
#include "common/supporter_matches.h"
#include "peerpath/checkin/v1/checkin.pb.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/common/v1/common.pb.h"

namespace peerpath::checkin {

// The agency's program policy, or the defaults with `default_time_zone` when it never edited it.
v1::ProgramPolicy LoadPolicy(pqxx::work& tx, const std::string& agency_id,
                             const std::string& default_time_zone);

// Publishes the default pathways (version 1) for the agency unless it already has them.
void EnsureDefaultPathways(pqxx::work& tx, const std::string& agency_id);

// One version (or the latest when `version` is 0) of a pathway.
std::optional<v1::PathwayVersion> LoadPathway(pqxx::work& tx, const std::string& pathway_key,
                                              int version);

// Versions of the agency's pathways by key, newest version first (only the latest of each key
// with `latest_only`).
std::vector<v1::PathwayVersion> ListPathways(pqxx::work& tx, const std::string& pathway_key,
                                             bool latest_only, int limit);

// Publishes `pathway` as version base_version + 1 of its key. nullopt when base_version is not the
// latest version of the key (0: the key must be new).
std::optional<v1::PathwayVersion> PublishPathway(pqxx::work& tx, const std::string& agency_id,
                                                 const v1::PathwayVersion& pathway,
                                                 int base_version, const std::string& published_by);

// The ids among `ids` known as peer supporters (supporter ids or subjects of any match).
std::set<std::string> KnownPeerSupporters(pqxx::work& tx, const std::vector<std::string>& ids);
// Its statement ($1 the ids): each id looked up by subject and, when it is a UUID, by supporter
// id, through the indexes of migration 0015.
extern const char kKnownPeerSupportersSql[];

// Inserts an enrollment (owners, schedule, dates, gate results already set on `e`, with
// `enrollment_id` chosen by the caller). Returns it as stored, or nullopt when the participant
// already has an active enrollment in the pathway.
std::optional<v1::Enrollment> InsertEnrollment(pqxx::work& tx, const std::string& agency_id,
                                               const v1::Enrollment& e);

// Stores a participant's feedback (ids, rating, comment, given_at, recorder set); returns the
// recorded_at the database gave it.
absl::Time InsertParticipantFeedback(pqxx::work& tx, const std::string& agency_id,
                                     const v1::ParticipantFeedback& f);
// Where a page of feedback ended: the last entry's given_at and id (empty id: the first page).
struct FeedbackCursor {
  int64_t given_micros = 0;
  std::string id;
};
// The enrollment's feedback after `after`, newest first (given_at, then id), at most `limit`.
std::vector<v1::ParticipantFeedback> ListParticipantFeedbackOf(pqxx::work& tx,
                                                               const std::string& enrollment_id,
                                                               const FeedbackCursor& after,
                                                               int limit);

// Stores the enrollment's gate results (with the consent gates checked again) and
// `consent_gates_held`; true when `consent_gates_held` changed.
bool UpdateConsentGates(pqxx::work& tx, const std::string& enrollment_id,
                        const v1::Enrollment& gate_results, bool held);

// An enrollment, locked for update when `lock`.
std::optional<v1::Enrollment> LoadEnrollment(pqxx::work& tx, const std::string& enrollment_id,
                                             bool lock = false);

struct EnrollmentFilter {
  std::string participant_id;
  std::string pathway_key;
  std::vector<std::string> statuses;  // "active", "ended"
  // Only participants whose active supporter has this subject (peer supporters' own view).
  std::string supporter_subject;
  // Only participants whose active supporter this subject supervises (supervisors' view).
  std::string supervisor_subject;
  std::string supporter_id;
  // Cursor: strictly after (enrolled_at, id) in newest-first order.
  int64_t after_enrolled_micros = 0;
  std::string after_id;
  int limit = 50;
};
std::vector<v1::Enrollment> ListEnrollments(pqxx::work& tx, const EnrollmentFilter& filter);

struct AppointmentFilter {
  std::string enrollment_id;
  std::string participant_id;
  std::string owner_id;
  std::vector<v1::AppointmentKind> kinds;
  std::vector<v1::AppointmentOutcome> outcomes;
  std::string scheduled_from_micros;  // Inclusive; empty: unbounded.
  std::string scheduled_to_micros;    // Exclusive; empty: unbounded.
  // Relationship scope as in EnrollmentFilter (peer supporters', supervisors' views).
  std::string supporter_subject;
  std::string supervisor_subject;
  // Cursor: strictly after (scheduled_at, id) in ascending order.
  std::string after_micros;
  std::string after_id;
  int limit = 50;
};
// Appointments by scheduled_at ascending, then id.
std::vector<v1::Appointment> ListAppointments(pqxx::work& tx, const AppointmentFilter& filter);

// The participant's wellbeing scores (check-ins with one), of one enrollment when
// `enrollment_id` is set and in [from, to) when set (micros, empty: unbounded): the latest
// `limit`, oldest first.
std::vector<v1::WellbeingPoint> WellbeingPoints(pqxx::work& tx, const std::string& participant_id,
                                                const std::string& enrollment_id,
                                                const std::string& from_micros,
                                                const std::string& to_micros, int limit);

// Ends an active enrollment; cancels its due occurrences. Returns the updated enrollment.
v1::Enrollment EndEnrollment(pqxx::work& tx, const std::string& enrollment_id,
                             const std::string& reason, const std::string& ended_by);
// Check-ins recorded and occurrences missed over the life of an enrollment.
std::pair<int, int> EnrollmentCounts(pqxx::work& tx, const std::string& enrollment_id);

// What RecordCheckIn needs to decide, read in one round trip (check_in_context, migration 0006).
struct CheckInContext {
  absl::Time now;  // The database's time at the read: recorded_at.
  v1::Enrollment enrollment;
  // The enrollment row's version (xmin): the write applies only while it is unchanged.
  std::string enrollment_version;
  v1::PathwayVersion pathway;
  std::optional<ActiveSupporter> supporter;  // The participant's active supporter.
  int wellbeing_drop_points = 2;
  int missed_contact_failed_attempts = 3;
  // The participant's latest wellbeing scores (up to three), newest first.
  std::vector<std::pair<absl::Time, int>> latest_wellbeing;
  // Occurrences of the enrollment around `occurred_at` (or the named one): due day → status, id.
  struct Occurrence {
    std::string id;
    absl::CivilDay due_on;
    std::string status;
    absl::Time window_end;
  };
  std::vector<Occurrence> occurrences;
};
struct CheckInRead {
  std::optional<StoredIdempotentCall> earlier_call;  // The idempotency key's earlier use.
  std::optional<CheckInContext> context;             // nullopt: no such enrollment in the agency.
};
// One statement that scopes itself to `agency_id`: runs inside a transaction or without one.
// `lock`: lock the enrollment until the transaction ends (only inside a transaction).
CheckInRead LoadCheckInContext(pqxx::transaction_base& tx, const std::string& agency_id,
                               const std::string& enrollment_id,
                               const std::string& scheduled_check_in_id, absl::Time occurred_at,
                               const std::string& idempotency_key, bool lock);
// What one check-in's read names (LoadCheckInContext's arguments).
struct CheckInContextQuery {
  std::string agency_id;
  std::string enrollment_id;
  std::string scheduled_check_in_id;  // Empty when none.
  absl::Time occurred_at;
  std::string idempotency_key;
};
// The reads of several check-ins of `agency_id` (every query's) in one statement, without locks
// (check_in_contexts, migration 0013): one CheckInRead per query, in order, each what
// LoadCheckInContext answers for it.
std::vector<CheckInRead> LoadCheckInContexts(
    pqxx::transaction_base& tx, const std::string& agency_id,
    const std::vector<const CheckInContextQuery*>& queries);

// The events one write appends to the outbox, in order, each with the UUID chosen for it (a
// response can name an event before it is stored).
class OutboxEvents {
 public:
  // Appends `event`; returns its id.
  const std::string& Add(std::unique_ptr<google::protobuf::Message> event);
  // The type names, base64 payloads and ids, in order.
  std::vector<std::string> Types() const;
  std::vector<std::string> Payloads() const;
  const std::vector<std::string>& Ids() const { return ids_; }
  // The same as `$n::text[]` literals, for unnest(...).
  std::string TypesLiteral() const;
  std::string PayloadsLiteral() const;
  std::string IdsLiteral() const;

 private:
  std::vector<std::unique_ptr<google::protobuf::Message>> events_;
  std::vector<std::string> ids_;
};

// Everything RecordCheckIn writes, in one statement that scopes itself to the agency
// (record_check_in, migration 0006): the idempotency claim with the response, the enrollment's
// contact state, the occurrence (created or completed), the check-in, the events and the audit
// row. Throws pqxx::serialization_failure when the enrollment changed since `enrollment_version`
// was read, pqxx::unique_violation when the idempotency key was claimed meanwhile.
struct CheckInWrite {
  std::string agency_id;
  v1::CheckIn check_in;  // With ids, times and lateness set.
  std::string enrollment_version;
  std::string occurrence_due_on;  // "YYYY-MM-DD" when it completes an occurrence.
  absl::Time occurrence_window_start;
  std::vector<std::string> fired_rule_ids;
  bool stops_routine = false;
  bool reconnection = false;
  OutboxEvents events;
  AuditEntry audit;
  std::string idempotency_key;
  std::string method;            // The RPC that claims the key.
  std::string request_hash_hex;  // RequestFingerprintHex of the call.
  std::string response_bytes;    // The serialised RecordCheckInResponse.
};
void WriteCheckIn(pqxx::transaction_base& tx, const CheckInWrite& write);

// What became of one check-in of a batch written by WriteCheckIns.
enum class CheckInWriteOutcome {
  kRecorded,
  kStale,       // The enrollment or the day's occurrence changed since the read: nothing written.
  kKeyClaimed,  // The idempotency key was claimed meanwhile: nothing written.
};
// The check-ins of several calls of one agency in one statement, transaction and commit
// (record_check_ins, migration 0011), each written whole or not at all: one outcome per write,
// in order. No two writes may share an enrollment or an idempotency key.
std::vector<CheckInWriteOutcome> WriteCheckIns(pqxx::transaction_base& tx,
                                               const std::string& agency_id,
                                               const std::vector<const CheckInWrite*>& writes);

// Everything RecordContactAttempt writes, in one statement: the attempt, the enrollment's
// engagement state, the events, the audit row and the stored idempotent response.
struct ContactAttemptWrite {
  std::string agency_id;
  v1::ContactAttempt attempt;
  v1::EngagementStage stage = v1::ENGAGEMENT_STAGE_ENGAGED;
  absl::Time stage_changed_at;
  int failed_attempts_in_a_row = 0;
  std::optional<absl::Time> last_contact_at;
  OutboxEvents events;
  AuditEntry audit;
  std::string idempotency_key;
  std::string response_bytes;
};
void WriteContactAttempt(pqxx::work& tx, const ContactAttemptWrite& write);

// Inserts an appointment (id chosen by the caller) and returns it as stored.
v1::Appointment InsertAppointment(pqxx::work& tx, const std::string& agency_id,
                                  const v1::Appointment& appointment, const std::string& created_by,
                                  const std::string& rescheduled_from);
// An appointment, locked for update.
std::optional<v1::Appointment> LoadAppointment(pqxx::work& tx, const std::string& appointment_id);
// Records the outcome of a pending appointment; returns it as stored.
v1::Appointment SetAppointmentOutcome(pqxx::work& tx, const std::string& appointment_id,
                                      const std::string& outcome, const std::string& recorded_by,
                                      const std::string& rescheduled_to);
// True when a peer contact (check-in or reached attempt) of the enrollment took place before `t`.
bool PeerContactBefore(pqxx::work& tx, const std::string& enrollment_id, absl::Time t);

// Stops routine engagement of the participant's active routine enrollments (only `enrollment_id`
// when set): cancels their due occurrences. Returns one event per enrollment that was routine.
std::vector<v1::EnrollmentRoutineStoppedEvent> StopRoutineEngagement(
    pqxx::work& tx, const std::string& participant_id, const std::string& enrollment_id,
    const std::string& concern_id, absl::Time stopped_at);

// Makes an enrollment routine again; returns it as stored.
v1::Enrollment ResumeRoutine(pqxx::work& tx, const std::string& enrollment_id);

// Agencies with active enrollments (maintenance transaction: every agency), in order; its query.
std::vector<std::string> AgenciesWithActiveEnrollments(pqxx::work& tx);
extern const char kActiveAgenciesSql[];

// Marks DUE occurrences whose window ended MISSED and returns them with the event they need.
std::vector<v1::CheckInMissedEvent> MarkMissedOccurrences(pqxx::work& tx);

// Active enrollments without contact since before `cutoff` that are not yet lost to follow-up,
// locked (others being swept concurrently are skipped).
std::vector<v1::Enrollment> EnrollmentsSilentSince(pqxx::work& tx, absl::Time cutoff);
void SetEngagementStage(pqxx::work& tx, const std::string& enrollment_id,
                        v1::EngagementStage stage);

// Stores the agency's program policy (all fields of `policy`) and returns it as stored.
v1::ProgramPolicy StorePolicy(pqxx::work& tx, const std::string& agency_id,
                              const v1::ProgramPolicy& policy, const std::string& updated_by);

std::optional<v1::CheckIn> LoadCheckIn(pqxx::work& tx, const std::string& check_in_id);
struct CheckInFilter {
  std::string enrollment_id;
  std::string participant_id;
  std::string supporter_subject;   // Peer supporters: only their active matches' participants.
  std::string supervisor_subject;  // Supervisors: only their supporters' participants.
  bool late_only = false;
  int64_t after_occurred_micros = 0;
  std::string after_id;
  int limit = 50;
};
std::vector<v1::CheckIn> ListCheckIns(pqxx::work& tx, const CheckInFilter& filter);
// Its statement: $1 enrollment, $2 participant, $3 supporter subject, $4 late only, $5 and $6 the
// page's last occurred_at (microseconds) and id, $7 limit, $8 supervisor subject ('' for none).
const std::string& ListCheckInsSql();

// MaterializeOccurrences' read of the asked occurrences ($1 enrollment ids, $2 days, as text
// array literals), with their participant, pathway and check-in.
extern const char kAskedOccurrencesSql[];

// Active routine enrollments of the supporter's active matches (by supporter subject or id).
std::vector<v1::Enrollment> EnrollmentsOfSupporter(pqxx::work& tx, const std::string& subject,
                                                   const std::string& supporter_id,
                                                   const std::string& supervisor_subject = "");
// Creates the occurrences (ON CONFLICT nothing) and returns them with their state.
struct OccurrenceRow {
  std::string enrollment_id;
  absl::CivilDay due_on;
  absl::Time window_start;
  absl::Time window_end;
};
std::vector<v1::ScheduledCheckIn> MaterializeOccurrences(pqxx::work& tx,
                                                         const std::string& agency_id,
                                                         const std::vector<OccurrenceRow>& rows);

// Applies a matching service event (MatchStartedEvent / MatchEndedEvent) to the relationship
// table; other events are ignored.

// Appends an event to the outbox (common/event_log.h) and an audit row.
void AppendAuditRow(pqxx::work& tx, const std::string& agency_id, const AuditEntry& entry);

}  // namespace peerpath::checkin
