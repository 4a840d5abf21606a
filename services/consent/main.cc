// peerpath-consent: flags and wiring only.
#include "common/server.h"
#include "consent/migrations.h"
#include "services/consent/consent_service.h"

int main(int argc, char** argv) {
  peerpath::ServiceDefinition definition{
      .name = "consent",
      .grpc_service = "peerpath.consent.v1.ConsentService",
      .default_grpc_port = 7103,
      .default_metrics_port = 9103,
      .migrations = &peerpath::consent::Migrations(),
      .make_services =
          [](peerpath::ServiceContext& context) {
            std::vector<std::unique_ptr<grpc::Service>> services;
            services.push_back(std::make_unique<peerpath::consent::ConsentService>(context));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
