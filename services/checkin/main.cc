// peerpath-checkin: flags and wiring only.
#include "checkin/migrations.h"
#include "common/server.h"
#include "services/checkin/checkin_service.h"

int main(int argc, char** argv) {
  peerpath::ServiceDefinition definition{
      .name = "checkin",
      .grpc_service = "peerpath.checkin.v1.CheckInService",
      .default_grpc_port = 7102,
      .default_metrics_port = 9102,
      .migrations = &peerpath::checkin::Migrations(),
      .make_services =
          [](peerpath::ServiceContext& context) {
            std::vector<std::unique_ptr<grpc::Service>> services;
            services.push_back(std::make_unique<peerpath::checkin::CheckInService>(context));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
