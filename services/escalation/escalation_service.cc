#include "services/escalation/escalation_service.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/agency_time_zones.h"
#include "common/audit.h"
#include "common/channel.h"
#include "common/event_source.h"
#include "common/idempotency.h"
#include "common/identifiers.h"
#include "common/log.h"
#include "common/pagination.h"
#include "common/status.h"
#include "common/supporter_matches.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/matching/v1/matching.grpc.pb.h"
#include "services/escalation/concern_events.h"
#include "services/escalation/policy_codec.h"
#include "services/escalation/webhook_notifier.h"

namespace peerpath::escalation {
namespace {

constexpr char kService[] = "peerpath.escalation.v1.EscalationService";
constexpr int kMaxDescription = 1000;
constexpr int kMaxReason = 500;

std::string Action(absl::string_view rpc) { return absl::StrCat(kService, ".", rpc); }

Actor ActorOf(const Identity& caller) {
  Actor actor;
  actor.subject = caller.subject;
  actor.clinician = caller.Has(Role::kClinician);
  actor.case_manager = caller.Has(Role::kCaseManager);
  actor.supervisor = caller.Has(Role::kSupervisor);
  actor.peer_supporter = caller.Has(Role::kPeerSupporter);
  return actor;
}

Viewer ViewerOf(const Identity& caller) {
  Viewer viewer;
  viewer.subject = caller.subject;
  if (caller.Has(Role::kClinician)) viewer.team_kinds.push_back("clinical_on_call");
  if (caller.Has(Role::kCaseManager)) viewer.team_kinds.push_back("case_management_team");
  if (caller.Has(Role::kSupervisor)) viewer.team_kinds.push_back("supervised_supporters");
  return viewer;
}

// The role a staff member acts in for concerns, most clinical first.
std::string ActingRole(const Identity& caller) {
  for (Role role :
       {Role::kClinician, Role::kCaseManager, Role::kSupervisor, Role::kPeerSupporter}) {
    if (caller.Has(role)) return RoleName(role);
  }
  return "";
}

// Peer supporters may see that a concern they raised is being handled, not how.
void ApplyView(v1::Concern& concern, bool full) {
  concern.set_view(full ? v1::CONCERN_VIEW_FULL : v1::CONCERN_VIEW_STATUS);
  if (full) return;
  concern.set_outcome(v1::CONCERN_OUTCOME_UNSPECIFIED);
  concern.clear_acknowledged_by();
  concern.clear_resolved_by();
  concern.clear_cancelled_by();
  concern.clear_cancel_reason();
  concern.clear_transitions();
}

void SetOverdue(v1::Concern& concern, absl::Time now) {
  concern.set_overdue((concern.state() == v1::CONCERN_STATE_OPEN ||
                       concern.state() == v1::CONCERN_STATE_ACKNOWLEDGED) &&
                      concern.has_next_deadline() &&
                      FromProtoTimestamp(concern.next_deadline()) <= now);
}

// Group commit of RaiseConcern: at most two write transactions of one agency at once (the
// agency's calls arriving meanwhile queue for its next), of EscalationOptions::raise_writes in
// all, so that calls of many agencies, which never share a transaction, still run side by side.
constexpr int kConcurrentRaiseWritesPerAgency = 2;

AuditEntry AuditOf(const Identity& caller, const std::string& rpc, const std::string& concern_id,
                   const std::string& participant_id) {
  AuditEntry entry;
  entry.actor = caller.subject;
  entry.actor_role = ActingRole(caller);
  entry.action = Action(rpc);
  entry.object_type = "concern";
  entry.object_id = concern_id;
  entry.participant_id = participant_id;
  return entry;
}

absl::Status Audit(pqxx::work& tx, const Identity& caller, const std::string& rpc,
                   const std::string& concern_id, const std::string& participant_id) {
  auto seq = AppendAudit(tx, caller.agency_id, AuditOf(caller, rpc, concern_id, participant_id));
  return seq.ok() ? absl::OkStatus() : seq.status();
}

absl::Status ValidateConcernId(const std::string& id) {
  if (id.empty()) return InvalidArgument("concern_id is required", {{"concern_id", "required"}});
  if (!IsUuid(id))
    return InvalidArgument("concern_id is not a UUID", {{"concern_id", "not a UUID"}});
  return absl::OkStatus();
}

v1::ConcernSource SourceFromCheckIn(checkin::v1::ConcernSource source) {
  switch (source) {
    case checkin::v1::CONCERN_SOURCE_MISSED_CONTACT:
      return v1::CONCERN_SOURCE_MISSED_CONTACT;
    case checkin::v1::CONCERN_SOURCE_WELLBEING_DECLINE:
      return v1::CONCERN_SOURCE_WELLBEING_TREND;
    case checkin::v1::CONCERN_SOURCE_MISSED_APPOINTMENT:
      return v1::CONCERN_SOURCE_MISSED_APPOINTMENT;
    default:
      return v1::CONCERN_SOURCE_CHECK_IN_RULE;
  }
}

}  // namespace

struct EscalationService::Change {};

const RoleRules& EscalationService::Rules() {
  using enum Role;
  static const auto* const rules = new RoleRules{
      {"RaiseConcern", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"GetConcern", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"ListConcerns", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"AcknowledgeConcern", {kSupervisor, kClinician, kCaseManager}},
      {"ResolveConcern", {kSupervisor, kClinician, kCaseManager}},
      {"CancelConcern", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"ReassignConcern", {kSupervisor, kClinician, kCaseManager}},
      {"GetRoutingPolicy", {kProgramAdmin, kSupervisor, kClinician, kCaseManager, kPeerSupporter}},
      {"UpdateRoutingPolicy", {kProgramAdmin}},
      {"WatchConcerns", {kClinician, kCaseManager, kSupervisor}},
      {"ListEvents", {kService}},
      {"Subscribe", {kService}},
  };
  return *rules;
}

EscalationService::EscalationService(ServiceContext& context, EscalationOptions options)
    : EscalationServiceBase(authorizer_, events_, context.stopping),
      context_(context),
      authorizer_(context.verifier, kService, Rules(), &context.db),
      events_(context.db),
      time_zone_name_(options.time_zone),
      time_zone_(options.zone),
      raises_(
          GroupCommitOptions{.max_batch = options.max_raise_batch,
                             .max_concurrent = options.raise_writes,
                             .max_concurrent_per_group = kConcurrentRaiseWritesPerAgency},
          [this](const std::vector<const RaiseCall*>& calls) { return RaiseBatch(calls); },
          [](const RaiseCall& c) { return c.idempotent.agency_id; },
          [](const RaiseCall& c) { return std::vector<std::string>{c.idempotent.key}; }) {
  raise_batch_sizes_ = &prometheus::BuildHistogram()
                            .Name("peerpath_escalation_raise_batch_size")
                            .Help(
                                "RaiseConcern calls written per database transaction (group "
                                "commit)")
                            .Register(context.metrics)
                            .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32});
  raise_calls_in_flight_ =
      &prometheus::BuildGauge()
           .Name("peerpath_escalation_raise_calls_in_flight")
           .Help("RaiseConcern calls waiting for their write transaction or in it")
           .Register(context.metrics)
           .Add({});
  const absl::Duration interval = options.sweep_interval;
  if (options.webhook_url.empty()) {
    notifier_ = std::make_unique<LogNotifier>();
  } else {
    notifier_ = std::make_unique<WebhookNotifier>(WebhookOptions{.url = options.webhook_url});
  }
  outbox_ = std::make_unique<NotificationOutbox>(context.db, *notifier_, &context.metrics);
  outbox_->Start(context.stopping);
  sweeper_ = std::make_unique<DeadlineSweeper>(context.db, *outbox_, &context.metrics, interval);
  feed_ = std::make_unique<WatchFeed>(context.db, hub_);
  feed_->Start(context.stopping);
  sweeper_->set_watch_feed(feed_.get());
  sweeper_->Start(context.stopping);

  const std::string& checkin = options.checkin_address;
  if (!checkin.empty()) {
    checkin_consumer_ = ConsumerOf<checkin::v1::CheckInService, checkin::v1::ListEventsRequest,
                                   checkin::v1::ListEventsResponse>(
        context, checkin,
        // The pages of the concerns a page of check-in events opened go out once it committed.
        ConsumerOptions{
            .source = "checkin",
            .apply_batch =
                [this](pqxx::work& tx, const std::vector<const common::v1::Event*>& events) {
                  return ApplyCheckInEvents(tx, events);
                },
            // What an event does to one agency never depends on another agency's events.
            .runs_by_agency = true,
            .after_commit =
                [this] {
                  outbox_->Wake();
                  feed_->Wake();
                }},
        [this](pqxx::work& tx, const common::v1::Event& event) {
          return ApplyCheckInEvent(tx, event);
        });
    checkin_consumer_->Start();
  }
  if (!options.matching_address.empty()) {
    matching_consumer_ = ConsumerOf<matching::v1::MatchingService, matching::v1::ListEventsRequest,
                                    matching::v1::ListEventsResponse>(
        context, options.matching_address, ConsumerOptions{.source = "matching"},
        ApplySupporterMatchEvent);
    matching_consumer_->Start();
  }
}

