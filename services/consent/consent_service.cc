#include "services/consent/consent_service.h"

#include <cstdlib>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/audit.h"
#include "common/idempotency.h"
#include "common/log.h"
#include "common/pagination.h"
#include "common/rpc_observer.h"
#include "common/status.h"
#include "common/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "peerpath/consent/v1/events.pb.h"
#include "services/consent/access.h"
#include "services/consent/store.h"
#include "services/consent/validation.h"

namespace peerpath::consent {
namespace {

using enum Role;

constexpr char kServiceName[] = "peerpath.consent.v1.ConsentService";
constexpr char kRedisclosureNotice[] =
    "This information has been disclosed to you from records protected by federal "
    "confidentiality rules (42 CFR part 2). The federal rules prohibit you from making any "
    "further disclosure of information in this record that identifies a patient as having or "
    "having had a substance use disorder unless further disclosure is expressly permitted by the "
    "written consent of the individual whose information is being disclosed or as otherwise "
    "permitted by 42 CFR part 2.";

std::string Action(absl::string_view rpc) { return absl::StrCat(kServiceName, ".", rpc); }

bool HasAny(const Identity& caller, std::initializer_list<Role> roles) {
  for (Role r : roles) {
    if (caller.Has(r)) return true;
  }
  return false;
}

// A peer supporter with no staff role: the relationship rules apply.
bool PeerOnly(const Identity& caller) {
  return caller.Has(kPeerSupporter) && !HasAny(caller, {kClinician, kCaseManager, kSupervisor,
                                                        kProgramAdmin, kIntegration, kService});
}

// The role a caller acts in, for records and audit rows: the most privileged it holds.
std::string ActingRole(const Identity& caller) {
  for (Role r : {kClinician, kCaseManager, kSupervisor, kProgramAdmin, kIntegration, kService,
                 kPeerSupporter, kOperations}) {
    if (caller.Has(r)) return RoleName(r);
  }
  return "";
}

absl::Status Invalid(const Violations& v) {
  std::vector<std::string> fields;
  for (const auto& f : v) fields.push_back(f.field);
  return InvalidArgument(absl::StrCat("invalid request: ", absl::StrJoin(fields, ", ")), v);
}

void AddKeyViolations(absl::string_view key, Violations& v) {
  absl::Status s = ValidateIdempotencyKey(key);
  if (s.ok()) return;
  auto found = FieldViolations(s);
  if (found.empty()) {
    v.push_back({"idempotency_key", std::string(s.message())});
  } else {
    v.insert(v.end(), found.begin(), found.end());
  }
}

absl::StatusOr<int64_t> Audit(pqxx::work& tx, const Identity& caller,
                              const grpc::ServerContextBase& ctx, absl::string_view rpc,
                              absl::string_view object_type, absl::string_view object_id,
                              absl::string_view participant_id,
                              AuditDecision decision = AuditDecision::kAllowed) {
  return AppendAudit(
      tx, caller.agency_id,
      {caller.subject, ActingRole(caller), Action(rpc), std::string(object_type),
       std::string(object_id), std::string(participant_id), decision, RequestId(ctx)});
}

// Page tokens: "<micros>|<uuid>", bound to the list and its filters.
struct Cursor {
  int64_t micros = 0;
  std::string id;
};
std::string EncodeCursor(const std::string& list, const google::protobuf::Timestamp& t,
                         const std::string& id) {
  return EncodePageToken(list, absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(t)), "|", id));
}
absl::StatusOr<Cursor> DecodeCursor(const std::string& list, const std::string& token) {
  auto cursor = DecodePageToken(list, token);
  if (!cursor.ok()) return cursor.status();
  Cursor out;
  if (cursor->empty()) return out;
  std::vector<std::string> parts = absl::StrSplit(*cursor, '|');
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &out.micros) || !IsUuid(parts[1])) {
    return InvalidArgument("invalid page_token", {{"page_token", "not a token of this list"}});
  }
  out.id = parts[1];
  return out;
}

// Collects page size and token problems.
int PageSize(int requested, Violations& v) {
  auto size = ResolvePageSize(requested);
  if (!size.ok()) {
    v.push_back({"page_size", "must not be negative"});
    return 0;
  }
  return *size;
}

// A person of whom nothing shows which groups they are in: every directive naming a group binds
// them (see Accessor).
void SetGroupsUnknown(Accessor& a) {
  a.SetMembershipsUnknown(
      {v1::RECIPIENT_KIND_ROLE, v1::RECIPIENT_KIND_TEAM, v1::RECIPIENT_KIND_ORGANIZATION});
}

// Who would receive the data.
Accessor AccessorOfActor(const v1::Actor& actor) {
  Accessor a;
  a.person_subject = actor.subject();
  a.identities.push_back({v1::RECIPIENT_KIND_PERSON, actor.subject()});
  for (const auto& role : actor.roles()) a.identities.push_back({v1::RECIPIENT_KIND_ROLE, role});
  for (const auto& team : actor.team_ids()) {
    a.identities.push_back({v1::RECIPIENT_KIND_TEAM, team});
  }
  if (actor.roles_size() == 0 && actor.team_ids_size() == 0) SetGroupsUnknown(a);
  return a;
}
// A recipient named by kind and id: a person's groups, and a group's members, are unknown (see
// Accessor).
Accessor AccessorOfRecipient(const v1::Recipient& r) {
  Accessor a;
  a.identities.push_back({r.kind(), r.id()});
  switch (r.kind()) {
    case v1::RECIPIENT_KIND_PERSON:
      a.person_subject = r.id();
      SetGroupsUnknown(a);
      break;
    case v1::RECIPIENT_KIND_ROLE:
    case v1::RECIPIENT_KIND_TEAM:
      a.SetMembershipsUnknown(
          {v1::RECIPIENT_KIND_PERSON, v1::RECIPIENT_KIND_ROLE, v1::RECIPIENT_KIND_TEAM});
      break;
    case v1::RECIPIENT_KIND_ORGANIZATION:
      a.SetMembershipsUnknown({v1::RECIPIENT_KIND_PERSON});
      break;
    default:
      break;
  }
  return a;
}
Accessor AccessorOfCaller(const Identity& caller) {
  Accessor a;
  a.person_subject = caller.subject;
  a.identities.push_back({v1::RECIPIENT_KIND_PERSON, caller.subject});
  for (Role r : caller.roles) a.identities.push_back({v1::RECIPIENT_KIND_ROLE, RoleName(r)});
  if (caller.Has(kIntegration)) {
    a.identities.push_back({v1::RECIPIENT_KIND_ORGANIZATION, caller.subject});
  }
  a.SetMembershipsUnknown({v1::RECIPIENT_KIND_TEAM});  // Tokens carry roles, not teams.
  return a;
}

