#pragma once

// What the consent service needs to know about other services' objects, behind interfaces:
// - ActiveMatches: is this peer supporter actively matched with this participant? Backed by the
//   local `supporter_matches` table every consuming service keeps (common/supporter_matches.h),
//   fed from the matching service's log when --matching_address is set.
// - SafetyConcerns: is this concern an open immediate-safety concern about this participant?

#include <memory>
#include <pqxx/pqxx>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/event_consumer.h"
#include "common/server.h"

namespace peerpath::consent {

class ActiveMatches {
 public:
  virtual ~ActiveMatches() = default;
  // Inside the caller's transaction (scoped to the agency).
  virtual absl::StatusOr<bool> IsActivelyMatched(pqxx::work& tx,
                                                 const std::string& supporter_subject,
                                                 const std::string& participant_id) = 0;
};

// The local table, whatever feeds it.
class TableActiveMatches final : public ActiveMatches {
 public:
  absl::StatusOr<bool> IsActivelyMatched(pqxx::work& tx, const std::string& supporter_subject,
                                         const std::string& participant_id) override;
};

// A consumer of the matching service's log at `address`, or nullptr when `address` is empty.
std::unique_ptr<EventConsumer> MakeMatchingConsumer(ServiceContext& context,
                                                    const std::string& address);

class SafetyConcerns {
 public:
  virtual ~SafetyConcerns() = default;
  // OK when `concern_id` is an open IMMEDIATE_SAFETY concern about `participant_id` in the
  // agency; NOT_FOUND / FAILED_PRECONDITION otherwise.
  virtual absl::Status CheckOpenConcern(pqxx::work& tx, const std::string& participant_id,
                                        const std::string& concern_id) = 0;
};

// Used when --escalation_address is not set: nothing can confirm that a concern is open, so no
// emergency access is granted (break-glass fails closed, never open).
class NoSafetyConcernSource final : public SafetyConcerns {
 public:
  absl::Status CheckOpenConcern(pqxx::work&, const std::string&, const std::string&) override {
    return absl::FailedPreconditionError(
        "emergency access is unavailable: this consent service is not connected to the "
        "escalation service (--escalation_address), so no open safety concern can be confirmed");
  }
};

// Applies one escalation event (ConcernOpenedEvent, ConcernResolvedEvent, ConcernCancelledEvent;
// others are ignored).
absl::Status ApplyEscalationEvent(pqxx::work& tx, const common::v1::Event& event);

// A consumer of the escalation service's log at `address`, or nullptr when `address` is empty.
std::unique_ptr<EventConsumer> MakeEscalationConsumer(ServiceContext& context,
                                                      const std::string& address);

// Concerns from the local table fed by the escalation consumer; a concern not seen yet makes it
// catch up with the escalation log first (so a concern opened just before the call is found).
class ConsumedSafetyConcerns final : public SafetyConcerns {
 public:
  explicit ConsumedSafetyConcerns(EventConsumer& consumer) : consumer_(consumer) {}
  absl::Status CheckOpenConcern(pqxx::work& tx, const std::string& participant_id,
                                const std::string& concern_id) override;

 private:
  EventConsumer& consumer_;
};

}  // namespace peerpath::consent
