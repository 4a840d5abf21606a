// peerpath-consent: flags and wiring only.
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "common/server.h"
#include "consent/migrations.h"
#include "services/consent/consent_service.h"

ABSL_FLAG(std::string, matching_address, "",
          "consent: host:port of the matching service, whose MatchStarted/MatchEnded events feed "
          "the peer supporters' active matches (env PEERPATH_MATCHING_ADDRESS); empty: the local "
          "table is not fed");
ABSL_FLAG(std::string, escalation_address, "",
          "consent: host:port of the escalation service, whose ConcernOpened/Resolved/Cancelled "
          "events say which safety concerns are open for break-glass access (env "
          "PEERPATH_ESCALATION_ADDRESS); empty: no emergency access can be granted");
ABSL_FLAG(std::string, consent_expiry_sweep_interval, "",
          "consent: how often the expiry sweeper marks ended consents EXPIRED, e.g. 30s (env "
          "PEERPATH_CONSENT_EXPIRY_SWEEP_INTERVAL; default 30s)");

ABSL_FLAG(std::string, consent_decision_cache_participants, "",
          "consent: participants whose decision inputs each replica keeps in memory for "
          "CheckAccess, kept current by LISTEN/NOTIFY (env "
          "PEERPATH_CONSENT_DECISION_CACHE_PARTICIPANTS; default 100000; 0: every decision reads "
          "the database)");

using peerpath::ExitOnBadConfiguration;
using peerpath::FlagOrEnv;

namespace {

peerpath::consent::ConsentOptions Options() {
  peerpath::consent::ConsentOptions options;
  options.matching_address =
      FlagOrEnv(absl::GetFlag(FLAGS_matching_address), "PEERPATH_MATCHING_ADDRESS");
  options.escalation_address =
      FlagOrEnv(absl::GetFlag(FLAGS_escalation_address), "PEERPATH_ESCALATION_ADDRESS");
  const std::string interval = FlagOrEnv(absl::GetFlag(FLAGS_consent_expiry_sweep_interval),
                                         "PEERPATH_CONSENT_EXPIRY_SWEEP_INTERVAL");
  if (!interval.empty() && (!absl::ParseDuration(interval, &options.expiry_sweep_interval) ||
                            options.expiry_sweep_interval <= absl::ZeroDuration())) {
    ExitOnBadConfiguration("peerpath-consent", "--consent_expiry_sweep_interval '" + interval +
                                                   "' is not a positive duration");
  }
  const std::string cached = FlagOrEnv(absl::GetFlag(FLAGS_consent_decision_cache_participants),
                                       "PEERPATH_CONSENT_DECISION_CACHE_PARTICIPANTS");
  if (!cached.empty() &&
      (!absl::SimpleAtoi(cached, &options.decision_cache_participants) ||
       options.decision_cache_participants < 0 || options.decision_cache_participants > 10000000)) {
    ExitOnBadConfiguration("peerpath-consent", "--consent_decision_cache_participants '" + cached +
                                                   "' is not a number from 0 to 10000000");
  }
  return options;
}

}  // namespace

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
            services.push_back(
                std::make_unique<peerpath::consent::ConsentService>(context, Options()));
            return services;
          },
  };
  return peerpath::RunService(definition, argc, argv);
}
