#pragma once

#include "common/authorization.h"
#include "common/event_log.h"
#include "common/server.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"

namespace peerpath::checkin {

using CheckInServiceBase =
    WithEventLogRpcs<v1::CheckInService::Service, v1::ListEventsRequest, v1::ListEventsResponse,
                     v1::SubscribeRequest, v1::SubscribeResponse>;

// peerpath.checkin.v1.CheckInService. Serves the event log; the domain RPCs answer UNIMPLEMENTED
// until the checkin issue builds them.
class CheckInService final : public CheckInServiceBase {
 public:
  explicit CheckInService(ServiceContext& context);

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

 private:
  Authorizer authorizer_;
  EventLog events_;
};

}  // namespace peerpath::checkin
