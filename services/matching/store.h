#pragma once
// Every SQL statement of the matching service, and nothing else. All functions run inside a
// transaction scoped to the caller's agency (Database::TransactForAgency); rows come back as
// the API's messages. Throws pqxx exceptions (the transaction turns them into codes).
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/time/civil_time.h"
#include "common/db.h"
#include "peerpath/matching/v1/matching.pb.h"

namespace peerpath::matching::store {

namespace v1 = ::peerpath::matching::v1;

// --- Supporters -------------------------------------------------------------------------------

// Inserts a new ACTIVE supporter and its JOINED history entry; returns the stored profile.
v1::Supporter InsertSupporter(pqxx::work& tx, const std::string& agency, const v1::Supporter& s,
                              const std::string& actor);
// With `lock`, the row is locked (FOR UPDATE) until the transaction ends.
std::optional<v1::Supporter> FindSupporter(pqxx::work& tx, const std::string& id, bool lock);
std::optional<v1::Supporter> FindSupporterBySubject(pqxx::work& tx, const std::string& subject);
// Newest first, at most 100.
std::vector<v1::SupporterStatusChange> StatusHistory(pqxx::work& tx, const std::string& id);
// Writes the profile fields of `s` that `paths` names (merged and validated); version + 1.
v1::Supporter UpdateSupporter(pqxx::work& tx, const v1::Supporter& s,
                              const std::vector<std::string>& paths, const std::string& actor);
// Changes the status and appends the history entry; returns the entry.
v1::SupporterStatusChange ChangeStatus(pqxx::work& tx, const std::string& agency,
                                       const v1::Supporter& before, v1::SupporterStatus status,
                                       v1::SupporterStatusReason reason, const std::string& note,
                                       const std::string& actor);
int ActiveMatchCount(pqxx::work& tx, const std::string& supporter_id);

struct SupporterFilter {
  std::vector<std::string> statuses;  // Stored values ('active', ...).
  std::string supervisor_subject;
  std::string subject;
  std::string language;  // Primary subtag.
  std::string region;
};
// Ordered by display_name, id; starting after `after` = (display_name, id) when set.
std::vector<v1::Supporter> ListSupporters(pqxx::work& tx, const SupporterFilter& filter,
                                          const std::string& after_name,
                                          const std::string& after_id, int limit);
// Every ACTIVE supporter of the agency (candidate loading), with their units in use.
std::vector<v1::Supporter> ActiveRoster(pqxx::work& tx);
// The agency's roster version (migrations/0005); with `lock`, read after locking every ACTIVE
// supporter FOR UPDATE, so that it and any units in use read next include every change committed
// by a transaction the locks waited for.
int64_t RosterVersion(pqxx::work& tx, const std::string& agency_id, bool lock);
// Units in use per supporter id (ACTIVE matches) of `supporter_ids`, or of every supporter when
// it is empty; supporters without any are absent.
std::unordered_map<std::string, int> UnitsInUse(pqxx::work& tx,
                                                const std::vector<std::string>& supporter_ids);
// How many supporters the agency has in all (for the candidate funnel).
int RosterSize(pqxx::work& tx);
// Which of `ids` are supporters of the agency.
std::vector<std::string> ExistingSupporters(pqxx::work& tx, const std::vector<std::string>& ids);

// --- Match requests ---------------------------------------------------------------------------

v1::MatchRequest InsertMatchRequest(pqxx::work& tx, const std::string& agency,
                                    const v1::MatchRequest& r, const std::string& actor);
std::optional<v1::MatchRequest> FindMatchRequest(pqxx::work& tx, const std::string& id, bool lock);
// What ProposeMatches decides on, in one statement: the request (locked FOR UPDATE), the agency's
// roster version (migrations/0005: moves with every change to a supporter; 0 before the first
// supporter) and the transaction's time. nullopt when the request is not the agency's.
struct ProposalContext {
  v1::MatchRequest request;
  int64_t roster_version = 0;
  int64_t now_us = 0;
};
std::optional<ProposalContext> LockRequestForProposal(pqxx::work& tx, const std::string& agency_id,
                                                      const std::string& request_id);
// The participant's request in progress (OPEN or PROPOSED), if any.
std::optional<std::string> RequestInProgress(pqxx::work& tx, const std::string& participant);
// The supporter of the participant's most recently ended match, if any.
std::optional<std::string> PreviousSupporter(pqxx::work& tx, const std::string& participant);
void SetRequestStatus(pqxx::work& tx, const std::string& id, const std::string& status,
                      const std::string& cancel_reason);
// The same, sent with the caller's other deferred writes.
void SetRequestStatus(DeferredWrites& writes, const std::string& id, const std::string& status,
                      const std::string& cancel_reason);
// OPEN (and PROPOSED when asked) requests, oldest first, locked FOR UPDATE when `lock` (a batch
// that assigns them; a dry run only reads): their rows, for ParseRequests, which needs no
// transaction (AssignBatch parses while it reads on).
pqxx::result SelectRequestsToAssign(pqxx::work& tx, bool include_proposed, bool lock);
std::vector<v1::MatchRequest> ParseRequests(const pqxx::result& rows);

struct RequestFilter {
  std::vector<std::string> statuses;   // Stored values.
  std::vector<std::string> urgencies;  // Stored values.
  std::string participant_id;
  std::string requested_by;  // Case managers see only their own referrals.
};
// Oldest first (requested_at, id), after the cursor (micros, id) when set.
std::vector<v1::MatchRequest> ListMatchRequests(pqxx::work& tx, const RequestFilter& filter,
                                                const std::string& after_micros,
                                                const std::string& after_id, int limit);

// --- Matches ----------------------------------------------------------------------------------

struct NewMatch {
  std::string request_id;
  std::string supporter_id;
  std::string participant_id;
  std::string supporter_subject;  // Only for the returned matches (not stored).
  int units = 1;
  double score = 0;
  int rank = 0;
  bool continuity = false;
  std::vector<v1::CriterionExplanation> explanation;
  // The request was PROPOSED: InsertBatchMatches declines its proposals (others have none).
  bool request_proposed = false;
};
// Inserts one ProposeMatches call's PROPOSED matches in one deferred statement, with ids chosen
// here and proposed at `now_us` (the transaction's time); returns them in order, as stored.
std::vector<v1::Match> InsertProposals(DeferredWrites& writes, const std::string& agency,
                                       const std::vector<NewMatch>& proposals,
                                       const std::string& actor, int64_t now_us);
struct StartedMatch {
  v1::Match match;
  v1::FollowUp follow_up;
};
// AssignBatch's writes in two statements, whatever the batch's size (the first 1,000 rows, then
// the rest): inserts `matches` ACTIVE at once with their follow-ups, declines the other proposals
// of their requests and marks the requests ASSIGNED. `meanwhile` is given the matches and
// follow-ups, in the order of `matches`, and runs on the calling thread while PostgreSQL executes
// the last statement (on another thread): work that needs them but not the database (building
// their events and audit rows) overlaps it. It must not use `tx`.
void InsertBatchMatches(pqxx::work& tx, const std::string& agency,
                        const std::vector<NewMatch>& matches, const std::string& batch_id,
                        const std::string& actor,
                        absl::FunctionRef<void(const std::vector<StartedMatch>&)> meanwhile);
// Declines the request's PROPOSED matches other than `except_match_id`. `participant_id` is the
// request's (its matches are looked up among the participant's).
void DeclineProposals(pqxx::work& tx, const std::string& participant_id,
                      const std::string& request_id, const std::string& except_match_id);
void DeclineProposals(DeferredWrites& writes, const std::string& participant_id,
                      const std::string& request_id, const std::string& except_match_id);
std::optional<v1::Match> FindMatch(pqxx::work& tx, const std::string& id, bool lock);
std::optional<v1::Match> ActiveMatchOf(pqxx::work& tx, const std::string& participant);
// PROPOSED → ACTIVE (origin proposal_accepted) and schedules the follow-up.
v1::Match StartMatch(pqxx::work& tx, const std::string& agency, const std::string& match_id,
                     const std::string& actor);
v1::Match EndMatch(pqxx::work& tx, const std::string& match_id, const std::string& reason,
                   const std::string& actor);
// Units of the supporter's ACTIVE matches.
int UnitsInUse(pqxx::work& tx, const std::string& supporter_id);
struct MatchFilter {
  std::string participant_id;
  std::string supporter_id;
  std::vector<std::string> statuses;  // Stored values.
  std::string request_id;
  std::string batch_id;
  bool rematch_suggested_only = false;
  std::string supporter_subject;  // Peer supporters: only their own ACTIVE and ENDED matches.
};
// Newest first (proposed_at DESC, rank, id), after the cursor (micros, rank, id) when set.
std::vector<v1::Match> ListMatches(pqxx::work& tx, const MatchFilter& filter,
                                   const std::string& after_micros, int after_rank,
                                   const std::string& after_id, int limit);
// IsActiveSupporter: the ACTIVE match of `participant` whose supporter has `subject`.
std::optional<v1::Match> ActiveMatchOfSubject(pqxx::work& tx, const std::string& subject,
                                              const std::string& participant);

// --- Follow-ups -------------------------------------------------------------------------------

std::optional<v1::FollowUp> FindFollowUp(pqxx::work& tx, const std::string& match_id, bool lock);
// Records one side (the caller checked it is not recorded yet).
v1::FollowUp RecordFollowUpSide(pqxx::work& tx, const std::string& follow_up_id,
                                v1::FollowUpSide side, int rating, const std::string& comment,
                                const std::string& actor);
v1::FollowUp MarkRematchSuggested(pqxx::work& tx, const std::string& follow_up_id);
struct DueFilter {
  absl::CivilDay due_on_or_before;
  v1::FollowUpSide missing_side = v1::FOLLOW_UP_SIDE_UNSPECIFIED;
  std::string supporter_id;
};
// Due follow-ups of ACTIVE matches missing a side, by due_on, id, after (due_on, id).
std::vector<v1::FollowUp> DueFollowUps(pqxx::work& tx, const DueFilter& filter,
                                       const std::string& after_due_on, const std::string& after_id,
                                       int limit);

// --- Workload ---------------------------------------------------------------------------------

struct Workload {
  int active_matches = 0;
  int units_in_use = 0;
  int follow_ups_due = 0;
};
Workload LoadWorkload(pqxx::work& tx, const std::string& supporter_id, absl::CivilDay today);

// --- Activity from other services' events ------------------------------------------------------

void RecordCheckIn(pqxx::work& tx, const std::string& agency, const std::string& check_in_id,
                   const std::string& supporter_ref, int64_t occurred_at_micros);
void RecordConcernOpened(pqxx::work& tx, const std::string& agency, const std::string& concern_id,
                         const std::string& raised_by);
void RecordConcernClosed(pqxx::work& tx, const std::string& agency, const std::string& concern_id);
// Moves the source's "as of" forward (never back).
void AdvanceActivity(pqxx::work& tx, const std::string& agency, const std::string& source,
                     int64_t occurred_at_micros);
struct Activity {
  int check_ins_last_7_days = 0;
  int open_concerns_raised = 0;
  std::optional<int64_t> as_of_micros;  // The older of the two sources; unset before any event.
};
Activity LoadActivity(pqxx::work& tx, const std::string& supporter_id, const std::string& subject);

// --- Batch -----------------------------------------------------------------------------------

// Takes the agency's batch lock for the transaction; false when another batch holds it.
bool TryLockBatch(pqxx::work& tx, const std::string& agency);
// Participants of the agency with an ACTIVE match.
std::vector<std::string> ParticipantsWithActiveMatch(pqxx::work& tx);

// --- Value mappings ---------------------------------------------------------------------------

std::string StatusText(v1::SupporterStatus status);
std::string ReasonText(v1::SupporterStatusReason reason);
std::string EndReasonText(v1::MatchEndReason reason);
std::string RequestStatusText(v1::MatchRequestStatus status);
std::string UrgencyText(v1::Urgency urgency);
std::string MatchStatusText(v1::MatchStatus status);

}  // namespace peerpath::matching::store
