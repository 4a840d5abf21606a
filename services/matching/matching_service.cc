#include "services/matching/matching_service.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/audit.h"
#include "common/idempotency.h"
#include "common/identifiers.h"
#include "common/pagination.h"
#include "common/parallel.h"
#include "common/status.h"
#include "common/time_util.h"
#include "peerpath/matching/v1/events.pb.h"
#include "services/matching/activity.h"
#include "services/matching/assignment.h"
#include "services/matching/model.h"
#include "services/matching/store.h"

namespace peerpath::matching {
namespace {

using Tx = pqxx::work;

// The agency's calendar day. Agencies have no time zone setting yet: UTC.
absl::CivilDay Today() { return absl::ToCivilDay(absl::Now(), absl::UTCTimeZone()); }

common::v1::Date ToDate(absl::CivilDay day) {
  common::v1::Date d;
  d.set_year(static_cast<int32_t>(day.year()));
  d.set_month(day.month());
  d.set_day(day.day());
  return d;
}

bool IsCoordinator(const Identity& caller) {
  return caller.Has(Role::kProgramAdmin) || caller.Has(Role::kSupervisor);
}

// The role an audit row is written under: the most privileged the caller holds.
std::string AuditRole(const Identity& caller) {
  for (Role role :
       {Role::kProgramAdmin, Role::kSupervisor, Role::kCaseManager, Role::kPeerSupporter,
        Role::kService, Role::kClinician, Role::kIntegration, Role::kOperations}) {
    if (caller.Has(role)) return RoleName(role);
  }
  return "";
}

AuditEntry AllowedEntry(const Identity& caller, const std::string& method,
                        const std::string& object_type, const std::string& object_id,
                        const std::string& participant_id) {
  return {.actor = caller.subject,
          .actor_role = AuditRole(caller),
          .action = "matching." + method,
          .object_type = object_type,
          .object_id = object_id,
          .participant_id = participant_id,
          .decision = AuditDecision::kAllowed,
          .request_id = ""};
}

absl::Status Audit(Tx& tx, const Identity& caller, const std::string& method,
                   const std::string& object_type, const std::string& object_id,
                   const std::string& participant_id) {
  return AppendAudit(tx, caller.agency_id,
                     AllowedEntry(caller, method, object_type, object_id, participant_id))
      .status();
}

absl::Status RequireUuid(const std::string& value, const std::string& field) {
  if (value.empty()) return InvalidArgument(field + " is required", {{field, "required"}});
  if (!IsUuid(value)) return InvalidArgument(field + " is malformed", {{field, "must be a UUID"}});
  return absl::OkStatus();
}

absl::Status Invalid(const std::string& what, const std::vector<FieldViolation>& violations) {
  if (violations.empty()) return absl::OkStatus();
  std::vector<std::string> fields;
  for (const auto& v : violations) fields.push_back(v.field);
  return InvalidArgument(absl::StrCat("invalid ", what, ": ", absl::StrJoin(fields, ", ")),
                         violations);
}

std::string ListName(const std::string& list, google::protobuf::Message& filters) {
  return absl::StrCat(list, "/", RequestFingerprint(filters));
}

// Whether the caller may see this supporter's wellbeing data (workload, status history) and
// change their profile: program admins, and the supporter's own supervisor.
bool SupervisesOrAdmin(const Identity& caller, const v1::Supporter& s) {
  return caller.Has(Role::kProgramAdmin) ||
         (caller.Has(Role::kSupervisor) && !s.supervisor_subject().empty() &&
          s.supervisor_subject() == caller.subject);
}

bool IsSelf(const Identity& caller, const v1::Supporter& s) {
  return caller.Has(Role::kPeerSupporter) && !s.subject().empty() && s.subject() == caller.subject;
}

v1::MatchStartedEvent StartedEvent(const v1::Match& m, const v1::MatchRequest& r,
                                   const v1::FollowUp& follow_up, bool continuity,
                                   const std::string& supervisor_subject) {
  v1::MatchStartedEvent e;
  e.set_match_id(m.match_id());
  e.set_match_request_id(m.match_request_id());
  e.set_supporter_id(m.supporter_id());
  e.set_supporter_subject(m.supporter_subject());
  e.set_participant_id(m.participant_id());
  e.set_acuity_units(m.units());
  e.set_pathway_key(r.pathway_key());
  e.set_score(m.score());
  e.set_urgency(r.urgency());
  e.set_origin(m.origin());
  e.set_batch_id(m.batch_id());
  e.set_previous_match_id(r.previous_match_id());
  e.set_continuity(continuity);
  *e.mutable_requested_at() = r.requested_at();
  *e.mutable_started_at() = m.started_at();
  e.set_started_by(m.started_by());
  *e.mutable_follow_up_due_on() = follow_up.due_on();
  e.set_supervisor_subject(supervisor_subject);
  return e;
}

v1::MatchEndedEvent EndedEvent(const v1::Match& m, const std::string& rematch_request_id) {
  v1::MatchEndedEvent e;
  e.set_match_id(m.match_id());
  e.set_supporter_id(m.supporter_id());
  e.set_supporter_subject(m.supporter_subject());
  e.set_participant_id(m.participant_id());
  e.set_reason(m.end_reason());
  e.set_acuity_units(m.units());
  *e.mutable_started_at() = m.started_at();
  *e.mutable_ended_at() = m.ended_at();
  e.set_ended_by(m.ended_by());
  e.set_rematch_request_id(rematch_request_id);
  return e;
}

// Why `supporter` may not take a new match of `units` now; empty when eligible.
std::string Ineligibility(const v1::Supporter& s, int units, absl::CivilDay today) {
  if (s.status() == v1::SUPPORTER_STATUS_ON_BREAK) return "the supporter is on break";
  if (s.status() != v1::SUPPORTER_STATUS_ACTIVE) return "the supporter is inactive";
  if (s.subject().empty()) return "the supporter has no account";
  if (!TrainingCurrent(s, today)) return "the supporter's training is not current";
  if (RemainingUnits(s) < units) {
    return absl::StrCat("the supporter is at capacity (", s.units_in_use(), " of ",
                        s.capacity_units(), " units in use, ", units, " needed)");
  }
  return "";
}

// Supporter fields UpdateSupporter may change, and which of them a supervisor may not.
const std::set<std::string>& UpdatablePaths() {
  static const auto* const paths = new std::set<std::string>{"subject",
                                                             "display_name",
                                                             "lived_experience_areas",
                                                             "languages",
                                                             "gender",
                                                             "age_band",
                                                             "region",
                                                             "area_code",
                                                             "meeting_modes",
                                                             "availability",
                                                             "capacity_units",
                                                             "training_status",
                                                             "training_expires_on",
                                                             "supervisor_subject"};
  return *paths;
}

void CopyPath(const std::string& path, const v1::Supporter& from, v1::Supporter& to) {
  if (path == "subject") to.set_subject(from.subject());
  if (path == "display_name") to.set_display_name(from.display_name());
  if (path == "lived_experience_areas") {
    *to.mutable_lived_experience_areas() = from.lived_experience_areas();
  }
  if (path == "languages") *to.mutable_languages() = from.languages();
  if (path == "gender") to.set_gender(from.gender());
  if (path == "age_band") to.set_age_band(from.age_band());
  if (path == "region") to.set_region(from.region());
  if (path == "area_code") to.set_area_code(from.area_code());
  if (path == "meeting_modes") *to.mutable_meeting_modes() = from.meeting_modes();
  if (path == "availability") *to.mutable_availability() = from.availability();
  if (path == "capacity_units") to.set_capacity_units(from.capacity_units());
  if (path == "training_status") to.set_training_status(from.training_status());
  if (path == "training_expires_on") *to.mutable_training_expires_on() = from.training_expires_on();
  if (path == "supervisor_subject") to.set_supervisor_subject(from.supervisor_subject());
}

}  // namespace

const RoleRules& MatchingService::Rules() {
  using enum Role;
  // integration and operations see no personal profile data.
  static const auto* const rules = new RoleRules{
      {"CreateSupporter", {kProgramAdmin}},
      {"GetSupporter", {kProgramAdmin, kSupervisor, kPeerSupporter}},
      {"UpdateSupporter", {kProgramAdmin, kSupervisor}},
      {"ListSupporters", {kProgramAdmin, kSupervisor, kPeerSupporter}},
      {"SetSupporterStatus", {kProgramAdmin, kSupervisor, kPeerSupporter}},
      {"CreateMatchRequest", {kSupervisor, kProgramAdmin, kCaseManager}},
      {"GetMatchRequest", {kSupervisor, kProgramAdmin, kCaseManager}},
      {"ListMatchRequests", {kSupervisor, kProgramAdmin, kCaseManager}},
      {"CancelMatchRequest", {kSupervisor, kProgramAdmin, kCaseManager}},
      {"ProposeMatches", {kSupervisor, kProgramAdmin}},
      {"AssignBatch", {kSupervisor, kProgramAdmin}},
      {"AcceptProposal", {kSupervisor, kProgramAdmin}},
      {"GetMatch", {kSupervisor, kProgramAdmin, kPeerSupporter}},
      {"ListMatches", {kSupervisor, kProgramAdmin, kPeerSupporter}},
      {"EndMatch", {kSupervisor, kProgramAdmin}},
      {"Rematch", {kSupervisor, kProgramAdmin}},
      {"RecordFollowUp", {kSupervisor, kProgramAdmin, kPeerSupporter}},
      {"ListDueFollowUps", {kSupervisor, kProgramAdmin, kPeerSupporter}},
      {"GetSupporterWorkload", {kProgramAdmin, kSupervisor, kPeerSupporter}},
      {"IsActiveSupporter", {kService}},
      {"ListEvents", {kService}},
      {"Subscribe", {kService}},
  };
  return *rules;
}

MatchingService::MatchingService(ServiceContext& context, MatchingOptions options)
    : MatchingServiceBase(authorizer_, events_, context.stopping),
      context_(context),
      authorizer_(context.verifier, "peerpath.matching.v1.MatchingService", Rules(), &context.db),
      events_(context.db),
      checkin_consumer_(MakeCheckInConsumer(context, options.checkin_address)),
      escalation_consumer_(MakeEscalationConsumer(context, options.escalation_address)) {
  if (checkin_consumer_ != nullptr) checkin_consumer_->Start();
  if (escalation_consumer_ != nullptr) escalation_consumer_->Start();
}

MatchingService::~MatchingService() {
  if (checkin_consumer_ != nullptr) checkin_consumer_->Stop();
  if (escalation_consumer_ != nullptr) escalation_consumer_->Stop();
}

// Every handler: authorize, then the body, converted to a gRPC status once.
#define PEERPATH_AUTHORIZE(method)                           \
  auto authorized = authorizer_.Authorize(*context, method); \
  if (!authorized.ok()) return ToGrpc(authorized.status());  \
  const Identity& caller = *authorized

// --- Supporters -------------------------------------------------------------------------------

grpc::Status MatchingService::CreateSupporter(grpc::ServerContext* context,
                                              const v1::CreateSupporterRequest* request,
                                              v1::CreateSupporterResponse* response) {
  PEERPATH_AUTHORIZE("CreateSupporter");
  std::vector<FieldViolation> violations = ValidateSupporter(request->supporter());
  if (absl::Status key = ValidateIdempotencyKey(request->idempotency_key()); !key.ok()) {
    for (auto& v : FieldViolations(key)) violations.push_back(v);
  }
  if (absl::Status bad = Invalid("supporter", violations); !bad.ok()) return ToGrpc(bad);
  return ToGrpc(RunIdempotent(
      context_.db,
      {caller.agency_id, request->idempotency_key(), "CreateSupporter", request, caller.subject},
      *response, [&](Tx& tx, google::protobuf::Message&) -> absl::Status {
        const v1::Supporter& s = request->supporter();
        if (!s.subject().empty() && store::FindSupporterBySubject(tx, s.subject()).has_value()) {
          return absl::AlreadyExistsError("another supporter of the agency has this subject");
        }
        *response->mutable_supporter() =
            store::InsertSupporter(tx, caller.agency_id, s, caller.subject);
        return Audit(tx, caller, "CreateSupporter", "supporter",
                     response->supporter().supporter_id(), "");
      }));
}

grpc::Status MatchingService::GetSupporter(grpc::ServerContext* context,
                                           const v1::GetSupporterRequest* request,
                                           v1::GetSupporterResponse* response) {
  PEERPATH_AUTHORIZE("GetSupporter");
  if (absl::Status bad = RequireUuid(request->supporter_id(), "supporter_id"); !bad.ok()) {
    return ToGrpc(bad);
  }
  absl::Status status =
      context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
        auto s = store::FindSupporter(tx, request->supporter_id(), false);
        if (!s.has_value()) return absl::NotFoundError("supporter not found");
        if (!IsCoordinator(caller) && !IsSelf(caller, *s)) {
          authorizer_.AuditRefusal(*context, caller, "GetSupporter", "supporter",
                                   request->supporter_id(), "");
          return absl::NotFoundError("supporter not found");
        }
        if (SupervisesOrAdmin(caller, *s) || IsSelf(caller, *s)) {
          for (auto& change : store::StatusHistory(tx, s->supporter_id())) {
            *response->add_status_history() = std::move(change);
          }
        }
        *response->mutable_supporter() = std::move(*s);
        return Audit(tx, caller, "GetSupporter", "supporter", request->supporter_id(), "");
      });
  return ToGrpc(status);
}