void FillDecision(const AccessDecision& d, absl::Time now, v1::CheckAccessResponse& out) {
  out.set_decision(d.permit ? v1::ACCESS_DECISION_PERMIT : v1::ACCESS_DECISION_DENY);
  out.set_reason(d.reason);
  out.set_message(d.message);
  out.set_consent_id(d.consent_id);
  out.set_emergency_access_id(d.emergency_access_id);
  if (d.permit && d.permitted_until != absl::InfiniteFuture()) {
    *out.mutable_permitted_until() = ToProtoTimestamp(d.permitted_until);
  }
  out.set_redisclosure_notice_required(d.redisclosure_notice_required);
  *out.mutable_decided_at() = ToProtoTimestamp(now);
}

// Refusals decided inside a transaction: the transaction rolls back, then the refusal is audited
// on its own.
struct Refusal {
  bool refused = false;
  std::string object_type;
  std::string object_id;
  std::string participant_id;
};

// Audits a refusal a handler decided inside its transaction (after that transaction ended, so
// the audit row survives its rollback).
void AuditIfRefused(const Authorizer& authorizer, const grpc::ServerContextBase& context,
                    const Identity& caller, const std::string& method, const Refusal& refusal) {
  if (!refusal.refused) return;
  authorizer.AuditRefusal(context, caller, method, refusal.object_type, refusal.object_id,
                          refusal.participant_id);
}

constexpr char kNotMatched[] =
    "a peer supporter may act only for participants in their active matches";

}  // namespace

const RoleRules& ConsentService::Rules() {
  // `operations` sees no consent at all.
  static const auto* const rules = new RoleRules{
      {"RecordConsent",
       {kClinician, kCaseManager, kSupervisor, kProgramAdmin, kIntegration, kPeerSupporter}},
      {"GetConsent",
       {kClinician, kCaseManager, kSupervisor, kProgramAdmin, kIntegration, kService,
        kPeerSupporter}},
      {"ListConsents",
       {kClinician, kCaseManager, kSupervisor, kProgramAdmin, kIntegration, kService,
        kPeerSupporter}},
      {"RevokeConsent",
       {kClinician, kCaseManager, kSupervisor, kProgramAdmin, kIntegration, kPeerSupporter}},
      {"CheckAccess",
       {kService, kClinician, kCaseManager, kSupervisor, kProgramAdmin, kPeerSupporter,
        kIntegration}},
      {"CheckGates",
       {kService, kClinician, kCaseManager, kSupervisor, kProgramAdmin, kPeerSupporter}},
      {"ShareInformation",
       {kClinician, kCaseManager, kSupervisor, kProgramAdmin, kPeerSupporter, kService}},
      {"ListDisclosures", {kClinician, kCaseManager, kSupervisor, kProgramAdmin}},
      {"RequestEmergencyAccess", {kClinician}},
      {"ListEmergencyAccesses", {kProgramAdmin, kClinician}},
      {"ReviewEmergencyAccess", {kProgramAdmin}},
      {"ListEvents", {kService}},
      {"Subscribe", {kService}},
  };
  return *rules;
}

ConsentService::ConsentService(ServiceContext& context, ConsentOptions options)
    : ConsentService(context, std::move(options), std::make_unique<TableActiveMatches>(),
                     std::make_unique<NoSafetyConcernSource>()) {}

ConsentService::ConsentService(ServiceContext& context, ConsentOptions options,
                               std::unique_ptr<ActiveMatches> matches,
                               std::unique_ptr<SafetyConcerns> concerns)
    : ConsentServiceBase(authorizer_, events_, context.stopping),
      context_(context),
      authorizer_(context.verifier, kServiceName, Rules(), &context.db),
      events_(context.db),
      matches_(std::move(matches)),
      concerns_(std::move(concerns)) {
  break_glass_ = &prometheus::BuildCounter()
                      .Name("peerpath_break_glass_accesses_total")
                      .Help("Emergency (break-glass) accesses granted to clinicians")
                      .Register(context.metrics)
                      .Add({});
  auto& decisions = prometheus::BuildCounter()
                        .Name("peerpath_consent_access_decisions_total")
                        .Help(
                            "CheckAccess decisions by where their inputs came from: the "
                            "replica's cache or a database read")
                        .Register(context.metrics);
  decided_from_cache_ = &decisions.Add({{"inputs", "cache"}});
  decided_from_database_ = &decisions.Add({{"inputs", "database"}});
  workers_ = std::make_unique<WorkerPool>(context.db.options().pool_size);
  if (options.decision_cache_participants > 0) {
    DecisionCacheOptions cache;
    cache.database = context.db.options();
    cache.max_participants = static_cast<size_t>(options.decision_cache_participants);
    cache.listening = &prometheus::BuildGauge()
                           .Name("peerpath_consent_decision_cache_listening")
                           .Help(
                               "1 while this replica's decision cache listens for changes and "
                               "may answer CheckAccess; 0 while every decision reads the "
                               "database")
                           .Register(context.metrics)
                           .Add({});
    cache_ = std::make_unique<DecisionCache>(std::move(cache));
  }
  matching_consumer_ = MakeMatchingConsumer(context, options.matching_address);
  if (matching_consumer_ != nullptr) matching_consumer_->Start();
  escalation_consumer_ = MakeEscalationConsumer(context, options.escalation_address);
  if (escalation_consumer_ != nullptr) {
    concerns_ = std::make_unique<ConsumedSafetyConcerns>(*escalation_consumer_);
    escalation_consumer_->Start();
  } else {
    log::Warn(
        "consent: no --escalation_address; RequestEmergencyAccess is refused, since no open "
        "safety concern can be confirmed");
  }
  const absl::Duration interval = options.expiry_sweep_interval > absl::ZeroDuration()
                                      ? options.expiry_sweep_interval
                                      : absl::Seconds(30);
  sweeper_ = std::thread([this, interval] {
    // The first sweep waits one interval: migrations are applied in the background at start.
    absl::Time next = absl::Now() + interval;
    while (!stop_sweeper_.stopped() && !context_.stopping.stopped()) {
      if (absl::Now() >= next) {
        auto swept = SweepExpiredConsents();
        if (!swept.ok()) {
          log::Warn("expiry sweep failed",
                    {{"code", absl::StatusCodeToString(swept.status().code())}});
        } else if (*swept > 0) {
          log::Info("consents expired", {{"count", *swept}});
        }
        next = absl::Now() + interval;
      }
      stop_sweeper_.WaitFor(std::min(interval, absl::Milliseconds(200)));
    }
  });
}

ConsentService::~ConsentService() {
  // The cache answers its waiting calls (they go to the workers), then the workers finish.
  cache_.reset();
  workers_.reset();
  stop_sweeper_.Notify();
  if (sweeper_.joinable()) sweeper_.join();
  if (matching_consumer_ != nullptr) matching_consumer_->Stop();
  if (escalation_consumer_ != nullptr) escalation_consumer_->Stop();
}

