#include "services/checkin/checkin_service.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/audit.h"
#include "common/channel.h"
#include "common/event_source.h"
#include "common/idempotency.h"
#include "common/identifiers.h"
#include "common/log.h"
#include "common/pagination.h"
#include "common/rpc_observer.h"
#include "common/status.h"
#include "common/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"
#include "peerpath/consent/v1/events.pb.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "peerpath/matching/v1/matching.grpc.pb.h"
#include "services/checkin/engagement.h"
#include "services/checkin/pathway.h"
#include "services/checkin/schedule.h"
#include "services/checkin/store.h"

namespace peerpath::checkin {

using enum Role;

const RoleRules& CheckInService::Rules() {
  static const auto* const rules = new RoleRules{
      {"PublishPathwayVersion", {kProgramAdmin}},
      // A pathway definition holds no personal data.
      {"GetPathwayVersion",
       {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kProgramAdmin, kIntegration}},
      {"ListPathwayVersions",
       {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kProgramAdmin, kIntegration}},
      {"CreateEnrollment", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"GetEnrollment",
       {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration, kService}},
      {"ListEnrollments", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"EndEnrollment", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ResumeRoutineEngagement", {kClinician}},
      {"RecordCheckIn", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"GetCheckIn", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ListCheckIns", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ListDueCheckIns", {kPeerSupporter, kSupervisor}},
      {"RecordContactAttempt", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"ScheduleAppointment", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"RecordAppointmentOutcome", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ListAppointments", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      // Program settings, not personal data: operations may read them.
      {"GetProgramPolicy",
       {kProgramAdmin, kSupervisor, kClinician, kCaseManager, kPeerSupporter, kOperations}},
      {"UpdateProgramPolicy", {kProgramAdmin}},
      {"GetWellbeingTrend", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"RecordParticipantFeedback",
       {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kProgramAdmin, kIntegration}},
      {"ListParticipantFeedback", {kSupervisor, kClinician, kCaseManager, kProgramAdmin}},
      {"ListEvents", {kService}},
      {"Subscribe", {kService}},
  };
  return *rules;
}

namespace {

constexpr char kServiceName[] = "peerpath.checkin.v1.CheckInService";
constexpr char kErrorDomain[] = "checkin.peerpath";
// Group commit of RecordCheckIn's writes: this many write transactions at once (the reads of
// the calls waiting run meanwhile); options.max_write_batch check-ins at most in each.
constexpr int kConcurrentCheckInWrites = 2;
// RecordCheckIn's reads (outside a transaction) likewise: this many statements at once, each
// reading the check-ins of up to kMaxReadBatch calls of one agency.
constexpr int kConcurrentCheckInReads = 2;
// The longest a write batch waits for the writes of calls read together with those it holds.
constexpr std::chrono::microseconds kGatherAnnouncedWrites{2000};
constexpr int kMaxReadBatch = 64;

// Roles in the order a caller holding several acts under: staff before peer support, so a
// staff member who is also a peer supporter is not narrowed to their matches.
constexpr Role kRolePreference[] = {kClinician,   kCaseManager, kSupervisor, kProgramAdmin,
                                    kIntegration, kService,     kOperations, kPeerSupporter};

std::string Action(const char* method) { return absl::StrCat(kServiceName, ".", method); }

absl::CivilDay CivilOf(const common::v1::Date& d) {
  return absl::CivilDay(d.year(), d.month(), d.day());
}

common::v1::Date DateOf(absl::CivilDay d) {
  common::v1::Date out;
  out.set_year(static_cast<int>(d.year()));
  out.set_month(d.month());
  out.set_day(d.day());
  return out;
}

Schedule ScheduleOf(const v1::CheckInSchedule& s, absl::CivilDay starts,
                    std::optional<absl::CivilDay> ends) {
  Schedule out;
  out.kind = s.has_weekly() ? Schedule::Kind::kWeekly : Schedule::Kind::kEveryNDays;
  for (int d : s.weekly().weekdays()) out.weekdays.push_back(d);
  out.interval_days = s.every_n_days().interval_days();
  out.window_days = s.window_days() == 0 ? 1 : s.window_days();
  out.starts_on = starts;
  out.ends_on = ends;
  return out;
}

Schedule ScheduleOf(const v1::Enrollment& e) {
  return ScheduleOf(e.schedule(), CivilOf(e.starts_on()),
                    e.has_ends_on() ? std::optional(CivilOf(e.ends_on())) : std::nullopt);
}

std::string EndReasonText(v1::EnrollmentEndReason r) {
  std::string name = v1::EnrollmentEndReason_Name(r).substr(sizeof("ENROLLMENT_END_REASON_") - 1);
  std::transform(name.begin(), name.end(), name.begin(), ::tolower);
  return name;
}

absl::Status UnmetGates(const std::vector<std::pair<std::string, std::string>>& unmet,
                        const std::vector<bool>& is_consent) {
  std::vector<std::string> names;
  google::rpc::PreconditionFailure failure;
  for (size_t i = 0; i < unmet.size(); ++i) {
    names.push_back(unmet[i].first);
    auto* v = failure.add_violations();
    v->set_type(is_consent[i] ? "CONSENT_GATE" : "OWNER_GATE");
    v->set_subject(unmet[i].first);
    v->set_description(unmet[i].second);
  }
  google::rpc::ErrorInfo info;
  info.set_reason("ENROLLMENT_GATES_NOT_MET");
  info.set_domain(kErrorDomain);
  (*info.mutable_metadata())["unmet_gates"] = absl::StrJoin(names, ",");
  absl::Status status = absl::FailedPreconditionError(
      absl::StrCat("enrollment cannot proceed; gates not met: ", absl::StrJoin(names, ", ")));
  status.SetPayload("type.googleapis.com/google.rpc.ErrorInfo",
                    absl::Cord(info.SerializeAsString()));
  status.SetPayload("type.googleapis.com/google.rpc.PreconditionFailure",
                    absl::Cord(failure.SerializeAsString()));
  return status;
}

void AddViolations(std::vector<FieldViolation>& to, const absl::Status& status) {
  for (auto& v : FieldViolations(status)) to.push_back(std::move(v));
}

// The participant's three latest wellbeing scores with `current` added, newest first.
bool RaisesWellbeingDecline(std::vector<std::pair<absl::Time, int>> previous,
                            std::pair<absl::Time, int> current, int drop_points,
                            std::vector<int>* three_oldest_first) {
  auto newest_first = [](const auto& a, const auto& b) { return a.first > b.first; };
  std::sort(previous.begin(), previous.end(), newest_first);
  if (previous.size() > 3) previous.resize(3);
  // On equal times the check-in being recorded is the newest (it is recorded last).
  std::vector<std::pair<absl::Time, int>> with = {current};
  with.insert(with.end(), previous.begin(), previous.end());
  std::stable_sort(with.begin(), with.end(), newest_first);
  with.resize(std::min<size_t>(3, with.size()));
  const bool among = std::any_of(with.begin(), with.end(), [&](const auto& p) {
    return p.first == current.first && p.second == current.second;
  });
  if (!among || with.size() < 3) return false;
  auto oldest_first = [](const std::vector<std::pair<absl::Time, int>>& v) {
    std::vector<int> out;
    for (auto it = v.rbegin(); it != v.rend(); ++it) out.push_back(it->second);
    return out;
  };
  const std::vector<int> now = oldest_first(with);
  if (!WellbeingDeclined(now, drop_points)) return false;
  // One concern per decline: the three before this check-in did not already show it.
  if (WellbeingDeclined(oldest_first(previous), drop_points)) return false;
  *three_oldest_first = now;
  return true;
}

// [start, end) of a TimeRange as micros text for the store ("" for an unset bound), with a
// violation under `field` when the end is not after the start.
void RangeMicros(const common::v1::TimeRange& range, const std::string& field,
                 std::vector<FieldViolation>& violations, std::string& from, std::string& to) {
  from = range.has_start_time()
             ? absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(range.start_time())))
             : "";
  to = range.has_end_time() ? absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(range.end_time())))
                            : "";
  if (range.has_start_time() && range.has_end_time() &&
      FromProtoTimestamp(range.end_time()) <= FromProtoTimestamp(range.start_time())) {
    violations.push_back({field + ".end_time", "must be after start_time"});
  }
}

// A page token's list name bound to the request's filters (FNV-1a of the request without its
// paging fields), so a token is refused when the filters change between pages.
std::string ListNameWithFilters(const char* list, google::protobuf::Message& filters) {
  const std::string bytes = DeterministicBytes(filters);
  uint64_t hash = 1469598103934665603ull;
  for (const unsigned char c : bytes) hash = (hash ^ c) * 1099511628211ull;
  return absl::StrCat(list, "/", absl::Hex(hash));
}

// A contact with an enrollment that was not engaged: the stage it left and when contact came
// back. The caller names the check-in or contact attempt.
std::unique_ptr<v1::ReconnectionRecordedEvent> ReconnectionEvent(
    const v1::Enrollment& e, const std::string& supporter_id,
    const google::protobuf::Timestamp& reconnected_at) {
  auto r = std::make_unique<v1::ReconnectionRecordedEvent>();
  r->set_enrollment_id(e.enrollment_id());
  r->set_participant_id(e.participant_id());
  r->set_supporter_id(supporter_id);
  r->set_pathway_key(e.pathway_key());
  r->set_previous_stage(e.engagement_stage());
  *r->mutable_previous_stage_since() = e.engagement_stage_changed_at();
  if (e.has_last_contact_at()) *r->mutable_previous_contact_at() = e.last_contact_at();
  *r->mutable_reconnected_at() = reconnected_at;
  return r;
}

// The enrollment moving from stage `from` to `to`.
std::unique_ptr<v1::EngagementStageChangedEvent> StageChangedEvent(
    const v1::Enrollment& e, const std::string& supporter_id, v1::EngagementStage from,
    v1::EngagementStage to, v1::EngagementStageChangeCause cause,
    const google::protobuf::Timestamp* last_contact_at,
    const google::protobuf::Timestamp& changed_at) {
  auto stage = std::make_unique<v1::EngagementStageChangedEvent>();
  stage->set_enrollment_id(e.enrollment_id());
  stage->set_participant_id(e.participant_id());
  stage->set_supporter_id(supporter_id);
  stage->set_pathway_key(e.pathway_key());
  stage->set_from_stage(from);
  stage->set_to_stage(to);
  stage->set_cause(cause);
  if (last_contact_at != nullptr) *stage->mutable_last_contact_at() = *last_contact_at;
  *stage->mutable_changed_at() = changed_at;
  return stage;
}

}  // namespace

struct CheckInService::Call {
  grpc::ServerContext* context = nullptr;
  const char* method = "";
  Identity caller;
  std::string role;  // The role the caller acts under (audit, events).
  bool as_peer = false;
  // Acting as a supervisor: only for the participants of the supporters they supervise.
  bool as_supervisor = false;
  std::string request_id;

  // Whether the caller may act for the participant whose active supporter is `supporter`: a
  // peer supporter only as that supporter, a supervisor only as that supporter's supervisor,
  // other staff roles always (within the agency).
  bool InRelationship(const std::optional<ActiveSupporter>& supporter) const {
    if (as_peer) return supporter && supporter->subject == caller.subject;
    if (as_supervisor) return supporter && supporter->supervisor_subject == caller.subject;
    return true;
  }

  // The audit row of an allowed access to one object (object and participant still to fill in
  // where a write function adds them itself).
  AuditEntry Allowed(const std::string& object_type = "", const std::string& object_id = "",
                     const std::string& participant_id = "") const {
    return {.actor = caller.subject,
            .actor_role = role,
            .action = Action(method),
            .object_type = object_type,
            .object_id = object_id,
            .participant_id = participant_id,
            .decision = AuditDecision::kAllowed,
            .request_id = request_id};
  }

  // The audit row of an allowed access to one object, in the handler's transaction.
  void Audit(pqxx::work& tx, const std::string& object_type, const std::string& object_id,
             const std::string& participant_id) const {
    AppendAuditRow(tx, caller.agency_id, Allowed(object_type, object_id, participant_id));
  }

  std::string NotInRelationship() const {
    return as_supervisor ? "the participant's peer supporter is not one you supervise: only their "
                           "supporter's supervisor or other staff of the agency may do this"
                         : "the participant is not in your active matches: only their active peer "
                           "supporter or staff of the agency may do this";
  }
};

