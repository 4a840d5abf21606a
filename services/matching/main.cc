// peerpath-matching: flags and wiring only.
#include <string>

#include "absl/flags/flag.h"
#include "common/server.h"
#include "matching/migrations.h"
#include "services/matching/matching_service.h"

ABSL_FLAG(std::string, checkin_address, "",
          "matching: host:port of the check-in service whose CheckInRecordedEvents count "
          "supporters' check-ins for their workload; empty: not consumed (env "
          "PEERPATH_CHECKIN_ADDRESS)");
ABSL_FLAG(std::string, escalation_address, "",
          "matching: host:port of the escalation service whose concern events count the open "
          "concerns supporters raised for their workload; empty: not consumed (env "
          "PEERPATH_ESCALATION_ADDRESS)");

using peerpath::FlagOrEnv;

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
            services.push_back(std::make_unique<peerpath::matching::MatchingService>(
                context,
                peerpath::matching::MatchingOptions{
                    .checkin_address =
                        FlagOrEnv(absl::GetFlag(FLAGS_checkin_address), "PEERPATH_CHECKIN_ADDRESS"),
                    .escalation_address = FlagOrEnv(absl::GetFlag(FLAGS_escalation_address),
                                                    "PEERPATH_ESCALATION_ADDRESS")}));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
