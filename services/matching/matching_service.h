#pragma once

#include "common/authorization.h"
#include "common/event_log.h"
#include "common/server.h"
#include "peerpath/matching/v1/matching.grpc.pb.h"

namespace peerpath::matching {

using MatchingServiceBase =
    WithEventLogRpcs<v1::MatchingService::Service, v1::ListEventsRequest, v1::ListEventsResponse,
                     v1::SubscribeRequest, v1::SubscribeResponse>;

// peerpath.matching.v1.MatchingService. Serves the event log; the domain RPCs answer UNIMPLEMENTED
// until the matching issue builds them.
class MatchingService final : public MatchingServiceBase {
 public:
  explicit MatchingService(ServiceContext& context);

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

 private:
  Authorizer authorizer_;
  EventLog events_;
};

}  // namespace peerpath::matching
