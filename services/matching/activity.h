#pragma once
// Supporters' activity from other services' event logs, for GetSupporterWorkload: check-ins a
// supporter recorded (check-in service) and concerns they raised that are still open
// (escalation service). Each event applies exactly once (EventConsumer); only ids and times
// are kept.
#include <memory>
#include <pqxx/pqxx>
#include <string>

#include "absl/status/status.h"
#include "common/event_consumer.h"
#include "common/server.h"
#include "peerpath/common/v1/common.pb.h"

namespace peerpath::matching {

// Applies one check-in service event (CheckInRecordedEvent; others are ignored).
absl::Status ApplyCheckInEvent(pqxx::work& tx, const common::v1::Event& event);
// Applies one escalation service event (ConcernOpened/Resolved/Cancelled; others are ignored).
absl::Status ApplyEscalationEvent(pqxx::work& tx, const common::v1::Event& event);

// A consumer of the producer at `address` (nullptr when `address` is empty). Not started.
std::unique_ptr<EventConsumer> MakeCheckInConsumer(ServiceContext& context,
                                                   const std::string& address);
std::unique_ptr<EventConsumer> MakeEscalationConsumer(ServiceContext& context,
                                                      const std::string& address);

}  // namespace peerpath::matching
