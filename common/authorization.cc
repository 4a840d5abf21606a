#include "common/authorization.h"

#include <grpcpp/server_context.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/audit.h"
#include "common/db.h"
#include "common/log.h"
#include "common/rpc_observer.h"

namespace peerpath {

absl::StatusOr<Identity> Authorizer::Authorize(const grpc::ServerContextBase& context,
                                               const std::string& method) const {
  absl::StatusOr<Identity> caller = verifier_.Authenticate(context);
  if (!caller.ok()) return caller.status();
  const auto& metadata = context.client_metadata();
  if (auto acting = metadata.find(kActingAgencyHeader); acting != metadata.end()) {
    if (!caller->Has(Role::kService)) {
      return absl::PermissionDeniedError(
          absl::StrCat(kActingAgencyHeader, " is only accepted from a service identity"));
    }
    const std::string agency(acting->second.data(), acting->second.size());
    if (agency.empty() || agency.size() > 128) {
      return absl::InvalidArgumentError(absl::StrCat(kActingAgencyHeader, " is malformed"));
    }
    caller->agency_id = agency;
  }
  auto rule = rules_.find(method);
  if (rule != rules_.end()) {
    for (Role role : rule->second) {
      if (caller->Has(role)) return caller;
    }
  }
  AuditRefusal(context, *caller, method, "", "", "");
  std::vector<std::string> allowed;
  if (rule != rules_.end()) {
    for (Role role : rule->second) allowed.push_back(RoleName(role));
  }
  return absl::PermissionDeniedError(absl::StrCat(
      service_name_, ".", method,
      " requires one of the roles: ", allowed.empty() ? "(none)" : absl::StrJoin(allowed, ", ")));
}

void Authorizer::AuditRefusal(const grpc::ServerContextBase& context, const Identity& caller,
                              const std::string& method, const std::string& object_type,
                              const std::string& object_id,
                              const std::string& participant_id) const {
  if (audit_db_ == nullptr || caller.agency_id.empty()) return;
  const std::string role = caller.roles.empty() ? "" : RoleName(*caller.roles.begin());
  absl::Status status = audit_db_->TransactForAgency(caller.agency_id, [&](pqxx::work& tx) {
    return AppendAudit(tx, caller.agency_id,
                       {caller.subject, role, absl::StrCat(service_name_, ".", method), object_type,
                        object_id, participant_id, AuditDecision::kDenied, RequestId(context)})
        .status();
  });
  if (!status.ok()) {
    log::Error("could not audit a refusal",
               {{"method", method}, {"code", absl::StatusCodeToString(status.code())}});
  }
}

absl::Status Authorizer::CheckCoversEveryMethod(
    const google::protobuf::ServiceDescriptor& service) const {
  return CheckRulesCoverEveryMethod(rules_, service);
}

absl::Status CheckRulesCoverEveryMethod(const RoleRules& rules,
                                        const google::protobuf::ServiceDescriptor& service) {
  std::vector<std::string> missing;
  for (int i = 0; i < service.method_count(); ++i) {
    if (!rules.contains(service.method(i)->name())) missing.push_back(service.method(i)->name());
  }
  if (missing.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "no authorization rule for ", service.full_name(), ": ", absl::StrJoin(missing, ", ")));
}

absl::Status RequireSameAgency(const Identity& caller, const std::string& object_agency_id) {
  if (!caller.agency_id.empty() && caller.agency_id == object_agency_id) return absl::OkStatus();
  return absl::PermissionDeniedError("the caller's agency has no access to this object");
}

}  // namespace peerpath