CheckInService::CheckInService(ServiceContext& context, CheckInOptions options,
                               std::unique_ptr<ConsentGates> consent_gates)
    : CheckInServiceBase(authorizer_, events_, context.stopping),
      context_(context),
      options_(std::move(options)),
      authorizer_(context.verifier, kServiceName, Rules(), &context.db),
      events_(context.db),
      consent_gates_(consent_gates != nullptr ? std::move(consent_gates)
                                              : MakeUnconfiguredConsentGates()),
      check_in_writes_(
          GroupCommitOptions{.max_batch = options_.max_write_batch,
                             .max_concurrent = kConcurrentCheckInWrites,
                             .gather = kGatherAnnouncedWrites},
          [this](const std::vector<const CheckInWrite*>& writes) {
            return WriteCheckInBatch(writes);
          },
          [](const CheckInWrite& w) { return w.agency_id; },
          [](const CheckInWrite& w) {
            return std::vector<std::string>{"enrollment " + w.check_in.enrollment_id(),
                                            "key " + w.idempotency_key};
          }),
      check_in_reads_(
          GroupCommitOptions{.max_batch = kMaxReadBatch, .max_concurrent = kConcurrentCheckInReads},
          [this](const std::vector<const CheckInContextQuery*>& queries) {
            return ReadCheckInBatch(queries);
          },
          [](const CheckInContextQuery& q) { return q.agency_id; },
          [](const CheckInContextQuery&) { return std::vector<std::string>{}; }) {
  auto batch_sizes = [&](const char* name, const char* help) {
    return &prometheus::BuildHistogram()
                .Name(name)
                .Help(help)
                .Register(context.metrics)
                .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64});
  };
  write_batch_sizes_ =
      batch_sizes("peerpath_checkin_write_batch_size",
                  "Check-ins written per database transaction (group commit of RecordCheckIn)");
  read_batch_sizes_ =
      batch_sizes("peerpath_checkin_read_batch_size",
                  "Check-ins read per database statement (RecordCheckIn's reads, read together)");
  if (!options_.matching_address.empty()) {
    matching_consumer_ = ConsumerOf<matching::v1::MatchingService, matching::v1::ListEventsRequest,
                                    matching::v1::ListEventsResponse>(
        context, options_.matching_address,
        ConsumerOptions{.source = "matching", .idle_poll = absl::Milliseconds(200)},
        ApplySupporterMatchEvent);
    matching_consumer_->Start();
  }
  if (!options_.escalation_address.empty()) {
    escalation_consumer_ =
        ConsumerOf<escalation::v1::EscalationService, escalation::v1::ListEventsRequest,
                   escalation::v1::ListEventsResponse>(
            context, options_.escalation_address,
            ConsumerOptions{.source = "escalation", .idle_poll = absl::Milliseconds(200)},
            [](pqxx::work& tx, const common::v1::Event& event) -> absl::Status {
              escalation::v1::RoutineEngagementStoppedEvent stopped;
              if (!event.payload().UnpackTo(&stopped)) return absl::OkStatus();
              const absl::Time at = stopped.has_stopped_at()
                                        ? FromProtoTimestamp(stopped.stopped_at())
                                        : FromProtoTimestamp(event.occurred_at());
              for (const auto& e :
                   StopRoutineEngagement(tx, stopped.participant_id(), stopped.enrollment_id(),
                                         stopped.concern_id(), at)) {
                if (auto s = AppendEvent(tx, event.agency_id(), e.enrollment_id(), e); !s.ok()) {
                  return s;
                }
              }
              return absl::OkStatus();
            });
    escalation_consumer_->Start();
  }
  if (!options_.consent_address.empty()) {
    consent_consumer_ = ConsumerOf<consent::v1::ConsentService, consent::v1::ListEventsRequest,
                                   consent::v1::ListEventsResponse>(
        context, options_.consent_address,
        ConsumerOptions{.source = "consent", .idle_poll = absl::Milliseconds(200)},
        [this](pqxx::work& tx, const common::v1::Event& event) {
          return ApplyConsentEvent(tx, event);
        });
    consent_consumer_->Start();
  }
  if (options_.sweep_interval > absl::ZeroDuration()) {
    sweeper_ = std::thread([this] {
      while (!stop_sweeper_.stopped() && !context_.stopping.stopped()) {
        auto swept = Sweep();
        if (!swept.ok()) {
          log::Warn("check-in sweep failed",
                    {{"code", absl::StatusCodeToString(swept.status().code())}});
        } else if (*swept > 0) {
          log::Info("check-in sweep", {{"events", *swept}});
        }
        stop_sweeper_.WaitFor(options_.sweep_interval);
      }
    });
  }
}

CheckInService::~CheckInService() {
  if (matching_consumer_ != nullptr) matching_consumer_->Stop();
  if (escalation_consumer_ != nullptr) escalation_consumer_->Stop();
  if (consent_consumer_ != nullptr) consent_consumer_->Stop();
  stop_sweeper_.Notify();
  if (sweeper_.joinable()) sweeper_.join();
}

absl::StatusOr<int> CheckInService::Sweep() {
  auto agencies = context_.db.TransactForMaintenance(
      [](pqxx::work& tx) -> absl::StatusOr<std::vector<std::string>> {
        return AgenciesWithActiveEnrollments(tx);
      });
  if (!agencies.ok()) return agencies.status();
  int events = 0;
  for (const auto& agency : *agencies) {
    int written = 0;
    absl::Status swept = context_.db.TransactForAgency(
        agency, [&](pqxx::work& tx) { return SweepAgency(tx, agency, written); });
    if (!swept.ok()) return swept;
    events += written;
  }
  return events;
}

absl::Status CheckInService::SweepAgency(pqxx::work& tx, const std::string& agency, int& events) {
  for (const auto& missed : MarkMissedOccurrences(tx)) {
    if (auto s = AppendEvent(tx, agency, missed.enrollment_id(), missed); !s.ok()) return s;
    ++events;
  }
  const v1::ProgramPolicy policy = LoadPolicy(tx, agency, options_.default_time_zone);
  const absl::Duration at_risk = absl::Seconds(policy.at_risk_after().seconds());
  const absl::Duration lost = absl::Seconds(policy.lost_to_follow_up_after().seconds());
  const absl::Time now = absl::Now();
  for (const auto& e : EnrollmentsSilentSince(tx, now - at_risk)) {
    const absl::Time since =
        FromProtoTimestamp(e.has_last_contact_at() ? e.last_contact_at() : e.enrolled_at());
    v1::EngagementStage from = e.engagement_stage();
    const std::vector<v1::EngagementStage> stages =
        NoContactStages(from, since, now, at_risk, lost);
    if (stages.empty()) continue;
    const auto supporter = ActiveSupporterOf(tx, e.participant_id());
    for (v1::EngagementStage to : stages) {
      const auto changed = StageChangedEvent(
          e, supporter ? supporter->supporter_id : "", from, to,
          v1::ENGAGEMENT_STAGE_CHANGE_CAUSE_NO_CONTACT,
          e.has_last_contact_at() ? &e.last_contact_at() : nullptr, ToProtoTimestamp(now));
      SetEngagementStage(tx, e.enrollment_id(), to);
      if (auto s = AppendEvent(tx, agency, e.enrollment_id(), *changed); !s.ok()) return s;
      ++events;
      from = to;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckInService::Call> CheckInService::Begin(grpc::ServerContext& context,
                                                           const char* method) {
  auto caller = authorizer_.Authorize(context, method);
  if (!caller.ok()) return caller.status();
  Call call;
  call.context = &context;
  call.method = method;
  call.caller = *caller;
  call.request_id = RequestId(context);
  const auto& allowed = Rules().at(method);
  for (Role role : kRolePreference) {
    if (caller->Has(role) && allowed.contains(role)) {
      call.role = RoleName(role);
      call.as_peer = role == kPeerSupporter;
      call.as_supervisor = role == kSupervisor;
      break;
    }
  }
  return call;
}

void CheckInService::EnsureDefaults(pqxx::work& tx, const std::string& agency_id) {
  {
    std::lock_guard<std::mutex> lock(seeded_mu_);
    if (seeded_agencies_.contains(agency_id)) return;
  }
  EnsureDefaultPathways(tx, agency_id);
  // Remembered only once committed would be exact; a rolled-back seed is redone by the next
  // transaction that misses a default pathway (LoadPathway below seeds again on a miss).
  std::lock_guard<std::mutex> lock(seeded_mu_);
  seeded_agencies_.insert(agency_id);
}

absl::Status CheckInService::ApplyConsentEvent(pqxx::work& tx, const common::v1::Event& event) {
  std::string participant;
  if (consent::v1::ConsentGrantedEvent e; event.payload().UnpackTo(&e)) {
    participant = e.participant_id();
  } else if (consent::v1::ConsentRevokedEvent e; event.payload().UnpackTo(&e)) {
    participant = e.participant_id();
  } else if (consent::v1::ConsentExpiredEvent e; event.payload().UnpackTo(&e)) {
    participant = e.participant_id();
  } else {
    return absl::OkStatus();  // Disclosures, emergency accesses: no gate changes.
  }
  if (participant.empty()) return absl::InvalidArgumentError("consent event without participant");
  const std::string& agency = event.agency_id();
  EnrollmentFilter filter;
  filter.participant_id = participant;
  filter.statuses = {"active"};
  filter.limit = 100;
  const absl::Time now = absl::Now();
  // The enrollments with consent gates, and one question to the consent service for all of them.
  std::vector<v1::Enrollment> gated;
  std::set<std::string> names;
  for (v1::Enrollment& e : checkin::ListEnrollments(tx, filter)) {
    bool has_consent_gate = false;
    for (const v1::GateResult& r : e.gate_results()) {
      if (r.gate().gate_case() != v1::Gate::kConsentGate) continue;
      names.insert(r.gate().consent_gate());
      has_consent_gate = true;
    }
    if (has_consent_gate) gated.push_back(std::move(e));
  }
  if (gated.empty()) return absl::OkStatus();
  // UNAVAILABLE: the consumer retries the event later; nothing is changed meanwhile.
  auto answers = consent_gates_->Check(agency, participant,
                                       std::vector<std::string>(names.begin(), names.end()));
  if (!answers.ok()) return answers.status();
  for (const v1::Enrollment& e : gated) {
    bool held = true;
    std::vector<std::string> unmet;
    v1::Enrollment updated;
    for (const v1::GateResult& old : e.gate_results()) {
      v1::GateResult& r = *updated.add_gate_results();
      r = old;
      if (old.gate().gate_case() != v1::Gate::kConsentGate) continue;
      for (const ConsentGateAnswer& answer : *answers) {
        if (answer.gate != old.gate().consent_gate()) continue;
        r.set_held(answer.held);
        r.clear_consent_ids();
        for (const std::string& id : answer.consent_ids) r.add_consent_ids(id);
        *r.mutable_checked_at() = ToProtoTimestamp(now);
        if (!answer.held) {
          held = false;
          unmet.push_back(answer.gate);
        }
      }
    }
    if (!UpdateConsentGates(tx, e.enrollment_id(), updated, held)) continue;
    v1::EnrollmentConsentGatesChangedEvent changed;
    changed.set_enrollment_id(e.enrollment_id());
    changed.set_participant_id(participant);
    changed.set_pathway_key(e.pathway_key());
    changed.set_consent_gates_held(held);
    for (const std::string& gate : unmet) changed.add_unmet_gates(gate);
    changed.set_consent_event_id(event.event_id());
    *changed.mutable_checked_at() = ToProtoTimestamp(now);
    if (auto s = AppendEvent(tx, agency, e.enrollment_id(), changed); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CheckInService::RequireParticipantAccess(pqxx::work& tx, const Call& call,
                                                      const std::string& participant_id) {
  if (call.as_peer) {
    if (IsActiveSupporter(tx, call.caller.subject, participant_id)) return absl::OkStatus();
  } else if (call.as_supervisor) {
    if (IsSupervisingSupporterOf(tx, call.caller.subject, participant_id)) {
      return absl::OkStatus();
    }
  } else {
    return absl::OkStatus();
  }
  authorizer_.AuditRefusal(*call.context, call.caller, call.method, "participant", "",
                           participant_id);
  return absl::PermissionDeniedError(call.NotInRelationship());
}

// ---------------------------------------------------------------------------------------------
// Pathways and policy
// ---------------------------------------------------------------------------------------------

grpc::Status CheckInService::GetPathwayVersion(grpc::ServerContext* context,
                                               const v1::GetPathwayVersionRequest* request,
                                               v1::GetPathwayVersionResponse* response) {
  auto call = Begin(*context, "GetPathwayVersion");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  if (!IsKey(request->pathway_key())) {
    violations.push_back({"pathway_key", "required: a pathway key such as step_down"});
  }
  if (request->version() < 0) violations.push_back({"version", "must be 0 (latest) or more"});
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  return ToGrpc(context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    EnsureDefaults(tx, call->caller.agency_id);
    auto pathway = LoadPathway(tx, request->pathway_key(), request->version());
    if (!pathway) return absl::NotFoundError("no such pathway version in your agency");
    *response->mutable_pathway() = std::move(*pathway);
    return absl::OkStatus();
  }));
}

grpc::Status CheckInService::ListPathwayVersions(grpc::ServerContext* context,
                                                 const v1::ListPathwayVersionsRequest* request,
                                                 v1::ListPathwayVersionsResponse* response) {
  auto call = Begin(*context, "ListPathwayVersions");
  if (!call.ok()) return ToGrpc(call.status());
  if (!request->pathway_key().empty() && !IsKey(request->pathway_key())) {
    return ToGrpc(InvalidArgument("invalid request", {{"pathway_key", "malformed pathway key"}}));
  }
  auto size = ResolvePageSize(request->page_size());
  if (!size.ok()) return ToGrpc(size.status());
  // An agency has few pathway versions: one page of up to the page size (no token yet).
  return ToGrpc(context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    EnsureDefaults(tx, call->caller.agency_id);
    for (auto& p : ListPathways(tx, request->pathway_key(), request->latest_only(), *size)) {
      *response->add_pathways() = std::move(p);
    }
    return absl::OkStatus();
  }));
}

grpc::Status CheckInService::GetProgramPolicy(grpc::ServerContext* context,
                                              const v1::GetProgramPolicyRequest*,
                                              v1::GetProgramPolicyResponse* response) {
  auto call = Begin(*context, "GetProgramPolicy");
  if (!call.ok()) return ToGrpc(call.status());
  return ToGrpc(context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    *response->mutable_policy() =
        LoadPolicy(tx, call->caller.agency_id, options_.default_time_zone);
    return absl::OkStatus();
  }));
}

