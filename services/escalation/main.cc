// peerpath-escalation: flags and wiring only.

#include "absl/flags/flag.h"
#include "common/server.h"
#include "escalation/migrations.h"
#include "services/escalation/escalation_service.h"

ABSL_FLAG(std::string, agency_time_zone, "",
          "escalation: IANA time zone of the built-in routing policy (version 1 of every "
          "agency); default UTC (env PEERPATH_AGENCY_TIME_ZONE)");
ABSL_FLAG(std::string, deadline_sweep_interval, "",
          "escalation: how often the deadline sweeper runs, e.g. 1s (the default) (env "
          "PEERPATH_DEADLINE_SWEEP_INTERVAL)");
ABSL_FLAG(std::string, notification_webhook_url, "",
          "escalation: URL that receives a personal-data-free JSON POST per notification, with "
          "retries; empty: notifications are only logged (env "
          "PEERPATH_NOTIFICATION_WEBHOOK_URL)");
ABSL_FLAG(std::string, checkin_address, "",
          "escalation: host:port of the check-in service whose ConcernRaisedEvents open concerns; "
          "empty: not consumed (env PEERPATH_CHECKIN_ADDRESS)");
ABSL_FLAG(std::string, matching_address, "",
          "escalation: host:port of the matching service whose match events say who supports and "
          "supervises whom (routing to the supporter's supervisor, who may raise and see "
          "concerns); empty: not known (env PEERPATH_MATCHING_ADDRESS)");
ABSL_FLAG(std::string, escalation_max_raise_batch, "",
          "escalation: most concurrent RaiseConcern calls of one agency written in one "
          "transaction (group commit), 1 to 256; 1 writes each call alone (env "
          "PEERPATH_ESCALATION_MAX_RAISE_BATCH; default 16)");
ABSL_FLAG(std::string, escalation_raise_writes, "",
          "escalation: RaiseConcern write transactions at once, of all agencies together, 1 to "
          "64 (at most 2 of one agency); about the database server's processors and one more "
          "(env PEERPATH_ESCALATION_RAISE_WRITES; default 3)");

using peerpath::ExitOnBadConfiguration;
using peerpath::FlagOrEnv;

namespace {

peerpath::escalation::EscalationOptions OptionsFromFlags() {
  peerpath::escalation::EscalationOptions options;
  const std::string zone =
      FlagOrEnv(absl::GetFlag(FLAGS_agency_time_zone), "PEERPATH_AGENCY_TIME_ZONE");
  if (!zone.empty()) {
    options.time_zone = zone;
    if (!absl::LoadTimeZone(zone, &options.zone)) {
      ExitOnBadConfiguration("peerpath-escalation",
                             "--agency_time_zone '" + zone + "' is not an IANA time zone");
    }
  }
  const std::string interval =
      FlagOrEnv(absl::GetFlag(FLAGS_deadline_sweep_interval), "PEERPATH_DEADLINE_SWEEP_INTERVAL");
  if (!interval.empty() && (!absl::ParseDuration(interval, &options.sweep_interval) ||
                            options.sweep_interval <= absl::ZeroDuration())) {
    ExitOnBadConfiguration("peerpath-escalation", "--deadline_sweep_interval '" + interval +
                                                      "' is not a positive duration");
  }
  options.webhook_url =
      FlagOrEnv(absl::GetFlag(FLAGS_notification_webhook_url), "PEERPATH_NOTIFICATION_WEBHOOK_URL");
  options.checkin_address =
      FlagOrEnv(absl::GetFlag(FLAGS_checkin_address), "PEERPATH_CHECKIN_ADDRESS");
  options.matching_address =
      FlagOrEnv(absl::GetFlag(FLAGS_matching_address), "PEERPATH_MATCHING_ADDRESS");
  options.max_raise_batch = peerpath::WholeNumberFlagOrEnv(
      "peerpath-escalation", "escalation_max_raise_batch",
      absl::GetFlag(FLAGS_escalation_max_raise_batch), "PEERPATH_ESCALATION_MAX_RAISE_BATCH",
      options.max_raise_batch, 256);
  options.raise_writes =
      peerpath::WholeNumberFlagOrEnv("peerpath-escalation", "escalation_raise_writes",
                                     absl::GetFlag(FLAGS_escalation_raise_writes),
                                     "PEERPATH_ESCALATION_RAISE_WRITES", options.raise_writes, 64);
  return options;
}

}  // namespace

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
            services.push_back(std::make_unique<peerpath::escalation::EscalationService>(
                context, OptionsFromFlags()));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