grpc::Status MatchingService::UpdateSupporter(grpc::ServerContext* context,
                                              const v1::UpdateSupporterRequest* request,
                                              v1::UpdateSupporterResponse* response) {
  PEERPATH_AUTHORIZE("UpdateSupporter");
  std::vector<FieldViolation> violations;
  const v1::Supporter& in = request->supporter();
  if (!IsUuid(in.supporter_id())) {
    violations.push_back({"supporter.supporter_id", "required, a UUID"});
  }
  std::vector<std::string> paths;
  for (const std::string& path : request->update_mask().paths()) {
    if (path == "*") {
      paths.assign(UpdatablePaths().begin(), UpdatablePaths().end());
    } else if (!UpdatablePaths().contains(path)) {
      violations.push_back(
          {"update_mask", absl::StrCat("'", path, "' is not an updatable field",
                                       path == "status" ? " (use SetSupporterStatus)" : "")});
    } else {
      paths.push_back(path);
    }
  }
  if (request->update_mask().paths().empty()) {
    violations.push_back({"update_mask", "required: name the fields to change"});
  }
  if (absl::Status bad = Invalid("update", violations); !bad.ok()) return ToGrpc(bad);
  absl::Status status =
      context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
        auto stored = store::FindSupporter(tx, in.supporter_id(), true);
        if (!stored.has_value()) return absl::NotFoundError("supporter not found");
        if (!SupervisesOrAdmin(caller, *stored)) {
          authorizer_.AuditRefusal(*context, caller, "UpdateSupporter", "supporter",
                                   in.supporter_id(), "");
          return absl::PermissionDeniedError(
              "only the supporter's supervisor or a program admin "
              "may change this profile");
        }
        if (!caller.Has(Role::kProgramAdmin)) {
          for (const auto& path : paths) {
            if (path == "subject" || path == "supervisor_subject") {
              return absl::PermissionDeniedError(
                  absl::StrCat("a supervisor may not change '", path, "'"));
            }
          }
        }
        if (in.version() != 0 && in.version() != stored->version()) {
          return absl::AbortedError(absl::StrCat("the supporter changed meanwhile (version ",
                                                 stored->version(), "); read again and reapply"));
        }
        v1::Supporter merged = *stored;
        for (const auto& path : paths) CopyPath(path, in, merged);
        if (absl::Status bad = Invalid("supporter", ValidateSupporter(merged, paths)); !bad.ok()) {
          return bad;
        }
        if (merged.subject() != stored->subject()) {
          if (store::ActiveMatchCount(tx, stored->supporter_id()) > 0) {
            return absl::FailedPreconditionError(
                "subject cannot change while the supporter has ACTIVE matches");
          }
          if (!merged.subject().empty() &&
              store::FindSupporterBySubject(tx, merged.subject()).has_value()) {
            return absl::AlreadyExistsError("another supporter of the agency has this subject");
          }
        }
        *response->mutable_supporter() = store::UpdateSupporter(tx, merged, paths, caller.subject);
        if (response->supporter().supervisor_subject() != stored->supervisor_subject()) {
          v1::SupporterSupervisionChangedEvent event;
          event.set_supporter_id(stored->supporter_id());
          event.set_supporter_subject(response->supporter().subject());
          event.set_previous_supervisor_subject(stored->supervisor_subject());
          event.set_supervisor_subject(response->supporter().supervisor_subject());
          event.set_changed_by(caller.subject);
          *event.mutable_changed_at() = ToProtoTimestamp(absl::Now());
          if (absl::Status e = AppendEvent(tx, caller.agency_id, stored->supporter_id(), event);
              !e.ok()) {
            return e;
          }
        }
        return Audit(tx, caller, "UpdateSupporter", "supporter", in.supporter_id(), "");
      });
  return ToGrpc(status);
}

