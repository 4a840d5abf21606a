#pragma once

// The event payloads of a concern's changes (events.proto), built from the concern as stored.
// Ids, codes and times only: never the description or a cancellation reason.

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "services/escalation/routing.h"

namespace peerpath::escalation {

v1::ConcernOpenedEvent OpenedEvent(const v1::Concern& concern);
v1::ConcernRoutedEvent RoutedEvent(const v1::Concern& concern, v1::RoutingReason reason,
                                   const std::vector<int>& skipped, absl::Time notify_at,
                                   const std::string& routed_by, absl::Time routed_at);
v1::ConcernAcknowledgedEvent AcknowledgedEvent(const v1::Concern& concern, const std::string& role);
v1::ConcernResolvedEvent ResolvedEvent(const v1::Concern& concern, const std::string& role);
v1::ConcernCancelledEvent CancelledEvent(const v1::Concern& concern, v1::ConcernState from,
                                         const std::string& role);
v1::RoutineEngagementStoppedEvent EngagementStoppedEvent(const v1::Concern& concern);

}  // namespace peerpath::escalation
