#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/authorization.h"
#include "common/event_consumer.h"
#include "common/event_log.h"
#include "common/server.h"
#include "peerpath/matching/v1/matching.grpc.pb.h"
#include "services/matching/model.h"

namespace peerpath::matching {

using MatchingServiceBase =
    WithEventLogRpcs<v1::MatchingService::Service, v1::ListEventsRequest, v1::ListEventsResponse,
                     v1::SubscribeRequest, v1::SubscribeResponse>;

struct MatchingOptions {
  // host:port of the check-in and escalation services whose events feed supporters' workload
  // (check-ins in the last 7 days, open concerns raised); empty: not consumed.
  std::string checkin_address;
  std::string escalation_address;
};

// peerpath.matching.v1.MatchingService: thin handlers (authorize → validate → core → map); the
// rules live in model.h / assignment.h, the SQL in store.h.
class MatchingService final : public MatchingServiceBase {
 public:
  explicit MatchingService(ServiceContext& context, MatchingOptions options = {});
  ~MatchingService() override;

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

  grpc::Status CreateSupporter(grpc::ServerContext* context,
                               const v1::CreateSupporterRequest* request,
                               v1::CreateSupporterResponse* response) override;
  grpc::Status GetSupporter(grpc::ServerContext* context, const v1::GetSupporterRequest* request,
                            v1::GetSupporterResponse* response) override;
  grpc::Status UpdateSupporter(grpc::ServerContext* context,
                               const v1::UpdateSupporterRequest* request,
                               v1::UpdateSupporterResponse* response) override;
  grpc::Status ListSupporters(grpc::ServerContext* context,
                              const v1::ListSupportersRequest* request,
                              v1::ListSupportersResponse* response) override;
  grpc::Status SetSupporterStatus(grpc::ServerContext* context,
                                  const v1::SetSupporterStatusRequest* request,
                                  v1::SetSupporterStatusResponse* response) override;
  grpc::Status CreateMatchRequest(grpc::ServerContext* context,
                                  const v1::CreateMatchRequestRequest* request,
                                  v1::CreateMatchRequestResponse* response) override;
  grpc::Status GetMatchRequest(grpc::ServerContext* context,
                               const v1::GetMatchRequestRequest* request,
                               v1::GetMatchRequestResponse* response) override;
  grpc::Status ListMatchRequests(grpc::ServerContext* context,
                                 const v1::ListMatchRequestsRequest* request,
                                 v1::ListMatchRequestsResponse* response) override;
  grpc::Status ListMatches(grpc::ServerContext* context, const v1::ListMatchesRequest* request,
                           v1::ListMatchesResponse* response) override;
  grpc::Status CancelMatchRequest(grpc::ServerContext* context,
                                  const v1::CancelMatchRequestRequest* request,
                                  v1::CancelMatchRequestResponse* response) override;
  grpc::Status ProposeMatches(grpc::ServerContext* context,
                              const v1::ProposeMatchesRequest* request,
                              v1::ProposeMatchesResponse* response) override;
  grpc::Status AssignBatch(grpc::ServerContext* context, const v1::AssignBatchRequest* request,
                           v1::AssignBatchResponse* response) override;
  grpc::Status AcceptProposal(grpc::ServerContext* context,
                              const v1::AcceptProposalRequest* request,
                              v1::AcceptProposalResponse* response) override;
  // The message is spelled out: inside the class, GetMatchRequest names the RPC.
  grpc::Status GetMatch(grpc::ServerContext* context,
                        const ::peerpath::matching::v1::GetMatchRequest* request,
                        v1::GetMatchResponse* response) override;
  grpc::Status EndMatch(grpc::ServerContext* context, const v1::EndMatchRequest* request,
                        v1::EndMatchResponse* response) override;
  grpc::Status Rematch(grpc::ServerContext* context, const v1::RematchRequest* request,
                       v1::RematchResponse* response) override;
  grpc::Status RecordFollowUp(grpc::ServerContext* context,
                              const v1::RecordFollowUpRequest* request,
                              v1::RecordFollowUpResponse* response) override;
  grpc::Status ListDueFollowUps(grpc::ServerContext* context,
                                const v1::ListDueFollowUpsRequest* request,
                                v1::ListDueFollowUpsResponse* response) override;
  grpc::Status GetSupporterWorkload(grpc::ServerContext* context,
                                    const v1::GetSupporterWorkloadRequest* request,
                                    v1::GetSupporterWorkloadResponse* response) override;
  grpc::Status IsActiveSupporter(grpc::ServerContext* context,
                                 const v1::IsActiveSupporterRequest* request,
                                 v1::IsActiveSupporterResponse* response) override;

 private:
  // ProposeMatches' copy of an agency's ACTIVE roster (profiles only, units_in_use 0: the units
  // in use are read fresh on every call), exact while the agency's roster version stays
  // (migrations/0005).
  struct CachedRoster {
    int64_t version = 0;
    std::vector<v1::Supporter> supporters;
    absl::CivilDay indexed_on;  // The day `index` was built for (training expiry).
    std::unique_ptr<CandidateIndex> index;
    // The index for `today`: the cached one, or (on a later day) one built into `rebuilt`.
    const CandidateIndex& IndexOn(absl::CivilDay today,
                                  std::optional<CandidateIndex>& rebuilt) const {
      if (indexed_on == today) return *index;
      return rebuilt.emplace(supporters, today);
    }
  };
  // The agency's cached roster if it is still `version` (read in this transaction), else read
  // afresh.
  std::shared_ptr<const CachedRoster> RosterOf(pqxx::work& tx, const std::string& agency_id,
                                               int64_t version);

  ServiceContext& context_;
  Authorizer authorizer_;
  EventLog events_;
  std::unique_ptr<EventConsumer> checkin_consumer_;
  std::unique_ptr<EventConsumer> escalation_consumer_;
  std::mutex rosters_mu_;
  std::unordered_map<std::string, std::shared_ptr<const CachedRoster>> rosters_;
};

}  // namespace peerpath::matching
