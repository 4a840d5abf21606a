#pragma once

#include <prometheus/counter.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "common/authorization.h"
#include "common/event_consumer.h"
#include "common/event_log.h"
#include "common/server.h"
#include "common/stop_signal.h"
#include "common/worker_pool.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"
#include "services/consent/access.h"
#include "services/consent/decision_cache.h"
#include "services/consent/relationships.h"

namespace peerpath::consent {

// CheckAccess uses the callback API: a decision from the cache is answered on the thread that
// completed its barrier, without a hand-off to a synchronous-server thread.
using ConsentServiceBase = WithEventLogRpcs<
    v1::ConsentService::WithCallbackMethod_CheckAccess<v1::ConsentService::Service>,
    v1::ListEventsRequest, v1::ListEventsResponse, v1::SubscribeRequest, v1::SubscribeResponse>;

// Service-specific settings (flags in main.cc).
struct ConsentOptions {
  // host:port of the matching service; empty: the active-matches table is not fed.
  std::string matching_address;
  // host:port of the escalation service; empty: concern ids are recorded, not verified.
  std::string escalation_address;
  // How often the expiry sweeper runs.
  absl::Duration expiry_sweep_interval = absl::Seconds(30);
  // Participants whose decision inputs each replica keeps in memory (decision_cache.h); 0: no
  // cache, every CheckAccess reads the database.
  int decision_cache_participants = 100000;
};

// peerpath.consent.v1.ConsentService: consents, access decisions, gates, the accounting of
// disclosures and break-glass access; serves its event log; runs the expiry sweeper and, with
// --matching_address, the consumer of the matching service's log.
class ConsentService final : public ConsentServiceBase {
 public:
  explicit ConsentService(ServiceContext& context, ConsentOptions options = {});
  // For tests: other relationship sources.
  ConsentService(ServiceContext& context, ConsentOptions options,
                 std::unique_ptr<ActiveMatches> matches, std::unique_ptr<SafetyConcerns> concerns);
  ~ConsentService() override;

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

  grpc::Status RecordConsent(grpc::ServerContext* context, const v1::RecordConsentRequest* request,
                             v1::RecordConsentResponse* response) override;
  grpc::Status GetConsent(grpc::ServerContext* context, const v1::GetConsentRequest* request,
                          v1::GetConsentResponse* response) override;
  grpc::Status ListConsents(grpc::ServerContext* context, const v1::ListConsentsRequest* request,
                            v1::ListConsentsResponse* response) override;
  grpc::Status RevokeConsent(grpc::ServerContext* context, const v1::RevokeConsentRequest* request,
                             v1::RevokeConsentResponse* response) override;
  grpc::ServerUnaryReactor* CheckAccess(grpc::CallbackServerContext* context,
                                        const v1::CheckAccessRequest* request,
                                        v1::CheckAccessResponse* response) override;
  grpc::Status CheckGates(grpc::ServerContext* context, const v1::CheckGatesRequest* request,
                          v1::CheckGatesResponse* response) override;
  grpc::Status ShareInformation(grpc::ServerContext* context,
                                const v1::ShareInformationRequest* request,
                                v1::ShareInformationResponse* response) override;
  grpc::Status ListDisclosures(grpc::ServerContext* context,
                               const v1::ListDisclosuresRequest* request,
                               v1::ListDisclosuresResponse* response) override;
  grpc::Status RequestEmergencyAccess(grpc::ServerContext* context,
                                      const v1::RequestEmergencyAccessRequest* request,
                                      v1::RequestEmergencyAccessResponse* response) override;
  grpc::Status ListEmergencyAccesses(grpc::ServerContext* context,
                                     const v1::ListEmergencyAccessesRequest* request,
                                     v1::ListEmergencyAccessesResponse* response) override;
  grpc::Status ReviewEmergencyAccess(grpc::ServerContext* context,
                                     const v1::ReviewEmergencyAccessRequest* request,
                                     v1::ReviewEmergencyAccessResponse* response) override;

  // One pass of the expiry sweeper: marks ended consents EXPIRED with their events. Returns how
  // many.
  absl::StatusOr<int> SweepExpiredConsents();

 private:
  // The part of CheckAccess that reads the database (a cache miss, a peer supporter's check, a
  // decision resting on an emergency access), on a worker thread.
  grpc::Status DecideFromDatabase(const grpc::CallbackServerContext& context,
                                  const Identity& caller, const v1::CheckAccessRequest& request,
                                  const Accessor& accessor, v1::CheckAccessResponse& response);

  ServiceContext& context_;
  Authorizer authorizer_;
  EventLog events_;
  std::unique_ptr<ActiveMatches> matches_;
  std::unique_ptr<SafetyConcerns> concerns_;
  prometheus::Counter* break_glass_ = nullptr;
  prometheus::Counter* decided_from_cache_ = nullptr;
  prometheus::Counter* decided_from_database_ = nullptr;
  // Declared before the cache: the cache's last callbacks (at its destruction) post here.
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<DecisionCache> cache_;  // Null when disabled.
  std::unique_ptr<EventConsumer> matching_consumer_;
  std::unique_ptr<EventConsumer> escalation_consumer_;
  StopSignal stop_sweeper_;
  std::thread sweeper_;
};

}  // namespace peerpath::consent
