// peerpath-evaluation: flags and wiring only.

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "common/server.h"
#include "evaluation/migrations.h"
#include "services/evaluation/evaluation_service.h"

ABSL_FLAG(std::string, checkin_address, "",
          "evaluation: host:port of the check-in service whose event log feeds the read models; "
          "empty: not consumed (env PEERPATH_CHECKIN_ADDRESS)");
ABSL_FLAG(std::string, matching_address, "",
          "evaluation: host:port of the matching service whose event log feeds the read models; "
          "empty: not consumed (env PEERPATH_MATCHING_ADDRESS)");
ABSL_FLAG(std::string, escalation_address, "",
          "evaluation: host:port of the escalation service whose event log feeds the read "
          "models; empty: not consumed (env PEERPATH_ESCALATION_ADDRESS)");
ABSL_FLAG(std::string, consent_address, "",
          "evaluation: host:port of the consent service whose event log feeds the read models; "
          "empty: not consumed (env PEERPATH_CONSENT_ADDRESS)");
ABSL_FLAG(std::string, min_cell_size, "",
          "evaluation: minimum cell size k of small-cell suppression, at least 11 (the default) "
          "(env PEERPATH_MIN_CELL_SIZE)");
ABSL_FLAG(bool, replay_read_models, false,
          "evaluation: at start, empty the read models and re-read every event log from "
          "position 0 (service outcomes are kept)");
ABSL_FLAG(std::string, gauge_interval, "",
          "evaluation: how often the operations gauges are refreshed, e.g. 15s (the default) "
          "(env PEERPATH_GAUGE_INTERVAL)");

using peerpath::ExitOnBadConfiguration;
using peerpath::FlagOrEnv;

namespace {

peerpath::evaluation::EvaluationOptions OptionsFromFlags() {
  peerpath::evaluation::EvaluationOptions options;
  options.checkin_address =
      FlagOrEnv(absl::GetFlag(FLAGS_checkin_address), "PEERPATH_CHECKIN_ADDRESS");
  options.matching_address =
      FlagOrEnv(absl::GetFlag(FLAGS_matching_address), "PEERPATH_MATCHING_ADDRESS");
  options.escalation_address =
      FlagOrEnv(absl::GetFlag(FLAGS_escalation_address), "PEERPATH_ESCALATION_ADDRESS");
  options.consent_address =
      FlagOrEnv(absl::GetFlag(FLAGS_consent_address), "PEERPATH_CONSENT_ADDRESS");
  const std::string k = FlagOrEnv(absl::GetFlag(FLAGS_min_cell_size), "PEERPATH_MIN_CELL_SIZE");
  if (!k.empty() && (!absl::SimpleAtoi(k, &options.min_cell_size) || options.min_cell_size < 11)) {
    ExitOnBadConfiguration("peerpath-evaluation",
                           "--min_cell_size '" + k + "' is not a whole number of at least 11");
  }
  options.replay = absl::GetFlag(FLAGS_replay_read_models);
  const std::string interval =
      FlagOrEnv(absl::GetFlag(FLAGS_gauge_interval), "PEERPATH_GAUGE_INTERVAL");
  if (!interval.empty() && (!absl::ParseDuration(interval, &options.gauge_interval) ||
                            options.gauge_interval <= absl::ZeroDuration())) {
    ExitOnBadConfiguration("peerpath-evaluation",
                           "--gauge_interval '" + interval + "' is not a positive duration");
  }
  return options;
}

}  // namespace

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
            services.push_back(std::make_unique<peerpath::evaluation::EvaluationService>(
                context, OptionsFromFlags()));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
