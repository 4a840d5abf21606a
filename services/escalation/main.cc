// peerpath-escalation: flags and wiring only.
#include "common/server.h"
#include "escalation/migrations.h"
#include "services/escalation/escalation_service.h"

int main(int argc, char** argv) {
  peerpath::ServiceDefinition definition{
      .name = "escalation",
      .grpc_service = "peerpath.escalation.v1.EscalationService",
      .default_grpc_port = 7104,
      .default_metrics_port = 9104,
      .migrations = &peerpath::escalation::Migrations(),
      .make_services =
          [](peerpath::ServiceContext& context) {
            std::vector<std::unique_ptr<grpc::Service>> services;
            services.push_back(std::make_unique<peerpath::escalation::EscalationService>(context));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