// ---------------------------------------------------------------------------------------------
// Enrollments
// ---------------------------------------------------------------------------------------------

grpc::Status CheckInService::CreateEnrollment(grpc::ServerContext* context,
                                              const v1::CreateEnrollmentRequest* request,
                                              v1::CreateEnrollmentResponse* response) {
  auto call = Begin(*context, "CreateEnrollment");
  if (!call.ok()) return ToGrpc(call.status());
  return ToGrpc(CreateEnrollmentImpl(*call, *request, *response));
}

absl::Status CheckInService::CreateEnrollmentImpl(const Call& call,
                                                  const v1::CreateEnrollmentRequest& request,
                                                  v1::CreateEnrollmentResponse& response) {
  const std::string& agency = call.caller.agency_id;
  std::vector<FieldViolation> violations;
  if (request.participant_id().empty() || request.participant_id().size() > 128) {
    violations.push_back({"participant_id", "required: 1 to 128 characters"});
  }
  if (!IsKey(request.pathway_key())) {
    violations.push_back({"pathway_key", "required: a pathway key such as early_engagement"});
  }
  if (request.pathway_version() < 0) {
    violations.push_back({"pathway_version", "must be 0 (latest) or a version"});
  }
  if (request.schedule().recurrence_case() == v1::CheckInSchedule::RECURRENCE_NOT_SET) {
    violations.push_back({"schedule", "required: weekly on weekdays or every N days"});
  }
  if (!request.program_id().empty() && !IsProgramId(request.program_id())) {
    violations.push_back({"program_id", "1 to 64 characters of [A-Za-z0-9_.:-]"});
  }
  AddViolations(violations, ValidateIdempotencyKey(request.idempotency_key()));
  if (!violations.empty()) return InvalidArgument("invalid enrollment", violations);

  // 1. Read what the decision needs (no transaction is held while the consent service answers).
  struct Plan {
    v1::PathwayVersion pathway;
    v1::ProgramPolicy policy;
    std::set<std::string> peer_owners;
  };
  auto plan = context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::StatusOr<Plan> {
    EnsureDefaults(tx, agency);
    Plan p;
    auto pathway = LoadPathway(tx, request.pathway_key(), request.pathway_version());
    if (!pathway) return absl::NotFoundError("no such pathway or version in your agency");
    p.pathway = std::move(*pathway);
    p.policy = LoadPolicy(tx, agency, options_.default_time_zone);
    const auto& o = request.owners();
    p.peer_owners = KnownPeerSupporters(tx, {o.appointment_owner(), o.receiving_clinician(),
                                             o.receiving_team(), o.clinical_follow_up_owner()});
    return p;
  });
  if (!plan.ok()) return plan.status();
  auto zone = LoadZone(plan->policy.time_zone());
  if (!zone.ok()) return absl::InternalError("the agency's time zone is not known");
  const absl::Time now = absl::Now();
  const absl::CivilDay today = absl::ToCivilDay(now, *zone);
  const absl::CivilDay starts = request.has_starts_on() ? CivilOf(request.starts_on()) : today;
  violations = ValidateEnrollmentShape(plan->pathway, request);
  if (violations.empty()) {
    if (starts < today) violations.push_back({"starts_on", "must not be before today"});
    if (request.has_review_on() && CivilOf(request.review_on()) < starts) {
      violations.push_back({"review_on", "must be on or after starts_on"});
    }
    const auto schedule = ScheduleOf(
        request.schedule(), starts,
        request.has_ends_on() ? std::optional(CivilOf(request.ends_on())) : std::nullopt);
    for (auto& v : ValidateSchedule(schedule, "schedule")) violations.push_back(std::move(v));
  }
  if (!violations.empty()) {
    return InvalidArgument(
        absl::StrCat("enrollment does not fit pathway '", plan->pathway.pathway_key(), "' v",
                     plan->pathway.version()),
        violations);
  }

  // 2. Every gate, every time: owner gates here, consent gates by the consent service.
  std::vector<std::string> consent_names;
  for (const auto& gate : plan->pathway.gates()) {
    if (gate.gate_case() == v1::Gate::kConsentGate) consent_names.push_back(gate.consent_gate());
  }
  auto consent = consent_gates_->Check(agency, request.participant_id(), consent_names);
  std::vector<std::pair<std::string, std::string>> unmet;
  std::vector<bool> unmet_is_consent;
  std::vector<v1::GateResult> results;
  std::vector<std::string> consent_ids;
  const auto checked_at = ToProtoTimestamp(now);
  const auto is_peer = [&](const std::string& id) { return plan->peer_owners.contains(id); };
  for (const auto& gate : plan->pathway.gates()) {
    v1::GateResult result;
    *result.mutable_gate() = gate;
    *result.mutable_checked_at() = checked_at;
    if (gate.gate_case() == v1::Gate::kConsentGate) {
      if (!consent.ok()) continue;  // Refused below, after the idempotency check.
      for (const auto& answer : *consent) {
        if (answer.gate != gate.consent_gate()) continue;
        result.set_held(answer.held);
        for (const auto& id : answer.consent_ids) {
          result.add_consent_ids(id);
          if (answer.held) consent_ids.push_back(id);
        }
        if (!answer.held) {
          unmet.push_back({answer.gate, answer.reason});
          unmet_is_consent.push_back(true);
        }
      }
    } else {
      auto why = UnmetOwnerGate(gate.owner_gate(), request.owners(), is_peer);
      result.set_held(!why.has_value());
      if (why) {
        unmet.push_back({GateName(gate), *why});
        unmet_is_consent.push_back(false);
      }
    }
    results.push_back(std::move(result));
  }

  // 3. Write, once per idempotency key.
  const IdempotentCall idem{agency, request.idempotency_key(), "CreateEnrollment", &request,
                            call.caller.subject};
  return context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, idem, response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    if (auto s = RequireParticipantAccess(tx, call, request.participant_id()); !s.ok()) return s;
    if (!consent.ok()) return consent.status();
    if (!unmet.empty()) return UnmetGates(unmet, unmet_is_consent);
    v1::Enrollment e;
    e.set_enrollment_id(RandomUuid());
    e.set_participant_id(request.participant_id());
    e.set_pathway_key(plan->pathway.pathway_key());
    e.set_pathway_version(plan->pathway.version());
    *e.mutable_owners() = request.owners();
    *e.mutable_schedule() = request.schedule();
    if (e.schedule().window_days() == 0) e.mutable_schedule()->set_window_days(1);
    e.set_time_zone(plan->policy.time_zone());
    *e.mutable_starts_on() = DateOf(starts);
    if (request.has_ends_on()) *e.mutable_ends_on() = request.ends_on();
    if (request.has_review_on()) *e.mutable_review_on() = request.review_on();
    e.set_enrolled_by(call.caller.subject);
    e.set_program_id(request.program_id());
    for (auto& r : results) *e.add_gate_results() = r;
    auto stored = InsertEnrollment(tx, agency, e);
    if (!stored) {
      return absl::AlreadyExistsError(
          "the participant already has an active enrollment in this pathway");
    }
    v1::EnrollmentStartedEvent started;
    started.set_enrollment_id(stored->enrollment_id());
    started.set_participant_id(stored->participant_id());
    started.set_pathway_key(stored->pathway_key());
    started.set_pathway_version(stored->pathway_version());
    started.set_acuity_units(std::max(1, plan->pathway.acuity_units()));
    *started.mutable_starts_on() = stored->starts_on();
    if (stored->has_ends_on()) *started.mutable_ends_on() = stored->ends_on();
    if (stored->has_review_on()) *started.mutable_review_on() = stored->review_on();
    started.set_appointment_owner(stored->owners().appointment_owner());
    started.set_receiving_clinician(stored->owners().receiving_clinician());
    started.set_receiving_team(stored->owners().receiving_team());
    started.set_clinical_follow_up_owner(stored->owners().clinical_follow_up_owner());
    for (const auto& id : consent_ids) started.add_consent_ids(id);
    started.set_enrolled_by_role(call.role);
    *started.mutable_enrolled_at() = stored->enrolled_at();
    started.set_program_id(stored->program_id());
    started.set_time_zone(stored->time_zone());
    if (auto s = AppendEvent(tx, agency, stored->enrollment_id(), started); !s.ok()) return s;
    call.Audit(tx, "enrollment", stored->enrollment_id(), stored->participant_id());
    *response.mutable_enrollment() = std::move(*stored);
    return StoreIdempotentResponse(tx, idem, response);
  });
}

grpc::Status CheckInService::GetEnrollment(grpc::ServerContext* context,
                                           const v1::GetEnrollmentRequest* request,
                                           v1::GetEnrollmentResponse* response) {
  auto call = Begin(*context, "GetEnrollment");
  if (!call.ok()) return ToGrpc(call.status());
  if (!IsUuid(request->enrollment_id())) {
    return ToGrpc(InvalidArgument("invalid request", {{"enrollment_id", "required: a UUID"}}));
  }
  return ToGrpc(context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    auto e = LoadEnrollment(tx, request->enrollment_id());
    if (!e) return absl::NotFoundError("no such enrollment in your agency");
    if (auto s = RequireParticipantAccess(tx, *call, e->participant_id()); !s.ok()) return s;
    call->Audit(tx, "enrollment", e->enrollment_id(), e->participant_id());
    *response->mutable_enrollment() = std::move(*e);
    return absl::OkStatus();
  }));
}

grpc::Status CheckInService::ListEnrollments(grpc::ServerContext* context,
                                             const v1::ListEnrollmentsRequest* request,
                                             v1::ListEnrollmentsResponse* response) {
  auto call = Begin(*context, "ListEnrollments");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  auto size = ResolvePageSize(request->page_size());
  if (!size.ok()) AddViolations(violations, size.status());
  auto cursor = DecodePageToken("ListEnrollments", request->page_token());
  if (!cursor.ok()) AddViolations(violations, cursor.status());
  if (!request->supporter_id().empty() && !IsUuid(request->supporter_id())) {
    violations.push_back({"supporter_id", "must be a UUID"});
  }
  if (!request->pathway_key().empty() && !IsKey(request->pathway_key())) {
    violations.push_back({"pathway_key", "malformed pathway key"});
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  EnrollmentFilter filter;
  filter.participant_id = request->participant_id();
  filter.pathway_key = request->pathway_key();
  filter.supporter_id = request->supporter_id();
  for (int s : request->statuses()) {
    filter.statuses.push_back(s == v1::ENROLLMENT_STATUS_ENDED ? "ended" : "active");
  }
  if (call->as_peer) filter.supporter_subject = call->caller.subject;
  if (call->as_supervisor) filter.supervisor_subject = call->caller.subject;
  filter.limit = *size + 1;
  if (!cursor->empty()) {
    std::pair<std::string, std::string> parts = absl::StrSplit(*cursor, '/');
    if (!absl::SimpleAtoi(parts.first, &filter.after_enrolled_micros) || !IsUuid(parts.second)) {
      return ToGrpc(InvalidArgument("invalid request", {{"page_token", "stale or foreign"}}));
    }
    filter.after_id = parts.second;
  }
  return ToGrpc(context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    auto rows = checkin::ListEnrollments(tx, filter);
    const bool more = static_cast<int>(rows.size()) > *size;
    if (more) rows.resize(*size);
    for (auto& e : rows) {
      call->Audit(tx, "enrollment", e.enrollment_id(), e.participant_id());
      *response->add_enrollments() = std::move(e);
    }
    if (more) {
      const auto& last = response->enrollments(response->enrollments_size() - 1);
      response->set_next_page_token(
          EncodePageToken("ListEnrollments",
                          absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(last.enrolled_at())),
                                       "/", last.enrollment_id())));
    }
    return absl::OkStatus();
  }));
}

