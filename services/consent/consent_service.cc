#include "services/consent/consent_service.h"

namespace peerpath::consent {

const RoleRules& ConsentService::Rules() {
  using enum Role;
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

ConsentService::ConsentService(ServiceContext& context)
    : ConsentServiceBase(authorizer_, events_, context.stopping),
      authorizer_(context.verifier, "peerpath.consent.v1.ConsentService", Rules(), &context.db),
      events_(context.db) {}

}  // namespace peerpath::consent