EscalationService::~EscalationService() {
  if (checkin_consumer_ != nullptr) checkin_consumer_->Stop();
  if (matching_consumer_ != nullptr) matching_consumer_->Stop();
  sweeper_.reset();
}

RoutingPolicy EscalationService::DefaultPolicyFor() const {
  return DefaultPolicy(time_zone_name_, time_zone_);
}

absl::StatusOr<ConcernRecord> EscalationService::OpenConcern(pqxx::work& tx, ConcernRecord record,
                                                             const PersonDirectory& people,
                                                             absl::Time now, OpeningWrites& writes,
                                                             const std::string& latest_policy_id) {
  v1::Concern& c = record.concern;
  auto policy = latest_policy_id.empty() ? Store::Policy(tx, c.agency_id(), 0, DefaultPolicyFor())
                                         : Store::PolicyById(tx, c.agency_id(), latest_policy_id);
  if (!policy.ok()) return policy.status();
  const RoutingRule* rule = RuleFor(*policy, c.category(), c.severity());
  if (rule == nullptr) return absl::InternalError("routing policy has no rule for the concern");
  const absl::Time opened = c.has_opened_at() ? FromProtoTimestamp(c.opened_at()) : now;
  // The clock starts when the concern was raised (for check-in concerns, consumer lag counts).
  auto routed = RouteFrom(*rule, 0, people, policy->calendar, opened);
  if (!routed.ok()) {
    if (routed.status().code() == absl::StatusCode::kNotFound) {
      return absl::FailedPreconditionError(
          "the routing policy has no target this concern can be routed to");
    }
    return routed.status();
  }
  record.policy_id = policy->policy_id;
  c.set_policy_version(policy->version);
  c.set_state(v1::CONCERN_STATE_OPEN);
  c.set_current_level(routed->level);
  *c.mutable_current_target() = TargetToProto(routed->target);
  *c.mutable_opened_at() = ToProtoTimestamp(opened);
  // The deadline must lie after the opening (a stored CHECK): a limit is at least a minute.
  *c.mutable_ack_deadline() = ToProtoTimestamp(routed->ack_deadline);
  record.notify_at = routed->notify_at;
  // A routine concern raised out of hours is announced when business hours begin (the sweeper's
  // pass covers it); everything else at once. Decided once, on this service's clock, for both
  // the notification and the concern's record of it (the database's clock, which started with
  // the transaction, could say otherwise, and the sweeper would page the target again).
  const bool notify_now = routed->notify_at <= now;
  writes.concerns.push_back(Store::NewConcernOf(std::move(record), notify_now));
  const ConcernRecord& stored = writes.concerns.back().record;
  const v1::Concern& s = stored.concern;
  // OPENED, ROUTED and (immediate safety) ENGAGEMENT_STOPPED, in that order.
  writes.events.Add(s.concern_id(), OpenedEvent(s));
  writes.events.Add(s.concern_id(),
                    RoutedEvent(s, v1::ROUTING_REASON_INITIAL, routed->skipped_levels,
                                routed->notify_at, "system:routing", opened));
  if (s.category() == common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY) {
    writes.events.Add(s.concern_id(), EngagementStoppedEvent(s));
  }
  if (notify_now) {
    writes.notifications.push_back({s.agency_id(), s.concern_id(), "opened", s.category(),
                                    s.severity(), s.current_level(), routed->target,
                                    routed->ack_deadline});
  }
  return stored;
}

// ---------------------------------------------------------------------------------------------
// RaiseConcern

// Each key is claimed in key order, so that two transactions claiming overlapping keys never
// wait on each other in a cycle; a key claimed by a transaction still running makes the claim
// wait for it, as ClaimIdempotencyKey's does. The read: each call's participant's active
// supporter, the caller's relation to the participant, the enrollment (when named) and the
// agency's newest routing policy. The enrollment is joined on a uuid the CTE computed: with the
// text-to-uuid cast in the join clause (not leakproof), row-level security kept the clause out
// of the index scan, and every batch read all the agency's enrollments. Run on its generic plan
// (Plans::kGeneric): PostgreSQL would plan it afresh at every call, which took longer than
// running it.
const char kRaiseContextsSql[] = R"sql(
    WITH i AS (
      SELECT u.*, NULLIF(u.enrollment, '')::uuid AS enrollment_uuid
        FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        WITH ORDINALITY AS u (key, hash, participant, caller, enrollment, n)),
    claim AS (
      INSERT INTO idempotency_keys (agency_id, idempotency_key, method, request_hash, response)
      SELECT $1, i.key, 'RaiseConcern', decode(i.hash, 'hex'), '' FROM i ORDER BY i.key
      ON CONFLICT DO NOTHING RETURNING idempotency_key)
    SELECT i.key IN (SELECT idempotency_key FROM claim), m.supporter_id::text,
      m.supporter_subject, m.supervisor_subject, supports.found IS NOT NULL,
      supervises.found IS NOT NULL, e.participant_id, e.receiving_clinician,
      (SELECT p.id::text FROM routing_policies p WHERE p.agency_id = $1
        ORDER BY p.version DESC LIMIT 1)
    FROM i
    LEFT JOIN LATERAL (SELECT s.supporter_id, s.supporter_subject, s.supervisor_subject
      FROM supporter_matches s WHERE s.participant_id = i.participant AND s.active
      ORDER BY s.started_at DESC NULLS LAST LIMIT 1) m ON true
    -- Looked up per call (a LIMIT is never hashed): as EXISTS, a generic plan made while the
    -- agency had few matches hashed all of its active matches once per statement.
    LEFT JOIN LATERAL (SELECT true AS found FROM supporter_matches s
      WHERE i.caller <> '' AND s.participant_id = i.participant AND s.supporter_subject = i.caller
        AND s.active LIMIT 1) supports ON true
    LEFT JOIN LATERAL (SELECT true AS found FROM supporter_matches s
      WHERE i.caller <> '' AND s.participant_id = i.participant AND s.supervisor_subject = i.caller
        AND s.active LIMIT 1) supervises ON true
    LEFT JOIN enrollments e ON e.enrollment_id = i.enrollment_uuid
    ORDER BY i.n)sql";

namespace {

// What RaiseConcern decides on, read with the idempotency key's claim.
struct RaiseContext {
  bool claimed = false;  // false: the key was used before (replay or refusal).
  std::optional<ActiveSupporter> supporter;
  bool caller_supports = false;    // The caller is an active supporter of the participant.
  bool caller_supervises = false;  // The caller supervises one.
  std::optional<std::string> enrollment_participant;  // Set when the enrollment is known here.
  std::string receiving_clinician;
  std::string latest_policy_id;  // Empty before the agency's first policy.
};

std::vector<RaiseContext> ReadRaiseContexts(
    pqxx::work& tx, const std::string& agency_id, const std::vector<const IdempotentCall*>& calls,
    const std::vector<const v1::RaiseConcernRequest*>& requests) {
  BinaryArray keys(BinaryArray::Of::kText), hashes(BinaryArray::Of::kText),
      participants(BinaryArray::Of::kText), callers(BinaryArray::Of::kText),
      enrollments(BinaryArray::Of::kText);
  for (size_t i = 0; i < calls.size(); ++i) {
    keys.AddText(calls[i]->key);
    hashes.AddText(RequestFingerprintHex(*calls[i]));
    participants.AddText(requests[i]->participant_id());
    callers.AddText(calls[i]->caller);
    enrollments.AddText(requests[i]->enrollment_id());
  }
  const pqxx::result rows =
      ExecPrepared(tx, "escalation_raise_contexts", kRaiseContextsSql, agency_id, keys.Bytes(),
                   hashes.Bytes(), participants.Bytes(), callers.Bytes(), enrollments.Bytes());
  if (rows.size() != calls.size()) {
    throw std::runtime_error("RaiseConcern's read answered a row count unlike its calls'");
  }
  std::vector<RaiseContext> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const pqxx::row& row = rows[i];
    RaiseContext& known = out[i];
    known.claimed = row[0].as<bool>();
    if (!row[1].is_null()) {
      known.supporter = ActiveSupporter{row[1].c_str(), row[2].c_str(), row[3].c_str()};
    }
    known.caller_supports = row[4].as<bool>();
    known.caller_supervises = row[5].as<bool>();
    if (!row[6].is_null()) {
      known.enrollment_participant = row[6].as<std::string>();
      known.receiving_clinician = row[7].is_null() ? "" : row[7].as<std::string>();
    }
    if (!row[8].is_null()) known.latest_policy_id = row[8].as<std::string>();
  }
  return out;
}

}  // namespace

