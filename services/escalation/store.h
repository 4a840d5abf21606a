#pragma once

// Every SQL statement of the escalation service, and nothing else. Functions take the caller's
// transaction (Database::TransactForAgency) unless they say otherwise; they speak the domain
// (policies, concerns, transitions, breaches), not rows.

#include <cstdint>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db.h"
#include "peerpath/escalation/v1/escalation.pb.h"
#include "services/escalation/routing.h"

namespace peerpath::escalation {

// Text codes of the schema ↔ API enums.
std::string CategoryCode(Category category);
std::string SeverityCode(Severity severity);
std::string SourceCode(v1::ConcernSource source);
std::string StateCode(v1::ConcernState state);
std::string TargetKindCode(TargetKind kind);
std::string OutcomeCode(v1::ConcernOutcome outcome);
std::string DeadlineKindCode(v1::DeadlineKind kind);
v1::ConcernState StateFromCode(const std::string& code);

// A stored concern: the API message (no transitions, no view) and the sweeper's bookkeeping.
struct ConcernRecord {
  v1::Concern concern;
  std::string policy_id;
  // What happens when next_deadline passes: "acknowledgement", "resolution",
  // "resolution_after_realert", "chain_exhausted"; empty once closed.
  std::string next_deadline_kind;
  absl::Time notify_at;
  int acknowledged_level = -1;
  // True when the concern is or was routed to the reader (see Viewer).
  bool routed_to_viewer = false;
};

// Who reads: the kinds of team target they act for and their subject (person targets).
struct Viewer {
  // "clinical_on_call", "case_management_team"; "supervised_supporters" for a supervisor, who
  // also sees the concerns of the supporters they supervise.
  std::vector<std::string> team_kinds;
  std::string subject;
};

// One transition to append.
struct TransitionRecord {
  std::string kind;  // "opened", "routed", "acknowledged", ...
  std::string from_status;
  std::string to_status;
  int level = 0;
  std::optional<Target> target;
  std::string actor;
  std::string actor_role;
  std::string missed_deadline_kind;
  absl::Time missed_deadline;  // absl::Time() when none.
};

// The setting of a sweeper transaction that reads across agencies (the policy sweeper_read). Its
// reads of concerns due (kDueConcernsSql, kPendingNotificationsSql) also turn sequential scans off
// (Plans::kIndexScans says why): they run every sweep on the same connections, while the table
// grows by every concern raised.
extern const char kSweeperSetting[];
// $1 now (microseconds), $2 how many: open or acknowledged concerns whose next deadline has come,
// oldest first (concerns_open_by_deadline).
extern const char kDueConcernsSql[];
// $1 now, $2 how many: concerns whose target is still to be told and whose time to tell has come
// (concerns_pending_notification).
extern const char kPendingNotificationsSql[];
// $1 now: open or acknowledged concerns and the overdue among them, per severity code (the
// gauges; the sweeper's setting, with PostgreSQL's own choice of plan).
extern const char kOpenCountsSql[];

class Store {
 public:
  // The agency's policy at `version` (0: the current one). Version 1, the built-in default, is
  // stored on first use. NOT_FOUND for a version that does not exist.
  static absl::StatusOr<RoutingPolicy> Policy(pqxx::work& tx, const std::string& agency_id,
                                              int version, const RoutingPolicy& default_policy);
  static absl::StatusOr<RoutingPolicy> PolicyById(pqxx::work& tx, const std::string& agency_id,
                                                  const std::string& policy_id);
  // Publishes `policy` as version base_version + 1. ABORTED when that version exists already.
  static absl::StatusOr<RoutingPolicy> InsertPolicy(pqxx::work& tx, const std::string& agency_id,
                                                    RoutingPolicy policy, int base_version,
                                                    const std::string& created_by);

  // The check-in log named `zone` as the agency's time zone at `position`. Stored unless a later
  // position named one already; then, when the current routing policy's zone is not an admin's
  // and differs, a new version with `zone` is published (created_by "system:program_policy").
  // ABORTED when an edit published a version meanwhile.
  static absl::Status FollowAgencyTimeZone(pqxx::work& tx, const std::string& agency_id,
                                           const std::string& zone, int64_t position);

  // The concern `record` describes as it will be stored: `record.concern` carries the content,
  // routing, opened_at and deadlines (kept to the microsecond, as stored); the id is assigned
  // here, the state is OPEN at revision 1 with no breach, the next deadline the acknowledgement.
  // `notified`: the target's notification goes out with the opening (the caller writes it);
  // otherwise the sweeper sends it once notify_at has passed.
  struct NewConcern {
    ConcernRecord record;
    bool notified = false;
  };
  static NewConcern NewConcernOf(ConcernRecord record, bool notified);
  // Inserts the concerns with their OPENED and ROUTED transitions into `writes` (sent with the
  // caller's other writes), all in one statement, in order.
  static void InsertConcerns(DeferredWrites& writes, const std::vector<NewConcern>& concerns);