absl::StatusOr<int> ConsentService::SweepExpiredConsents() {
  auto agencies = context_.db.TransactForMaintenance(
      [](pqxx::work& tx) -> absl::StatusOr<std::vector<std::string>> {
        return store::AgenciesWithEndedConsents(tx);
      });
  if (!agencies.ok()) return agencies.status();
  int total = 0;
  for (const std::string& agency : *agencies) {
    while (true) {
      auto expired =
          context_.db.TransactForAgency(agency, [&](pqxx::work& tx) -> absl::StatusOr<int> {
            std::vector<v1::Consent> consents = store::ExpireConsents(tx, 200);
            for (const v1::Consent& c : consents) {
              v1::ConsentExpiredEvent event;
              event.set_consent_id(c.consent_id());
              event.set_participant_id(c.participant_id());
              *event.mutable_recipient() = c.recipient();
              *event.mutable_purposes() = c.purposes();
              *event.mutable_data_categories() = c.data_categories();
              event.set_directive(c.directive());
              *event.mutable_valid_until() = c.valid_until();
              *event.mutable_expired_at() = c.expired_at();
              if (absl::Status s = AppendEvent(tx, agency, c.consent_id(), event); !s.ok()) {
                return s;
              }
              auto audited = AppendAudit(
                  tx, agency,
                  {"system:expiry-sweeper", "service", Action("ExpireConsent"), "consent",
                   c.consent_id(), c.participant_id(), AuditDecision::kAllowed, ""});
              if (!audited.ok()) return audited.status();
            }
            return static_cast<int>(consents.size());
          });
      if (!expired.ok()) return expired.status();
      total += *expired;
      if (*expired < 200) break;
    }
  }
  return total;
}

grpc::Status ConsentService::RecordConsent(grpc::ServerContext* context,
                                           const v1::RecordConsentRequest* request,
                                           v1::RecordConsentResponse* response) {
  auto caller = authorizer_.Authorize(*context, "RecordConsent");
  if (!caller.ok()) return ToGrpc(caller.status());
  const absl::Time now = absl::Now();
  Violations v;
  if (!request->has_consent()) {
    v.push_back({"consent", "required"});
  } else {
    v = ValidateNewConsent(request->consent(), caller->subject, now);
  }
  AddKeyViolations(request->idempotency_key(), v);
  const IdempotentCall call{caller->agency_id, request->idempotency_key(), "RecordConsent", request,
                            caller->subject};
  if (!v.empty()) {
    // Only time made it invalid (its period has passed since): a retry of a call that was
    // recorded gets that call's answer, as any retry does; otherwise the refusal.
    const bool only_time =
        request->has_consent() && ValidateIdempotencyKey(request->idempotency_key()).ok() &&
        ValidateNewConsent(request->consent(), caller->subject, absl::InfinitePast()).empty();
    if (only_time) {
      bool replayed = false;
      absl::Status read =
          context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
            auto r = ReplayIfRecorded(tx, call, *response);
            if (!r.ok()) return r.status();
            replayed = *r;
            return absl::OkStatus();
          });
      if (!read.ok() || replayed) return ToGrpc(read);
    }
    return ToGrpc(Invalid(v));
  }
  const bool peer = PeerOnly(*caller);
  const v1::Consent& given = request->consent();
  if (peer) {
    if (std::string problem = PeerAgreementProblem(given, caller->subject); !problem.empty()) {
      authorizer_.AuditRefusal(*context, *caller, "RecordConsent", "participant",
                               given.participant_id(), given.participant_id());
      return ToGrpc(absl::PermissionDeniedError(problem));
    }
  }
  v1::Consent consent = given;
  if (!consent.has_valid_from()) *consent.mutable_valid_from() = ToProtoTimestamp(now);
  if (consent.obtained_by().empty()) consent.set_obtained_by(caller->subject);
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        if (peer) {
          auto matched = matches_->IsActivelyMatched(tx, caller->subject, consent.participant_id());
          if (!matched.ok()) return matched.status();
          if (!*matched) {
            refusal = {true, "participant", consent.participant_id(), consent.participant_id()};
            return absl::PermissionDeniedError(kNotMatched);
          }
        }
        auto replayed = ClaimIdempotencyKey(tx, call, *response);
        if (!replayed.ok()) return replayed.status();
        if (*replayed) return absl::OkStatus();
        v1::Consent stored =
            store::InsertConsent(tx, caller->agency_id, consent, caller->subject, now);
        v1::ConsentGrantedEvent event;
        event.set_consent_id(stored.consent_id());
        event.set_participant_id(stored.participant_id());
        event.set_given_by(stored.given_by());
        *event.mutable_recipient() = stored.recipient();
        *event.mutable_purposes() = stored.purposes();
        *event.mutable_data_categories() = stored.data_categories();
        event.set_directive(stored.directive());
        *event.mutable_valid_from() = stored.valid_from();
        if (stored.has_valid_until()) *event.mutable_valid_until() = stored.valid_until();
        event.set_obtained_method(stored.obtained_method());
        event.set_recorded_by(caller->subject);
        event.set_recorded_by_role(peer ? "peer_supporter" : ActingRole(*caller));
        *event.mutable_recorded_at() = stored.created_at();
        if (absl::Status s = AppendEvent(tx, caller->agency_id, stored.consent_id(), event);
            !s.ok()) {
          return s;
        }
        auto audited = Audit(tx, *caller, *context, "RecordConsent", "consent", stored.consent_id(),
                             stored.participant_id());
        if (!audited.ok()) return audited.status();
        *response->mutable_consent() = std::move(stored);
        return StoreIdempotentResponse(tx, call, *response);
      });
  AuditIfRefused(authorizer_, *context, *caller, "RecordConsent", refusal);
  return ToGrpc(status);
}

grpc::Status ConsentService::GetConsent(grpc::ServerContext* context,
                                        const v1::GetConsentRequest* request,
                                        v1::GetConsentResponse* response) {
  auto caller = authorizer_.Authorize(*context, "GetConsent");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckUuid(request->consent_id(), "consent_id", v);
  if (!v.empty()) return ToGrpc(Invalid(v));
  const bool peer = PeerOnly(*caller);
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        auto consent = store::GetConsent(tx, request->consent_id());
        if (!consent) return absl::NotFoundError("no such consent");
        if (peer) {
          auto matched =
              matches_->IsActivelyMatched(tx, caller->subject, consent->participant_id());
          if (!matched.ok()) return matched.status();
          if (!*matched) {
            refusal = {true, "consent", consent->consent_id(), consent->participant_id()};
            return absl::NotFoundError("no such consent");
          }
        }
        auto audited = Audit(tx, *caller, *context, "GetConsent", "consent", consent->consent_id(),
                             consent->participant_id());
        if (!audited.ok()) return audited.status();
        *response->mutable_consent() = std::move(*consent);
        return absl::OkStatus();
      });
  AuditIfRefused(authorizer_, *context, *caller, "GetConsent", refusal);
  return ToGrpc(status);
}