grpc::Status MatchingService::ListSupporters(grpc::ServerContext* context,
                                             const v1::ListSupportersRequest* request,
                                             v1::ListSupportersResponse* response) {
  PEERPATH_AUTHORIZE("ListSupporters");
  auto page_size = ResolvePageSize(request->page_size());
  if (!page_size.ok()) return ToGrpc(page_size.status());
  v1::ListSupportersRequest filters = *request;
  filters.clear_page_size();
  filters.clear_page_token();
  const std::string list = ListName("ListSupporters", filters);
  auto cursor = DecodePageToken(list, request->page_token());
  if (!cursor.ok()) return ToGrpc(cursor.status());
  store::SupporterFilter filter;
  for (int status : request->statuses()) {
    filter.statuses.push_back(store::StatusText(static_cast<v1::SupporterStatus>(status)));
  }
  filter.supervisor_subject = request->supervisor_subject();
  filter.subject = request->subject();
  filter.language = request->language().empty() ? "" : PrimaryLanguage(request->language());
  filter.region = request->region();
  const bool self_only = !IsCoordinator(caller);
  if (self_only) {
    if (!filter.subject.empty() && filter.subject != caller.subject) return grpc::Status::OK;
    filter.subject = caller.subject;
  }
  std::string after_name, after_id;
  if (!cursor->empty()) {
    const size_t cut = cursor->rfind('\n');
    after_name = cursor->substr(0, cut);
    after_id = cut == std::string::npos ? "" : cursor->substr(cut + 1);
  }
  absl::Status status =
      context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
        // eligible_only filters after loading: a page may hold fewer than page_size entries.
        auto rows = store::ListSupporters(tx, filter, after_name, after_id, *page_size + 1);
        const bool more = static_cast<int>(rows.size()) > *page_size;
        if (more) rows.resize(*page_size);
        for (auto& s : rows) {
          if (request->eligible_only() && !Ineligibility(s, 1, Today()).empty()) continue;
          *response->add_supporters() = s;
        }
        if (more) {
          response->set_next_page_token(EncodePageToken(
              list, absl::StrCat(rows.back().display_name(), "\n", rows.back().supporter_id())));
        }
        return Audit(tx, caller, "ListSupporters", "supporter", "", "");
      });
  return ToGrpc(status);
}

grpc::Status MatchingService::SetSupporterStatus(grpc::ServerContext* context,
                                                 const v1::SetSupporterStatusRequest* request,
                                                 v1::SetSupporterStatusResponse* response) {
  PEERPATH_AUTHORIZE("SetSupporterStatus");
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->supporter_id())) violations.push_back({"supporter_id", "required, a UUID"});
  if (request->status() < 1 || request->status() > 3) {
    violations.push_back({"status", "required: ACTIVE, ON_BREAK or INACTIVE"});
  }
  if (request->reason() < 2 || request->reason() > 7) {
    violations.push_back({"reason", "required; JOINED is set only by CreateSupporter"});
  }
  if (request->note().size() > 1000) violations.push_back({"note", "at most 1000 characters"});
  if (absl::Status bad = Invalid("status change", violations); !bad.ok()) return ToGrpc(bad);
  absl::Status status =
      context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
        auto s = store::FindSupporter(tx, request->supporter_id(), true);
        if (!s.has_value()) return absl::NotFoundError("supporter not found");
        const bool self = IsSelf(caller, *s);
        if (!SupervisesOrAdmin(caller, *s) && !self) {
          authorizer_.AuditRefusal(*context, caller, "SetSupporterStatus", "supporter",
                                   request->supporter_id(), "");
          if (!IsCoordinator(caller)) return absl::NotFoundError("supporter not found");
          return absl::PermissionDeniedError(
              "only the supporter's supervisor, a program admin or the supporter may change "
              "the status");
        }
        if (self && !SupervisesOrAdmin(caller, *s) &&
            (request->status() == v1::SUPPORTER_STATUS_INACTIVE ||
             s->status() == v1::SUPPORTER_STATUS_INACTIVE)) {
          return absl::PermissionDeniedError(
              "a supporter may only move themselves between ACTIVE and ON_BREAK");
        }
        if (request->expected_version() != 0 && request->expected_version() != s->version()) {
          return absl::AbortedError(
              absl::StrCat("the supporter changed meanwhile (version ", s->version(), ")"));
        }
        if (s->status() == request->status()) {
          *response->mutable_supporter() = std::move(*s);
          return absl::OkStatus();
        }
        const int active = store::ActiveMatchCount(tx, s->supporter_id());
        if (request->status() == v1::SUPPORTER_STATUS_INACTIVE && active > 0) {
          return absl::FailedPreconditionError(absl::StrCat(
              "the supporter has ", active, " ACTIVE matches: end or re-match them first"));
        }
        *response->mutable_change() =
            store::ChangeStatus(tx, caller.agency_id, *s, request->status(), request->reason(),
                                request->note(), caller.subject);
        *response->mutable_supporter() = *store::FindSupporter(tx, s->supporter_id(), false);
        v1::SupporterStatusChangedEvent event;
        event.set_supporter_id(s->supporter_id());
        event.set_supporter_subject(s->subject());
        event.set_previous_status(s->status());
        event.set_status(request->status());
        event.set_reason(request->reason());
        event.set_active_matches(active);
        event.set_changed_by(caller.subject);
        *event.mutable_changed_at() = response->change().changed_at();
        if (absl::Status e = AppendEvent(tx, caller.agency_id, s->supporter_id(), event); !e.ok()) {
          return e;
        }
        return Audit(tx, caller, "SetSupporterStatus", "supporter", s->supporter_id(), "");
      });
  return ToGrpc(status);
}

// --- Match requests ---------------------------------------------------------------------------

grpc::Status MatchingService::CreateMatchRequest(grpc::ServerContext* context,
                                                 const v1::CreateMatchRequestRequest* request,
                                                 v1::CreateMatchRequestResponse* response) {
  PEERPATH_AUTHORIZE("CreateMatchRequest");
  std::vector<FieldViolation> violations = ValidateMatchRequest(request->match_request());
  if (absl::Status key = ValidateIdempotencyKey(request->idempotency_key()); !key.ok()) {
    for (auto& v : FieldViolations(key)) violations.push_back(v);
  }
  if (absl::Status bad = Invalid("match request", violations); !bad.ok()) return ToGrpc(bad);
  v1::MatchRequest r = request->match_request();
  if (r.acuity_units() == 0) r.set_acuity_units(AcuityUnitsForPathway(r.pathway_key()));
  if (r.urgency() == v1::URGENCY_UNSPECIFIED) r.set_urgency(v1::URGENCY_ROUTINE);
  r.clear_previous_match_id();
  return ToGrpc(RunIdempotent(
      context_.db,
      {caller.agency_id, request->idempotency_key(), "CreateMatchRequest", request, caller.subject},
      *response, [&](Tx& tx, google::protobuf::Message&) -> absl::Status {
        std::vector<std::string> named(r.hard_constraints().excluded_supporter_ids().begin(),
                                       r.hard_constraints().excluded_supporter_ids().end());
        const std::string& preferred = r.preferences().continuity().supporter_id();
        if (!preferred.empty()) named.push_back(preferred);
        const auto existing = store::ExistingSupporters(tx, named);
        for (const auto& id : named) {
          if (std::find(existing.begin(), existing.end(), id) == existing.end()) {
            return absl::NotFoundError(absl::StrCat("supporter ", id, " not found"));
          }
        }
        if (auto open = store::RequestInProgress(tx, r.participant_id()); open.has_value()) {
          return absl::AlreadyExistsError(
              absl::StrCat("the participant already has a request in progress: ", *open));
        }
        if (store::ActiveMatchOf(tx, r.participant_id()).has_value()) {
          return absl::FailedPreconditionError("the participant has an ACTIVE match; use Rematch");
        }
        if (preferred.empty() && r.preferences().continuity().prefer_previous_supporter()) {
          if (auto previous = store::PreviousSupporter(tx, r.participant_id())) {
            r.mutable_preferences()->mutable_continuity()->set_supporter_id(*previous);
          }
        }
        *response->mutable_match_request() =
            store::InsertMatchRequest(tx, caller.agency_id, r, caller.subject);
        return Audit(tx, caller, "CreateMatchRequest", "match_request",
                     response->match_request().match_request_id(), r.participant_id());
      }));
}

grpc::Status MatchingService::GetMatchRequest(grpc::ServerContext* context,
                                              const v1::GetMatchRequestRequest* request,
                                              v1::GetMatchRequestResponse* response) {
  PEERPATH_AUTHORIZE("GetMatchRequest");
  if (absl::Status bad = RequireUuid(request->match_request_id(), "match_request_id"); !bad.ok()) {
    return ToGrpc(bad);
  }
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto r = store::FindMatchRequest(tx, request->match_request_id(), false);
    if (!r.has_value()) return absl::NotFoundError("match request not found");
    if (!IsCoordinator(caller) && r->requested_by() != caller.subject) {
      authorizer_.AuditRefusal(*context, caller, "GetMatchRequest", "match_request",
                               r->match_request_id(), r->participant_id());
      return absl::NotFoundError("match request not found");
    }
    *response->mutable_match_request() = *r;
    return Audit(tx, caller, "GetMatchRequest", "match_request", r->match_request_id(),
                 r->participant_id());
  }));
}

