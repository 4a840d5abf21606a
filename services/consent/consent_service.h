#pragma once

#include "common/authorization.h"
#include "common/event_log.h"
#include "common/server.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"

namespace peerpath::consent {

using ConsentServiceBase =
    WithEventLogRpcs<v1::ConsentService::Service, v1::ListEventsRequest, v1::ListEventsResponse,
                     v1::SubscribeRequest, v1::SubscribeResponse>;

// peerpath.consent.v1.ConsentService. Serves the event log; the domain RPCs answer UNIMPLEMENTED
// until the consent issue builds them.
class ConsentService final : public ConsentServiceBase {
 public:
  explicit ConsentService(ServiceContext& context);

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

 private:
  Authorizer authorizer_;
  EventLog events_;
};

}  // namespace peerpath::consent