grpc::Status ConsentService::ListConsents(grpc::ServerContext* context,
                                          const v1::ListConsentsRequest* request,
                                          v1::ListConsentsResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ListConsents");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckId(request->participant_id(), "participant_id", v);
  std::vector<std::string> statuses;
  for (int i = 0; i < request->statuses_size(); ++i) {
    const int s = request->statuses(i);
    if (s == v1::CONSENT_STATUS_UNSPECIFIED || !v1::ConsentStatus_IsValid(s)) {
      v.push_back({absl::StrCat("statuses[", i, "]"), "unspecified or unknown status"});
    } else {
      statuses.push_back(store::StatusText(s));
    }
  }
  const int limit = PageSize(request->page_size(), v);
  const std::string list =
      absl::StrCat("ListConsents:", request->participant_id(), ":", absl::StrJoin(statuses, ","));
  auto cursor = DecodeCursor(list, request->page_token());
  if (!cursor.ok()) v.push_back({"page_token", "not a token of this list or these filters"});
  if (!v.empty()) return ToGrpc(Invalid(v));
  const bool peer = PeerOnly(*caller);
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        if (peer) {
          auto matched =
              matches_->IsActivelyMatched(tx, caller->subject, request->participant_id());
          if (!matched.ok()) return matched.status();
          if (!*matched) {
            refusal = {true, "participant", request->participant_id(), request->participant_id()};
            return absl::PermissionDeniedError(kNotMatched);
          }
        }
        store::ConsentPage page = store::ListConsents(tx, request->participant_id(), statuses,
                                                      cursor->micros, cursor->id, limit);
        auto audited = Audit(tx, *caller, *context, "ListConsents", "participant",
                             request->participant_id(), request->participant_id());
        if (!audited.ok()) return audited.status();
        if (page.more && !page.consents.empty()) {
          response->set_next_page_token(EncodeCursor(list, page.consents.back().created_at(),
                                                     page.consents.back().consent_id()));
        }
        for (auto& c : page.consents) *response->add_consents() = std::move(c);
        return absl::OkStatus();
      });
  AuditIfRefused(authorizer_, *context, *caller, "ListConsents", refusal);
  return ToGrpc(status);
}

grpc::Status ConsentService::RevokeConsent(grpc::ServerContext* context,
                                           const v1::RevokeConsentRequest* request,
                                           v1::RevokeConsentResponse* response) {
  auto caller = authorizer_.Authorize(*context, "RevokeConsent");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckUuid(request->consent_id(), "consent_id", v);
  if (absl::StripAsciiWhitespace(request->reason()).empty()) {
    v.push_back({"reason", "required (not only whitespace)"});
  } else if (request->reason().size() > 1000) {
    v.push_back({"reason", "at most 1000 characters"});
  }
  if (!v.empty()) return ToGrpc(Invalid(v));
  const bool peer = PeerOnly(*caller);
  const absl::Time now = absl::Now();
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        auto consent = store::GetConsent(tx, request->consent_id());
        if (!consent) return absl::NotFoundError("no such consent");
        if (peer) {
          auto matched =
              matches_->IsActivelyMatched(tx, caller->subject, consent->participant_id());
          if (!matched.ok()) return matched.status();
          refusal = {true, "consent", consent->consent_id(), consent->participant_id()};
          if (!*matched) return absl::NotFoundError("no such consent");
          // Only what they could have recorded: revoking more would also end sharing with
          // others (a consent to a clinician for peer support and treatment, say).
          if (!PeerAgreementProblem(*consent, caller->subject).empty()) {
            return absl::PermissionDeniedError(
                "a peer supporter may revoke only an agreement to peer involvement (directive "
                "PERMIT, purposes exactly PEER_SUPPORT, recipient the role peer_supporter or "
                "themselves)");
          }
          refusal.refused = false;
        }
        if (consent->status() == v1::CONSENT_STATUS_REVOKED) {
          *response->mutable_consent() = std::move(*consent);
          return absl::OkStatus();
        }
        // Also when its period has ended but the expiry sweeper has not recorded it yet: a
        // revocation would have no effect, and its event would stand in for the expiry's.
        if (consent->status() == v1::CONSENT_STATUS_EXPIRED ||
            (consent->has_valid_until() && FromProtoTimestamp(consent->valid_until()) <= now)) {
          return absl::FailedPreconditionError(
              "the consent has expired; there is nothing to revoke");
        }
        auto revoked = store::RevokeConsent(tx, request->consent_id(), caller->subject,
                                            request->reason(), now);
        if (!revoked) {
          // Changed since read: revoked by a concurrent call (return it) or expired meanwhile.
          auto again = store::GetConsent(tx, request->consent_id());
          if (again && again->status() == v1::CONSENT_STATUS_REVOKED) {
            *response->mutable_consent() = std::move(*again);
            return absl::OkStatus();
          }
          return absl::AbortedError("the consent changed during the call; retry");
        }
        v1::ConsentRevokedEvent event;
        event.set_consent_id(revoked->consent_id());
        event.set_participant_id(revoked->participant_id());
        *event.mutable_recipient() = revoked->recipient();
        *event.mutable_purposes() = revoked->purposes();
        *event.mutable_data_categories() = revoked->data_categories();
        event.set_directive(revoked->directive());
        event.set_revoked_by(caller->subject);
        event.set_revoked_by_role(peer ? "peer_supporter" : ActingRole(*caller));
        *event.mutable_revoked_at() = revoked->revoked_at();
        if (absl::Status s = AppendEvent(tx, caller->agency_id, revoked->consent_id(), event);
            !s.ok()) {
          return s;
        }
        auto audited = Audit(tx, *caller, *context, "RevokeConsent", "consent",
                             revoked->consent_id(), revoked->participant_id());
        if (!audited.ok()) return audited.status();
        *response->mutable_consent() = std::move(*revoked);
        return absl::OkStatus();
      });
  AuditIfRefused(authorizer_, *context, *caller, "RevokeConsent", refusal);
  return ToGrpc(status);
}