grpc::Status MatchingService::ListMatchRequests(grpc::ServerContext* context,
                                                const v1::ListMatchRequestsRequest* request,
                                                v1::ListMatchRequestsResponse* response) {
  PEERPATH_AUTHORIZE("ListMatchRequests");
  auto page_size = ResolvePageSize(request->page_size());
  if (!page_size.ok()) return ToGrpc(page_size.status());
  v1::ListMatchRequestsRequest filters = *request;
  filters.clear_page_size();
  filters.clear_page_token();
  const std::string list = ListName("ListMatchRequests", filters);
  auto cursor = DecodePageToken(list, request->page_token());
  if (!cursor.ok()) return ToGrpc(cursor.status());
  store::RequestFilter filter;
  for (int s : request->statuses()) {
    filter.statuses.push_back(store::RequestStatusText(static_cast<v1::MatchRequestStatus>(s)));
  }
  for (int u : request->urgencies()) {
    filter.urgencies.push_back(store::UrgencyText(static_cast<v1::Urgency>(u)));
  }
  filter.participant_id = request->participant_id();
  if (!IsCoordinator(caller)) filter.requested_by = caller.subject;
  const std::vector<std::string> after = absl::StrSplit(*cursor, '\n');
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto rows = store::ListMatchRequests(tx, filter, after.size() == 2 ? after[0] : "",
                                         after.size() == 2 ? after[1] : "", *page_size + 1);
    const bool more = static_cast<int>(rows.size()) > *page_size;
    if (more) rows.resize(*page_size);
    for (const auto& r : rows) *response->add_match_requests() = r;
    if (more) {
      const auto& last = rows.back();
      response->set_next_page_token(EncodePageToken(
          list, absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(last.requested_at())), "\n",
                             last.match_request_id())));
    }
    return Audit(tx, caller, "ListMatchRequests", "match_request", "", request->participant_id());
  }));
}

grpc::Status MatchingService::CancelMatchRequest(grpc::ServerContext* context,
                                                 const v1::CancelMatchRequestRequest* request,
                                                 v1::CancelMatchRequestResponse* response) {
  PEERPATH_AUTHORIZE("CancelMatchRequest");
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->match_request_id())) {
    violations.push_back({"match_request_id", "required, a UUID"});
  }
  if (request->reason().empty() || request->reason().size() > 500) {
    violations.push_back({"reason", "required, 1 to 500 characters"});
  }
  if (absl::Status bad = Invalid("cancellation", violations); !bad.ok()) return ToGrpc(bad);
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto r = store::FindMatchRequest(tx, request->match_request_id(), true);
    if (!r.has_value()) return absl::NotFoundError("match request not found");
    if (!IsCoordinator(caller) && r->requested_by() != caller.subject) {
      authorizer_.AuditRefusal(*context, caller, "CancelMatchRequest", "match_request",
                               r->match_request_id(), r->participant_id());
      return absl::NotFoundError("match request not found");
    }
    if (r->status() == v1::MATCH_REQUEST_STATUS_ASSIGNED) {
      return absl::FailedPreconditionError("the request is ASSIGNED: end the match instead");
    }
    if (r->status() != v1::MATCH_REQUEST_STATUS_CANCELLED) {
      store::DeclineProposals(tx, r->participant_id(), r->match_request_id(), "");
      store::SetRequestStatus(tx, r->match_request_id(), "cancelled", request->reason());
      r = store::FindMatchRequest(tx, request->match_request_id(), false);
    }
    *response->mutable_match_request() = *r;
    return Audit(tx, caller, "CancelMatchRequest", "match_request", r->match_request_id(),
                 r->participant_id());
  }));
}

// --- Proposals and matches --------------------------------------------------------------------

std::shared_ptr<const MatchingService::CachedRoster> MatchingService::RosterOf(
    pqxx::work& tx, const std::string& agency_id, int64_t version) {
  // The version was read first (by the caller), then (on a miss) the roster: a roster read after
  // its version can only be newer than its label, which the next call's version check then
  // replaces; never older.
  {
    std::lock_guard<std::mutex> lock(rosters_mu_);
    auto it = rosters_.find(agency_id);
    if (it != rosters_.end() && it->second->version == version) return it->second;
  }
  auto fresh = std::make_shared<CachedRoster>();
  fresh->version = version;
  fresh->supporters = store::ActiveRoster(tx);
  // Profiles only: the units in use are given apart on every call (RankCandidates).
  for (v1::Supporter& s : fresh->supporters) s.set_units_in_use(0);
  fresh->indexed_on = Today();
  fresh->index = std::make_unique<CandidateIndex>(fresh->supporters, fresh->indexed_on);
  std::lock_guard<std::mutex> lock(rosters_mu_);
  if (rosters_.size() >= 64 && !rosters_.contains(agency_id)) rosters_.clear();  // Bounded.
  rosters_[agency_id] = fresh;
  return fresh;
}

grpc::Status MatchingService::ProposeMatches(grpc::ServerContext* context,
                                             const v1::ProposeMatchesRequest* request,
                                             v1::ProposeMatchesResponse* response) {
  PEERPATH_AUTHORIZE("ProposeMatches");
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->match_request_id())) {
    violations.push_back({"match_request_id", "required, a UUID"});
  }
  if (request->max_candidates() < 0 || request->max_candidates() > 20) {
    violations.push_back({"max_candidates", "must be 1 to 20 (0 means 5)"});
  }
  if (absl::Status key = ValidateIdempotencyKey(request->idempotency_key()); !key.ok()) {
    for (auto& v : FieldViolations(key)) violations.push_back(v);
  }
  if (absl::Status bad = Invalid("proposal request", violations); !bad.ok()) return ToGrpc(bad);
  const int max_candidates = request->max_candidates() == 0 ? 5 : request->max_candidates();
  // Seven round trips whatever is shown: the transaction and its agency, the key's claim, the
  // request with the roster's version and the time, the candidates' units in use, and every write
  // (declined and new proposals, events, request status, audit row, stored response) at once.
  const IdempotentCall call{caller.agency_id, request->idempotency_key(), "ProposeMatches", request,
                            caller.subject};
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto replayed = ClaimIdempotencyKey(tx, call, *response);
    if (!replayed.ok()) return replayed.status();
    if (*replayed) return absl::OkStatus();
    auto context = store::LockRequestForProposal(tx, caller.agency_id, request->match_request_id());
    if (!context.has_value()) return absl::NotFoundError("match request not found");
    v1::MatchRequest& r = context->request;
    if (r.status() != v1::MATCH_REQUEST_STATUS_OPEN &&
        r.status() != v1::MATCH_REQUEST_STATUS_PROPOSED) {
      return absl::FailedPreconditionError(
          absl::StrCat("the request is ", v1::MatchRequestStatus_Name(r.status())));
    }
    DeferredWrites writes(tx);
    store::DeclineProposals(writes, r.participant_id(), r.match_request_id(), "");
    const absl::CivilDay today = Today();
    // The roster comes from memory while no supporter changed; the index narrows it to who may
    // pass the most selective hard constraint, their units in use are read now, and the model
    // decides. Only when nobody is eligible is the roster explained step by step.
    const std::shared_ptr<const CachedRoster> cached =
        RosterOf(tx, caller.agency_id, context->roster_version);
    std::optional<CandidateIndex> rebuilt;
    const CandidateIndex& index = cached->IndexOn(today, rebuilt);
    const std::vector<int> candidates = index.Candidates(r);
    // Every candidate's load at once: by id for a narrowed roster, the whole agency's otherwise
    // (one grouped scan beats thousands of probes).
    std::vector<std::string> ids;
    if (candidates.size() <= 1000) {
      for (int i : candidates) ids.push_back(cached->supporters[i].supporter_id());
    }
    const std::unordered_map<std::string, int> units = store::UnitsInUse(tx, ids);
    const auto ranked = RankCandidates(cached->supporters, candidates, units, r, today,
                                       static_cast<size_t>(max_candidates));
    response->set_eligible_count(static_cast<int>(ranked.size()));
    if (ranked.empty()) {
      *response->mutable_no_candidate() = ExplainNoCandidate(store::ActiveRoster(tx), r, today);
    }
    // The shown ones, copied with their units in use and explained.
    std::vector<v1::Supporter> shown;
    std::vector<store::NewMatch> proposals;
    for (size_t i = 0; i < ranked.size() && static_cast<int>(i) < max_candidates; ++i) {
      v1::Supporter& s = shown.emplace_back(cached->supporters[ranked[i].roster_index]);
      auto load = units.find(s.supporter_id());
      s.set_units_in_use(load == units.end() ? 0 : load->second);
      const Evaluation e = Evaluate(s, r, today);
      proposals.push_back({r.match_request_id(), s.supporter_id(), r.participant_id(), s.subject(),
                           r.acuity_units(), e.score, static_cast<int>(i) + 1, e.continuity,
                           e.explanation});
    }
    std::vector<v1::Match> stored = store::InsertProposals(writes, caller.agency_id, proposals,
                                                           caller.subject, context->now_us);
    std::vector<v1::MatchProposedEvent> events(stored.size());
    std::vector<std::pair<std::string, const google::protobuf::Message*>> payloads;
    for (size_t i = 0; i < stored.size(); ++i) {
      const v1::Match& m = stored[i];
      v1::MatchProposedEvent& event = events[i];
      event.set_match_id(m.match_id());
      event.set_match_request_id(r.match_request_id());
      event.set_participant_id(r.participant_id());
      event.set_supporter_id(m.supporter_id());
      event.set_rank(m.rank());
      event.set_score(m.score());
      event.set_acuity_units(m.units());
      event.set_urgency(r.urgency());
      event.set_proposed_by(caller.subject);
      *event.mutable_proposed_at() = m.proposed_at();
      payloads.emplace_back(m.match_id(), &event);
    }
    AppendEvents(writes, caller.agency_id, payloads);
    for (size_t i = 0; i < stored.size(); ++i) {
      const v1::Supporter& s = shown[i];
      auto* candidate = response->add_candidates();
      *candidate->mutable_match() = std::move(stored[i]);
      candidate->set_supporter_display_name(s.display_name());
      candidate->set_supporter_units_in_use(s.units_in_use());
      candidate->set_supporter_capacity_units(s.capacity_units());
    }
    // The request as it stands after the writes below (status and time of change).
    r.set_status(ranked.empty() ? v1::MATCH_REQUEST_STATUS_OPEN
                                : v1::MATCH_REQUEST_STATUS_PROPOSED);
    *r.mutable_updated_at() = ToProtoTimestamp(absl::FromUnixMicros(context->now_us));
    store::SetRequestStatus(writes, r.match_request_id(), ranked.empty() ? "open" : "proposed", "");
    *response->mutable_match_request() = r;
    AppendAudit(writes, caller.agency_id,
                AllowedEntry(caller, "ProposeMatches", "match_request", r.match_request_id(),
                             r.participant_id()));
    StoreIdempotentResponse(writes, call, *response);
    writes.Flush();
    return absl::OkStatus();
  }));
}