grpc::Status CheckInService::EndEnrollment(grpc::ServerContext* context,
                                           const v1::EndEnrollmentRequest* request,
                                           v1::EndEnrollmentResponse* response) {
  auto call = Begin(*context, "EndEnrollment");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->enrollment_id())) {
    violations.push_back({"enrollment_id", "required: a UUID"});
  }
  if (request->reason() == v1::ENROLLMENT_END_REASON_UNSPECIFIED ||
      !v1::EnrollmentEndReason_IsValid(request->reason())) {
    violations.push_back({"reason", "required: why the enrollment ends"});
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  const std::string& agency = call->caller.agency_id;
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto e = LoadEnrollment(tx, request->enrollment_id(), /*lock=*/true);
    if (!e) return absl::NotFoundError("no such enrollment in your agency");
    if (auto s = RequireParticipantAccess(tx, *call, e->participant_id()); !s.ok()) return s;
    if (e->status() == v1::ENROLLMENT_STATUS_ENDED) {
      if (e->ended_by() == call->caller.subject && e->end_reason() == request->reason()) {
        *response->mutable_enrollment() = std::move(*e);  // A retry.
        return absl::OkStatus();
      }
      return absl::FailedPreconditionError("the enrollment has already ended");
    }
    v1::Enrollment ended = checkin::EndEnrollment(
        tx, e->enrollment_id(), EndReasonText(request->reason()), call->caller.subject);
    const auto [check_ins, missed] = EnrollmentCounts(tx, ended.enrollment_id());
    v1::EnrollmentEndedEvent event;
    event.set_enrollment_id(ended.enrollment_id());
    event.set_participant_id(ended.participant_id());
    event.set_pathway_key(ended.pathway_key());
    event.set_pathway_version(ended.pathway_version());
    event.set_reason(request->reason());
    event.set_engagement_stage(ended.engagement_stage());
    event.set_check_in_count(check_ins);
    event.set_missed_check_in_count(missed);
    event.set_ended_by_role(call->role);
    *event.mutable_enrolled_at() = ended.enrolled_at();
    *event.mutable_ended_at() = ended.ended_at();
    if (auto s = AppendEvent(tx, agency, ended.enrollment_id(), event); !s.ok()) return s;
    call->Audit(tx, "enrollment", ended.enrollment_id(), ended.participant_id());
    *response->mutable_enrollment() = std::move(ended);
    return absl::OkStatus();
  }));
}

// ---------------------------------------------------------------------------------------------
// Check-ins
// ---------------------------------------------------------------------------------------------

grpc::Status CheckInService::RecordCheckIn(grpc::ServerContext* context,
                                           const v1::RecordCheckInRequest* request,
                                           v1::RecordCheckInResponse* response) {
  auto call = Begin(*context, "RecordCheckIn");
  if (!call.ok()) return ToGrpc(call.status());
  return ToGrpc(RecordCheckInImpl(*call, *request, *response));
}

absl::Status CheckInService::RecordCheckInImpl(const Call& call,
                                               const v1::RecordCheckInRequest& request,
                                               v1::RecordCheckInResponse& response) {
  const std::string& agency = call.caller.agency_id;
  std::vector<FieldViolation> violations;
  if (!IsUuid(request.enrollment_id())) {
    violations.push_back({"enrollment_id", "required: the enrollment's UUID"});
  }
  if (!request.scheduled_check_in_id().empty() && !IsUuid(request.scheduled_check_in_id())) {
    violations.push_back({"scheduled_check_in_id", "must be a UUID"});
  }
  const absl::Time occurred_at = FromProtoTimestamp(request.occurred_at());
  if (!request.has_occurred_at()) {
    violations.push_back({"occurred_at", "required: when the check-in took place"});
  } else if (occurred_at > absl::Now() + absl::Minutes(10)) {
    violations.push_back({"occurred_at", "more than 10 minutes in the future"});
  }
  if (request.contact_mode() == v1::CONTACT_MODE_UNSPECIFIED ||
      !v1::ContactMode_IsValid(request.contact_mode())) {
    violations.push_back({"contact_mode", "required: in person, phone, video or message"});
  }
  AddViolations(violations, ValidateIdempotencyKey(request.idempotency_key()));
  if (!violations.empty()) return InvalidArgument("invalid check-in", violations);

  const IdempotentCall idem{agency, request.idempotency_key(), "RecordCheckIn", &request,
                            call.caller.subject};
  // Two round trips, no transaction held open between them (migration 0006): read everything
  // the check-in is decided on, together with the reads of concurrent calls (check_in_contexts,
  // migration 0013), decide here, write everything in one statement, together with the writes of
  // concurrent calls (group commit, record_check_ins in migration 0011). The write is refused
  // when the enrollment changed or the key was claimed since the read; then read and decide
  // again. After two such races the enrollment is locked for the read and the write (one
  // transaction), which always makes progress; a key claimed meanwhile is then replayed.
  constexpr int kOptimisticAttempts = 2;
  constexpr int kAttempts = kOptimisticAttempts + 2;
  CheckInWrite write;
  // true: `write` holds the decided check-in; false: `response` is the replayed earlier answer.
  auto decide = [&](const CheckInRead& read) -> absl::StatusOr<bool> {
    response.Clear();
    if (read.earlier_call) {
      if (absl::Status replayed = ReplayStoredCall(idem, *read.earlier_call, response);
          !replayed.ok()) {
        return replayed;
      }
      return false;
    }
    if (!read.context) return absl::NotFoundError("no such enrollment in your agency");
    write = CheckInWrite{};
    if (absl::Status decided =
            DecideCheckIn(call, request, occurred_at, *read.context, write, response);
        !decided.ok()) {
      return decided;
    }
    write.method = idem.method;
    write.request_hash_hex = RequestFingerprintHex(idem);
    return true;
  };
  const CheckInContextQuery query{agency, request.enrollment_id(), request.scheduled_check_in_id(),
                                  occurred_at, request.idempotency_key()};
  for (int attempt = 1;; ++attempt) {
    absl::Status status;
    if (attempt <= kOptimisticAttempts) {
      absl::StatusOr<CheckInRead> read = check_in_reads_.Submit(query);
      if (!read.ok()) return read.status();
      // The read announced this call's write (ReadCheckInBatch), so that the calls read together
      // are written together: the write's Submit ends the announcement, or this when there is
      // nothing to write.
      bool announced = true;
      absl::Cleanup withdraw = [&] {
        if (announced) check_in_writes_.Withdraw(agency);
      };
      auto decided = decide(*read);
      if (!decided.ok() || !*decided) return decided.status();
      announced = false;
      status = check_in_writes_.Submit(write, /*announced=*/true);
    } else {
      status = context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
        auto decided =
            decide(LoadCheckInContext(tx, agency, query.enrollment_id, query.scheduled_check_in_id,
                                      occurred_at, query.idempotency_key, /*lock=*/true));
        if (!decided.ok() || !*decided) return decided.status();
        WriteCheckIn(tx, write);
        return absl::OkStatus();
      });
    }
    const bool raced = status.code() == absl::StatusCode::kAborted ||
                       status.code() == absl::StatusCode::kAlreadyExists;
    if (!raced || attempt == kAttempts) return status;
  }
}

std::vector<absl::StatusOr<CheckInRead>> CheckInService::ReadCheckInBatch(
    const std::vector<const CheckInContextQuery*>& queries) {
  if (queries.size() == 1) {
    read_batch_sizes_->Observe(1);
    // Alone: check_in_context_2, as before reads were read together.
    const CheckInContextQuery& q = *queries.front();
    CheckInRead read;
    const absl::Status status =
        context_.db.RunWithoutTransaction([&](pqxx::nontransaction& tx) -> absl::Status {
          read = LoadCheckInContext(tx, q.agency_id, q.enrollment_id, q.scheduled_check_in_id,
                                    q.occurred_at, q.idempotency_key, /*lock=*/false);
          return absl::OkStatus();
        });
    if (!status.ok()) return {status};
    check_in_writes_.Announce(q.agency_id);
    return {std::move(read)};
  }
  std::vector<CheckInRead> reads;
  const absl::Status status =
      context_.db.RunWithoutTransaction([&](pqxx::nontransaction& tx) -> absl::Status {
        reads = LoadCheckInContexts(tx, queries.front()->agency_id, queries);
        return absl::OkStatus();
      });
  std::vector<absl::StatusOr<CheckInRead>> results;
  if (!status.ok()) {
    for (const CheckInContextQuery* q : queries) results.push_back(ReadCheckInBatch({q}).front());
    return results;
  }
  read_batch_sizes_->Observe(static_cast<double>(queries.size()));
  check_in_writes_.Announce(queries.front()->agency_id, static_cast<int>(queries.size()));
  for (CheckInRead& read : reads) results.emplace_back(std::move(read));
  return results;
}

std::vector<absl::Status> CheckInService::WriteCheckInBatch(
    const std::vector<const CheckInWrite*>& writes) {
  if (writes.size() == 1) {
    write_batch_sizes_->Observe(1);
    // Alone: record_check_in, which costs less than the batch's statements for one check-in
    // (its refusals arrive as serialization_failure, ABORTED, and unique_violation,
    // ALREADY_EXISTS).
    return {context_.db.RunWithoutTransaction([&](pqxx::nontransaction& tx) -> absl::Status {
      WriteCheckIn(tx, *writes.front());
      return absl::OkStatus();
    })};
  }
  std::vector<CheckInWriteOutcome> outcomes;
  const absl::Status written =
      context_.db.RunWithoutTransaction([&](pqxx::nontransaction& tx) -> absl::Status {
        outcomes = WriteCheckIns(tx, writes.front()->agency_id, writes);
        return absl::OkStatus();
      });
  std::vector<absl::Status> statuses;
  if (!written.ok()) {
    for (const CheckInWrite* w : writes) statuses.push_back(WriteCheckInBatch({w}).front());
    return statuses;
  }
  write_batch_sizes_->Observe(static_cast<double>(writes.size()));
  for (CheckInWriteOutcome outcome : outcomes) {
    switch (outcome) {
      case CheckInWriteOutcome::kRecorded:
        statuses.push_back(absl::OkStatus());
        break;
      case CheckInWriteOutcome::kKeyClaimed:
        statuses.push_back(absl::AlreadyExistsError("the idempotency key was claimed meanwhile"));
        break;
      case CheckInWriteOutcome::kStale:
        statuses.push_back(absl::AbortedError("the enrollment changed since it was read"));
        break;
    }
  }
  return statuses;
}