grpc::ServerUnaryReactor* ConsentService::CheckAccess(grpc::CallbackServerContext* context,
                                                      const v1::CheckAccessRequest* request,
                                                      v1::CheckAccessResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto caller = authorizer_.Authorize(*context, "CheckAccess");
  if (!caller.ok()) {
    reactor->Finish(ToGrpc(caller.status()));
    return reactor;
  }
  Violations v;
  CheckId(request->participant_id(), "participant_id", v);
  CheckCategory(request->data_category(), "data_category", v);
  CheckPurpose(request->purpose(), "purpose", v);
  const bool any_accessor =
      HasAny(*caller, {kService, kClinician, kCaseManager, kSupervisor, kProgramAdmin});
  Accessor accessor;
  switch (request->accessor_case()) {
    case v1::CheckAccessRequest::kActor:
      CheckActor(request->actor(), "actor", v);
      accessor = AccessorOfActor(request->actor());
      break;
    case v1::CheckAccessRequest::kRecipient:
      CheckRecipient(request->recipient(), "recipient", v);
      accessor = AccessorOfRecipient(request->recipient());
      break;
    default:
      if (caller->Has(kService) && caller->roles.size() == 1) {
        v.push_back({"accessor", "required for a service caller (actor or recipient)"});
      }
      accessor = AccessorOfCaller(*caller);
  }
  if (!v.empty()) {
    reactor->Finish(ToGrpc(Invalid(v)));
    return reactor;
  }
  if (!any_accessor && request->accessor_case() != v1::CheckAccessRequest::ACCESSOR_NOT_SET) {
    authorizer_.AuditRefusal(*context, *caller, "CheckAccess", "participant",
                             request->participant_id(), request->participant_id());
    reactor->Finish(ToGrpc(absl::PermissionDeniedError(
        "peer supporters and integrations may check access only for themselves (accessor "
        "unset)")));
    return reactor;
  }
  const bool peer = PeerOnly(*caller);
  const std::string agency = caller->agency_id;
  auto from_database = [this, reactor, context, request, response, caller = *std::move(caller),
                        accessor]() {
    reactor->Finish(DecideFromDatabase(*context, caller, *request, accessor, *response));
  };
  // A peer supporter's relationship is read with the inputs, every time. A participant not
  // cached is read at once: that read is authoritative and needs no barrier, so a miss costs one
  // database round trip.
  if (cache_ == nullptr || peer) {
    workers_->Post(std::move(from_database));
    return reactor;
  }
  // The hot path: once the cache is current, a cached decision is answered on the cache's
  // thread; what was found stands unless something was invalidated since (then it is looked up
  // again, and a participant dropped meanwhile is read from the database). One resting on an
  // emergency access is audited as break-glass, in a transaction. A participant not cached is
  // read at once (done(false) below).
  const std::string subject = accessor.person_subject;
  DecisionCache::FoundCallback answer = [this, reactor, request, response, agency,
                                         accessor = std::move(accessor),
                                         from_database = std::move(from_database)](
                                            bool current, DecisionCache::Found found) mutable {
    if (current) {
      auto inputs = cache_->Generation() == found.generation
                        ? std::move(found.inputs)
                        : cache_->Find(agency, request->participant_id(), accessor.person_subject);
      if (inputs != nullptr) {
        const absl::Time now = absl::Now();
        const AccessDecision decision =
            DecideAccess(inputs->consents, inputs->grants, accessor,
                         {request->data_category(), request->purpose()}, now);
        if (decision.reason != v1::ACCESS_REASON_PERMITTED_BY_EMERGENCY_ACCESS) {
          decided_from_cache_->Increment();
          FillDecision(decision, now, *response);
          reactor->Finish(grpc::Status::OK);
          return;
        }
      }
    }
    workers_->Post(std::move(from_database));
  };
  if (!cache_->AfterBarrierIfCached(agency, request->participant_id(), subject, answer)) {
    answer(false, {});
  }
  return reactor;
}

grpc::Status ConsentService::DecideFromDatabase(const grpc::CallbackServerContext& context,
                                                const Identity& caller,
                                                const v1::CheckAccessRequest& request,
                                                const Accessor& accessor,
                                                v1::CheckAccessResponse& response) {
  decided_from_database_->Increment();
  const bool peer = PeerOnly(caller);
  const absl::Time now = absl::Now();
  const AccessQuery query{request.data_category(), request.purpose()};
  // One round trip, nothing written (a peer supporter's relationship is read with the inputs);
  // the inputs go to the cache unless a change was announced while they were read.
  const uint64_t generation = cache_ != nullptr ? cache_->Generation() : 0;
  bool matched = true;
  auto read = context_.db.RunWithoutTransaction(
      [&](pqxx::nontransaction& tx) -> absl::StatusOr<AccessDecision> {
        std::optional<store::DecisionInputs> inputs;
        if (peer) {
          inputs = store::ReadPeerDecisionInputs(tx, caller.agency_id, request.participant_id(),
                                                 accessor.person_subject);
          matched = inputs.has_value();
          if (!matched) return AccessDecision{};
        } else {
          inputs = store::ReadDecisionInputs(tx, caller.agency_id, request.participant_id(),
                                             accessor.person_subject);
        }
        AccessDecision decision =
            DecideAccess(inputs->consents, inputs->grants, accessor, query, now);
        if (cache_ != nullptr) {
          cache_->Fill(generation, caller.agency_id, request.participant_id(),
                       accessor.person_subject, *std::move(inputs));
        }
        return decision;
      });
  if (!read.ok()) return ToGrpc(read.status());
  if (!matched) {
    authorizer_.AuditRefusal(context, caller, "CheckAccess", "participant",
                             request.participant_id(), request.participant_id());
    return ToGrpc(absl::PermissionDeniedError(kNotMatched));
  }
  if (read->reason != v1::ACCESS_REASON_PERMITTED_BY_EMERGENCY_ACCESS) {
    FillDecision(*read, now, response);
    return grpc::Status::OK;
  }
  // A permit resting on an emergency access is audited as break-glass: decided again inside the
  // transaction that writes the audit row.
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller.agency_id, [&](pqxx::work& tx) -> absl::Status {
        if (peer) {
          auto matched = matches_->IsActivelyMatched(tx, caller.subject, request.participant_id());
          if (!matched.ok()) return matched.status();
          if (!*matched) {
            refusal = {true, "participant", request.participant_id(), request.participant_id()};
            return absl::PermissionDeniedError(kNotMatched);
          }
        }
        const store::DecisionInputs inputs = store::LoadDecisionInputs(
            tx, request.participant_id(), accessor.person_subject, /*lock=*/false);
        const AccessDecision decision =
            DecideAccess(inputs.consents, inputs.grants, accessor, query, now);
        if (decision.reason == v1::ACCESS_REASON_PERMITTED_BY_EMERGENCY_ACCESS) {
          auto audited = Audit(tx, caller, context, "CheckAccess", "emergency_access",
                               decision.emergency_access_id, request.participant_id(),
                               AuditDecision::kBreakGlass);
          if (!audited.ok()) return audited.status();
        }
        FillDecision(decision, now, response);
        if (decision.reason == v1::ACCESS_REASON_PERMITTED_BY_EMERGENCY_ACCESS) {
          // The grant's concern scopes what the caller may return.
          auto grant = store::GetEmergencyAccess(tx, decision.emergency_access_id, false);
          if (!grant) return absl::AbortedError("the emergency access ended meanwhile; retry");
          response.set_concern_id(grant->concern_id());
        }
        return absl::OkStatus();
      });
  AuditIfRefused(authorizer_, context, caller, "CheckAccess", refusal);
  return ToGrpc(status);
}