  // The concern, locked FOR UPDATE when `lock`; nullopt when it does not exist in the agency.
  static absl::StatusOr<std::optional<ConcernRecord>> FindConcern(pqxx::work& tx,
                                                                  const std::string& agency_id,
                                                                  const std::string& concern_id,
                                                                  const Viewer& viewer, bool lock);
  // The concerns of `concern_ids` that exist in the agency, locked FOR UPDATE in the order of
  // their ids (so that two sweepers locking overlapping sets never wait on each other in a
  // cycle); routed_to_viewer is not read (nothing is routed to the sweeper).
  static std::vector<ConcernRecord> LockConcerns(pqxx::work& tx, const std::string& agency_id,
                                                 const std::vector<std::string>& concern_ids);

  // Writes the concern's mutable columns (state, level, target, deadlines, actors, outcome) and
  // counts up its revision, the row's and `record`'s (read under the row's lock, they are equal).
  // The target counts as notified once notify_at is not after `now`, the caller's clock (which
  // decides whether the caller pages it), never the database's: the two may differ, and a page
  // would then go out twice (the sweeper's pending pass) or not at all.
  static absl::Status UpdateConcern(pqxx::work& tx, ConcernRecord& record, absl::Time now);
  static absl::Status AppendTransition(pqxx::work& tx, const std::string& agency_id,
                                       const std::string& concern_id, const TransitionRecord& t);
  // The same, sent with the caller's other deferred writes (DeferredWrites::Flush); and the
  // transitions of several concerns of the agency as one INSERT, in the order given.
  static void UpdateConcern(DeferredWrites& writes, ConcernRecord& record, absl::Time now);
  static void AppendTransitions(
      DeferredWrites& writes, const std::string& agency_id,
      const std::vector<std::pair<std::string, TransitionRecord>>& transitions);
  static absl::StatusOr<std::vector<v1::ConcernTransition>> Transitions(
      pqxx::work& tx, const std::string& agency_id, const std::string& concern_id);

  // Records missed deadlines (exactly once per concern, kind and level) of the agency's concerns
  // as one INSERT, sent with the caller's other deferred writes: a breach recorded before fails
  // the transaction when they are sent (the caller holds the concerns' row locks and re-checked
  // their deadlines, so it never should).
  struct Breach {
    std::string concern_id;
    std::string deadline_kind;
    int level = 0;
    absl::Time deadline;
    std::optional<Target> escalated_to;
  };
  static void InsertBreaches(DeferredWrites& writes, const std::string& agency_id,
                             const std::vector<Breach>& breaches);

  struct ListFilter {
    std::vector<std::string> states, severities, categories;
    std::string target_kind, target_id, participant_id;
    bool overdue_only = false;
    absl::Time now;
  };
  // Concerns the viewer may see (routed to them, or raised by them), newest first, after the
  // cursor (ListCursor of the last concern of the page before; empty for the first page).
  static absl::StatusOr<std::vector<ConcernRecord>> ListConcerns(
      pqxx::work& tx, const std::string& agency_id, const Viewer& viewer, const ListFilter& filter,
      const std::string& cursor, int limit);
  // The cursor of ListConcerns' next page after `last`: "<opened_at micros>/<id>".
  static std::string ListCursor(const v1::Concern& last);

  // OPEN or ACKNOWLEDGED concerns whose current target is `target`, oldest first (the
  // concerns_open_by_target index).
  static absl::StatusOr<std::vector<ConcernRecord>> OpenForTarget(pqxx::work& tx,
                                                                  const std::string& agency_id,
                                                                  const Target& target);

  // LockConcerns' statement ($1 agency, $2 the ids).
  static const std::string& LockConcernsSql();

  // Across agencies (own transaction, read only): concerns whose next deadline is at or before
  // `now`, oldest deadline first, through the partial deadline index.
  struct DueConcern {
    std::string agency_id;
    std::string concern_id;
  };
  static absl::StatusOr<std::vector<DueConcern>> DueConcerns(Database& db, absl::Time now,
                                                             int limit);

  // Across agencies: concerns whose target is still to be told (notify_at has come).
  static absl::StatusOr<std::vector<DueConcern>> PendingNotifications(Database& db, absl::Time now,
                                                                      int limit);
  // Marks the concern's target as told; nullopt when someone else did (or nothing is pending).
  static absl::StatusOr<std::optional<ConcernRecord>> MarkNotified(pqxx::work& tx,
                                                                   const std::string& agency_id,
                                                                   const std::string& concern_id,
                                                                   absl::Time now);

  // Across agencies: open (OPEN or ACKNOWLEDGED) and overdue concerns per severity code.
  struct Counts {
    std::map<std::string, int64_t> open, overdue;
  };
  static absl::StatusOr<Counts> CountOpen(Database& db, absl::Time now);
};

}  // namespace peerpath::escalation