grpc::Status MatchingService::AcceptProposal(grpc::ServerContext* context,
                                             const v1::AcceptProposalRequest* request,
                                             v1::AcceptProposalResponse* response) {
  PEERPATH_AUTHORIZE("AcceptProposal");
  if (absl::Status bad = RequireUuid(request->match_id(), "match_id"); !bad.ok()) {
    return ToGrpc(bad);
  }
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    // Locks in one order everywhere: request, match, supporter.
    auto m = store::FindMatch(tx, request->match_id(), false);
    if (!m.has_value()) return absl::NotFoundError("match not found");
    auto r = store::FindMatchRequest(tx, m->match_request_id(), true);
    m = store::FindMatch(tx, request->match_id(), true);
    if (m->status() == v1::MATCH_STATUS_ACTIVE) {
      *response->mutable_match() = *m;
      if (auto f = store::FindFollowUp(tx, m->match_id(), false))
        *response->mutable_follow_up() = *f;
      return absl::OkStatus();
    }
    if (m->status() != v1::MATCH_STATUS_PROPOSED) {
      return absl::FailedPreconditionError(
          absl::StrCat("the proposal is ", v1::MatchStatus_Name(m->status())));
    }
    // The supporter's row lock serialises accepts for one supporter; the units are read after
    // it, in a statement of their own, so they include every accept committed before.
    auto s = store::FindSupporter(tx, m->supporter_id(), true);
    if (!s.has_value()) return absl::NotFoundError("supporter not found");
    s->set_units_in_use(store::UnitsInUse(tx, s->supporter_id()));
    if (const std::string why = Ineligibility(*s, m->units(), Today()); !why.empty()) {
      return absl::FailedPreconditionError(why);
    }
    if (store::ActiveMatchOf(tx, m->participant_id()).has_value()) {
      return absl::FailedPreconditionError("the participant already has another ACTIVE match");
    }
    v1::Match started = store::StartMatch(tx, caller.agency_id, m->match_id(), caller.subject);
    store::DeclineProposals(tx, m->participant_id(), m->match_request_id(), m->match_id());
    store::SetRequestStatus(tx, m->match_request_id(), "assigned", "");
    const v1::FollowUp follow_up = *store::FindFollowUp(tx, m->match_id(), false);
    const bool continuity = r->preferences().continuity().supporter_id() == m->supporter_id();
    if (absl::Status e =
            AppendEvent(tx, caller.agency_id, m->match_id(),
                        StartedEvent(started, *r, follow_up, continuity, s->supervisor_subject()));
        !e.ok()) {
      return e;
    }
    *response->mutable_match() = std::move(started);
    *response->mutable_follow_up() = follow_up;
    return Audit(tx, caller, "AcceptProposal", "match", m->match_id(), m->participant_id());
  }));
}

grpc::Status MatchingService::GetMatch(grpc::ServerContext* context,
                                       const ::peerpath::matching::v1::GetMatchRequest* request,
                                       v1::GetMatchResponse* response) {
  PEERPATH_AUTHORIZE("GetMatch");
  if (absl::Status bad = RequireUuid(request->match_id(), "match_id"); !bad.ok()) {
    return ToGrpc(bad);
  }
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto m = store::FindMatch(tx, request->match_id(), false);
    if (!m.has_value()) return absl::NotFoundError("match not found");
    const bool own =
        caller.Has(Role::kPeerSupporter) && m->supporter_subject() == caller.subject &&
        (m->status() == v1::MATCH_STATUS_ACTIVE || m->status() == v1::MATCH_STATUS_ENDED);
    if (!IsCoordinator(caller) && !own) {
      authorizer_.AuditRefusal(*context, caller, "GetMatch", "match", m->match_id(),
                               m->participant_id());
      return absl::NotFoundError("match not found");
    }
    if (auto f = store::FindFollowUp(tx, m->match_id(), false)) {
      if (!IsCoordinator(caller)) f->clear_participant_answer();
      *response->mutable_follow_up() = *f;
    }
    *response->mutable_match() = *m;
    return Audit(tx, caller, "GetMatch", "match", m->match_id(), m->participant_id());
  }));
}

grpc::Status MatchingService::ListMatches(grpc::ServerContext* context,
                                          const v1::ListMatchesRequest* request,
                                          v1::ListMatchesResponse* response) {
  PEERPATH_AUTHORIZE("ListMatches");
  std::vector<FieldViolation> violations;
  for (const auto& [value, field] : {std::pair{&request->supporter_id(), "supporter_id"},
                                     {&request->match_request_id(), "match_request_id"},
                                     {&request->batch_id(), "batch_id"}}) {
    if (!value->empty() && !IsUuid(*value)) violations.push_back({field, "must be a UUID"});
  }
  if (request->page_size() < 0) violations.push_back({"page_size", "must not be negative"});
  if (absl::Status bad = Invalid("match list", violations); !bad.ok()) return ToGrpc(bad);
  const int page_size = *ResolvePageSize(request->page_size());
  v1::ListMatchesRequest filters = *request;
  filters.clear_page_size();
  filters.clear_page_token();
  const std::string list = ListName("ListMatches", filters);
  auto cursor = DecodePageToken(list, request->page_token());
  if (!cursor.ok()) return ToGrpc(cursor.status());
  store::MatchFilter filter;
  filter.participant_id = request->participant_id();
  filter.supporter_id = request->supporter_id();
  for (int s : request->statuses()) {
    filter.statuses.push_back(store::MatchStatusText(static_cast<v1::MatchStatus>(s)));
  }
  filter.request_id = request->match_request_id();
  filter.batch_id = request->batch_id();
  filter.rematch_suggested_only = request->rematch_suggested_only();
  // A peer supporter sees only their own ACTIVE and ENDED matches, whatever the filters.
  if (!IsCoordinator(caller)) filter.supporter_subject = caller.subject;
  const std::vector<std::string> after = absl::StrSplit(*cursor, '\n');
  int after_rank = 0;
  if (after.size() == 3 && !absl::SimpleAtoi(after[1], &after_rank)) {
    return ToGrpc(InvalidArgument("bad page_token", {{"page_token", "malformed"}}));
  }
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto rows = store::ListMatches(tx, filter, after.size() == 3 ? after[0] : "", after_rank,
                                   after.size() == 3 ? after[2] : "", page_size + 1);
    const bool more = static_cast<int>(rows.size()) > page_size;
    if (more) rows.resize(page_size);
    for (const auto& m : rows) *response->add_matches() = m;
    if (more) {
      const auto& last = rows.back();
      response->set_next_page_token(EncodePageToken(
          list, absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(last.proposed_at())), "\n",
                             last.rank(), "\n", last.match_id())));
    }
    return Audit(tx, caller, "ListMatches", "match", "", request->participant_id());
  }));
}

