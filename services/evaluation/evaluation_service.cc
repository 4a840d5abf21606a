#include "services/evaluation/evaluation_service.h"

namespace peerpath::evaluation {

const RoleRules& EvaluationService::Rules() {
  using enum Role;
  // Reports are small-cell suppressed aggregates; operations reads only those.
  static const auto* const rules = new RoleRules{
      {"RecordServiceOutcome", {kIntegration}},
      {"GetProgramReport", {kProgramAdmin, kSupervisor, kIntegration, kOperations}},
      {"ExportReport", {kProgramAdmin, kSupervisor, kIntegration, kOperations}},
      {"ListMeasureDefinitions", {kProgramAdmin, kSupervisor, kIntegration, kOperations}},
      {"GetPipelineStatus", {kOperations}},
  };
  return *rules;
}

EvaluationService::EvaluationService(ServiceContext& context)
    : authorizer_(context.verifier, "peerpath.evaluation.v1.EvaluationService", Rules(),
                  &context.db) {}

}  // namespace peerpath::evaluation