grpc::Status EscalationService::RaiseConcern(grpc::ServerContext* context,
                                             const v1::RaiseConcernRequest* request,
                                             v1::RaiseConcernResponse* response) {
  auto caller = authorizer_.Authorize(*context, "RaiseConcern");
  if (!caller.ok()) return ToGrpc(caller.status());
  return ToGrpc(RaiseConcernImpl(*context, *caller, *request, *response));
}

absl::Status EscalationService::RaiseConcernImpl(const grpc::ServerContext& context,
                                                 const Identity& caller,
                                                 const v1::RaiseConcernRequest& request,
                                                 v1::RaiseConcernResponse& response) {
  std::vector<FieldViolation> violations;
  if (request.participant_id().empty() || request.participant_id().size() > 128) {
    violations.push_back({"participant_id", "required, 1 to 128 characters"});
  }
  if (request.category() == common::v1::CONCERN_CATEGORY_UNSPECIFIED ||
      !common::v1::ConcernCategory_IsValid(request.category())) {
    violations.push_back({"category", "required: a known concern category"});
  }
  if (request.severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED ||
      !common::v1::ConcernSeverity_IsValid(request.severity())) {
    violations.push_back({"severity", "required: ROUTINE, URGENT or CRITICAL"});
  }
  if (!request.enrollment_id().empty() && !IsUuid(request.enrollment_id())) {
    violations.push_back({"enrollment_id", "not a UUID"});
  }
  if (request.description().size() > kMaxDescription) {
    violations.push_back({"description", "at most 1,000 characters"});
  }
  if (absl::Status key = ValidateIdempotencyKey(request.idempotency_key()); !key.ok()) {
    violations.push_back({"idempotency_key", std::string(key.message())});
  }
  if (!violations.empty()) return InvalidArgument("the concern cannot be raised", violations);

  // Written together with the calls of the same agency arriving meanwhile (group commit).
  const RaiseCall call{&caller, &request,
                       IdempotentCall{caller.agency_id, request.idempotency_key(), "RaiseConcern",
                                      &request, caller.subject}};
  raise_calls_in_flight_->Increment();
  absl::Cleanup done = [this] { raise_calls_in_flight_->Decrement(); };
  RaiseOutcome outcome = raises_.Submit(call);
  if (outcome.refused_participant) {
    authorizer_.AuditRefusal(context, caller, "RaiseConcern", "participant", "",
                             request.participant_id());
  }
  if (!outcome.status.ok()) return outcome.status;
  response = std::move(outcome.response);
  if (outcome.wake_outbox) outbox_->Wake();
  if (outcome.wake_feed) feed_->Wake();
  return absl::OkStatus();
}

std::vector<EscalationService::RaiseOutcome> EscalationService::RaiseBatch(
    const std::vector<const RaiseCall*>& calls) {
  std::vector<RaiseOutcome> outcomes(calls.size());
  const std::string& agency = calls.front()->idempotent.agency_id;
  auto write = [&](pqxx::work& tx) {
    for (RaiseOutcome& o : outcomes) o = RaiseOutcome{};
    std::vector<const IdempotentCall*> idempotent;
    std::vector<const v1::RaiseConcernRequest*> requests;
    for (const RaiseCall* c : calls) {
      idempotent.push_back(&c->idempotent);
      requests.push_back(c->request);
    }
    // Every call's key claim and everything it is decided on in one round trip; every write of
    // the calls decided in another just before commit: one statement per table (OpeningWrites),
    // the stored responses one per call.
    const std::vector<RaiseContext> contexts = ReadRaiseContexts(tx, agency, idempotent, requests);
    DeferredWrites writes(tx);
    OpeningWrites opening;
    opening.agency_id = agency;
    for (size_t i = 0; i < calls.size(); ++i) {
      const Identity& caller = *calls[i]->caller;
      const v1::RaiseConcernRequest& request = *calls[i]->request;
      const IdempotentCall& call = calls[i]->idempotent;
      const RaiseContext& known = contexts[i];
      RaiseOutcome& out = outcomes[i];
      if (!known.claimed) {
        out.status = ReplayClaimedKey(tx, call, out.response);
        continue;
      }
      auto decided = [&]() -> absl::Status {
        // Who works with the participant (kept from the matching log): a caller who is only a
        // peer supporter raises for their active matches, one who is only a supervisor for the
        // participants of the supporters they supervise; clinicians and case managers for
        // anyone of the agency.
        const std::optional<ActiveSupporter>& supporter = known.supporter;
        if (!caller.Has(Role::kClinician) && !caller.Has(Role::kCaseManager)) {
          const bool as_supervisor = caller.Has(Role::kSupervisor) && known.caller_supervises;
          const bool as_supporter =
              caller.Has(Role::kPeerSupporter) &&
              ((supporter && supporter->subject == caller.subject) || known.caller_supports);
          if (!as_supervisor && !as_supporter) {
            out.refused_participant = true;
            return absl::PermissionDeniedError(
                "the participant is not in your active matches or supervision: only their peer "
                "supporter, that supporter's supervisor or the agency's clinical and "
                "case-management staff may raise a concern about them");
          }
        }
        // The enrollment, when this service knows it (from the check-in log): it must be the
        // participant's, and its receiving clinician is the RECEIVING_CLINICIAN target. One not
        // known yet (the log lags) is accepted: a concern is never held back for it.
        std::string receiving_clinician;
        if (known.enrollment_participant.has_value()) {
          if (*known.enrollment_participant != request.participant_id()) {
            return absl::NotFoundError("enrollment_id is not an enrollment of this participant");
          }
          receiving_clinician = known.receiving_clinician;
        }
        const absl::Time now = now_();
        ConcernRecord record;
        v1::Concern& c = record.concern;
        c.set_agency_id(caller.agency_id);
        c.set_participant_id(request.participant_id());
        c.set_enrollment_id(request.enrollment_id());
        c.set_category(request.category());
        c.set_severity(request.severity());
        c.set_source(v1::CONCERN_SOURCE_MANUAL);
        c.set_description(request.description());
        c.set_raised_by(caller.subject);
        c.set_raised_by_role(ActingRole(caller));
        *c.mutable_opened_at() = ToProtoTimestamp(now);
        PersonDirectory people;
        if (!receiving_clinician.empty()) people.receiving_clinician = receiving_clinician;
        if (caller.Has(Role::kPeerSupporter)) people.peer_supporters.insert(caller.subject);
        if (supporter) {
          people.peer_supporters.insert(supporter->subject);
          if (!supporter->supervisor_subject.empty()) {
            people.supervisor = supporter->supervisor_subject;
          }
        }
        // Nothing is written for the call until it is decided: a refusal leaves `opening` as
        // the calls before it left it.
        const size_t notifications_before = opening.notifications.size();
        auto opened =
            OpenConcern(tx, std::move(record), people, now, opening, known.latest_policy_id);
        if (!opened.ok()) return opened.status();
        v1::RaiseConcernResponse& response = out.response;
        *response.mutable_concern() = opened->concern;
        ApplyView(*response.mutable_concern(),
                  opened->routed_to_viewer &&
                      ActsFor(ActorOf(caller), TargetFromProto(opened->concern.current_target())));
        SetOverdue(*response.mutable_concern(), now);
        opening.audits.push_back(AuditOf(caller, "RaiseConcern", opened->concern.concern_id(),
                                         request.participant_id()));
        out.wake_outbox = opening.notifications.size() > notifications_before;
        // Dashboards see it once it commits, on every replica.
        ConcernChangeNote note;
        note.kind = v1::CONCERN_CHANGE_KIND_OPENED;
        note.concern = opened->concern;
        note.occurred_at = now;
        opening.feed.push_back(std::move(note));
        out.wake_feed = true;
        StoreIdempotentResponse(writes, call, response);
        return absl::OkStatus();
      };
      out.status = decided();
      if (!out.status.ok()) ReleaseIdempotencyKey(writes, call);
    }
    opening.WriteTo(writes);
    writes.Flush();
    return absl::OkStatus();
  };
  const absl::Status written = context_.db.TransactForAgency(agency, write, Plans::kGeneric);
  if (written.ok()) {
    raise_batch_sizes_->Observe(static_cast<double>(calls.size()));
    return outcomes;
  }
  if (calls.size() == 1) {
    outcomes.front() = RaiseOutcome{};
    outcomes.front().status = written;
    return outcomes;
  }
  // The database refused the transaction: each call alone, so that it fails only its own call.
  for (size_t i = 0; i < calls.size(); ++i) outcomes[i] = RaiseBatch({calls[i]}).front();
  return outcomes;
}

// ---------------------------------------------------------------------------------------------
// GetConcern / ListConcerns

grpc::Status EscalationService::GetConcern(grpc::ServerContext* context,
                                           const v1::GetConcernRequest* request,
                                           v1::GetConcernResponse* response) {
  auto caller = authorizer_.Authorize(*context, "GetConcern");
  if (!caller.ok()) return ToGrpc(caller.status());
  return ToGrpc(GetConcernImpl(*context, *caller, *request, *response));
}