grpc::Status MatchingService::EndMatch(grpc::ServerContext* context,
                                       const v1::EndMatchRequest* request,
                                       v1::EndMatchResponse* response) {
  PEERPATH_AUTHORIZE("EndMatch");
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->match_id())) violations.push_back({"match_id", "required, a UUID"});
  if (store::EndReasonText(request->reason()).empty()) {
    violations.push_back({"reason", "required: why the match ends"});
  }
  if (absl::Status bad = Invalid("end of match", violations); !bad.ok()) return ToGrpc(bad);
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto m = store::FindMatch(tx, request->match_id(), true);
    if (!m.has_value()) return absl::NotFoundError("match not found");
    if (m->status() == v1::MATCH_STATUS_ENDED && m->end_reason() == request->reason()) {
      *response->mutable_match() = *m;
      return absl::OkStatus();
    }
    if (m->status() != v1::MATCH_STATUS_ACTIVE) {
      return absl::FailedPreconditionError(
          absl::StrCat("the match is ", v1::MatchStatus_Name(m->status()),
                       m->status() == v1::MATCH_STATUS_ENDED ? " with another reason" : ""));
    }
    v1::Match ended =
        store::EndMatch(tx, m->match_id(), store::EndReasonText(request->reason()), caller.subject);
    if (absl::Status e = AppendEvent(tx, caller.agency_id, m->match_id(), EndedEvent(ended, ""));
        !e.ok()) {
      return e;
    }
    *response->mutable_match() = std::move(ended);
    return Audit(tx, caller, "EndMatch", "match", m->match_id(), m->participant_id());
  }));
}

grpc::Status MatchingService::Rematch(grpc::ServerContext* context,
                                      const v1::RematchRequest* request,
                                      v1::RematchResponse* response) {
  PEERPATH_AUTHORIZE("Rematch");
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->match_id())) violations.push_back({"match_id", "required, a UUID"});
  if (store::EndReasonText(request->end_reason()).empty()) {
    violations.push_back({"end_reason", "required: why the match ends"});
  }
  if (request->has_hard_constraints()) {
    for (auto& v : ValidateHardConstraints(request->hard_constraints(), "hard_constraints.")) {
      violations.push_back(v);
    }
  }
  if (request->has_preferences()) {
    for (auto& v : ValidatePreferences(request->preferences(), "preferences.")) {
      violations.push_back(v);
    }
  }
  if (!v1::Urgency_IsValid(request->urgency())) violations.push_back({"urgency", "unknown"});
  if (request->acuity_units() < 0 || request->acuity_units() > 100) {
    violations.push_back({"acuity_units", "must be 1 to 100 (0 keeps the old value)"});
  }
  if (absl::Status key = ValidateIdempotencyKey(request->idempotency_key()); !key.ok()) {
    for (auto& v : FieldViolations(key)) violations.push_back(v);
  }
  if (absl::Status bad = Invalid("re-match", violations); !bad.ok()) return ToGrpc(bad);
  return ToGrpc(RunIdempotent(
      context_.db,
      {caller.agency_id, request->idempotency_key(), "Rematch", request, caller.subject}, *response,
      [&](Tx& tx, google::protobuf::Message&) -> absl::Status {
        auto m = store::FindMatch(tx, request->match_id(), true);
        if (!m.has_value()) return absl::NotFoundError("match not found");
        if (m->status() != v1::MATCH_STATUS_ACTIVE) {
          return absl::FailedPreconditionError(
              absl::StrCat("the match is ", v1::MatchStatus_Name(m->status())));
        }
        if (auto open = store::RequestInProgress(tx, m->participant_id()); open.has_value()) {
          return absl::AlreadyExistsError(
              absl::StrCat("the participant already has a request in progress: ", *open));
        }
        v1::MatchRequest next = *store::FindMatchRequest(tx, m->match_request_id(), false);
        if (request->has_hard_constraints())
          *next.mutable_hard_constraints() = request->hard_constraints();
        if (request->has_preferences()) *next.mutable_preferences() = request->preferences();
        if (request->urgency() != v1::URGENCY_UNSPECIFIED) next.set_urgency(request->urgency());
        if (request->acuity_units() != 0) next.set_acuity_units(request->acuity_units());
        auto* excluded = next.mutable_hard_constraints()->mutable_excluded_supporter_ids();
        if (std::find(excluded->begin(), excluded->end(), m->supporter_id()) == excluded->end()) {
          excluded->Add(std::string(m->supporter_id()));
        }
        if (next.preferences().continuity().supporter_id() == m->supporter_id()) {
          next.mutable_preferences()->clear_continuity();
        }
        next.set_previous_match_id(m->match_id());
        v1::Match ended = store::EndMatch(
            tx, m->match_id(), store::EndReasonText(request->end_reason()), caller.subject);
        v1::MatchRequest opened =
            store::InsertMatchRequest(tx, caller.agency_id, next, caller.subject);
        if (absl::Status e = AppendEvent(tx, caller.agency_id, m->match_id(),
                                         EndedEvent(ended, opened.match_request_id()));
            !e.ok()) {
          return e;
        }
        *response->mutable_ended_match() = std::move(ended);
        *response->mutable_match_request() = std::move(opened);
        return Audit(tx, caller, "Rematch", "match", m->match_id(), m->participant_id());
      }));
}

// --- Follow-ups -------------------------------------------------------------------------------

grpc::Status MatchingService::RecordFollowUp(grpc::ServerContext* context,
                                             const v1::RecordFollowUpRequest* request,
                                             v1::RecordFollowUpResponse* response) {
  PEERPATH_AUTHORIZE("RecordFollowUp");
  std::vector<FieldViolation> violations;
  if (!IsUuid(request->match_id())) violations.push_back({"match_id", "required, a UUID"});
  if (request->side() != v1::FOLLOW_UP_SIDE_PARTICIPANT &&
      request->side() != v1::FOLLOW_UP_SIDE_SUPPORTER) {
    violations.push_back({"side", "required: PARTICIPANT or SUPPORTER"});
  }
  if (request->rating() < 1 || request->rating() > 5) {
    violations.push_back({"rating", "must be 1 to 5"});
  }
  if (request->comment().size() > 2000) {
    violations.push_back({"comment", "at most 2000 characters"});
  }
  if (absl::Status key = ValidateIdempotencyKey(request->idempotency_key()); !key.ok()) {
    for (auto& v : FieldViolations(key)) violations.push_back(v);
  }
  if (absl::Status bad = Invalid("follow-up", violations); !bad.ok()) return ToGrpc(bad);
  const absl::Status status = RunIdempotent(
      context_.db,
      {caller.agency_id, request->idempotency_key(), "RecordFollowUp", request, caller.subject},
      *response, [&](Tx& tx, google::protobuf::Message&) -> absl::Status {
        auto m = store::FindMatch(tx, request->match_id(), false);
        if (!m.has_value()) return absl::NotFoundError("match not found");
        if (!IsCoordinator(caller)) {
          const bool own =
              m->supporter_subject() == caller.subject &&
              (m->status() == v1::MATCH_STATUS_ACTIVE || m->status() == v1::MATCH_STATUS_ENDED);
          if (!own) {
            authorizer_.AuditRefusal(*context, caller, "RecordFollowUp", "match", m->match_id(),
                                     m->participant_id());
            return absl::NotFoundError("match not found");
          }
          if (request->side() != v1::FOLLOW_UP_SIDE_SUPPORTER) {
            authorizer_.AuditRefusal(*context, caller, "RecordFollowUp", "match", m->match_id(),
                                     m->participant_id());
            return absl::PermissionDeniedError("a peer supporter records only the SUPPORTER side");
          }
        }
        auto f = store::FindFollowUp(tx, m->match_id(), true);
        if (!f.has_value()) {
          return absl::FailedPreconditionError("the match never started: no follow-up");
        }
        const bool participant = request->side() == v1::FOLLOW_UP_SIDE_PARTICIPANT;
        if (participant ? f->has_participant_answer() : f->has_supporter_answer()) {
          return absl::AlreadyExistsError("that side of the follow-up was already recorded");
        }
        v1::FollowUp recorded =
            store::RecordFollowUpSide(tx, f->follow_up_id(), request->side(), request->rating(),
                                      request->comment(), caller.subject);
        const bool active = m->status() == v1::MATCH_STATUS_ACTIVE;
        const bool suggest = request->rating() <= 2 && active && !f->has_rematch_suggested_at();
        if (suggest) {
          recorded = store::MarkRematchSuggested(tx, f->follow_up_id());
          auto s = store::FindSupporter(tx, m->supporter_id(), false);
          v1::RematchSuggestedEvent event;
          event.set_follow_up_id(f->follow_up_id());
          event.set_match_id(m->match_id());
          event.set_participant_id(m->participant_id());
          event.set_supporter_id(m->supporter_id());
          event.set_supervisor_subject(s.has_value() ? s->supervisor_subject() : "");
          event.set_side(request->side());
          event.set_rating(request->rating());
          *event.mutable_suggested_at() = recorded.rematch_suggested_at();
          if (absl::Status e = AppendEvent(tx, caller.agency_id, m->match_id(), event); !e.ok()) {
            return e;
          }
        }
        v1::FollowUpRecordedEvent event;
        event.set_follow_up_id(f->follow_up_id());
        event.set_match_id(m->match_id());
        event.set_participant_id(m->participant_id());
        event.set_supporter_id(m->supporter_id());
        event.set_side(request->side());
        event.set_rating(request->rating());
        const auto& other =
            participant ? recorded.supporter_answer() : recorded.participant_answer();
        event.set_other_side_rating(other.rating());
        *event.mutable_due_on() = recorded.due_on();
        event.set_match_active(active);
        event.set_rematch_suggested(suggest);
        event.set_recorded_by(caller.subject);
        *event.mutable_recorded_at() = participant ? recorded.participant_answer().recorded_at()
                                                   : recorded.supporter_answer().recorded_at();
        if (absl::Status e = AppendEvent(tx, caller.agency_id, m->match_id(), event); !e.ok()) {
          return e;
        }
        if (!IsCoordinator(caller)) recorded.clear_participant_answer();
        *response->mutable_follow_up() = std::move(recorded);
        response->set_rematch_suggested(suggest);
        return Audit(tx, caller, "RecordFollowUp", "follow_up", f->follow_up_id(),
                     m->participant_id());
      });
  // Also on a replayed response: a peer supporter never sees the participant's side.
  if (!IsCoordinator(caller)) response->mutable_follow_up()->clear_participant_answer();
  return ToGrpc(status);
}

