// peerpath-evaluation: flags and wiring only.
#include "common/server.h"
#include "evaluation/migrations.h"
#include "services/evaluation/evaluation_service.h"

int main(int argc, char** argv) {
  peerpath::ServiceDefinition definition{
      .name = "evaluation",
      .grpc_service = "peerpath.evaluation.v1.EvaluationService",
      .default_grpc_port = 7105,
      .default_metrics_port = 9105,
      .migrations = &peerpath::evaluation::Migrations(),
      .make_services =
          [](peerpath::ServiceContext& context) {
            std::vector<std::unique_ptr<grpc::Service>> services;
            services.push_back(std::make_unique<peerpath::evaluation::EvaluationService>(context));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
