// peerpath-matching: flags and wiring only.
#include "common/server.h"
#include "matching/migrations.h"
#include "services/matching/matching_service.h"

int main(int argc, char** argv) {
  peerpath::ServiceDefinition definition{
      .name = "matching",
      .grpc_service = "peerpath.matching.v1.MatchingService",
      .default_grpc_port = 7101,
      .default_metrics_port = 9101,
      .migrations = &peerpath::matching::Migrations(),
      .make_services =
          [](peerpath::ServiceContext& context) {
            std::vector<std::unique_ptr<grpc::Service>> services;
            services.push_back(std::make_unique<peerpath::matching::MatchingService>(context));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
