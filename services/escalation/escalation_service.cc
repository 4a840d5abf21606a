#include "services/escalation/escalation_service.h"

namespace peerpath::escalation {

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

EscalationService::EscalationService(ServiceContext& context)
    : EscalationServiceBase(authorizer_, events_, context.stopping),
      authorizer_(context.verifier, "peerpath.escalation.v1.EscalationService", Rules(),
                  &context.db),
      events_(context.db) {}

}  // namespace peerpath::escalation
