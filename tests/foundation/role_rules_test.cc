// Every service's rule table names every RPC of its API (an RPC without a rule would be refused
// to everyone: a bug found here rather than by a user), and only the `service` role reads event
// logs (they hold every agency's events).
#include <gtest/gtest.h>

#include "common/authorization.h"
#include "services/checkin/checkin_service.h"
#include "services/consent/consent_service.h"
#include "services/escalation/escalation_service.h"
#include "services/evaluation/evaluation_service.h"
#include "services/matching/matching_service.h"

namespace peerpath::testing {
namespace {

struct ServiceRules {
  const google::protobuf::ServiceDescriptor* service;
  const RoleRules& rules;
};

const google::protobuf::ServiceDescriptor* Find(const char* name) {
  return google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
}

std::vector<ServiceRules> AllServices() {
  return {
      {Find(matching::v1::MatchingService::service_full_name()),
       matching::MatchingService::Rules()},
      {Find(checkin::v1::CheckInService::service_full_name()), checkin::CheckInService::Rules()},
      {Find(consent::v1::ConsentService::service_full_name()), consent::ConsentService::Rules()},
      {Find(escalation::v1::EscalationService::service_full_name()),
       escalation::EscalationService::Rules()},
      {Find(evaluation::v1::EvaluationService::service_full_name()),
       evaluation::EvaluationService::Rules()},
  };
}

TEST(RoleRules, EveryRpcOfEveryServiceHasARule) {
  for (const ServiceRules& s : AllServices()) {
    ASSERT_NE(s.service, nullptr);
    absl::Status covered = CheckRulesCoverEveryMethod(s.rules, *s.service);
    EXPECT_TRUE(covered.ok()) << covered;
    // And no rule names an RPC the API does not have (a typo would leave the real one uncovered).
    for (const auto& [method, roles] : s.rules) {
      EXPECT_NE(s.service->FindMethodByName(method), nullptr)
          << s.service->full_name() << " has no RPC " << method;
      EXPECT_FALSE(roles.empty()) << method;
    }
  }
}

TEST(RoleRules, OnlyTheServiceRoleReadsEventLogs) {
  for (const ServiceRules& s : AllServices()) {
    for (const char* method : {"ListEvents", "Subscribe"}) {
      if (s.service->FindMethodByName(method) == nullptr) continue;
      EXPECT_EQ(s.rules.at(method), std::set<Role>{Role::kService})
          << s.service->full_name() << "." << method;
    }
  }
}

TEST(RoleRules, OperationsNeverReachesPersonalData) {
  // Operations reads aggregates only: no consent, check-in, match or concern RPC admits it.
  for (const ServiceRules& s : AllServices()) {
    if (s.service->full_name() == "peerpath.evaluation.v1.EvaluationService") continue;
    for (const auto& [method, roles] : s.rules) {
      if (method == "GetProgramPolicy") continue;  // Program settings, not personal data.
      EXPECT_FALSE(roles.contains(Role::kOperations)) << s.service->full_name() << "." << method;
    }
  }
}

}  // namespace
}  // namespace peerpath::testing