absl::Status EscalationService::GetConcernImpl(const grpc::ServerContext& context,
                                               const Identity& caller,
                                               const v1::GetConcernRequest& request,
                                               v1::GetConcernResponse& response) {
  if (auto s = ValidateConcernId(request.concern_id()); !s.ok()) return s;
  const absl::Time now = now_();
  bool hidden = false;
  absl::Status status = context_.db.TransactForAgency(caller.agency_id, [&](pqxx::work& tx) {
    auto found = Store::FindConcern(tx, caller.agency_id, request.concern_id(), ViewerOf(caller),
                                    /*lock=*/false);
    if (!found.ok()) return found.status();
    const bool raiser = found->has_value() && (*found)->concern.raised_by() == caller.subject;
    // Who also works as a peer supporter sees everything only where they act for the target
    // (as in the transitions): their peer role alone never opens the clinical side.
    const bool full =
        found->has_value() && (*found)->routed_to_viewer &&
        !(caller.Has(Role::kPeerSupporter) &&
          !ActsFor(ActorOf(caller), TargetFromProto((*found)->concern.current_target())));
    if (!found->has_value() || (!full && !raiser)) {
      hidden = true;
      return absl::NotFoundError("concern not found");
    }
    v1::Concern& c = *response.mutable_concern();
    c = (*found)->concern;
    if (full) {
      auto transitions = Store::Transitions(tx, caller.agency_id, c.concern_id());
      if (!transitions.ok()) return transitions.status();
      for (auto& t : *transitions) *c.add_transitions() = std::move(t);
    }
    ApplyView(c, full);
    SetOverdue(c, now);
    return Audit(tx, caller, "GetConcern", c.concern_id(), c.participant_id());
  });
  if (hidden) {
    authorizer_.AuditRefusal(context, caller, "GetConcern", "concern", request.concern_id(), "");
  }
  return status;
}

grpc::Status EscalationService::ListConcerns(grpc::ServerContext* context,
                                             const v1::ListConcernsRequest* request,
                                             v1::ListConcernsResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ListConcerns");
  if (!caller.ok()) return ToGrpc(caller.status());
  return ToGrpc(ListConcernsImpl(*caller, *request, *response));
}

absl::Status EscalationService::ListConcernsImpl(const Identity& caller,
                                                 const v1::ListConcernsRequest& request,
                                                 v1::ListConcernsResponse& response) {
  std::vector<FieldViolation> violations;
  auto page_size = ResolvePageSize(request.page_size());
  if (!page_size.ok()) violations.push_back({"page_size", "must not be negative"});
  // The token is bound to the filters: a token from other filters is refused.
  v1::ListConcernsRequest filters = request;
  filters.clear_page_size();
  filters.clear_page_token();
  const std::string list_name = absl::StrCat("escalation.concerns.", RequestFingerprint(filters));
  auto cursor = DecodePageToken(list_name, request.page_token());
  if (!cursor.ok()) {
    violations.push_back({"page_token", "not a token of this list with these filters"});
  }
  if (!request.target().target_id().empty() &&
      request.target().kind() == v1::TARGET_KIND_UNSPECIFIED) {
    violations.push_back({"target.kind", "required when target.target_id is set"});
  }
  if (!violations.empty()) return InvalidArgument("the list request is invalid", violations);

  const absl::Time now = now_();
  Store::ListFilter filter;
  for (int s : request.states())
    filter.states.push_back(StateCode(static_cast<v1::ConcernState>(s)));
  for (int s : request.severities()) {
    filter.severities.push_back(SeverityCode(static_cast<Severity>(s)));
  }
  for (int c : request.categories()) {
    filter.categories.push_back(CategoryCode(static_cast<Category>(c)));
  }
  filter.target_kind = TargetKindCode(request.target().kind());
  filter.target_id = request.target().target_id();
  filter.participant_id = request.participant_id();
  filter.overdue_only = request.overdue_only();
  filter.now = now;
  const bool peer = caller.Has(Role::kPeerSupporter) && !caller.Has(Role::kClinician) &&
                    !caller.Has(Role::kCaseManager) && !caller.Has(Role::kSupervisor);
  return context_.db.TransactForAgency(caller.agency_id, [&](pqxx::work& tx) -> absl::Status {
    auto rows = Store::ListConcerns(tx, caller.agency_id, ViewerOf(caller), filter, *cursor,
                                    *page_size + 1);
    if (!rows.ok()) return rows.status();
    const int count = std::min<int>(rows->size(), *page_size);
    for (int i = 0; i < count; ++i) {
      v1::Concern* c = response.add_concerns();
      *c = (*rows)[i].concern;
      c->clear_description();
      ApplyView(*c, (*rows)[i].routed_to_viewer && !peer);
      SetOverdue(*c, now);
    }
    if (static_cast<int>(rows->size()) > *page_size) {
      const v1::Concern& last = (*rows)[count - 1].concern;
      response.set_next_page_token(EncodePageToken(list_name, Store::ListCursor(last)));
    }
    return Audit(tx, caller, "ListConcerns", "", request.participant_id());
  });
}

// ---------------------------------------------------------------------------------------------
// Acknowledge / Resolve / Cancel / Reassign

absl::Status EscalationService::ChangeConcern(
    const grpc::ServerContext& context, const Identity& caller, const std::string& method,
    const std::string& concern_id, v1::ConcernChangeKind change_kind,
    const std::function<absl::Status(pqxx::work&, ConcernRecord&, const RoutingPolicy&)>& act,
    v1::Concern& out) {
  bool hidden = false;
  bool changed = false;
  ConcernChangeNote note;
  bool refused = false;
  const absl::Time now = now_();
  absl::Status status = context_.db.TransactForAgency(caller.agency_id, [&](pqxx::work& tx) {
    auto found =
        Store::FindConcern(tx, caller.agency_id, concern_id, ViewerOf(caller), /*lock=*/true);
    if (!found.ok()) return found.status();
    if (!found->has_value() ||
        (!(*found)->routed_to_viewer && (*found)->concern.raised_by() != caller.subject)) {
      hidden = true;
      return absl::NotFoundError("concern not found");
    }
    ConcernRecord& record = **found;
    auto policy = Store::PolicyById(tx, caller.agency_id, record.policy_id);
    if (!policy.ok()) return policy.status();
    const std::string before = record.concern.SerializeAsString();
    note.previous_target = TargetFromProto(record.concern.current_target());
    if (absl::Status s = act(tx, record, *policy); !s.ok()) {
      refused = s.code() == absl::StatusCode::kPermissionDenied;
      return s;
    }
    changed = record.concern.SerializeAsString() != before;
    note.kind = change_kind;
    note.concern = record.concern;
    note.concern.clear_description();
    note.concern.clear_cancel_reason();
    note.occurred_at = now;
    out = record.concern;
    ApplyView(out, record.routed_to_viewer &&
                       !(caller.Has(Role::kPeerSupporter) &&
                         !ActsFor(ActorOf(caller), TargetFromProto(out.current_target()))));
    SetOverdue(out, now);
    if (changed) WatchFeed::Record(tx, note);
    return Audit(tx, caller, method, concern_id, record.concern.participant_id());
  });
  if (hidden || refused) {
    authorizer_.AuditRefusal(context, caller, method, "concern", concern_id, "");
  }
  if (status.ok() && changed) feed_->Wake();
  return status;
}

namespace {

// Where the caller stands with a concern's levels.
struct Standing {
  bool current = false;       // Acts for the current target.
  std::optional<int> higher;  // The lowest later level they act for.
};

Standing StandingOf(const Identity& caller, const ConcernRecord& record,
                    const RoutingPolicy& policy) {
  Standing standing;
  const Actor actor = ActorOf(caller);
  standing.current = ActsFor(actor, TargetFromProto(record.concern.current_target()));
  if (const RoutingRule* rule =
          RuleFor(policy, record.concern.category(), record.concern.severity())) {
    standing.higher = HigherLevelFor(*rule, record.concern.current_level(), actor);
  }
  return standing;
}

absl::Status ClosedError(const v1::Concern& c) {
  return absl::FailedPreconditionError(absl::StrCat(
      "concern is already ", c.state() == v1::CONCERN_STATE_RESOLVED ? "resolved" : "cancelled"));
}

absl::Status NotYoursError(const v1::Concern& c, bool was_routed_to_caller) {
  if (was_routed_to_caller) {
    return absl::FailedPreconditionError(absl::StrCat(
        "concern has escalated past you: it is now at level ", c.current_level(), " (",
        TargetKindCode(c.current_target().kind()), " ", c.current_target().target_id(), ")"));
  }
  return absl::PermissionDeniedError(
      "only the concern's current target or a higher level of its escalation chain may act on it");
}

// Moves the concern to the caller's higher level, if they act from there.
void TakeOver(ConcernRecord& record, const RoutingPolicy& policy, const Standing& standing) {
  if (standing.current || !standing.higher) return;
  const RoutingRule* rule = RuleFor(policy, record.concern.category(), record.concern.severity());
  record.concern.set_current_level(*standing.higher);
  *record.concern.mutable_current_target() = TargetToProto(rule->TargetAt(*standing.higher));
}

}  // namespace

