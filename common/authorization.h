#pragma once

// Authorization: each service declares, per RPC, which roles may call it (a rule table), and one
// piece of code checks it. Object-level checks (the object's agency must be the caller's, and
// each service's relationship rules) come after, in the service.
//
// Refusals are PERMISSION_DENIED with a message that says what the caller lacks and nothing about
// the object.

#include <google/protobuf/descriptor.h>

#include <map>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/auth.h"

namespace grpc {
class ServerContextBase;
}

namespace peerpath {

// Method name (e.g. "RecordConsent") → roles that may call it.
using RoleRules = std::map<std::string, std::set<Role>>;

class Authorizer {
 public:
  Authorizer(const TokenVerifier& verifier, std::string service_name, RoleRules rules)
      : verifier_(verifier), service_name_(std::move(service_name)), rules_(std::move(rules)) {}

  // Authenticates the call and checks the caller holds a role allowed for `method`.
  // UNAUTHENTICATED, PERMISSION_DENIED, or the caller's identity.
  absl::StatusOr<Identity> Authorize(const grpc::ServerContextBase& context,
                                     const std::string& method) const;

  // Every RPC of `service` needs a rule (an RPC without one would be refused to everyone; a
  // missing rule is a bug, found at start-up rather than by a user).
  absl::Status CheckCoversEveryMethod(const google::protobuf::ServiceDescriptor& service) const;

 private:
  const TokenVerifier& verifier_;
  std::string service_name_;
  RoleRules rules_;
};

// PERMISSION_DENIED unless the object belongs to the caller's agency. Never says whose it is.
absl::Status RequireSameAgency(const Identity& caller, const std::string& object_agency_id);

}  // namespace peerpath