grpc::Status ConsentService::CheckGates(grpc::ServerContext* context,
                                        const v1::CheckGatesRequest* request,
                                        v1::CheckGatesResponse* response) {
  auto caller = authorizer_.Authorize(*context, "CheckGates");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckId(request->participant_id(), "participant_id", v);
  if (request->gates_size() > 20) v.push_back({"gates", "at most 20 gates"});
  std::vector<std::string> gates;
  std::set<std::string> seen;
  for (int i = 0; i < request->gates_size(); ++i) {
    const std::string& g = request->gates(i);
    const auto& known = KnownGates();
    if (std::find(known.begin(), known.end(), g) == known.end()) {
      v.push_back({absl::StrCat("gates[", i, "]"),
                   absl::StrCat("unknown gate; known: ", absl::StrJoin(known, ", "))});
    } else if (!seen.insert(g).second) {
      v.push_back({absl::StrCat("gates[", i, "]"), "repeated gate"});
    } else {
      gates.push_back(g);
    }
  }
  if (!v.empty()) return ToGrpc(Invalid(v));
  if (gates.empty()) gates = KnownGates();
  const bool peer = PeerOnly(*caller);
  const absl::Time now = absl::Now();
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        if (peer) {
          auto matched =
              matches_->IsActivelyMatched(tx, caller->subject, request->participant_id());
          if (!matched.ok()) return matched.status();
          if (!*matched) {
            refusal = {true, "participant", request->participant_id(), request->participant_id()};
            return absl::PermissionDeniedError(kNotMatched);
          }
        }
        const store::DecisionInputs inputs =
            store::LoadDecisionInputs(tx, request->participant_id(), "", /*lock=*/false);
        bool all = true;
        for (const std::string& gate : gates) {
          const GateOutcome g = EvaluateGate(gate, inputs.consents, now);
          auto* r = response->add_results();
          r->set_gate(g.gate);
          r->set_held(g.held);
          r->set_reason(g.reason);
          r->set_message(g.message);
          for (const auto& id : g.consent_ids) r->add_consent_ids(id);
          if (g.held && g.held_until != absl::InfiniteFuture()) {
            *r->mutable_held_until() = ToProtoTimestamp(g.held_until);
          }
          if (g.reason == v1::GATE_REASON_CONSENT_NOT_YET_VALID) {
            *r->mutable_holds_from() = ToProtoTimestamp(g.holds_from);
          }
          all = all && g.held;
        }
        response->set_all_held(all);
        *response->mutable_evaluated_at() = ToProtoTimestamp(now);
        // The answer tells of the participant's consents (which hold, their ids): a read of their
        // data, audited like ListConsents.
        auto audited = Audit(tx, *caller, *context, "CheckGates", "participant",
                             request->participant_id(), request->participant_id());
        return audited.ok() ? absl::OkStatus() : audited.status();
      });
  AuditIfRefused(authorizer_, *context, *caller, "CheckGates", refusal);
  return ToGrpc(status);
}

grpc::Status ConsentService::ShareInformation(grpc::ServerContext* context,
                                              const v1::ShareInformationRequest* request,
                                              v1::ShareInformationResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ShareInformation");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckId(request->participant_id(), "participant_id", v);
  Accessor accessor;
  v1::Recipient recorded_recipient;
  switch (request->to_case()) {
    case v1::ShareInformationRequest::kToPerson:
      CheckActor(request->to_person(), "to_person", v);
      accessor = AccessorOfActor(request->to_person());
      recorded_recipient.set_kind(v1::RECIPIENT_KIND_PERSON);
      recorded_recipient.set_id(request->to_person().subject());
      break;
    case v1::ShareInformationRequest::kToRecipient:
      CheckRecipient(request->to_recipient(), "to_recipient", v);
      accessor = AccessorOfRecipient(request->to_recipient());
      recorded_recipient = request->to_recipient();
      break;
    default:
      v.push_back({"to", "required: to_person or to_recipient"});
  }
  CheckPurpose(request->purpose(), "purpose", v);
  CheckCategories(request->data_categories(), "data_categories", 6, v);
  const bool service_caller =
      caller->Has(kService) &&
      !HasAny(*caller, {kClinician, kCaseManager, kSupervisor, kProgramAdmin, kPeerSupporter});
  if (service_caller && !request->has_on_behalf_of()) {
    v.push_back({"on_behalf_of", "required for a service caller"});
  } else if (service_caller) {
    CheckActor(request->on_behalf_of(), "on_behalf_of", v);
  } else if (request->has_on_behalf_of()) {
    v.push_back({"on_behalf_of", "only a service caller may set it"});
  }
  AddKeyViolations(request->idempotency_key(), v);
  if (!v.empty()) return ToGrpc(Invalid(v));
  const std::string discloser =
      service_caller ? request->on_behalf_of().subject() : caller->subject;
  const std::string discloser_role =
      service_caller ? (request->on_behalf_of().roles().empty() ? std::string("service")
                                                                : request->on_behalf_of().roles(0))
                     : ActingRole(*caller);
  const bool peer = PeerOnly(*caller);
  const absl::Time now = absl::Now();
  const IdempotentCall call{caller->agency_id, request->idempotency_key(), "ShareInformation",
                            request, caller->subject};
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        if (peer) {
          auto matched =
              matches_->IsActivelyMatched(tx, caller->subject, request->participant_id());
          if (!matched.ok()) return matched.status();
          if (!*matched) {
            refusal = {true, "participant", request->participant_id(), request->participant_id()};
            return absl::PermissionDeniedError(kNotMatched);
          }
        }
        auto replayed = ClaimIdempotencyKey(tx, call, *response);
        if (!replayed.ok()) return replayed.status();
        if (*replayed) return absl::OkStatus();
        const store::DecisionInputs inputs = store::LoadDecisionInputs(
            tx, request->participant_id(), accessor.person_subject, /*lock=*/true);
        // Group permitted categories by what permitted them, in request order.
        std::vector<std::pair<AccessDecision, std::vector<int>>> groups;
        for (int category : request->data_categories()) {
          const AccessDecision d =
              DecideAccess(inputs.consents, inputs.grants, accessor,
                           {static_cast<DataCategory>(category), request->purpose()}, now);
          if (!d.permit) {
            refusal = {true, "participant", request->participant_id(), request->participant_id()};
            google::rpc::ErrorInfo info;
            info.set_domain("consent.peerpath");
            info.set_reason("ACCESS_DENIED");
            (*info.mutable_metadata())["data_category"] = v1::DataCategory_Name(category);
            (*info.mutable_metadata())["access_reason"] = v1::AccessReason_Name(d.reason);
            if (!d.consent_id.empty()) (*info.mutable_metadata())["consent_id"] = d.consent_id;
            absl::Status denied = absl::PermissionDeniedError(absl::StrCat(
                "sharing ", v1::DataCategory_Name(category), " is not permitted: ", d.message));
            denied.SetPayload("type.googleapis.com/google.rpc.ErrorInfo",
                              absl::Cord(info.SerializeAsString()));
            return denied;
          }
          bool placed = false;
          for (auto& [decision, categories] : groups) {
            if (decision.consent_id == d.consent_id &&
                decision.emergency_access_id == d.emergency_access_id) {
              categories.push_back(category);
              placed = true;
            }
          }
          if (!placed) groups.push_back({d, {category}});
        }
        for (const auto& [decision, categories] : groups) {
          v1::Disclosure d;
          d.set_participant_id(request->participant_id());
          d.set_disclosed_by(discloser);
          d.set_disclosed_by_role(discloser_role);
          *d.mutable_recipient() = recorded_recipient;
          d.set_purpose(request->purpose());
          bool part2 = false;
          for (int c : categories) {
            d.add_data_categories(static_cast<v1::DataCategory>(c));
            part2 = part2 || c == v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS;
          }
          d.set_consent_id(decision.consent_id);
          d.set_emergency_access_id(decision.emergency_access_id);
          d.set_redisclosure_notice(part2);
          *d.mutable_disclosed_at() = ToProtoTimestamp(now);
          v1::Disclosure stored = store::InsertDisclosure(tx, caller->agency_id, d);
          v1::DisclosureRecordedEvent event;
          event.set_disclosure_id(stored.disclosure_id());
          event.set_participant_id(stored.participant_id());
          event.set_disclosed_by(stored.disclosed_by());
          event.set_disclosed_by_role(stored.disclosed_by_role());
          *event.mutable_recipient() = stored.recipient();
          event.set_purpose(stored.purpose());
          *event.mutable_data_categories() = stored.data_categories();
          event.set_consent_id(stored.consent_id());
          event.set_emergency_access_id(stored.emergency_access_id());
          event.set_redisclosure_notice(stored.redisclosure_notice());
          *event.mutable_disclosed_at() = stored.disclosed_at();
          if (absl::Status s = AppendEvent(tx, caller->agency_id, stored.disclosure_id(), event);
              !s.ok()) {
            return s;
          }
          auto audited = Audit(tx, *caller, *context, "ShareInformation", "disclosure",
                               stored.disclosure_id(), stored.participant_id(),
                               stored.emergency_access_id().empty() ? AuditDecision::kAllowed
                                                                    : AuditDecision::kBreakGlass);
          if (!audited.ok()) return audited.status();
          if (stored.redisclosure_notice()) response->set_redisclosure_notice(true);
          *response->add_disclosures() = std::move(stored);
        }
        if (response->redisclosure_notice()) {
          response->set_redisclosure_notice_text(kRedisclosureNotice);
        }
        return StoreIdempotentResponse(tx, call, *response);
      });
  if (refusal.refused) {
    response->Clear();
    authorizer_.AuditRefusal(*context, *caller, "ShareInformation", refusal.object_type,
                             refusal.object_id, refusal.participant_id);
  }
  return ToGrpc(status);
}