absl::Status CheckInService::DecideCheckIn(const Call& call,
                                           const v1::RecordCheckInRequest& request,
                                           absl::Time occurred_at, const CheckInContext& read,
                                           CheckInWrite& write,
                                           v1::RecordCheckInResponse& response) {
  const std::string& agency = call.caller.agency_id;
  const CheckInContext* ctx = &read;
  const v1::Enrollment& e = ctx->enrollment;
  const v1::PathwayVersion& pathway = ctx->pathway;
  if (!call.InRelationship(ctx->supporter)) {
    authorizer_.AuditRefusal(*call.context, call.caller, call.method, "enrollment",
                             e.enrollment_id(), e.participant_id());
    return absl::PermissionDeniedError(call.NotInRelationship());
  }
  if (e.status() == v1::ENROLLMENT_STATUS_ENDED && occurred_at > FromProtoTimestamp(e.ended_at())) {
    return absl::FailedPreconditionError("the enrollment ended before occurred_at");
  }
  auto zone = LoadZone(e.time_zone());
  if (!zone.ok()) return absl::InternalError("the enrollment's time zone is not known");
  const absl::Time start = absl::FromCivil(absl::CivilSecond(CivilOf(e.starts_on())), *zone);
  std::vector<FieldViolation> problems;
  if (occurred_at < start) {
    problems.push_back({"occurred_at", "before the enrollment's first day"});
  }
  for (auto& v : ValidateAnswers(pathway, request.answers())) problems.push_back(std::move(v));
  if (!problems.empty()) {
    return InvalidArgument(absl::StrCat("check-in does not match pathway '", pathway.pathway_key(),
                                        "' v", pathway.version()),
                           problems);
  }

  // Which occurrence it completes, and how late it is documented.
  std::optional<Occurrence> occurrence;
  std::string occurrence_id;
  if (!request.scheduled_check_in_id().empty()) {
    auto it = std::find_if(ctx->occurrences.begin(), ctx->occurrences.end(),
                           [&](auto& o) { return o.id == request.scheduled_check_in_id(); });
    if (it == ctx->occurrences.end()) {
      return absl::NotFoundError("no such scheduled check-in for this enrollment");
    }
    if (it->status == "completed" || it->status == "cancelled") {
      return absl::FailedPreconditionError(
          absl::StrCat("the scheduled check-in is already ", it->status));
    }
    occurrence = OccurrenceOn(ScheduleOf(e), it->due_on, *zone);
    occurrence->window_end = it->window_end;
    occurrence_id = it->id;
  } else if (e.routine()) {
    auto candidate = LatestOccurrenceStartedBy(ScheduleOf(e), occurred_at, *zone);
    if (candidate && occurred_at < candidate->window_end) {
      auto it = std::find_if(ctx->occurrences.begin(), ctx->occurrences.end(),
                             [&](auto& o) { return o.due_on == candidate->due_on; });
      if (it == ctx->occurrences.end()) {
        occurrence = candidate;
        occurrence_id = RandomUuid();
      } else if (it->status == "due" || it->status == "missed") {
        occurrence = candidate;
        occurrence->window_end = it->window_end;
        occurrence_id = it->id;
      }
    }
  }

  v1::CheckIn& c = *response.mutable_check_in();
  c.set_check_in_id(RandomUuid());
  c.set_agency_id(agency);
  c.set_enrollment_id(e.enrollment_id());
  c.set_participant_id(e.participant_id());
  c.set_scheduled_check_in_id(occurrence_id);
  if (call.as_peer) c.set_supporter_id(ctx->supporter->supporter_id);
  c.set_recorded_by(call.caller.subject);
  c.set_recorded_by_role(call.role);
  c.set_pathway_key(pathway.pathway_key());
  c.set_pathway_version(pathway.version());
  // Answers in the pathway's field order.
  for (const auto& field : pathway.fields()) {
    for (const auto& a : request.answers()) {
      if (a.field_key() == field.key()) *c.add_answers() = a;
    }
  }
  const std::optional<int> wellbeing = WellbeingScore(pathway, request.answers());
  c.set_wellbeing_score(wellbeing.value_or(0));
  c.set_contact_mode(request.contact_mode());
  *c.mutable_occurred_at() = request.occurred_at();
  *c.mutable_recorded_at() = ToProtoTimestamp(ctx->now);
  if (occurrence) {
    *c.mutable_window_end() = ToProtoTimestamp(occurrence->window_end);
    const absl::Duration late = LateBy(occurrence->window_end, ctx->now);
    if (late > absl::ZeroDuration()) {
      c.set_late(true);
      c.mutable_late_by()->set_seconds(absl::ToInt64Seconds(late));
      c.mutable_late_by()->set_nanos(
          static_cast<int32_t>(absl::ToInt64Nanoseconds(late % absl::Seconds(1))));
    }
  }

  // Rules, trend and contact state, all decided before the one write.
  const std::vector<const v1::RoutingRule*> fired = FiringRules(pathway, request.answers());
  bool stops = false;
  std::vector<std::string> fired_ids;
  for (const auto* rule : fired) {
    fired_ids.push_back(rule->rule_id());
    stops = stops || rule->stops_routine_engagement();
  }
  const bool stops_now = stops && e.routine();
  std::vector<int> decline;
  const bool declined =
      wellbeing && RaisesWellbeingDecline(ctx->latest_wellbeing, {occurred_at, *wellbeing},
                                          ctx->wellbeing_drop_points, &decline);
  const bool reconnection = e.engagement_stage() != v1::ENGAGEMENT_STAGE_ENGAGED;
  const std::string supporter_id = ctx->supporter ? ctx->supporter->supporter_id : "";

  auto recorded = std::make_unique<v1::CheckInRecordedEvent>();
  recorded->set_check_in_id(c.check_in_id());
  recorded->set_enrollment_id(e.enrollment_id());
  recorded->set_participant_id(e.participant_id());
  recorded->set_supporter_id(c.supporter_id());
  recorded->set_recorded_by_role(call.role);
  recorded->set_pathway_key(pathway.pathway_key());
  recorded->set_pathway_version(pathway.version());
  recorded->set_scheduled_check_in_id(occurrence_id);
  recorded->set_wellbeing_score(c.wellbeing_score());
  recorded->set_contact_mode(c.contact_mode());
  recorded->set_late(c.late());
  if (c.late()) *recorded->mutable_late_by() = c.late_by();
  for (const auto& id : fired_ids) recorded->add_fired_rule_ids(id);
  recorded->set_reconnection(reconnection);
  *recorded->mutable_occurred_at() = c.occurred_at();
  *recorded->mutable_recorded_at() = c.recorded_at();
  write.events.Add(std::move(recorded));
  if (reconnection) {
    auto r = ReconnectionEvent(e, c.supporter_id(), c.occurred_at());
    r->set_check_in_id(c.check_in_id());
    write.events.Add(std::move(r));
    write.events.Add(StageChangedEvent(
        e, supporter_id, e.engagement_stage(), v1::ENGAGEMENT_STAGE_ENGAGED,
        v1::ENGAGEMENT_STAGE_CHANGE_CAUSE_CONTACT, &c.occurred_at(), c.recorded_at()));
  }
  auto concern = [&](v1::ConcernSource source, const std::string& rule_id,
                     common::v1::ConcernCategory category, common::v1::ConcernSeverity severity,
                     bool stops_routine) {
    auto raised = std::make_unique<v1::ConcernRaisedEvent>();
    raised->set_enrollment_id(e.enrollment_id());
    raised->set_participant_id(e.participant_id());
    raised->set_supporter_id(supporter_id);
    raised->set_pathway_key(pathway.pathway_key());
    raised->set_pathway_version(pathway.version());
    raised->set_category(category);
    raised->set_severity(severity);
    raised->set_source(source);
    raised->set_rule_id(rule_id);
    raised->set_check_in_id(c.check_in_id());
    raised->set_stops_routine_engagement(stops_routine);
    raised->set_receiving_clinician(e.owners().receiving_clinician());
    raised->set_receiving_team(e.owners().receiving_team());
    if (source == v1::CONCERN_SOURCE_WELLBEING_DECLINE) {
      for (int s : decline) raised->add_wellbeing_scores(s);
    }
    *raised->mutable_raised_at() = c.recorded_at();
    const std::string event_id = write.events.Add(std::move(raised));
    auto* out = response.add_raised_concerns();
    out->set_source(source);
    out->set_rule_id(rule_id);
    out->set_category(category);
    out->set_severity(severity);
    out->set_stops_routine_engagement(stops_routine);
    out->set_event_id(event_id);
  };
  for (const auto* rule : fired) {
    concern(v1::CONCERN_SOURCE_ROUTING_RULE, rule->rule_id(), rule->category(), rule->severity(),
            rule->stops_routine_engagement() && stops_now);
  }
  if (declined) {
    concern(v1::CONCERN_SOURCE_WELLBEING_DECLINE, "",
            common::v1::CONCERN_CATEGORY_WELLBEING_DECLINE,
            pathway.wellbeing_decline_severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED
                ? common::v1::CONCERN_SEVERITY_ROUTINE
                : pathway.wellbeing_decline_severity(),
            false);
  }
  if (stops_now) {
    auto stopped = std::make_unique<v1::EnrollmentRoutineStoppedEvent>();
    stopped->set_enrollment_id(e.enrollment_id());
    stopped->set_participant_id(e.participant_id());
    stopped->set_pathway_key(pathway.pathway_key());
    stopped->set_cause(v1::ROUTINE_STOP_CAUSE_ROUTING_RULE);
    for (const auto* rule : fired) {
      if (rule->stops_routine_engagement()) {
        stopped->set_rule_id(rule->rule_id());
        break;
      }
    }
    stopped->set_check_in_id(c.check_in_id());
    *stopped->mutable_stopped_at() = c.recorded_at();
    write.events.Add(std::move(stopped));
  }
  response.set_routine_engagement_stopped(stops_now);
  response.set_reconnection(reconnection);

  write.agency_id = agency;
  write.enrollment_version = ctx->enrollment_version;
  write.check_in = c;
  if (occurrence) {
    write.occurrence_due_on = absl::FormatCivilTime(occurrence->due_on);
    write.occurrence_window_start = occurrence->window_start;
  }
  write.fired_rule_ids = fired_ids;
  write.stops_routine = stops_now;
  write.reconnection = reconnection;
  write.audit = call.Allowed();
  write.idempotency_key = request.idempotency_key();
  write.response_bytes = DeterministicBytes(response);
  return absl::OkStatus();
}

grpc::Status CheckInService::GetCheckIn(grpc::ServerContext* context,
                                        const v1::GetCheckInRequest* request,
                                        v1::GetCheckInResponse* response) {
  auto call = Begin(*context, "GetCheckIn");
  if (!call.ok()) return ToGrpc(call.status());
  if (!IsUuid(request->check_in_id())) {
    return ToGrpc(InvalidArgument("invalid request", {{"check_in_id", "required: a UUID"}}));
  }
  auto read = context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    auto c = LoadCheckIn(tx, request->check_in_id());
    if (!c) return absl::NotFoundError("no such check-in in your agency");
    if (auto s = RequireParticipantAccess(tx, *call, c->participant_id()); !s.ok()) return s;
    call->Audit(tx, "check_in", c->check_in_id(), c->participant_id());
    *response->mutable_check_in() = std::move(*c);
    return absl::OkStatus();
  });
  if (!read.ok()) return ToGrpc(read);
  if (absl::Status shown = WithholdAnswersWithoutConsent(*call, {response->mutable_check_in()});
      !shown.ok()) {
    response->Clear();
    return ToGrpc(shown);
  }
  return grpc::Status::OK;
}

absl::StatusOr<AccessAnswer> CheckInService::CheckInSummariesAccess(
    const Call& call, const std::string& participant_id) {
  const consent::v1::Purpose purpose = call.role == "clinician"
                                           ? consent::v1::PURPOSE_TREATMENT
                                           : consent::v1::PURPOSE_CARE_COORDINATION;
  return consent_gates_->CheckAccess(call.caller.agency_id, participant_id, call.caller.subject,
                                     {call.role}, consent::v1::DATA_CATEGORY_CHECK_IN_SUMMARIES,
                                     purpose);
}

absl::Status CheckInService::WithholdAnswersWithoutConsent(const Call& call,
                                                           std::vector<v1::CheckIn*> check_ins) {
  // Answers go to the peer relationship (supporter, supervisor); other staff see them only when
  // the participant's consent permits check-in summaries to them (asked once per participant).
  if (call.as_peer || call.as_supervisor) return absl::OkStatus();
  std::map<std::string, bool> permitted;
  for (v1::CheckIn* c : check_ins) {
    auto known = permitted.find(c->participant_id());
    if (known == permitted.end()) {
      auto answer = CheckInSummariesAccess(call, c->participant_id());
      if (!answer.ok()) return answer.status();
      known = permitted.emplace(c->participant_id(), answer->permitted).first;
    }
    if (!known->second) {
      c->clear_answers();
      c->set_wellbeing_score(0);
      c->set_answers_withheld(true);
    }
  }
  return absl::OkStatus();
}

grpc::Status CheckInService::ListCheckIns(grpc::ServerContext* context,
                                          const v1::ListCheckInsRequest* request,
                                          v1::ListCheckInsResponse* response) {
  auto call = Begin(*context, "ListCheckIns");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  auto size = ResolvePageSize(request->page_size());
  if (!size.ok()) AddViolations(violations, size.status());
  auto cursor = DecodePageToken("ListCheckIns", request->page_token());
  if (!cursor.ok()) AddViolations(violations, cursor.status());
  if (!request->enrollment_id().empty() && !IsUuid(request->enrollment_id())) {
    violations.push_back({"enrollment_id", "must be a UUID"});
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  CheckInFilter filter;
  filter.enrollment_id = request->enrollment_id();
  filter.participant_id = request->participant_id();
  filter.late_only = request->late_only();
  if (call->as_peer) filter.supporter_subject = call->caller.subject;
  if (call->as_supervisor) filter.supervisor_subject = call->caller.subject;
  filter.limit = *size + 1;
  if (!cursor->empty()) {
    std::pair<std::string, std::string> parts = absl::StrSplit(*cursor, '/');
    if (!absl::SimpleAtoi(parts.first, &filter.after_occurred_micros) || !IsUuid(parts.second)) {
      return ToGrpc(InvalidArgument("invalid request", {{"page_token", "stale or foreign"}}));
    }
    filter.after_id = parts.second;
  }
  auto read = context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    auto rows = checkin::ListCheckIns(tx, filter);
    const bool more = static_cast<int>(rows.size()) > *size;
    if (more) rows.resize(*size);
    for (auto& c : rows) {
      call->Audit(tx, "check_in", c.check_in_id(), c.participant_id());
      *response->add_check_ins() = std::move(c);
    }
    if (more) {
      const auto& last = response->check_ins(response->check_ins_size() - 1);
      response->set_next_page_token(EncodePageToken(
          "ListCheckIns", absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(last.occurred_at())),
                                       "/", last.check_in_id())));
    }
    return absl::OkStatus();
  });
  if (!read.ok()) return ToGrpc(read);
  std::vector<v1::CheckIn*> listed;
  for (auto& c : *response->mutable_check_ins()) listed.push_back(&c);
  if (absl::Status shown = WithholdAnswersWithoutConsent(*call, listed); !shown.ok()) {
    response->Clear();
    return ToGrpc(shown);
  }
  return grpc::Status::OK;
}

