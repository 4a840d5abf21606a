#pragma once

#include "common/authorization.h"
#include "common/event_log.h"
#include "common/server.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"

namespace peerpath::escalation {

using EscalationServiceBase =
    WithEventLogRpcs<v1::EscalationService::Service, v1::ListEventsRequest, v1::ListEventsResponse,
                     v1::SubscribeRequest, v1::SubscribeResponse>;

// peerpath.escalation.v1.EscalationService. Serves the event log; the domain RPCs answer
// UNIMPLEMENTED until the escalation issue builds them.
class EscalationService final : public EscalationServiceBase {
 public:
  explicit EscalationService(ServiceContext& context);

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

 private:
  Authorizer authorizer_;
  EventLog events_;
};

}  // namespace peerpath::escalation