grpc::Status ConsentService::ListDisclosures(grpc::ServerContext* context,
                                             const v1::ListDisclosuresRequest* request,
                                             v1::ListDisclosuresResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ListDisclosures");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckId(request->participant_id(), "participant_id", v);
  absl::Time from = absl::InfinitePast();
  absl::Time to = absl::InfiniteFuture();
  if (request->period().has_start_time()) from = FromProtoTimestamp(request->period().start_time());
  if (request->period().has_end_time()) to = FromProtoTimestamp(request->period().end_time());
  CheckTimeRange(request->period(), "period", v);
  const int limit = PageSize(request->page_size(), v);
  const std::string list = absl::StrCat("ListDisclosures:", request->participant_id(), ":",
                                        absl::ToUnixMicros(from), ":", absl::ToUnixMicros(to));
  auto cursor = DecodeCursor(list, request->page_token());
  if (!cursor.ok()) v.push_back({"page_token", "not a token of this list or these filters"});
  if (!v.empty()) return ToGrpc(Invalid(v));
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        store::DisclosurePage page = store::ListDisclosures(tx, request->participant_id(), from, to,
                                                            cursor->micros, cursor->id, limit);
        auto audited = Audit(tx, *caller, *context, "ListDisclosures", "participant",
                             request->participant_id(), request->participant_id());
        if (!audited.ok()) return audited.status();
        if (page.more && !page.disclosures.empty()) {
          response->set_next_page_token(EncodeCursor(list, page.disclosures.back().disclosed_at(),
                                                     page.disclosures.back().disclosure_id()));
        }
        for (auto& d : page.disclosures) *response->add_disclosures() = std::move(d);
        return absl::OkStatus();
      });
  return ToGrpc(status);
}

grpc::Status ConsentService::RequestEmergencyAccess(
    grpc::ServerContext* context, const v1::RequestEmergencyAccessRequest* request,
    v1::RequestEmergencyAccessResponse* response) {
  auto caller = authorizer_.Authorize(*context, "RequestEmergencyAccess");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckId(request->participant_id(), "participant_id", v);
  CheckUuid(request->concern_id(), "concern_id", v);
  const size_t reason_length = absl::StripAsciiWhitespace(request->reason()).size();
  if (reason_length < 10 || request->reason().size() > 1000) {
    v.push_back({"reason", "10 to 1000 characters: why the data is needed now"});
  }
  CheckCategories(request->data_categories(), "data_categories", 5, v);
  for (int i = 0; i < request->data_categories_size(); ++i) {
    if (request->data_categories(i) == v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS) {
      v.push_back({absl::StrCat("data_categories[", i, "]"),
                   "substance-use treatment records are never opened by emergency access"});
    }
  }
  absl::Duration duration = absl::Hours(4);
  if (request->has_duration()) {
    const absl::Duration asked = absl::Seconds(request->duration().seconds()) +
                                 absl::Nanoseconds(request->duration().nanos());
    if (request->duration().nanos() < -999999999 || request->duration().nanos() > 999999999) {
      v.push_back({"duration", "nanos must be between -999,999,999 and 999,999,999"});
    } else if (asked < absl::ZeroDuration() || asked > absl::Hours(24) ||
               (asked > absl::ZeroDuration() && asked < absl::Seconds(1))) {
      v.push_back({"duration", "must be 0 (default 4 hours) or between 1 second and 24 hours"});
    } else if (asked > absl::ZeroDuration()) {
      duration = asked;
    }
  }
  AddKeyViolations(request->idempotency_key(), v);
  if (!v.empty()) return ToGrpc(Invalid(v));
  const absl::Time now = absl::Now();
  const IdempotentCall call{caller->agency_id, request->idempotency_key(), "RequestEmergencyAccess",
                            request, caller->subject};
  bool granted = false;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        auto replayed = ClaimIdempotencyKey(tx, call, *response);
        if (!replayed.ok()) return replayed.status();
        if (*replayed) return absl::OkStatus();
        if (absl::Status open =
                concerns_->CheckOpenConcern(tx, request->participant_id(), request->concern_id());
            !open.ok()) {
          return open;
        }
        v1::EmergencyAccess access;
        access.set_participant_id(request->participant_id());
        access.set_clinician_id(caller->subject);
        access.set_concern_id(request->concern_id());
        access.set_reason(request->reason());
        *access.mutable_data_categories() = request->data_categories();
        *access.mutable_expires_at() = ToProtoTimestamp(now + duration);
        v1::EmergencyAccess stored =
            store::InsertEmergencyAccess(tx, caller->agency_id, access, now);
        v1::EmergencyAccessGrantedEvent event;
        event.set_emergency_access_id(stored.emergency_access_id());
        event.set_participant_id(stored.participant_id());
        event.set_clinician_id(stored.clinician_id());
        event.set_concern_id(stored.concern_id());
        *event.mutable_data_categories() = stored.data_categories();
        *event.mutable_granted_at() = stored.granted_at();
        *event.mutable_expires_at() = stored.expires_at();
        if (absl::Status s =
                AppendEvent(tx, caller->agency_id, stored.emergency_access_id(), event);
            !s.ok()) {
          return s;
        }
        auto audited = Audit(tx, *caller, *context, "RequestEmergencyAccess", "emergency_access",
                             stored.emergency_access_id(), stored.participant_id(),
                             AuditDecision::kBreakGlass);
        if (!audited.ok()) return audited.status();
        *response->mutable_emergency_access() = std::move(stored);
        granted = true;
        return StoreIdempotentResponse(tx, call, *response);
      });
  if (status.ok() && granted) break_glass_->Increment();
  return ToGrpc(status);
}

