#include "services/consent/relationships.h"

#include "common/channel.h"
#include "common/event_source.h"
#include "common/log.h"
#include "common/supporter_matches.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "peerpath/matching/v1/events.pb.h"
#include "peerpath/matching/v1/matching.grpc.pb.h"
#include "services/consent/store.h"

namespace peerpath::consent {

absl::StatusOr<bool> TableActiveMatches::IsActivelyMatched(pqxx::work& tx,
                                                           const std::string& supporter_subject,
                                                           const std::string& participant_id) {
  return IsActiveSupporter(tx, supporter_subject, participant_id);
}

std::unique_ptr<EventConsumer> MakeMatchingConsumer(ServiceContext& context,
                                                    const std::string& address) {
  if (address.empty()) return nullptr;
  return ConsumerOf<matching::v1::MatchingService, matching::v1::ListEventsRequest,
                    matching::v1::ListEventsResponse>(
      context, address, ConsumerOptions{.source = "matching"}, ApplySupporterMatchEvent);
}

absl::Status ApplyEscalationEvent(pqxx::work& tx, const common::v1::Event& event) {
  if (event.payload().Is<escalation::v1::ConcernOpenedEvent>()) {
    escalation::v1::ConcernOpenedEvent opened;
    if (!event.payload().UnpackTo(&opened) || opened.concern_id().empty() ||
        opened.participant_id().empty()) {
      return absl::InvalidArgumentError("unreadable ConcernOpenedEvent");
    }
    store::RecordConcernOpened(tx, event.agency_id(), opened.concern_id(), opened.participant_id(),
                               opened.category() == common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
  } else if (event.payload().Is<escalation::v1::ConcernResolvedEvent>()) {
    escalation::v1::ConcernResolvedEvent resolved;
    if (!event.payload().UnpackTo(&resolved) || resolved.concern_id().empty() ||
        resolved.participant_id().empty()) {
      return absl::InvalidArgumentError("unreadable ConcernResolvedEvent");
    }
    store::RecordConcernClosed(tx, event.agency_id(), resolved.concern_id(),
                               resolved.participant_id());
  } else if (event.payload().Is<escalation::v1::ConcernCancelledEvent>()) {
    escalation::v1::ConcernCancelledEvent cancelled;
    if (!event.payload().UnpackTo(&cancelled) || cancelled.concern_id().empty() ||
        cancelled.participant_id().empty()) {
      return absl::InvalidArgumentError("unreadable ConcernCancelledEvent");
    }
    store::RecordConcernClosed(tx, event.agency_id(), cancelled.concern_id(),
                               cancelled.participant_id());
  }
  return absl::OkStatus();
}

std::unique_ptr<EventConsumer> MakeEscalationConsumer(ServiceContext& context,
                                                      const std::string& address) {
  if (address.empty()) return nullptr;
  return ConsumerOf<escalation::v1::EscalationService, escalation::v1::ListEventsRequest,
                    escalation::v1::ListEventsResponse>(
      context, address, ConsumerOptions{.source = "escalation"}, ApplyEscalationEvent);
}

absl::Status ConsumedSafetyConcerns::CheckOpenConcern(pqxx::work& tx,
                                                      const std::string& participant_id,
                                                      const std::string& concern_id) {
  auto concern = store::GetConcern(tx, concern_id);
  // Not seen yet: catch up with the escalation log (a few pages at most), then look again.
  for (int page = 0; !concern && page < 10; ++page) {
    auto applied = consumer_.PollOnce();
    if (!applied.ok()) {
      return absl::UnavailableError("the escalation service cannot be reached; retry");
    }
    concern = store::GetConcern(tx, concern_id);
    if (*applied == 0) break;
  }
  if (!concern) return absl::NotFoundError("the escalation service has no such concern");
  if (concern->participant_id != participant_id) {
    return absl::FailedPreconditionError("the concern is not about this participant");
  }
  if (!concern->immediate_safety) {
    return absl::FailedPreconditionError("the concern is not an immediate-safety concern");
  }
  if (concern->closed) {
    return absl::FailedPreconditionError("the concern is resolved or cancelled");
  }
  return absl::OkStatus();
}

}  // namespace peerpath::consent