grpc::Status EscalationService::AcknowledgeConcern(grpc::ServerContext* context,
                                                   const v1::AcknowledgeConcernRequest* request,
                                                   v1::AcknowledgeConcernResponse* response) {
  auto caller = authorizer_.Authorize(*context, "AcknowledgeConcern");
  if (!caller.ok()) return ToGrpc(caller.status());
  if (auto s = ValidateConcernId(request->concern_id()); !s.ok()) return ToGrpc(s);
  const Identity& who = *caller;
  const absl::Time now = now_();
  auto act = [&](pqxx::work& tx, ConcernRecord& record, const RoutingPolicy& policy) {
    v1::Concern& c = record.concern;
    if (c.state() == v1::CONCERN_STATE_RESOLVED || c.state() == v1::CONCERN_STATE_CANCELLED) {
      return ClosedError(c);
    }
    if (c.state() == v1::CONCERN_STATE_ACKNOWLEDGED) {
      if (c.acknowledged_by() == who.subject && record.acknowledged_level == c.current_level()) {
        return absl::OkStatus();  // A retry: unchanged.
      }
      return absl::FailedPreconditionError(
          absl::StrCat("concern already acknowledged by ", c.acknowledged_by(), " at ",
                       absl::FormatTime(absl::RFC3339_sec, FromProtoTimestamp(c.acknowledged_at()),
                                        absl::UTCTimeZone())));
    }
    const Standing standing = StandingOf(who, record, policy);
    if (!standing.current && !standing.higher) return NotYoursError(c, record.routed_to_viewer);
    TakeOver(record, policy, standing);
    const RoutingRule* rule = RuleFor(policy, c.category(), c.severity());
    c.set_state(v1::CONCERN_STATE_ACKNOWLEDGED);
    *c.mutable_acknowledged_at() = ToProtoTimestamp(now);
    c.set_acknowledged_by(who.subject);
    record.acknowledged_level = c.current_level();
    *c.mutable_resolution_deadline() =
        ToProtoTimestamp(ResolutionDeadline(*rule, policy.calendar, now));
    *c.mutable_next_deadline() = c.resolution_deadline();
    record.next_deadline_kind = "resolution";
    if (auto s = Store::UpdateConcern(tx, record, now); !s.ok()) return s;
    TransitionRecord t;
    t.kind = "acknowledged";
    t.from_status = "open";
    t.to_status = "acknowledged";
    t.level = c.current_level();
    t.target = TargetFromProto(c.current_target());
    t.actor = who.subject;
    t.actor_role = ActingRole(who);
    if (auto s = Store::AppendTransition(tx, who.agency_id, c.concern_id(), t); !s.ok()) return s;
    return AppendEvent(tx, who.agency_id, c.concern_id(), AcknowledgedEvent(c, ActingRole(who)));
  };
  return ToGrpc(ChangeConcern(*context, who, "AcknowledgeConcern", request->concern_id(),
                              v1::CONCERN_CHANGE_KIND_ACKNOWLEDGED, act,
                              *response->mutable_concern()));
}

grpc::Status EscalationService::ResolveConcern(grpc::ServerContext* context,
                                               const v1::ResolveConcernRequest* request,
                                               v1::ResolveConcernResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ResolveConcern");
  if (!caller.ok()) return ToGrpc(caller.status());
  std::vector<FieldViolation> violations;
  if (request->concern_id().empty() || !IsUuid(request->concern_id())) {
    violations.push_back({"concern_id", "required, a UUID"});
  }
  if (request->outcome() == v1::CONCERN_OUTCOME_UNSPECIFIED ||
      !v1::ConcernOutcome_IsValid(request->outcome())) {
    violations.push_back({"outcome", "required: a known outcome"});
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("cannot resolve", violations));
  const Identity& who = *caller;
  const absl::Time now = now_();
  auto act = [&](pqxx::work& tx, ConcernRecord& record, const RoutingPolicy& policy) {
    v1::Concern& c = record.concern;
    if (c.state() == v1::CONCERN_STATE_RESOLVED) {
      if (c.resolved_by() == who.subject && c.outcome() == request->outcome()) {
        return absl::OkStatus();
      }
      return absl::FailedPreconditionError(
          absl::StrCat("concern already resolved by ", c.resolved_by()));
    }
    if (c.state() == v1::CONCERN_STATE_CANCELLED) return ClosedError(c);
    const Standing standing = StandingOf(who, record, policy);
    const bool acknowledger = c.state() == v1::CONCERN_STATE_ACKNOWLEDGED &&
                              c.acknowledged_by() == who.subject &&
                              record.acknowledged_level == c.current_level();
    if (!standing.current && !standing.higher && !acknowledger) {
      return NotYoursError(c, record.routed_to_viewer);
    }
    if (!acknowledger) TakeOver(record, policy, standing);
    const RoutingRule* rule = RuleFor(policy, c.category(), c.severity());
    if (c.state() == v1::CONCERN_STATE_OPEN) {
      // Acknowledged first, in the same transaction, so time to acknowledge stays measurable.
      c.set_state(v1::CONCERN_STATE_ACKNOWLEDGED);
      *c.mutable_acknowledged_at() = ToProtoTimestamp(now);
      c.set_acknowledged_by(who.subject);
      record.acknowledged_level = c.current_level();
      *c.mutable_resolution_deadline() =
          ToProtoTimestamp(ResolutionDeadline(*rule, policy.calendar, now));
      TransitionRecord t;
      t.kind = "acknowledged";
      t.from_status = "open";
      t.to_status = "acknowledged";
      t.level = c.current_level();
      t.target = TargetFromProto(c.current_target());
      t.actor = who.subject;
      t.actor_role = ActingRole(who);
      if (auto s = Store::AppendTransition(tx, who.agency_id, c.concern_id(), t); !s.ok()) return s;
      if (auto s =
              AppendEvent(tx, who.agency_id, c.concern_id(), AcknowledgedEvent(c, ActingRole(who)));
          !s.ok()) {
        return s;
      }
    }
    c.set_state(v1::CONCERN_STATE_RESOLVED);
    *c.mutable_resolved_at() = ToProtoTimestamp(now);
    c.set_resolved_by(who.subject);
    c.set_outcome(request->outcome());
    c.clear_next_deadline();
    record.next_deadline_kind.clear();
    if (auto s = Store::UpdateConcern(tx, record, now); !s.ok()) return s;
    TransitionRecord t;
    t.kind = "resolved";
    t.from_status = "acknowledged";
    t.to_status = "resolved";
    t.level = c.current_level();
    t.actor = who.subject;
    t.actor_role = ActingRole(who);
    if (auto s = Store::AppendTransition(tx, who.agency_id, c.concern_id(), t); !s.ok()) return s;
    return AppendEvent(tx, who.agency_id, c.concern_id(), ResolvedEvent(c, ActingRole(who)));
  };
  return ToGrpc(ChangeConcern(*context, who, "ResolveConcern", request->concern_id(),
                              v1::CONCERN_CHANGE_KIND_RESOLVED, act, *response->mutable_concern()));
}

grpc::Status EscalationService::CancelConcern(grpc::ServerContext* context,
                                              const v1::CancelConcernRequest* request,
                                              v1::CancelConcernResponse* response) {
  auto caller = authorizer_.Authorize(*context, "CancelConcern");
  if (!caller.ok()) return ToGrpc(caller.status());
  std::vector<FieldViolation> violations;
  if (request->concern_id().empty() || !IsUuid(request->concern_id())) {
    violations.push_back({"concern_id", "required, a UUID"});
  }
  const std::string reason(absl::StripAsciiWhitespace(request->reason()));
  if (reason.empty() || request->reason().size() > kMaxReason) {
    violations.push_back({"reason", "required: 1 to 500 characters, not only spaces"});
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("cannot cancel", violations));
  const Identity& who = *caller;
  const absl::Time now = now_();
  auto act = [&](pqxx::work& tx, ConcernRecord& record, const RoutingPolicy& policy) {
    v1::Concern& c = record.concern;
    if (c.state() == v1::CONCERN_STATE_CANCELLED) {
      if (c.cancelled_by() == who.subject) return absl::OkStatus();
      return ClosedError(c);
    }
    if (c.state() == v1::CONCERN_STATE_RESOLVED) return ClosedError(c);
    const Standing standing = StandingOf(who, record, policy);
    const bool staff_target = standing.current || standing.higher.has_value();
    if (!staff_target) {
      if (c.raised_by() != who.subject) return NotYoursError(c, record.routed_to_viewer);
      if (who.Has(Role::kPeerSupporter) &&
          c.category() == common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY) {
        return absl::FailedPreconditionError(
            "a peer supporter can never cancel an immediate-safety concern; its clinical target "
            "closes it");
      }
      if (c.state() != v1::CONCERN_STATE_OPEN) {
        return absl::FailedPreconditionError(
            "the concern has been acknowledged; only its owner can cancel it now");
      }
    }
    const v1::ConcernState from = c.state();
    c.set_state(v1::CONCERN_STATE_CANCELLED);
    *c.mutable_cancelled_at() = ToProtoTimestamp(now);
    c.set_cancelled_by(who.subject);
    c.set_cancel_reason(request->reason());
    c.clear_next_deadline();
    record.next_deadline_kind.clear();
    if (auto s = Store::UpdateConcern(tx, record, now); !s.ok()) return s;
    TransitionRecord t;
    t.kind = "cancelled";
    t.from_status = StateCode(from);
    t.to_status = "cancelled";
    t.level = c.current_level();
    t.actor = who.subject;
    t.actor_role = ActingRole(who);
    if (auto s = Store::AppendTransition(tx, who.agency_id, c.concern_id(), t); !s.ok()) return s;
    return AppendEvent(tx, who.agency_id, c.concern_id(), CancelledEvent(c, from, ActingRole(who)));
  };
  return ToGrpc(ChangeConcern(*context, who, "CancelConcern", request->concern_id(),
                              v1::CONCERN_CHANGE_KIND_CANCELLED, act,
                              *response->mutable_concern()));
}