grpc::Status ConsentService::ListEmergencyAccesses(grpc::ServerContext* context,
                                                   const v1::ListEmergencyAccessesRequest* request,
                                                   v1::ListEmergencyAccessesResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ListEmergencyAccesses");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  store::EmergencyAccessFilter filter;
  filter.include_reviewed = request->include_reviewed();
  filter.participant_id = request->participant_id();
  filter.clinician_id = request->clinician_id();
  if (request->granted().has_start_time()) {
    filter.granted_from = FromProtoTimestamp(request->granted().start_time());
  }
  if (request->granted().has_end_time()) {
    filter.granted_to = FromProtoTimestamp(request->granted().end_time());
  }
  CheckTimeRange(request->granted(), "granted", v);
  for (int i = 0; i < request->states_size(); ++i) {
    const int s = request->states(i);
    if (s == v1::EMERGENCY_ACCESS_STATE_UNSPECIFIED || !v1::EmergencyAccessState_IsValid(s)) {
      v.push_back({absl::StrCat("states[", i, "]"), "unspecified or unknown state"});
    } else {
      filter.states.push_back(store::StateText(s));
    }
  }
  const int limit = PageSize(request->page_size(), v);
  v1::ListEmergencyAccessesRequest fingerprint = *request;
  fingerprint.clear_page_size();
  fingerprint.clear_page_token();
  const std::string list = absl::StrCat("ListEmergencyAccesses:", RequestFingerprint(fingerprint));
  auto cursor = DecodeCursor(list, request->page_token());
  if (!cursor.ok()) v.push_back({"page_token", "not a token of this list or these filters"});
  if (!v.empty()) return ToGrpc(Invalid(v));
  std::string visible;
  if (!caller->Has(kProgramAdmin)) {
    if (!filter.clinician_id.empty() && filter.clinician_id != caller->subject) {
      authorizer_.AuditRefusal(*context, *caller, "ListEmergencyAccesses", "clinician",
                               filter.clinician_id, "");
      return ToGrpc(
          absl::PermissionDeniedError("a clinician may list only their own emergency accesses"));
    }
    filter.clinician_id = caller->subject;
    visible = caller->subject;
  }
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        store::EmergencyAccessPage page =
            store::ListEmergencyAccesses(tx, filter, visible, cursor->micros, cursor->id, limit);
        auto audited =
            Audit(tx, *caller, *context, "ListEmergencyAccesses", "", "", filter.participant_id);
        if (!audited.ok()) return audited.status();
        response->set_unreviewed_count(page.unreviewed);
        if (page.more && !page.accesses.empty()) {
          response->set_next_page_token(EncodeCursor(list, page.accesses.back().granted_at(),
                                                     page.accesses.back().emergency_access_id()));
        }
        for (auto& a : page.accesses) *response->add_emergency_accesses() = std::move(a);
        return absl::OkStatus();
      });
  return ToGrpc(status);
}

grpc::Status ConsentService::ReviewEmergencyAccess(grpc::ServerContext* context,
                                                   const v1::ReviewEmergencyAccessRequest* request,
                                                   v1::ReviewEmergencyAccessResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ReviewEmergencyAccess");
  if (!caller.ok()) return ToGrpc(caller.status());
  Violations v;
  CheckUuid(request->emergency_access_id(), "emergency_access_id", v);
  const int outcome = request->outcome();
  if (outcome == v1::EMERGENCY_ACCESS_REVIEW_OUTCOME_UNSPECIFIED ||
      !v1::EmergencyAccessReviewOutcome_IsValid(outcome)) {
    v.push_back({"outcome", "required: APPROPRIATE, INAPPROPRIATE or NEEDS_FOLLOW_UP"});
  }
  if (request->note().size() > 2000) {
    v.push_back({"note", "at most 2000 characters"});
  } else if ((outcome == v1::EMERGENCY_ACCESS_REVIEW_OUTCOME_INAPPROPRIATE ||
              outcome == v1::EMERGENCY_ACCESS_REVIEW_OUTCOME_NEEDS_FOLLOW_UP) &&
             absl::StripAsciiWhitespace(request->note()).empty()) {
    v.push_back({"note", "required for INAPPROPRIATE and NEEDS_FOLLOW_UP"});
  }
  if (!v.empty()) return ToGrpc(Invalid(v));
  const absl::Time now = absl::Now();
  Refusal refusal;
  absl::Status status =
      context_.db.TransactForAgency(caller->agency_id, [&](pqxx::work& tx) -> absl::Status {
        auto access = store::GetEmergencyAccess(tx, request->emergency_access_id(), true);
        if (!access) return absl::NotFoundError("no such emergency access");
        if (access->clinician_id() == caller->subject) {
          refusal = {true, "emergency_access", access->emergency_access_id(),
                     access->participant_id()};
          return absl::PermissionDeniedError("nobody may review their own emergency access");
        }
        if (access->has_reviewed_at()) {
          if (access->reviewed_by() == caller->subject &&
              static_cast<int>(access->review_outcome()) == outcome &&
              access->review_note() == request->note()) {
            *response->mutable_emergency_access() = std::move(*access);
            return absl::OkStatus();
          }
          return absl::FailedPreconditionError("the emergency access was already reviewed");
        }
        v1::EmergencyAccess reviewed = store::ReviewEmergencyAccess(
            tx, request->emergency_access_id(), caller->subject, store::OutcomeText(outcome),
            request->note(), outcome == v1::EMERGENCY_ACCESS_REVIEW_OUTCOME_INAPPROPRIATE, now);
        auto audited = Audit(tx, *caller, *context, "ReviewEmergencyAccess", "emergency_access",
                             reviewed.emergency_access_id(), reviewed.participant_id());
        if (!audited.ok()) return audited.status();
        *response->mutable_emergency_access() = std::move(reviewed);
        return absl::OkStatus();
      });
  AuditIfRefused(authorizer_, *context, *caller, "ReviewEmergencyAccess", refusal);
  return ToGrpc(status);
}

}  // namespace peerpath::consent
