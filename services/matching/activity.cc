#include "services/matching/activity.h"

#include "absl/time/time.h"
#include "common/channel.h"
#include "common/event_source.h"
#include "common/log.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "services/matching/store.h"

namespace peerpath::matching {
namespace {

int64_t OccurredMicros(const common::v1::Event& event,
                       const google::protobuf::Timestamp& fallback) {
  const google::protobuf::Timestamp& t = event.has_occurred_at() ? event.occurred_at() : fallback;
  return absl::ToUnixMicros(FromProtoTimestamp(t));
}

}  // namespace

absl::Status ApplyCheckInEvent(pqxx::work& tx, const common::v1::Event& event) {
  if (!event.payload().Is<checkin::v1::CheckInRecordedEvent>()) return absl::OkStatus();
  checkin::v1::CheckInRecordedEvent recorded;
  if (!event.payload().UnpackTo(&recorded) || recorded.check_in_id().empty()) {
    return absl::InvalidArgumentError("unreadable CheckInRecordedEvent");
  }
  const int64_t at = OccurredMicros(event, recorded.occurred_at());
  if (!recorded.supporter_id().empty()) {
    store::RecordCheckIn(tx, event.agency_id(), recorded.check_in_id(), recorded.supporter_id(),
                         absl::ToUnixMicros(FromProtoTimestamp(recorded.occurred_at())));
  }
  store::AdvanceActivity(tx, event.agency_id(), "checkin", at);
  return absl::OkStatus();
}

absl::Status ApplyEscalationEvent(pqxx::work& tx, const common::v1::Event& event) {
  if (event.payload().Is<escalation::v1::ConcernOpenedEvent>()) {
    escalation::v1::ConcernOpenedEvent opened;
    if (!event.payload().UnpackTo(&opened) || opened.concern_id().empty()) {
      return absl::InvalidArgumentError("unreadable ConcernOpenedEvent");
    }
    if (!opened.raised_by().empty()) {
      store::RecordConcernOpened(tx, event.agency_id(), opened.concern_id(), opened.raised_by());
    }
    store::AdvanceActivity(tx, event.agency_id(), "escalation",
                           OccurredMicros(event, opened.opened_at()));
  } else if (event.payload().Is<escalation::v1::ConcernResolvedEvent>()) {
    escalation::v1::ConcernResolvedEvent resolved;
    if (!event.payload().UnpackTo(&resolved) || resolved.concern_id().empty()) {
      return absl::InvalidArgumentError("unreadable ConcernResolvedEvent");
    }
    store::RecordConcernClosed(tx, event.agency_id(), resolved.concern_id());
    store::AdvanceActivity(tx, event.agency_id(), "escalation",
                           OccurredMicros(event, resolved.resolved_at()));
  } else if (event.payload().Is<escalation::v1::ConcernCancelledEvent>()) {
    escalation::v1::ConcernCancelledEvent cancelled;
    if (!event.payload().UnpackTo(&cancelled) || cancelled.concern_id().empty()) {
      return absl::InvalidArgumentError("unreadable ConcernCancelledEvent");
    }
    store::RecordConcernClosed(tx, event.agency_id(), cancelled.concern_id());
    store::AdvanceActivity(tx, event.agency_id(), "escalation",
                           OccurredMicros(event, cancelled.cancelled_at()));
  }
  return absl::OkStatus();
}

std::unique_ptr<EventConsumer> MakeCheckInConsumer(ServiceContext& context,
                                                   const std::string& address) {
  if (address.empty()) return nullptr;
  return ConsumerOf<checkin::v1::CheckInService, checkin::v1::ListEventsRequest,
                    checkin::v1::ListEventsResponse>(
      context, address, ConsumerOptions{.source = "checkin"}, ApplyCheckInEvent);
}

std::unique_ptr<EventConsumer> MakeEscalationConsumer(ServiceContext& context,
                                                      const std::string& address) {
  if (address.empty()) return nullptr;
  return ConsumerOf<escalation::v1::EscalationService, escalation::v1::ListEventsRequest,
                    escalation::v1::ListEventsResponse>(
      context, address, ConsumerOptions{.source = "escalation"}, ApplyEscalationEvent);
}

}  // namespace peerpath::matching
