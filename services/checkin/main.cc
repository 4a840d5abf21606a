// peerpath-checkin: flags and wiring only.
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "checkin/migrations.h"
#include "common/log.h"
#include "common/server.h"
#include "services/checkin/checkin_service.h"
#include "services/checkin/consent_gates.h"

ABSL_FLAG(std::string, consent_address, "",
          "checkin: host:port of the consent service, asked for the consent gates of every "
          "enrollment (env PEERPATH_CONSENT_ADDRESS); empty: every consent gate is reported unmet");
ABSL_FLAG(std::string, matching_address, "",
          "checkin: host:port of the matching service, whose MatchStarted/MatchEnded events tell "
          "which peer supporter is in an active match with which participant (env "
          "PEERPATH_MATCHING_ADDRESS); empty: the relationship table is not fed");
ABSL_FLAG(std::string, escalation_address, "",
          "checkin: host:port of the escalation service, whose RoutineEngagementStoppedEvent stops "
          "routine engagement of enrollments (env PEERPATH_ESCALATION_ADDRESS); empty: not read");
ABSL_FLAG(std::string, default_time_zone, "",
          "checkin: IANA time zone of agencies that never set one in their program policy (env "
          "PEERPATH_DEFAULT_TIME_ZONE; default UTC)");

ABSL_FLAG(std::string, checkin_sweep_interval, "",
          "checkin: how often missed check-in windows and time without contact (at risk, lost to "
          "follow-up) are swept, e.g. 60s; 0 turns the sweeper off (env "
          "PEERPATH_CHECKIN_SWEEP_INTERVAL; default 60s)");

ABSL_FLAG(std::string, checkin_max_write_batch, "",
          "checkin: most check-ins of concurrent RecordCheckIn calls written in one transaction "
          "(group commit), 1 to 256; 1 writes each call alone (env "
          "PEERPATH_CHECKIN_MAX_WRITE_BATCH; default 64)");

using peerpath::FlagOrEnv;

int main(int argc, char** argv) {
  peerpath::ServiceDefinition definition{
      .name = "checkin",
      .grpc_service = "peerpath.checkin.v1.CheckInService",
      .default_grpc_port = 7102,
      .default_metrics_port = 9102,
      .migrations = &peerpath::checkin::Migrations(),
      .make_services =
          [](peerpath::ServiceContext& context) {
            peerpath::checkin::CheckInOptions options{
                .consent_address =
                    FlagOrEnv(absl::GetFlag(FLAGS_consent_address), "PEERPATH_CONSENT_ADDRESS"),
                .matching_address =
                    FlagOrEnv(absl::GetFlag(FLAGS_matching_address), "PEERPATH_MATCHING_ADDRESS"),
                .escalation_address = FlagOrEnv(absl::GetFlag(FLAGS_escalation_address),
                                                "PEERPATH_ESCALATION_ADDRESS"),
                .default_time_zone = FlagOrEnv(absl::GetFlag(FLAGS_default_time_zone),
                                               "PEERPATH_DEFAULT_TIME_ZONE", "UTC"),
            };
            const std::string sweep = FlagOrEnv(absl::GetFlag(FLAGS_checkin_sweep_interval),
                                                "PEERPATH_CHECKIN_SWEEP_INTERVAL", "60s");
            if (!absl::ParseDuration(sweep, &options.sweep_interval) ||
                options.sweep_interval < absl::ZeroDuration()) {
              peerpath::ExitOnBadConfiguration(
                  "peerpath-checkin",
                  "--checkin_sweep_interval '" + sweep + "' is not a duration of 0 or more");
            }
            options.max_write_batch = peerpath::WholeNumberFlagOrEnv(
                "peerpath-checkin", "checkin_max_write_batch",
                absl::GetFlag(FLAGS_checkin_max_write_batch), "PEERPATH_CHECKIN_MAX_WRITE_BATCH",
                options.max_write_batch, 256);
            std::unique_ptr<peerpath::checkin::ConsentGates> gates;
            if (!options.consent_address.empty()) {
              auto grpc_gates =
                  peerpath::checkin::MakeGrpcConsentGates(options.consent_address, context.config);
              if (!grpc_gates.ok()) {
                // Refusing to start beats starting with gates that can never be confirmed.
                peerpath::log::Error("consent_address unusable",
                                     {{"error", std::string(grpc_gates.status().message())}});
                std::exit(2);
              }
              gates = std::move(*grpc_gates);
            }
            std::vector<std::unique_ptr<grpc::Service>> services;
            services.push_back(std::make_unique<peerpath::checkin::CheckInService>(
                context, std::move(options), std::move(gates)));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
