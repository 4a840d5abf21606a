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

// A service calling on behalf of one agency names it in this metadata header; it is honoured only
// for callers with the `service` role (whose token speaks for the deployment, not one agency).
inline constexpr char kActingAgencyHeader[] = "x-peerpath-agency-id";

// Method name (e.g. "RecordConsent") → roles that may call it.
using RoleRules = std::map<std::string, std::set<Role>>;

class Database;

class Authorizer {
 public:
  // With `audit_db`, every refusal of an authenticated caller appends a `denied` audit row to
  // the caller's agency's chain (in its own transaction: the call itself writes nothing).
  Authorizer(const TokenVerifier& verifier, std::string service_name, RoleRules rules,
             Database* audit_db = nullptr)
      : verifier_(verifier),
        service_name_(std::move(service_name)),
        rules_(std::move(rules)),
        audit_db_(audit_db) {}

  // Authenticates the call and checks the caller holds a role allowed for `method`.
  // UNAUTHENTICATED, PERMISSION_DENIED, or the caller's identity. For a `service` caller, an
  // `x-peerpath-agency-id` header sets the agency the call acts for.
  absl::StatusOr<Identity> Authorize(const grpc::ServerContextBase& context,
                                     const std::string& method) const;

  // Appends a `denied` audit row for a refusal decided after authorization (another agency's
  // object, no relationship with the participant). Never fails the call: a failure is logged.
  void AuditRefusal(const grpc::ServerContextBase& context, const Identity& caller,
                    const std::string& method, const std::string& object_type,
                    const std::string& object_id, const std::string& participant_id) const;

  // Every RPC of `service` needs a rule (an RPC without one would be refused to everyone; a
  // missing rule is a bug, found at start-up rather than by a user).
  absl::Status CheckCoversEveryMethod(const google::protobuf::ServiceDescriptor& service) const;

 private:
  const TokenVerifier& verifier_;
  std::string service_name_;
  RoleRules rules_;
  Database* audit_db_;
};

// FAILED_PRECONDITION naming each RPC of `service` that `rules` does not cover.
absl::Status CheckRulesCoverEveryMethod(const RoleRules& rules,
                                        const google::protobuf::ServiceDescriptor& service);

// PERMISSION_DENIED unless the object belongs to the caller's agency. Never says whose it is.
absl::Status RequireSameAgency(const Identity& caller, const std::string& object_agency_id);

}  // namespace peerpath