grpc::Status MatchingService::ListDueFollowUps(grpc::ServerContext* context,
                                               const v1::ListDueFollowUpsRequest* request,
                                               v1::ListDueFollowUpsResponse* response) {
  PEERPATH_AUTHORIZE("ListDueFollowUps");
  std::vector<FieldViolation> violations;
  store::DueFilter filter;
  filter.due_on_or_before = Today();
  if (request->has_due_on_or_before()) {
    const auto& d = request->due_on_or_before();
    const absl::CivilDay day(d.year(), d.month(), d.day());
    if (d.year() < 1 || day.year() != d.year() || day.month() != d.month() ||
        day.day() != d.day()) {
      violations.push_back({"due_on_or_before", "not a valid date"});
    }
    filter.due_on_or_before = day;
  }
  if (!request->supporter_id().empty() && !IsUuid(request->supporter_id())) {
    violations.push_back({"supporter_id", "must be a UUID"});
  }
  if (request->page_size() < 0) violations.push_back({"page_size", "must not be negative"});
  if (absl::Status bad = Invalid("follow-up list", violations); !bad.ok()) return ToGrpc(bad);
  const int page_size = *ResolvePageSize(request->page_size());
  v1::ListDueFollowUpsRequest filters = *request;
  filters.clear_page_size();
  filters.clear_page_token();
  if (!request->has_due_on_or_before()) *filters.mutable_due_on_or_before() = ToDate(Today());
  const std::string list = ListName("ListDueFollowUps", filters);
  auto cursor = DecodePageToken(list, request->page_token());
  if (!cursor.ok()) return ToGrpc(cursor.status());
  filter.missing_side = request->missing_side();
  filter.supporter_id = request->supporter_id();
  std::string after_due, after_id;
  if (!cursor->empty()) {
    after_due = cursor->substr(0, 10);
    after_id = cursor->size() > 11 ? cursor->substr(11) : "";
  }
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    if (!IsCoordinator(caller)) {
      auto self = store::FindSupporterBySubject(tx, caller.subject);
      if (!self.has_value()) return absl::OkStatus();
      if (!filter.supporter_id.empty() && filter.supporter_id != self->supporter_id()) {
        return absl::OkStatus();
      }
      filter.supporter_id = self->supporter_id();
      filter.missing_side = v1::FOLLOW_UP_SIDE_SUPPORTER;
    }
    auto rows = store::DueFollowUps(tx, filter, after_due, after_id, page_size + 1);
    const bool more = static_cast<int>(rows.size()) > page_size;
    if (more) rows.resize(page_size);
    for (auto& f : rows) {
      if (!IsCoordinator(caller)) f.clear_participant_answer();
      *response->add_follow_ups() = f;
    }
    if (more) {
      const auto& last = rows.back();
      response->set_next_page_token(EncodePageToken(
          list, absl::StrFormat("%04d-%02d-%02d %s", last.due_on().year(), last.due_on().month(),
                                last.due_on().day(), last.follow_up_id())));
    }
    return Audit(tx, caller, "ListDueFollowUps", "follow_up", "", "");
  }));
}

// --- Workload and relationship ----------------------------------------------------------------

grpc::Status MatchingService::GetSupporterWorkload(grpc::ServerContext* context,
                                                   const v1::GetSupporterWorkloadRequest* request,
                                                   v1::GetSupporterWorkloadResponse* response) {
  PEERPATH_AUTHORIZE("GetSupporterWorkload");
  if (absl::Status bad = RequireUuid(request->supporter_id(), "supporter_id"); !bad.ok()) {
    return ToGrpc(bad);
  }
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto s = store::FindSupporter(tx, request->supporter_id(), false);
    if (!s.has_value()) return absl::NotFoundError("supporter not found");
    if (!SupervisesOrAdmin(caller, *s) && !IsSelf(caller, *s)) {
      authorizer_.AuditRefusal(*context, caller, "GetSupporterWorkload", "supporter",
                               s->supporter_id(), "");
      return absl::NotFoundError("supporter not found");
    }
    const store::Workload load = store::LoadWorkload(tx, s->supporter_id(), Today());
    auto* w = response->mutable_workload();
    w->set_supporter_id(s->supporter_id());
    w->set_status(s->status());
    w->set_active_matches(load.active_matches);
    w->set_units_in_use(load.units_in_use);
    w->set_capacity_units(s->capacity_units());
    w->set_follow_ups_due(load.follow_ups_due);
    if (s->has_last_break_started_at()) {
      *w->mutable_last_break_started_at() = s->last_break_started_at();
    }
    // From the check-in and escalation services' events, as recent as activity_as_of (unset
    // while no event of either was applied, e.g. when the consumers are not configured).
    const store::Activity activity = store::LoadActivity(tx, s->supporter_id(), s->subject());
    w->set_check_ins_last_7_days(activity.check_ins_last_7_days);
    w->set_open_concerns_raised(activity.open_concerns_raised);
    if (activity.as_of_micros.has_value()) {
      *w->mutable_activity_as_of() = ToProtoTimestamp(absl::FromUnixMicros(*activity.as_of_micros));
    }
    return Audit(tx, caller, "GetSupporterWorkload", "supporter", s->supporter_id(), "");
  }));
}

grpc::Status MatchingService::IsActiveSupporter(grpc::ServerContext* context,
                                                const v1::IsActiveSupporterRequest* request,
                                                v1::IsActiveSupporterResponse* response) {
  PEERPATH_AUTHORIZE("IsActiveSupporter");
  std::vector<FieldViolation> violations;
  if (request->supporter_subject().empty() || request->supporter_subject().size() > 128) {
    violations.push_back({"supporter_subject", "required, 1 to 128 characters"});
  }
  if (request->participant_id().empty() || request->participant_id().size() > 128) {
    violations.push_back({"participant_id", "required, 1 to 128 characters"});
  }
  if (absl::Status bad = Invalid("relationship check", violations); !bad.ok()) return ToGrpc(bad);
  return ToGrpc(context_.db.TransactForAgency(caller.agency_id, [&](Tx& tx) -> absl::Status {
    auto m =
        store::ActiveMatchOfSubject(tx, request->supporter_subject(), request->participant_id());
    if (m.has_value()) {
      response->set_active(true);
      response->set_match_id(m->match_id());
      response->set_supporter_id(m->supporter_id());
      *response->mutable_started_at() = m->started_at();
    }
    return Audit(tx, caller, "IsActiveSupporter", "match", m.has_value() ? m->match_id() : "",
                 request->participant_id());
  }));
}

// --- Batch assignment -------------------------------------------------------------------------