grpc::Status EscalationService::ReassignConcern(grpc::ServerContext* context,
                                                const v1::ReassignConcernRequest* request,
                                                v1::ReassignConcernResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ReassignConcern");
  if (!caller.ok()) return ToGrpc(caller.status());
  std::vector<FieldViolation> violations;
  if (request->concern_id().empty() || !IsUuid(request->concern_id())) {
    violations.push_back({"concern_id", "required, a UUID"});
  }
  if (request->target().kind() == v1::TARGET_KIND_UNSPECIFIED ||
      !v1::TargetKind_IsValid(request->target().kind())) {
    violations.push_back({"target.kind", "required"});
  }
  if (request->target().target_id().empty() || request->target().target_id().size() > 128) {
    violations.push_back({"target.target_id", "required, 1 to 128 characters"});
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("cannot reassign", violations));
  const Identity& who = *caller;
  const absl::Time now = now_();
  std::vector<Notification> notifications;
  auto act = [&](pqxx::work& tx, ConcernRecord& record, const RoutingPolicy& policy) {
    v1::Concern& c = record.concern;
    const Standing standing = StandingOf(who, record, policy);
    if (!standing.current && !standing.higher) return NotYoursError(c, record.routed_to_viewer);
    if (c.state() != v1::CONCERN_STATE_OPEN) {
      return absl::FailedPreconditionError("only an OPEN concern can be reassigned");
    }
    const Target to = TargetFromProto(request->target());
    if (IsPersonKind(to.kind) && c.raised_by_role() == "peer_supporter" && to.id == c.raised_by()) {
      return absl::FailedPreconditionError(
          "peer supporters raise concerns but never hold them: the new target is a peer "
          "supporter");
    }
    if (c.category() == common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY && !IsClinicalKind(to.kind)) {
      return absl::FailedPreconditionError(
          "an immediate-safety concern stays with clinical review (clinical on-call or the "
          "receiving clinician)");
    }
    if (to == TargetFromProto(c.current_target())) return absl::OkStatus();
    *c.mutable_current_target() = request->target();
    if (auto s = Store::UpdateConcern(tx, record, now); !s.ok()) return s;
    TransitionRecord t;
    t.kind = "routed";
    t.from_status = "open";
    t.to_status = "open";
    t.level = c.current_level();
    t.target = to;
    t.actor = who.subject;
    t.actor_role = ActingRole(who);
    if (auto s = Store::AppendTransition(tx, who.agency_id, c.concern_id(), t); !s.ok()) return s;
    notifications.push_back({who.agency_id, c.concern_id(), "reassigned", c.category(),
                             c.severity(), c.current_level(), to,
                             FromProtoTimestamp(c.ack_deadline())});
    NotificationOutbox::Enqueue(tx, {notifications.back()});
    return AppendEvent(tx, who.agency_id, c.concern_id(),
                       RoutedEvent(c, v1::ROUTING_REASON_REASSIGNED, {}, now, who.subject, now));
  };
  absl::Status status =
      ChangeConcern(*context, who, "ReassignConcern", request->concern_id(),
                    v1::CONCERN_CHANGE_KIND_REASSIGNED, act, *response->mutable_concern());
  if (status.ok() && !notifications.empty()) outbox_->Wake();
  return ToGrpc(status);
}

// ---------------------------------------------------------------------------------------------
// Routing policy

grpc::Status EscalationService::GetRoutingPolicy(grpc::ServerContext* context,
                                                 const v1::GetRoutingPolicyRequest* request,
                                                 v1::GetRoutingPolicyResponse* response) {
  auto caller = authorizer_.Authorize(*context, "GetRoutingPolicy");
  if (!caller.ok()) return ToGrpc(caller.status());
  if (request->version() < 0) {
    return ToGrpc(InvalidArgument("bad version", {{"version", "must not be negative"}}));
  }
  return ToGrpc(context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) {
    auto policy = Store::Policy(tx, caller->agency_id, request->version(), DefaultPolicyFor());
    if (!policy.ok()) return policy.status();
    *response->mutable_policy() = PolicyToProto(*policy, caller->agency_id);
    return absl::OkStatus();
  }));
}

grpc::Status EscalationService::UpdateRoutingPolicy(grpc::ServerContext* context,
                                                    const v1::UpdateRoutingPolicyRequest* request,
                                                    v1::UpdateRoutingPolicyResponse* response) {
  auto caller = authorizer_.Authorize(*context, "UpdateRoutingPolicy");
  if (!caller.ok()) return ToGrpc(caller.status());
  return ToGrpc(UpdateRoutingPolicyImpl(*caller, *request, *response));
}

absl::Status EscalationService::UpdateRoutingPolicyImpl(
    const Identity& caller, const v1::UpdateRoutingPolicyRequest& request,
    v1::UpdateRoutingPolicyResponse& response) {
  std::vector<FieldViolation> violations;
  std::set<std::string> paths(request.update_mask().paths().begin(),
                              request.update_mask().paths().end());
  if (paths.empty()) paths = {"rules", "time_zone", "business_hours", "holidays"};
  for (const std::string& path : paths) {
    if (path != "rules" && path != "time_zone" && path != "business_hours" && path != "holidays") {
      violations.push_back({"update_mask", absl::StrCat("unknown path '", path, "'")});
    }
  }
  if (request.base_version() < 1) violations.push_back({"base_version", "required, at least 1"});
  if (absl::Status key = ValidateIdempotencyKey(request.idempotency_key()); !key.ok()) {
    violations.push_back({"idempotency_key", std::string(key.message())});
  }
  if (!violations.empty()) return InvalidArgument("the policy update is invalid", violations);

  const IdempotentCall call{caller.agency_id, request.idempotency_key(), "UpdateRoutingPolicy",
                            &request, caller.subject};
  return context_.db.TransactForAgency(caller.agency_id, [&](pqxx::work& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, call, response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    auto base = Store::Policy(tx, caller.agency_id, request.base_version(), DefaultPolicyFor());
    if (!base.ok()) {
      if (base.status().code() == absl::StatusCode::kNotFound) {
        return InvalidArgument("base_version does not exist",
                               {{"base_version", "no such version of the routing policy"}});
      }
      return base.status();
    }
    // Merge the named fields of the request over the base version, then read it back as a whole.
    v1::RoutingPolicy merged = PolicyToProto(*base, caller.agency_id);
    const v1::RoutingPolicy& edit = request.policy();
    if (paths.contains("time_zone")) merged.set_time_zone(edit.time_zone());
    if (paths.contains("business_hours")) *merged.mutable_business_hours() = edit.business_hours();
    if (paths.contains("holidays")) *merged.mutable_holidays() = edit.holidays();
    if (paths.contains("rules")) {
      for (const auto& rule : edit.rules()) {
        auto* existing = merged.mutable_rules();
        auto it = std::find_if(existing->begin(), existing->end(), [&](const v1::RoutingRule& r) {
          return r.category() == rule.category() && r.severity() == rule.severity();
        });
        if (it != existing->end()) {
          *it = rule;
        } else {
          *merged.add_rules() = rule;
        }
      }
    }
    // Problems of the edit itself name the request's fields (its own rule indices); problems of
    // the merged whole (e.g. business hours now required) name the policy's fields.
    std::vector<FieldViolation> problems;
    std::vector<FieldViolation> read_problems;
    RoutingPolicy edit_policy = PolicyFromProto(edit, read_problems);
    for (const auto& v : read_problems) {
      for (const std::string& path : paths) {
        if (absl::StartsWith(v.field, "policy." + path)) problems.push_back(v);
      }
    }
    if (paths.contains("rules")) {
      edit_policy.calendar.windows = {{1, 0, 1}};  // Hours are checked on the merged whole.
      for (const auto& v : ValidatePolicy(edit_policy)) problems.push_back(v);
    }
    std::vector<FieldViolation> ignored;
    RoutingPolicy policy = PolicyFromProto(merged, ignored);
    for (const auto& v : ValidatePolicy(policy)) {
      if (!absl::StartsWith(v.field, "policy.rules[")) problems.push_back(v);
    }
    if (!problems.empty()) return InvalidArgument("the routing policy is invalid", problems);
    if (std::string safety = SafetyRuleViolation(policy); !safety.empty()) {
      return absl::FailedPreconditionError(safety);
    }
    policy.time_zone = merged.time_zone();
    // Once an admin sets the zone here, it no longer follows the check-in program policy's.
    policy.time_zone_set_by_admin = paths.contains("time_zone") || base->time_zone_set_by_admin;
    auto published =
        Store::InsertPolicy(tx, caller.agency_id, policy, request.base_version(), caller.subject);
    if (!published.ok()) return published.status();
    *response.mutable_policy() = PolicyToProto(*published, caller.agency_id);
    AuditEntry entry;
    entry.actor = caller.subject;
    entry.actor_role = "program_admin";
    entry.action = Action("UpdateRoutingPolicy");
    entry.object_type = "routing_policy";
    entry.object_id = published->policy_id;
    auto audited = AppendAudit(tx, caller.agency_id, entry);
    if (!audited.ok()) return audited.status();
    return StoreIdempotentResponse(tx, call, response);
  });
}

