#include "services/matching/matching_service.h"

namespace peerpath::matching {

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

MatchingService::MatchingService(ServiceContext& context)
    : MatchingServiceBase(authorizer_, events_, context.stopping),
      authorizer_(context.verifier, "peerpath.matching.v1.MatchingService", Rules(), &context.db),
      events_(context.db) {}

}  // namespace peerpath::matching