grpc::Status CheckInService::ListDueCheckIns(grpc::ServerContext* context,
                                             const v1::ListDueCheckInsRequest* request,
                                             v1::ListDueCheckInsResponse* response) {
  auto call = Begin(*context, "ListDueCheckIns");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  if (!request->supporter_id().empty() && !IsUuid(request->supporter_id())) {
    violations.push_back({"supporter_id", "must be a UUID"});
  }
  if (!call->as_peer && request->supporter_id().empty()) {
    violations.push_back({"supporter_id", "required for a supervisor"});
  }
  auto size = ResolvePageSize(request->page_size());
  if (!size.ok()) AddViolations(violations, size.status());
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  const std::string& agency = call->caller.agency_id;
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    // A peer supporter sees their own matches only, whatever supporter_id says.
    const std::string subject = call->as_peer ? call->caller.subject : "";
    const std::string supporter = call->as_peer ? "" : request->supporter_id();
    if (call->as_peer && !request->supporter_id().empty()) {
      auto mine = tx.exec_params(
          "SELECT 1 FROM supporter_matches WHERE supporter_id::text = $1 AND "
          "supporter_subject = $2 LIMIT 1",
          request->supporter_id(), call->caller.subject);
      if (mine.empty()) return absl::PermissionDeniedError("you may list only your own");
    }
    const auto policy = LoadPolicy(tx, agency, options_.default_time_zone);
    auto agency_zone = LoadZone(policy.time_zone());
    if (!agency_zone.ok()) return absl::InternalError("the agency's time zone is not known");
    const absl::CivilDay day =
        request->has_day() ? CivilOf(request->day()) : absl::ToCivilDay(absl::Now(), *agency_zone);
    std::vector<OccurrenceRow> rows;
    // A supervisor sees the supporters they supervise only.
    const std::string supervisor = call->as_supervisor ? call->caller.subject : "";
    for (const auto& e : EnrollmentsOfSupporter(tx, subject, supporter, supervisor)) {
      auto zone = LoadZone(e.time_zone());
      if (!zone.ok()) continue;
      for (const auto& o : OccurrencesOpenOn(ScheduleOf(e), day, *zone)) {
        rows.push_back({e.enrollment_id(), o.due_on, o.window_start, o.window_end});
      }
    }
    std::set<int> wanted(request->statuses().begin(), request->statuses().end());
    if (wanted.empty()) {
      wanted = {v1::SCHEDULED_CHECK_IN_STATUS_DUE, v1::SCHEDULED_CHECK_IN_STATUS_COMPLETED,
                v1::SCHEDULED_CHECK_IN_STATUS_MISSED};
    }
    int n = 0;
    for (auto& s : MaterializeOccurrences(tx, agency, rows)) {
      if (!wanted.contains(s.status()) || n++ >= *size) continue;
      *response->add_scheduled_check_ins() = std::move(s);
    }
    return absl::OkStatus();
  }));
}

}  // namespace peerpath::checkin

namespace peerpath::checkin {

// ---------------------------------------------------------------------------------------------
// Contact attempts and program policy
// ---------------------------------------------------------------------------------------------

grpc::Status CheckInService::RecordContactAttempt(grpc::ServerContext* context,
                                                  const v1::RecordContactAttemptRequest* request,
                                                  v1::RecordContactAttemptResponse* response) {
  auto call = Begin(*context, "RecordContactAttempt");
  if (!call.ok()) return ToGrpc(call.status());
  return ToGrpc(RecordContactAttemptImpl(*call, *request, *response));
}

absl::Status CheckInService::RecordContactAttemptImpl(
    const Call& call, const v1::RecordContactAttemptRequest& request,
    v1::RecordContactAttemptResponse& response) {
  const std::string& agency = call.caller.agency_id;
  std::vector<FieldViolation> violations;
  if (!IsUuid(request.enrollment_id())) {
    violations.push_back({"enrollment_id", "required: the enrollment's UUID"});
  }
  if (request.channel() == v1::CONTACT_CHANNEL_UNSPECIFIED ||
      !v1::ContactChannel_IsValid(request.channel())) {
    violations.push_back({"channel", "required: phone, message, email, video or in person"});
  }
  if (request.outcome() == v1::CONTACT_OUTCOME_UNSPECIFIED ||
      !v1::ContactOutcome_IsValid(request.outcome())) {
    violations.push_back({"outcome", "required: reached, no answer, left message or wrong number"});
  }
  const absl::Time attempted_at = FromProtoTimestamp(request.attempted_at());
  if (!request.has_attempted_at()) {
    violations.push_back({"attempted_at", "required: when the attempt was made"});
  } else if (attempted_at > absl::Now() + absl::Minutes(10)) {
    violations.push_back({"attempted_at", "more than 10 minutes in the future"});
  }
  AddViolations(violations, ValidateIdempotencyKey(request.idempotency_key()));
  if (!violations.empty()) return InvalidArgument("invalid contact attempt", violations);

  const IdempotentCall idem{agency, request.idempotency_key(), "RecordContactAttempt", &request,
                            call.caller.subject};
  return context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, idem, response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    auto ctx = LoadCheckInContext(tx, agency, request.enrollment_id(), "", attempted_at, "",
                                  /*lock=*/true)
                   .context;
    if (!ctx) return absl::NotFoundError("no such enrollment in your agency");
    const v1::Enrollment& e = ctx->enrollment;
    if (!call.InRelationship(ctx->supporter)) {
      authorizer_.AuditRefusal(*call.context, call.caller, call.method, "enrollment",
                               e.enrollment_id(), e.participant_id());
      return absl::PermissionDeniedError(call.NotInRelationship());
    }
    if (e.status() == v1::ENROLLMENT_STATUS_ENDED &&
        attempted_at > FromProtoTimestamp(e.ended_at())) {
      return absl::FailedPreconditionError("the enrollment ended before attempted_at");
    }
    EngagementState before{
        .stage = e.engagement_stage(),
        .failed_attempts_in_a_row = e.failed_attempts_in_a_row(),
        .stage_changed_at = FromProtoTimestamp(e.engagement_stage_changed_at()),
        .last_contact_at = e.has_last_contact_at()
                               ? std::optional(FromProtoTimestamp(e.last_contact_at()))
                               : std::nullopt};
    const AttemptResult result = ApplyContactAttempt(before, request.outcome(), attempted_at,
                                                     ctx->now, ctx->missed_contact_failed_attempts);
    const std::string supporter_id = ctx->supporter ? ctx->supporter->supporter_id : "";

    v1::ContactAttempt& a = *response.mutable_contact_attempt();
    a.set_contact_attempt_id(RandomUuid());
    a.set_enrollment_id(e.enrollment_id());
    a.set_participant_id(e.participant_id());
    if (call.as_peer) a.set_supporter_id(supporter_id);
    a.set_attempted_by(call.caller.subject);
    a.set_channel(request.channel());
    a.set_outcome(request.outcome());
    a.set_is_reconnection(result.reconnection);
    *a.mutable_attempted_at() = request.attempted_at();
    *a.mutable_recorded_at() = ToProtoTimestamp(ctx->now);
    response.set_missed_contact_raised(result.missed_contact_raised);
    response.set_reconnection(result.reconnection);
    response.set_engagement_stage(result.after.stage);
    response.set_failed_attempts_in_a_row(result.after.failed_attempts_in_a_row);

    ContactAttemptWrite write;
    auto recorded = std::make_unique<v1::ContactAttemptRecordedEvent>();
    recorded->set_contact_attempt_id(a.contact_attempt_id());
    recorded->set_enrollment_id(e.enrollment_id());
    recorded->set_participant_id(e.participant_id());
    recorded->set_supporter_id(a.supporter_id());
    recorded->set_pathway_key(e.pathway_key());
    recorded->set_channel(a.channel());
    recorded->set_outcome(a.outcome());
    recorded->set_failed_attempts_in_a_row(result.after.failed_attempts_in_a_row);
    recorded->set_missed_contact_raised(result.missed_contact_raised);
    recorded->set_reconnection(result.reconnection);
    *recorded->mutable_attempted_at() = a.attempted_at();
    write.events.Add(std::move(recorded));
    auto stage_changed = [&](v1::EngagementStageChangeCause cause) {
      std::optional<google::protobuf::Timestamp> last_contact;
      if (result.after.last_contact_at)
        last_contact = ToProtoTimestamp(*result.after.last_contact_at);
      write.events.Add(StageChangedEvent(e, supporter_id, e.engagement_stage(), result.after.stage,
                                         cause, last_contact ? &*last_contact : nullptr,
                                         a.recorded_at()));
    };
    if (result.reconnection) {
      auto r = ReconnectionEvent(e, a.supporter_id(), a.attempted_at());
      r->set_contact_attempt_id(a.contact_attempt_id());
      write.events.Add(std::move(r));
      stage_changed(v1::ENGAGEMENT_STAGE_CHANGE_CAUSE_CONTACT);
    }
    if (result.missed_contact_raised) {
      if (result.after.stage != e.engagement_stage()) {
        stage_changed(v1::ENGAGEMENT_STAGE_CHANGE_CAUSE_FAILED_ATTEMPTS);
      }
      const auto severity =
          ctx->pathway.missed_contact_severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED
              ? common::v1::CONCERN_SEVERITY_ROUTINE
              : ctx->pathway.missed_contact_severity();
      auto raised = std::make_unique<v1::ConcernRaisedEvent>();
      raised->set_enrollment_id(e.enrollment_id());
      raised->set_participant_id(e.participant_id());
      raised->set_supporter_id(supporter_id);
      raised->set_pathway_key(e.pathway_key());
      raised->set_pathway_version(e.pathway_version());
      raised->set_category(common::v1::CONCERN_CATEGORY_DISENGAGEMENT);
      raised->set_severity(severity);
      raised->set_source(v1::CONCERN_SOURCE_MISSED_CONTACT);
      raised->set_contact_attempt_id(a.contact_attempt_id());
      raised->set_receiving_clinician(e.owners().receiving_clinician());
      raised->set_receiving_team(e.owners().receiving_team());
      raised->set_failed_attempts(result.after.failed_attempts_in_a_row);
      *raised->mutable_raised_at() = a.recorded_at();
      const std::string event_id = write.events.Add(std::move(raised));
      auto* out = response.add_raised_concerns();
      out->set_source(v1::CONCERN_SOURCE_MISSED_CONTACT);
      out->set_category(common::v1::CONCERN_CATEGORY_DISENGAGEMENT);
      out->set_severity(severity);
      out->set_event_id(event_id);
    }
    write.agency_id = agency;
    write.attempt = a;
    write.stage = result.after.stage;
    write.stage_changed_at = result.after.stage_changed_at;
    write.failed_attempts_in_a_row = result.after.failed_attempts_in_a_row;
    write.last_contact_at = result.after.last_contact_at;
    write.audit = call.Allowed();
    write.idempotency_key = request.idempotency_key();
    write.response_bytes = DeterministicBytes(response);
    WriteContactAttempt(tx, write);
    return absl::OkStatus();
  });
}

grpc::Status CheckInService::UpdateProgramPolicy(grpc::ServerContext* context,
                                                 const v1::UpdateProgramPolicyRequest* request,
                                                 v1::UpdateProgramPolicyResponse* response) {
  auto call = Begin(*context, "UpdateProgramPolicy");
  if (!call.ok()) return ToGrpc(call.status());
  const std::string& agency = call->caller.agency_id;
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    v1::ProgramPolicy policy = LoadPolicy(tx, agency, options_.default_time_zone);
    const v1::ProgramPolicy& in = request->policy();
    std::vector<FieldViolation> violations;
    // An empty mask changes all five (checkin.proto).
    std::vector<std::string> paths(request->update_mask().paths().begin(),
                                   request->update_mask().paths().end());
    if (paths.empty()) {
      paths = {"time_zone", "missed_contact_failed_attempts", "at_risk_after",
               "lost_to_follow_up_after", "wellbeing_drop_points"};
    }
    constexpr int64_t kDay = 86400;
    for (const std::string& path : paths) {
      if (path == "time_zone") {
        if (!LoadZone(in.time_zone()).ok()) {
          violations.push_back({"policy.time_zone", "an IANA time zone, e.g. Europe/Paris"});
        }
        policy.set_time_zone(in.time_zone());
      } else if (path == "missed_contact_failed_attempts") {
        if (in.missed_contact_failed_attempts() < 1 || in.missed_contact_failed_attempts() > 50) {
          violations.push_back({"policy.missed_contact_failed_attempts", "1 to 50"});
        }
        policy.set_missed_contact_failed_attempts(in.missed_contact_failed_attempts());
      } else if (path == "at_risk_after") {
        const int64_t s = in.at_risk_after().seconds();
        if (s % kDay != 0 || s < kDay || s > 365 * kDay || in.at_risk_after().nanos() != 0) {
          violations.push_back({"policy.at_risk_after", "whole days, 1 to 365"});
        }
        *policy.mutable_at_risk_after() = in.at_risk_after();
      } else if (path == "lost_to_follow_up_after") {
        const int64_t s = in.lost_to_follow_up_after().seconds();
        if (s % kDay != 0 || s < kDay || s > 730 * kDay ||
            in.lost_to_follow_up_after().nanos() != 0) {
          violations.push_back({"policy.lost_to_follow_up_after", "whole days, at most 730"});
        }
        *policy.mutable_lost_to_follow_up_after() = in.lost_to_follow_up_after();
      } else if (path == "wellbeing_drop_points") {
        if (in.wellbeing_drop_points() < 1 || in.wellbeing_drop_points() > 4) {
          violations.push_back({"policy.wellbeing_drop_points", "1 to 4"});
        }
        policy.set_wellbeing_drop_points(in.wellbeing_drop_points());
      } else {
        violations.push_back(
            {"update_mask", absl::StrCat("unknown path '", path.substr(0, 64), "'")});
      }
    }
    if (violations.empty() &&
        policy.lost_to_follow_up_after().seconds() <= policy.at_risk_after().seconds()) {
      violations.push_back({"policy.lost_to_follow_up_after", "must be longer than at_risk_after"});
    }
    if (!violations.empty()) return InvalidArgument("invalid program policy", violations);
    *response->mutable_policy() = StorePolicy(tx, agency, policy, call->caller.subject);
    const v1::ProgramPolicy& stored = response->policy();
    v1::ProgramPolicyChangedEvent event;
    event.set_time_zone(stored.time_zone());
    event.set_missed_contact_failed_attempts(stored.missed_contact_failed_attempts());
    *event.mutable_at_risk_after() = stored.at_risk_after();
    *event.mutable_lost_to_follow_up_after() = stored.lost_to_follow_up_after();
    event.set_wellbeing_drop_points(stored.wellbeing_drop_points());
    for (const std::string& path : paths) event.add_changed_fields(path);
    event.set_changed_by_role(call->role);
    *event.mutable_changed_at() = stored.updated_at();
    if (auto s = AppendEvent(tx, agency, agency, event); !s.ok()) return s;
    call->Audit(tx, "program_policy", agency, "");
    return absl::OkStatus();
  }));
}

}  // namespace peerpath::checkin