grpc::Status MatchingService::AssignBatch(grpc::ServerContext* context,
                                          const v1::AssignBatchRequest* request,
                                          v1::AssignBatchResponse* response) {
  PEERPATH_AUTHORIZE("AssignBatch");
  if (!request->dry_run()) {
    if (absl::Status key = ValidateIdempotencyKey(request->idempotency_key()); !key.ok()) {
      return ToGrpc(key);
    }
  }
  auto body = [&](Tx& tx) -> absl::Status {
    if (!store::TryLockBatch(tx, caller.agency_id)) {
      return absl::AbortedError("another batch of the agency is running; retry");
    }
    const auto start = std::chrono::steady_clock::now();
    const pqxx::result request_rows =
        store::SelectRequestsToAssign(tx, request->include_proposed(), !request->dry_run());
    // The roster is locked (accepts of the same supporters wait for the batch), taken from
    // memory while its version stays (as ProposeMatches does), and its units in use read, on
    // another thread while the requests are parsed here; the future's destructor joins it also
    // when parsing throws.
    std::shared_ptr<const CachedRoster> cached;
    std::unordered_map<std::string, int> units;
    std::vector<std::string> matched;
    std::future<void> reads = std::async(std::launch::async, [&] {
      cached = RosterOf(tx, caller.agency_id,
                        store::RosterVersion(tx, caller.agency_id, !request->dry_run()));
      units = store::UnitsInUse(tx, std::vector<std::string>{});
      matched = store::ParticipantsWithActiveMatch(tx);
    });
    const std::vector<v1::MatchRequest> requests = store::ParseRequests(request_rows);
    reads.get();
    std::vector<v1::Supporter> roster = cached->supporters;
    for (v1::Supporter& s : roster) {
      auto load = units.find(s.supporter_id());
      if (load != units.end()) s.set_units_in_use(load->second);
    }
    const std::set<std::string> already(matched.begin(), matched.end());
    const absl::CivilDay today = Today();
    AssignmentProblem problem;
    for (const auto& s : roster) problem.capacity.push_back(RemainingUnits(s));
    // Each request is screened against the supporters who can meet its most selective hard
    // constraint (not the whole roster), and scored without explanation: only the pairs the
    // solver assigns are explained (Evaluate) below.
    // Ranges of requests are screened on every core; their candidates are joined in order.
    std::optional<CandidateIndex> rebuilt;
    const CandidateIndex& index = cached->IndexOn(today, rebuilt);
    std::vector<int> candidate_count(requests.size(), 0);
    problem.units.reserve(requests.size());
    for (const auto& req : requests) problem.units.push_back(std::max(1, req.acuity_units()));
    auto screen = [&](size_t begin, size_t end) {
      std::vector<AssignmentProblem::Candidate> found;
      for (size_t r = begin; r < end; ++r) {
        const v1::MatchRequest& req = requests[r];
        if (already.contains(req.participant_id())) continue;
        const std::string& previous = req.preferences().continuity().supporter_id();
        for (int s : index.Candidates(req)) {
          if (Screen(roster[s], req, today).has_value()) continue;
          const double score = ScorePreferences(roster[s], req.preferences(), nullptr);
          const bool continuity = !previous.empty() && previous == roster[s].supporter_id();
          found.push_back({static_cast<int>(r), s, BatchValue(score, continuity, req.urgency())});
          ++candidate_count[r];
        }
      }
      return found;
    };
    for (const auto& found : MapRanges(requests.size(), LoopThreads(), 500, screen)) {
      problem.candidates.insert(problem.candidates.end(), found.begin(), found.end());
    }
    const AssignmentResult result = AssignOptimal(problem);
    response->set_proven_optimal(result.exact);
    const std::string batch_id = request->dry_run() ? "" : RandomUuid();
    response->set_batch_id(batch_id);
    response->set_dry_run(request->dry_run());
    response->set_requests_considered(static_cast<int>(requests.size()));
    std::vector<size_t> unmatched;
    std::vector<size_t> assigned;
    std::vector<store::NewMatch> new_matches;
    for (size_t r = 0; r < requests.size(); ++r) {
      const v1::MatchRequest& req = requests[r];
      const int s = result.supporter_of[r];
      if (s < 0) {
        unmatched.push_back(r);
        continue;
      }
      // Only assigned pairs are explained (and stored with their explanation).
      Evaluation e = Evaluate(roster[s], req, today);
      auto* a = response->add_assignments();
      a->set_match_request_id(req.match_request_id());
      a->set_participant_id(req.participant_id());
      a->set_supporter_id(roster[s].supporter_id());
      a->set_score(e.score);
      a->set_units(problem.units[r]);
      a->set_continuity(e.continuity);
      response->set_total_score(response->total_score() + e.score);
      response->set_objective_value(response->objective_value() +
                                    BatchValue(e.score, e.continuity, req.urgency()));
      if (request->dry_run()) continue;
      assigned.push_back(r);
      new_matches.push_back({req.match_request_id(), roster[s].supporter_id(), req.participant_id(),
                             roster[s].subject(), problem.units[r], e.score, 0, e.continuity,
                             std::move(e.explanation),
                             req.status() == v1::MATCH_REQUEST_STATUS_PROPOSED});
    }
    // Two statements write every match, follow-up, declined proposal and request status, one
    // more every event and one more every audit row: a handful of round trips for any size. The
    // events and audit rows are built and encoded while PostgreSQL runs the matches' insert.
    EncodedEvents events;
    EncodedAudits audits;
    store::InsertBatchMatches(
        tx, caller.agency_id, new_matches, batch_id, caller.subject,
        [&](const std::vector<store::StartedMatch>& started) {
          std::vector<v1::MatchStartedEvent> started_events;
          std::vector<AuditEntry> entries;
          started_events.reserve(started.size());
          entries.reserve(started.size());
          for (size_t i = 0; i < started.size(); ++i) {
            const v1::MatchRequest& req = requests[assigned[i]];
            const v1::Match& m = started[i].match;
            const v1::Supporter& s = roster[result.supporter_of[assigned[i]]];
            started_events.push_back(StartedEvent(
                m, req, started[i].follow_up, new_matches[i].continuity, s.supervisor_subject()));
            entries.push_back(
                AllowedEntry(caller, "AssignBatch", "match", m.match_id(), req.participant_id()));
            response->mutable_assignments(static_cast<int>(i))->set_match_id(m.match_id());
          }
          std::vector<std::pair<std::string, const google::protobuf::Message*>> payloads;
          payloads.reserve(started_events.size());
          for (size_t i = 0; i < started_events.size(); ++i) {
            payloads.emplace_back(started[i].match.match_id(), &started_events[i]);
          }
          events = EncodeEvents(payloads);
          audits = EncodeAudits(entries);
        });
    if (absl::Status ev = AppendEvents(tx, caller.agency_id, events); !ev.ok()) return ev;
    if (absl::Status au = AppendAudits(tx, caller.agency_id, audits); !au.ok()) return au;
    std::stable_sort(unmatched.begin(), unmatched.end(), [&](size_t a, size_t b) {
      return requests[a].urgency() > requests[b].urgency();
    });
    for (size_t r : unmatched) {
      auto* u = response->add_unmatched();
      u->set_match_request_id(requests[r].match_request_id());
      u->set_participant_id(requests[r].participant_id());
      u->set_urgency(requests[r].urgency());
      if (already.contains(requests[r].participant_id())) {
        u->mutable_no_candidate()->set_reason(v1::UNMATCHED_REASON_PARTICIPANT_ALREADY_MATCHED);
        u->mutable_no_candidate()->set_text(
            "the participant already has an ACTIVE match (end or re-match it first)");
      } else if (candidate_count[r] == 0) {
        *u->mutable_no_candidate() = ExplainNoCandidate(roster, requests[r], today);
      } else {
        u->mutable_no_candidate()->set_reason(
            v1::UNMATCHED_REASON_CAPACITY_GIVEN_TO_OTHER_REQUESTS);
        u->mutable_no_candidate()->set_text(absl::StrCat(
            candidate_count[r],
            " candidates had capacity, but the optimal assignment gave it to other requests"));
      }
    }
    // The flow's bound is computed in thousandths: never report it below the value reached.
    response->set_objective_upper_bound(
        result.exact ? response->objective_value()
                     : std::max(response->objective_value(), result.upper_bound));
    const auto elapsed = std::chrono::steady_clock::now() - start;
    response->mutable_solve_duration()->set_seconds(
        std::chrono::duration_cast<std::chrono::seconds>(elapsed).count());
    response->mutable_solve_duration()->set_nanos(static_cast<int32_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count() % 1000000000));
    return Audit(tx, caller, "AssignBatch", "batch", batch_id, "");
  };
  if (request->dry_run()) {
    return ToGrpc(context_.db.TransactForAgency(caller.agency_id, body));
  }
  return ToGrpc(RunIdempotent(
      context_.db,
      {caller.agency_id, request->idempotency_key(), "AssignBatch", request, caller.subject},
      *response, [&](Tx& tx, google::protobuf::Message&) { return body(tx); }));
}

}  // namespace peerpath::matching
