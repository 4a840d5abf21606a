#include "common/authorization.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace peerpath {

absl::StatusOr<Identity> Authorizer::Authorize(const grpc::ServerContextBase& context,
                                               const std::string& method) const {
  absl::StatusOr<Identity> caller = verifier_.Authenticate(context);
  if (!caller.ok()) return caller.status();
  auto rule = rules_.find(method);
  if (rule != rules_.end()) {
    for (Role role : rule->second) {
      if (caller->Has(role)) return caller;
    }
  }
  std::vector<std::string> allowed;
  if (rule != rules_.end()) {
    for (Role role : rule->second) allowed.push_back(RoleName(role));
  }
  return absl::PermissionDeniedError(absl::StrCat(
      service_name_, ".", method,
      " requires one of the roles: ", allowed.empty() ? "(none)" : absl::StrJoin(allowed, ", ")));
}

absl::Status Authorizer::CheckCoversEveryMethod(
    const google::protobuf::ServiceDescriptor& service) const {
  std::vector<std::string> missing;
  for (int i = 0; i < service.method_count(); ++i) {
    if (!rules_.contains(service.method(i)->name())) missing.push_back(service.method(i)->name());
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