namespace peerpath::checkin {

grpc::Status CheckInService::PublishPathwayVersion(grpc::ServerContext* context,
                                                   const v1::PublishPathwayVersionRequest* request,
                                                   v1::PublishPathwayVersionResponse* response) {
  auto call = Begin(*context, "PublishPathwayVersion");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations = ValidatePathwayDefinition(request->pathway());
  if (request->base_version() < 0) {
    violations.push_back({"base_version", "0 for a new key, else the latest version"});
  }
  AddViolations(violations, ValidateIdempotencyKey(request->idempotency_key()));
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid pathway version", violations));
  const std::string& agency = call->caller.agency_id;
  const IdempotentCall idem{agency, request->idempotency_key(), "PublishPathwayVersion", request,
                            call->caller.subject};
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, idem, *response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    EnsureDefaults(tx, agency);
    auto published = PublishPathway(tx, agency, request->pathway(), request->base_version(),
                                    call->caller.subject);
    if (!published) {
      return absl::AbortedError(
          "base_version is not the latest version of this pathway (another version was "
          "published, or the key is not new): read the latest and apply the change again");
    }
    call->Audit(tx, "pathway_version", published->pathway_version_id(), "");
    *response->mutable_pathway() = std::move(*published);
    return StoreIdempotentResponse(tx, idem, *response);
  }));
}

}  // namespace peerpath::checkin

namespace peerpath::checkin {

// ---------------------------------------------------------------------------------------------
// Appointments
// ---------------------------------------------------------------------------------------------

grpc::Status CheckInService::ScheduleAppointment(grpc::ServerContext* context,
                                                 const v1::ScheduleAppointmentRequest* request,
                                                 v1::ScheduleAppointmentResponse* response) {
  auto call = Begin(*context, "ScheduleAppointment");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->enrollment_id())) {
    violations.push_back({"enrollment_id", "required: the enrollment's UUID"});
  }
  if (request->kind() == v1::APPOINTMENT_KIND_UNSPECIFIED ||
      !v1::AppointmentKind_IsValid(request->kind())) {
    violations.push_back({"kind", "required: first appointment, clinical review, therapy, other"});
  }
  if (!request->has_scheduled_at()) violations.push_back({"scheduled_at", "required"});
  if (request->owner_id().size() > 128)
    violations.push_back({"owner_id", "at most 128 characters"});
  AddViolations(violations, ValidateIdempotencyKey(request->idempotency_key()));
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid appointment", violations));
  const std::string& agency = call->caller.agency_id;
  const IdempotentCall idem{agency, request->idempotency_key(), "ScheduleAppointment", request,
                            call->caller.subject};
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, idem, *response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    auto e = LoadEnrollment(tx, request->enrollment_id());
    if (!e) return absl::NotFoundError("no such enrollment in your agency");
    if (auto s = RequireParticipantAccess(tx, *call, e->participant_id()); !s.ok()) return s;
    if (e->status() == v1::ENROLLMENT_STATUS_ENDED) {
      return absl::FailedPreconditionError("the enrollment has ended");
    }
    std::string owner = request->owner_id();
    if (owner.empty()) {
      owner = request->kind() == v1::APPOINTMENT_KIND_CLINICAL_REVIEW
                  ? e->owners().receiving_clinician()
                  : e->owners().appointment_owner();
    }
    if (owner.empty()) {
      return InvalidArgument("invalid appointment",
                             {{"owner_id",
                               "required: the enrollment has no default owner for "
                               "this kind of appointment"}});
    }
    if (!KnownPeerSupporters(tx, {owner}).empty()) {
      return absl::FailedPreconditionError(
          "a peer supporter cannot own an appointment: peer support is never the accountable "
          "owner");
    }
    v1::Appointment a;
    a.set_appointment_id(RandomUuid());
    a.set_enrollment_id(e->enrollment_id());
    a.set_participant_id(e->participant_id());
    a.set_kind(request->kind());
    *a.mutable_scheduled_at() = request->scheduled_at();
    a.set_owner_id(owner);
    *response->mutable_appointment() = InsertAppointment(tx, agency, a, call->caller.subject, "");
    call->Audit(tx, "appointment", a.appointment_id(), a.participant_id());
    return StoreIdempotentResponse(tx, idem, *response);
  }));
}

grpc::Status CheckInService::RecordAppointmentOutcome(
    grpc::ServerContext* context, const v1::RecordAppointmentOutcomeRequest* request,
    v1::RecordAppointmentOutcomeResponse* response) {
  auto call = Begin(*context, "RecordAppointmentOutcome");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->appointment_id())) {
    violations.push_back({"appointment_id", "required: the appointment's UUID"});
  }
  const auto outcome = request->outcome();
  if (outcome == v1::APPOINTMENT_OUTCOME_UNSPECIFIED ||
      outcome == v1::APPOINTMENT_OUTCOME_PENDING || !v1::AppointmentOutcome_IsValid(outcome)) {
    violations.push_back({"outcome", "attended, missed, cancelled or rescheduled"});
  }
  if ((outcome == v1::APPOINTMENT_OUTCOME_RESCHEDULED) != request->has_rescheduled_to()) {
    violations.push_back({"rescheduled_to", "required for RESCHEDULED and only then"});
  }
  AddViolations(violations, ValidateIdempotencyKey(request->idempotency_key()));
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid outcome", violations));
  const std::string& agency = call->caller.agency_id;
  const IdempotentCall idem{agency, request->idempotency_key(), "RecordAppointmentOutcome", request,
                            call->caller.subject};
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, idem, *response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    auto a = LoadAppointment(tx, request->appointment_id());
    if (!a) return absl::NotFoundError("no such appointment in your agency");
    if (a->outcome() != v1::APPOINTMENT_OUTCOME_PENDING) {
      return absl::FailedPreconditionError("the appointment already has an outcome");
    }
    auto e = LoadEnrollment(tx, a->enrollment_id());
    if (!e) return absl::InternalError("appointment without enrollment");
    if (auto s = RequireParticipantAccess(tx, *call, e->participant_id()); !s.ok()) return s;
    std::string outcome_text =
        v1::AppointmentOutcome_Name(outcome).substr(sizeof("APPOINTMENT_OUTCOME_") - 1);
    std::transform(outcome_text.begin(), outcome_text.end(), outcome_text.begin(), ::tolower);
    v1::AppointmentOutcomeRecordedEvent event;
    if (outcome == v1::APPOINTMENT_OUTCOME_RESCHEDULED) {
      v1::Appointment replacement;
      replacement.set_appointment_id(RandomUuid());
      replacement.set_enrollment_id(a->enrollment_id());
      replacement.set_participant_id(a->participant_id());
      replacement.set_kind(a->kind());
      *replacement.mutable_scheduled_at() = request->rescheduled_to();
      replacement.set_owner_id(a->owner_id());
      SetAppointmentOutcome(tx, a->appointment_id(), outcome_text, call->caller.subject, "");
      *response->mutable_replacement() =
          InsertAppointment(tx, agency, replacement, call->caller.subject, a->appointment_id());
      event.set_rescheduled_to_appointment_id(replacement.appointment_id());
      *event.mutable_rescheduled_to() = request->rescheduled_to();
    }
    *response->mutable_appointment() =
        outcome == v1::APPOINTMENT_OUTCOME_RESCHEDULED
            ? *LoadAppointment(tx, a->appointment_id())
            : SetAppointmentOutcome(tx, a->appointment_id(), outcome_text, call->caller.subject,
                                    "");
    event.set_appointment_id(a->appointment_id());
    event.set_enrollment_id(a->enrollment_id());
    event.set_participant_id(a->participant_id());
    event.set_pathway_key(e->pathway_key());
    event.set_kind(a->kind());
    *event.mutable_scheduled_at() = a->scheduled_at();
    event.set_outcome(outcome);
    event.set_peer_contact_before(
        PeerContactBefore(tx, a->enrollment_id(), FromProtoTimestamp(a->scheduled_at())));
    event.set_recorded_by_role(call->role);
    *event.mutable_recorded_at() = response->appointment().outcome_recorded_at();
    if (auto s = AppendEvent(tx, agency, a->enrollment_id(), event); !s.ok()) return s;
    if (outcome == v1::APPOINTMENT_OUTCOME_MISSED) {
      auto pathway = LoadPathway(tx, e->pathway_key(), e->pathway_version());
      if (!pathway) return absl::InternalError("enrollment without pathway version");
      for (const auto& rule : pathway->missed_appointment_rules()) {
        if (rule.appointment_kind() != a->kind()) continue;
        auto supporter = ActiveSupporterOf(tx, e->participant_id());
        v1::ConcernRaisedEvent raised;
        raised.set_enrollment_id(e->enrollment_id());
        raised.set_participant_id(e->participant_id());
        raised.set_supporter_id(supporter ? supporter->supporter_id : "");
        raised.set_pathway_key(e->pathway_key());
        raised.set_pathway_version(e->pathway_version());
        raised.set_category(rule.category());
        raised.set_severity(rule.severity());
        raised.set_source(v1::CONCERN_SOURCE_MISSED_APPOINTMENT);
        raised.set_rule_id(rule.rule_id());
        raised.set_appointment_id(a->appointment_id());
        raised.set_receiving_clinician(e->owners().receiving_clinician());
        raised.set_receiving_team(e->owners().receiving_team());
        *raised.mutable_raised_at() = event.recorded_at();
        if (auto s = AppendEvent(tx, agency, e->enrollment_id(), raised); !s.ok()) return s;
        auto* out = response->add_raised_concerns();
        out->set_source(v1::CONCERN_SOURCE_MISSED_APPOINTMENT);
        out->set_rule_id(rule.rule_id());
        out->set_category(rule.category());
        out->set_severity(rule.severity());
      }
    }
    call->Audit(tx, "appointment", a->appointment_id(), a->participant_id());
    return StoreIdempotentResponse(tx, idem, *response);
  }));
}

}  // namespace peerpath::checkin

namespace peerpath::checkin {

grpc::Status CheckInService::ResumeRoutineEngagement(
    grpc::ServerContext* context, const v1::ResumeRoutineEngagementRequest* request,
    v1::ResumeRoutineEngagementResponse* response) {
  auto call = Begin(*context, "ResumeRoutineEngagement");
  if (!call.ok()) return ToGrpc(call.status());
  if (!IsUuid(request->enrollment_id())) {
    return ToGrpc(InvalidArgument("invalid request", {{"enrollment_id", "required: a UUID"}}));
  }
  const std::string& agency = call->caller.agency_id;
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto e = LoadEnrollment(tx, request->enrollment_id(), /*lock=*/true);
    if (!e) return absl::NotFoundError("no such enrollment in your agency");
    if (e->status() == v1::ENROLLMENT_STATUS_ENDED) {
      return absl::FailedPreconditionError("the enrollment has ended");
    }
    if (e->routine()) {
      *response->mutable_enrollment() = std::move(*e);  // Already routine: unchanged.
      return absl::OkStatus();
    }
    v1::Enrollment resumed = ResumeRoutine(tx, e->enrollment_id());
    v1::EnrollmentRoutineResumedEvent event;
    event.set_enrollment_id(resumed.enrollment_id());
    event.set_participant_id(resumed.participant_id());
    event.set_pathway_key(resumed.pathway_key());
    *event.mutable_stopped_at() = e->routine_stopped_at();
    *event.mutable_resumed_at() = ToProtoTimestamp(absl::Now());
    if (auto s = AppendEvent(tx, agency, resumed.enrollment_id(), event); !s.ok()) return s;
    call->Audit(tx, "enrollment", resumed.enrollment_id(), resumed.participant_id());
    *response->mutable_enrollment() = std::move(resumed);
    return absl::OkStatus();
  }));
}

