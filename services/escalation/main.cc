// peerpath-escalation: flags and wiring only.
#include "common/server.h"
#include "escalation/migrations.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"

int main(int argc, char** argv) {
  peerpath::ServiceDefinition definition{
      .name = "escalation",
      .grpc_service = "peerpath.escalation.v1.EscalationService",
      .default_grpc_port = 7104,
      .default_metrics_port = 9104,
      .migrations = &peerpath::escalation::Migrations(),
      .make_services =
          [](peerpath::ServiceContext&) {
            // Domain RPCs answer UNIMPLEMENTED until their issue builds them.
            std::vector<std::unique_ptr<grpc::Service>> services;
            services.push_back(
                std::make_unique<peerpath::escalation::v1::EscalationService::Service>());
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