// ---------------------------------------------------------------------------------------------
// WatchConcerns

grpc::Status EscalationService::WatchConcerns(
    grpc::ServerContext* context, const v1::WatchConcernsRequest* request,
    grpc::ServerWriter<v1::WatchConcernsResponse>* writer) {
  auto caller = authorizer_.Authorize(*context, "WatchConcerns");
  if (!caller.ok()) return ToGrpc(caller.status());
  return ToGrpc(WatchConcernsImpl(*context, *caller, *request, *writer));
}

absl::Status EscalationService::WatchConcernsImpl(
    grpc::ServerContext& context, const Identity& caller, const v1::WatchConcernsRequest& request,
    grpc::ServerWriter<v1::WatchConcernsResponse>& writer) {
  std::vector<FieldViolation> violations;
  if (request.target().kind() == v1::TARGET_KIND_UNSPECIFIED ||
      !v1::TargetKind_IsValid(request.target().kind())) {
    violations.push_back({"target.kind", "required"});
  }
  if (request.target().target_id().empty()) violations.push_back({"target.target_id", "required"});
  if (!violations.empty()) return InvalidArgument("cannot watch", violations);
  const Target target = TargetFromProto(request.target());
  bool allowed = false;
  switch (target.kind) {
    case v1::TARGET_KIND_CLINICAL_ON_CALL:
      allowed = caller.Has(Role::kClinician);
      break;
    case v1::TARGET_KIND_RECEIVING_CLINICIAN:
      allowed = caller.Has(Role::kClinician) && target.id == caller.subject;
      break;
    case v1::TARGET_KIND_CASE_MANAGEMENT_TEAM:
      allowed = caller.Has(Role::kCaseManager);
      break;
    case v1::TARGET_KIND_SUPPORTER_SUPERVISOR:
      allowed = caller.Has(Role::kSupervisor) && target.id == caller.subject;
      break;
    default:
      break;
  }
  if (!allowed) {
    authorizer_.AuditRefusal(context, caller, "WatchConcerns", "target", target.id, "");
    return absl::PermissionDeniedError("the caller does not act for this target");
  }
  std::set<int> severities(request.severities().begin(), request.severities().end());
  // Subscribed before the snapshot is read: nothing committed after it can be missed.
  std::shared_ptr<WatchHub::Watcher> watcher = hub_.Add(caller.agency_id, target, severities);
  if (watcher == nullptr) {
    return absl::ResourceExhaustedError("too many concurrent WatchConcerns streams; retry later");
  }
  struct Release {
    WatchHub& hub;
    std::shared_ptr<WatchHub::Watcher> watcher;
    ~Release() { hub.Remove(watcher); }
  } release{hub_, watcher};

  const absl::Time as_of = now_();
  std::vector<ConcernRecord> snapshot;
  absl::Status read = context_.db.TransactForAgency(caller.agency_id, [&](pqxx::work& tx) {
    auto rows = Store::OpenForTarget(tx, caller.agency_id, target);
    if (!rows.ok()) return rows.status();
    snapshot = std::move(*rows);
    return Audit(tx, caller, "WatchConcerns", "", "");
  });
  if (!read.ok()) return read;
  // What the snapshot showed of each concern: its revision and, for changes recorded before
  // concerns had revisions, its state.
  std::map<std::string, int> revision_shown;
  std::map<std::string, std::string> state_shown;
  int sent = 0;
  for (ConcernRecord& record : snapshot) {
    v1::Concern& c = record.concern;
    if (!severities.empty() && !severities.contains(c.severity())) continue;
    c.clear_description();
    ApplyView(c, true);
    SetOverdue(c, as_of);
    v1::WatchConcernsResponse message;
    *message.mutable_snapshot_concern() = c;
    if (!writer.Write(message)) return absl::CancelledError("watcher went away");
    revision_shown[c.concern_id()] = c.revision();
    c.clear_view();
    c.clear_overdue();
    c.clear_revision();
    state_shown[c.concern_id()] = c.SerializeAsString();
    ++sent;
  }
  {
    v1::WatchConcernsResponse marker;
    marker.mutable_snapshot_end()->set_concern_count(sent);
    *marker.mutable_snapshot_end()->mutable_as_of() = ToProtoTimestamp(as_of);
    if (!writer.Write(marker)) return absl::CancelledError("watcher went away");
  }
  // Whether the snapshot showed this change of its concern, or a later one, already. The feed is
  // relayed after commit, so a change committed before the snapshot was read may arrive after it
  // (queued meanwhile, or even after the marker); every later change has a higher revision. The
  // feed relays a concern's changes in the order they committed, so once the one the snapshot
  // showed (or a later one) has come, no older one follows: the concern is forgotten, and what
  // the stream remembers stays within the snapshot's size however long it runs.
  auto already_shown = [&](const ConcernChangeNote& note) {
    const std::string& id = note.concern.concern_id();
    if (note.concern.revision() > 0) {
      auto it = revision_shown.find(id);
      if (it == revision_shown.end()) return false;
      const bool shown = note.concern.revision() <= it->second;
      if (note.concern.revision() >= it->second) revision_shown.erase(it);
      return shown;
    }
    // Recorded without a revision (by a replica of an earlier version): the state it produced.
    v1::Concern state = note.concern;
    state.clear_view();
    state.clear_overdue();
    state.clear_cancel_reason();
    auto it = state_shown.find(id);
    return it != state_shown.end() && it->second == state.SerializeAsString();
  };
  absl::Time last_sent = absl::Now();
  while (true) {
    std::deque<ConcernChangeNote> batch;
    {
      std::unique_lock<std::mutex> lock(watcher->mu);
      watcher->wake.wait_for(lock, std::chrono::milliseconds(200),
                             [&] { return !watcher->queue.empty() || watcher->fell_behind; });
      if (watcher->fell_behind) {
        return absl::AbortedError(
            "the watcher fell more than 1,000 changes behind; reconnect for a fresh snapshot");
      }
      batch.swap(watcher->queue);
    }
    if (context.IsCancelled()) return absl::CancelledError("watcher cancelled");
    if (context_.stopping.stopped())
      return absl::UnavailableError("server shutting down; reconnect");
    for (ConcernChangeNote& note : batch) {
      if (already_shown(note)) continue;
      v1::WatchConcernsResponse message;
      v1::ConcernChange* change = message.mutable_change();
      change->set_kind(note.kind);
      *change->mutable_concern() = std::move(note.concern);
      ApplyView(*change->mutable_concern(), true);
      SetOverdue(*change->mutable_concern(), note.occurred_at);
      change->set_in_scope(InScope(change->concern(), target));
      *change->mutable_occurred_at() = ToProtoTimestamp(note.occurred_at);
      if (!writer.Write(message)) return absl::CancelledError("watcher went away");
      last_sent = absl::Now();
    }
    if (absl::Now() - last_sent >= absl::Seconds(30)) {
      v1::WatchConcernsResponse heartbeat;
      *heartbeat.mutable_heartbeat()->mutable_sent_at() = ToProtoTimestamp(absl::Now());
      if (!writer.Write(heartbeat)) return absl::CancelledError("watcher went away");
      last_sent = absl::Now();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Check-in events

absl::Status EscalationService::ApplyCheckInEvent(pqxx::work& tx, const common::v1::Event& event) {
  if (event.payload().Is<checkin::v1::EnrollmentStartedEvent>()) {
    checkin::v1::EnrollmentStartedEvent started;
    if (!event.payload().UnpackTo(&started) || !IsUuid(started.enrollment_id()) ||
        started.participant_id().empty()) {
      return absl::InvalidArgumentError("EnrollmentStartedEvent unreadable or without ids");
    }
    // Idempotent; an end already applied stays.
    tx.exec_params0(
        "INSERT INTO enrollments (agency_id, enrollment_id, participant_id, receiving_clinician) "
        "VALUES ($1, $2::uuid, $3, $4) ON CONFLICT (agency_id, enrollment_id) DO UPDATE SET "
        "participant_id = EXCLUDED.participant_id, receiving_clinician = "
        "EXCLUDED.receiving_clinician",
        event.agency_id(), started.enrollment_id(), started.participant_id(),
        started.receiving_clinician());
    // The agency's zone at enrollment; one the tz database does not know is left out.
    if (IsTimeZoneName(started.time_zone())) {
      return Store::FollowAgencyTimeZone(tx, event.agency_id(), started.time_zone(),
                                         event.position());
    }
    return absl::OkStatus();
  }
  if (event.payload().Is<checkin::v1::ProgramPolicyChangedEvent>()) {
    checkin::v1::ProgramPolicyChangedEvent changed;
    if (!event.payload().UnpackTo(&changed)) {
      return absl::InvalidArgumentError("ProgramPolicyChangedEvent payload unreadable");
    }
    return Store::FollowAgencyTimeZone(tx, event.agency_id(), changed.time_zone(),
                                       event.position());
  }
  if (event.payload().Is<checkin::v1::EnrollmentEndedEvent>()) {
    checkin::v1::EnrollmentEndedEvent ended;
    if (!event.payload().UnpackTo(&ended) || !IsUuid(ended.enrollment_id()) ||
        ended.participant_id().empty()) {
      return absl::InvalidArgumentError("EnrollmentEndedEvent unreadable or without ids");
    }
    tx.exec_params0(
        "INSERT INTO enrollments (agency_id, enrollment_id, participant_id, active) VALUES ($1, "
        "$2::uuid, $3, false) ON CONFLICT (agency_id, enrollment_id) DO UPDATE SET active = false",
        event.agency_id(), ended.enrollment_id(), ended.participant_id());
    return absl::OkStatus();
  }
  if (!event.payload().Is<checkin::v1::ConcernRaisedEvent>()) return absl::OkStatus();
  return ApplyConcernsRaised(tx, {&event});
}

absl::Status EscalationService::ApplyCheckInEvents(
    pqxx::work& tx, const std::vector<const common::v1::Event*>& events) {
  // Consecutive ConcernRaisedEvents together; every other event alone, in between (an event that
  // changes the agency's time zone publishes a routing policy the concerns after it take).
  std::vector<const common::v1::Event*> raised;
  for (const common::v1::Event* event : events) {
    if (event->payload().Is<checkin::v1::ConcernRaisedEvent>()) {
      raised.push_back(event);
      continue;
    }
    if (!raised.empty()) {
      if (absl::Status st = ApplyConcernsRaised(tx, raised); !st.ok()) return st;
      raised.clear();
    }
    if (absl::Status st = ApplyCheckInEvent(tx, *event); !st.ok()) return st;
  }
  return raised.empty() ? absl::OkStatus() : ApplyConcernsRaised(tx, raised);
}

// The agency is the transaction's scope (row-level security); $1 names it for the indexes.
const char kRaisedContextsSql[] = R"sql(
    SELECT opened.found IS NOT NULL, m.supporter_id::text, m.supporter_subject,
      m.supervisor_subject,
      (SELECT p.id::text FROM routing_policies p WHERE p.agency_id = $1
        ORDER BY p.version DESC LIMIT 1)
    FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS i (event_id, participant, n)
    -- Looked up per event (a LIMIT is never hashed): as EXISTS, the plan hashed every concern of
    -- the agency once per run.
    LEFT JOIN LATERAL (SELECT true AS found FROM concerns c
      WHERE c.agency_id = $1 AND c.source_event_id = i.event_id LIMIT 1) opened ON true
    LEFT JOIN LATERAL (SELECT s.supporter_id, s.supporter_subject, s.supervisor_subject
      FROM supporter_matches s WHERE s.participant_id = i.participant AND s.active
      ORDER BY s.started_at DESC NULLS LAST LIMIT 1) m ON true
    ORDER BY i.n)sql";

absl::Status EscalationService::ApplyConcernsRaised(
    pqxx::work& tx, const std::vector<const common::v1::Event*>& events) {
  std::vector<checkin::v1::ConcernRaisedEvent> raised(events.size());
  BinaryArray event_ids(BinaryArray::Of::kText), participants(BinaryArray::Of::kText);
  for (size_t i = 0; i < events.size(); ++i) {
    if (!events[i]->payload().UnpackTo(&raised[i])) {
      return absl::InvalidArgumentError("ConcernRaisedEvent payload unreadable");
    }
    event_ids.AddText(events[i]->event_id());
    participants.AddText(raised[i].participant_id());
  }
  const std::string& agency_id = events.front()->agency_id();
  // On its generic plan, with no sequential scan where an index serves, for the rest of the
  // consumer's transaction: PostgreSQL would plan the read afresh for every run (an unnest is
  // estimated at ten rows in a generic plan), and a plan made while the agency had few concerns
  // and matches would read them whole as they grow.
  ScopeToAgency(tx, agency_id, Plans::kGeneric);
  const pqxx::result known = ExecPrepared(tx, "escalation_raised_contexts", kRaisedContextsSql,
                                          agency_id, event_ids.Bytes(), participants.Bytes());
  if (known.size() != events.size()) {
    throw std::runtime_error("the check-in concerns' read answered a row count unlike theirs");
  }
  std::string latest_policy_id = known[0][4].is_null() ? "" : known[0][4].as<std::string>();
  OpeningWrites opening;
  opening.agency_id = agency_id;
  const absl::Time now = now_();
  for (size_t i = 0; i < events.size(); ++i) {
    const common::v1::Event& event = *events[i];
    const checkin::v1::ConcernRaisedEvent& r = raised[i];
    // Exactly one concern per event, whatever the delivery count (a log holds an event once).
    if (known[i][0].as<bool>()) continue;
    ConcernRecord record;
    v1::Concern& c = record.concern;
    c.set_agency_id(agency_id);
    c.set_participant_id(r.participant_id().empty() ? "unknown" : r.participant_id());
    if (IsUuid(r.enrollment_id())) c.set_enrollment_id(r.enrollment_id());
    // Never dropped: an unspecified severity is critical, an unspecified category clinical
    // worsening.
    c.set_category(r.category() == common::v1::CONCERN_CATEGORY_UNSPECIFIED ||
                           !common::v1::ConcernCategory_IsValid(r.category())
                       ? common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING
                       : r.category());
    c.set_severity(r.severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED ||
                           !common::v1::ConcernSeverity_IsValid(r.severity())
                       ? common::v1::CONCERN_SEVERITY_CRITICAL
                       : r.severity());
    c.set_source(SourceFromCheckIn(r.source()));
    c.set_source_event_id(event.event_id());
    if (r.cause_case() == checkin::v1::ConcernRaisedEvent::kCheckInId && IsUuid(r.check_in_id())) {
      c.set_source_check_in_id(r.check_in_id());
    }
    c.set_raised_by("system:checkin");
    c.set_raised_by_role("service");
    absl::Time opened = r.has_raised_at() ? FromProtoTimestamp(r.raised_at())
                                          : FromProtoTimestamp(event.occurred_at());
    if (opened == absl::UnixEpoch() || opened > now) opened = now;
    *c.mutable_opened_at() = ToProtoTimestamp(opened);
    PersonDirectory people;
    if (!r.receiving_clinician().empty()) people.receiving_clinician = r.receiving_clinician();
    if (!r.supporter_id().empty()) people.peer_supporters.insert(r.supporter_id());
    if (!known[i][1].is_null()) {
      people.peer_supporters.insert(known[i][2].c_str());
      if (const std::string supervisor = known[i][3].c_str(); !supervisor.empty()) {
        people.supervisor = supervisor;
      }
    }
    // The first concern of an agency without a policy stores the built-in version 1; the
    // others take it.
    auto opened_concern =
        OpenConcern(tx, std::move(record), people, now, opening, latest_policy_id);
    if (!opened_concern.ok()) return opened_concern.status();
    latest_policy_id = opened_concern->policy_id;
    // The page is written with the concern: sent once the consumer's transaction commits
    // (after_commit wakes the outbox), never for a concern that rolled back.
    ConcernChangeNote note;
    note.kind = v1::CONCERN_CHANGE_KIND_OPENED;
    note.concern = opened_concern->concern;
    note.occurred_at = now;
    opening.feed.push_back(std::move(note));  // Relayed once the consumer's transaction commits.
  }
  if (opening.concerns.empty()) return absl::OkStatus();
  DeferredWrites writes(tx);
  opening.WriteTo(writes);
  writes.Flush();
  return absl::OkStatus();
}

}  // namespace peerpath::escalation