// ---------------------------------------------------------------------------------------------
// Appointments list and wellbeing trend
// ---------------------------------------------------------------------------------------------

grpc::Status CheckInService::ListAppointments(grpc::ServerContext* context,
                                              const v1::ListAppointmentsRequest* request,
                                              v1::ListAppointmentsResponse* response) {
  auto call = Begin(*context, "ListAppointments");
  if (!call.ok()) return ToGrpc(call.status());
  v1::ListAppointmentsRequest filters = *request;
  filters.clear_page_size();
  filters.clear_page_token();
  const std::string list = ListNameWithFilters("ListAppointments", filters);
  std::vector<FieldViolation> violations;
  auto size = ResolvePageSize(request->page_size());
  if (!size.ok()) AddViolations(violations, size.status());
  auto cursor = DecodePageToken(list, request->page_token());
  if (!cursor.ok()) AddViolations(violations, cursor.status());
  if (!request->enrollment_id().empty() && !IsUuid(request->enrollment_id())) {
    violations.push_back({"enrollment_id", "must be a UUID"});
  }
  if (request->participant_id().size() > 128) {
    violations.push_back({"participant_id", "at most 128 characters"});
  }
  if (request->owner_id().size() > 128) {
    violations.push_back({"owner_id", "at most 128 characters"});
  }
  AppointmentFilter filter;
  for (int i = 0; i < request->kinds_size(); ++i) {
    const int k = request->kinds(i);
    if (k == v1::APPOINTMENT_KIND_UNSPECIFIED || !v1::AppointmentKind_IsValid(k)) {
      violations.push_back({absl::StrCat("kinds[", i, "]"), "not an appointment kind"});
    } else {
      filter.kinds.push_back(static_cast<v1::AppointmentKind>(k));
    }
  }
  for (int i = 0; i < request->outcomes_size(); ++i) {
    const int o = request->outcomes(i);
    if (o == v1::APPOINTMENT_OUTCOME_UNSPECIFIED || !v1::AppointmentOutcome_IsValid(o)) {
      violations.push_back({absl::StrCat("outcomes[", i, "]"), "not an appointment outcome"});
    } else {
      filter.outcomes.push_back(static_cast<v1::AppointmentOutcome>(o));
    }
  }
  RangeMicros(request->scheduled(), "scheduled", violations, filter.scheduled_from_micros,
              filter.scheduled_to_micros);
  if (cursor.ok() && !cursor->empty()) {
    std::pair<std::string, std::string> parts = absl::StrSplit(*cursor, '/');
    int64_t micros = 0;
    if (!absl::SimpleAtoi(parts.first, &micros) || !IsUuid(parts.second)) {
      violations.push_back({"page_token", "stale or foreign"});
    } else {
      filter.after_micros = parts.first;
      filter.after_id = parts.second;
    }
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  filter.enrollment_id = request->enrollment_id();
  filter.participant_id = request->participant_id();
  filter.owner_id = request->owner_id();
  if (call->as_peer) filter.supporter_subject = call->caller.subject;
  if (call->as_supervisor) filter.supervisor_subject = call->caller.subject;
  filter.limit = *size + 1;
  return ToGrpc(context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) {
    // A named participant outside the caller's matches or supervision is refused, not an
    // empty page.
    if (!request->participant_id().empty()) {
      if (auto s = RequireParticipantAccess(tx, *call, request->participant_id()); !s.ok()) {
        return s;
      }
    }
    auto rows = checkin::ListAppointments(tx, filter);
    const bool more = static_cast<int>(rows.size()) > *size;
    if (more) rows.resize(*size);
    for (auto& a : rows) {
      call->Audit(tx, "appointment", a.appointment_id(), a.participant_id());
      *response->add_appointments() = std::move(a);
    }
    if (more) {
      const auto& last = response->appointments(response->appointments_size() - 1);
      response->set_next_page_token(EncodePageToken(
          list, absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(last.scheduled_at())), "/",
                             last.appointment_id())));
    }
    return absl::OkStatus();
  }));
}

// ---------------------------------------------------------------------------------------------
// Participant feedback
// ---------------------------------------------------------------------------------------------

grpc::Status CheckInService::RecordParticipantFeedback(
    grpc::ServerContext* context, const v1::RecordParticipantFeedbackRequest* request,
    v1::RecordParticipantFeedbackResponse* response) {
  auto call = Begin(*context, "RecordParticipantFeedback");
  if (!call.ok()) return ToGrpc(call.status());
  const std::string& agency = call->caller.agency_id;
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->enrollment_id())) {
    violations.push_back({"enrollment_id", "required: the enrollment's UUID"});
  }
  if (request->rating() < 1 || request->rating() > 5) {
    violations.push_back({"rating", "required: 1 (very dissatisfied) to 5 (very satisfied)"});
  }
  if (request->comment().size() > 2000) {
    violations.push_back({"comment", "at most 2,000 characters"});
  }
  const absl::Time given_at = FromProtoTimestamp(request->given_at());
  if (!request->has_given_at()) {
    violations.push_back({"given_at", "required: when the participant gave the feedback"});
  } else if (given_at > absl::Now() + absl::Minutes(10)) {
    violations.push_back({"given_at", "more than 10 minutes in the future"});
  }
  AddViolations(violations, ValidateIdempotencyKey(request->idempotency_key()));
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid feedback", violations));

  const IdempotentCall idem{agency, request->idempotency_key(), "RecordParticipantFeedback",
                            request, call->caller.subject};
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, idem, *response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    auto e = LoadEnrollment(tx, request->enrollment_id(), /*lock=*/false);
    if (!e) return absl::NotFoundError("no such enrollment in your agency");
    const std::optional<ActiveSupporter> supporter = ActiveSupporterOf(tx, e->participant_id());
    if (!call->InRelationship(supporter)) {
      authorizer_.AuditRefusal(*context, call->caller, call->method, "enrollment",
                               e->enrollment_id(), e->participant_id());
      return absl::PermissionDeniedError(call->NotInRelationship());
    }
    if (given_at < FromProtoTimestamp(e->enrolled_at())) {
      return InvalidArgument("invalid feedback", {{"given_at", "before the enrollment started"}});
    }
    v1::ParticipantFeedback& f = *response->mutable_feedback();
    f.set_feedback_id(RandomUuid());
    f.set_enrollment_id(e->enrollment_id());
    f.set_participant_id(e->participant_id());
    f.set_rating(request->rating());
    f.set_comment(request->comment());
    *f.mutable_given_at() = request->given_at();
    f.set_recorded_by(call->caller.subject);
    f.set_recorded_by_role(call->role);
    *f.mutable_recorded_at() = ToProtoTimestamp(InsertParticipantFeedback(tx, agency, f));
    v1::FeedbackRecordedEvent recorded;
    recorded.set_feedback_id(f.feedback_id());
    recorded.set_enrollment_id(e->enrollment_id());
    recorded.set_participant_id(e->participant_id());
    recorded.set_pathway_key(e->pathway_key());
    recorded.set_program_id(e->program_id());
    if (supporter) recorded.set_supporter_id(supporter->supporter_id);
    recorded.set_rating(f.rating());
    *recorded.mutable_given_at() = f.given_at();
    recorded.set_recorded_by_role(call->role);
    if (auto s = AppendEvent(tx, agency, e->enrollment_id(), recorded); !s.ok()) return s;
    call->Audit(tx, "participant_feedback", f.feedback_id(), e->participant_id());
    return StoreIdempotentResponse(tx, idem, *response);
  }));
}

grpc::Status CheckInService::ListParticipantFeedback(
    grpc::ServerContext* context, const v1::ListParticipantFeedbackRequest* request,
    v1::ListParticipantFeedbackResponse* response) {
  auto call = Begin(*context, "ListParticipantFeedback");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->enrollment_id())) {
    violations.push_back({"enrollment_id", "required: the enrollment's UUID"});
  }
  auto size = ResolvePageSize(request->page_size());
  if (!size.ok()) AddViolations(violations, size.status());
  auto cursor = DecodePageToken("ListParticipantFeedback", request->page_token());
  if (!cursor.ok()) AddViolations(violations, cursor.status());
  // The token names its enrollment: a page of one enrollment never continues another's.
  FeedbackCursor after;
  if (cursor.ok() && !cursor->empty()) {
    const std::vector<std::string> parts = absl::StrSplit(*cursor, '/');
    if (parts.size() != 3 || parts[0] != request->enrollment_id() ||
        !absl::SimpleAtoi(parts[1], &after.given_micros) || !IsUuid(parts[2])) {
      violations.push_back({"page_token", "from another list or enrollment, or stale"});
    } else {
      after.id = parts[2];
    }
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  return ToGrpc(
      context_.db.TransactForAgency(call->caller.agency_id, [&](pqxx::work& tx) -> absl::Status {
        auto e = LoadEnrollment(tx, request->enrollment_id(), /*lock=*/false);
        if (!e) return absl::NotFoundError("no such enrollment in your agency");
        if (auto s = RequireParticipantAccess(tx, *call, e->participant_id()); !s.ok()) return s;
        std::vector<v1::ParticipantFeedback> page =
            ListParticipantFeedbackOf(tx, e->enrollment_id(), after, *size + 1);
        const bool more = static_cast<int>(page.size()) > *size;
        if (more) page.resize(*size);
        for (auto& f : page) *response->add_feedback() = std::move(f);
        if (more) {
          const v1::ParticipantFeedback& last = response->feedback(response->feedback_size() - 1);
          response->set_next_page_token(
              EncodePageToken("ListParticipantFeedback",
                              absl::StrCat(e->enrollment_id(), "/",
                                           absl::ToUnixMicros(FromProtoTimestamp(last.given_at())),
                                           "/", last.feedback_id())));
        }
        call->Audit(tx, "enrollment", e->enrollment_id(), e->participant_id());
        return absl::OkStatus();
      }));
}

grpc::Status CheckInService::GetWellbeingTrend(grpc::ServerContext* context,
                                               const v1::GetWellbeingTrendRequest* request,
                                               v1::GetWellbeingTrendResponse* response) {
  auto call = Begin(*context, "GetWellbeingTrend");
  if (!call.ok()) return ToGrpc(call.status());
  std::vector<FieldViolation> violations;
  if (request->participant_id().empty() || request->participant_id().size() > 128) {
    violations.push_back({"participant_id", "required: 1 to 128 characters"});
  }
  if (!request->enrollment_id().empty() && !IsUuid(request->enrollment_id())) {
    violations.push_back({"enrollment_id", "must be a UUID"});
  }
  std::string from, to;
  RangeMicros(request->range(), "range", violations, from, to);
  if (request->max_points() < 0 || request->max_points() > 100) {
    violations.push_back({"max_points", "1 to 100, or 0 for 12"});
  }
  if (!violations.empty()) return ToGrpc(InvalidArgument("invalid request", violations));
  const std::string& agency = call->caller.agency_id;
  // Clinicians and case managers see check-in summaries only as the participant's consent
  // allows; asked before any data is read, and never assumed.
  if (!call->as_peer && !call->as_supervisor) {
    auto answer = CheckInSummariesAccess(*call, request->participant_id());
    if (!answer.ok()) return ToGrpc(answer.status());
    if (!answer->permitted) {
      authorizer_.AuditRefusal(*context, call->caller, call->method, "participant", "",
                               request->participant_id());
      return ToGrpc(absl::PermissionDeniedError(
          absl::StrCat("the participant's consent does not permit check-in summaries to you: ",
                       answer->reason)));
    }
  }
  return ToGrpc(context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::Status {
    if (auto s = RequireParticipantAccess(tx, *call, request->participant_id()); !s.ok()) return s;
    if (!request->enrollment_id().empty()) {
      auto e = LoadEnrollment(tx, request->enrollment_id());
      if (!e || e->participant_id() != request->participant_id()) {
        return absl::NotFoundError("no such enrollment of this participant in your agency");
      }
    }
    const int max_points = request->max_points() == 0 ? 12 : request->max_points();
    for (auto& p : WellbeingPoints(tx, request->participant_id(), request->enrollment_id(), from,
                                   to, max_points)) {
      *response->add_points() = std::move(p);
    }
    const int drop = LoadPolicy(tx, agency, options_.default_time_zone).wellbeing_drop_points();
    std::vector<int> latest;
    for (const auto& p : WellbeingPoints(tx, request->participant_id(), "", "", "", 3)) {
      latest.push_back(p.score());
    }
    response->set_declining(latest.size() == 3 && WellbeingDeclined(latest, drop));
    response->set_drop_points(drop);
    call->Audit(tx, "participant", request->participant_id(), request->participant_id());
    return absl::OkStatus();
  }));
}

}  // namespace peerpath::checkin
