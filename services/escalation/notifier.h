#pragma once

// Telling a concern's target that it has something to act on (paging, messaging). The payload is
// personal-data-free: ids, codes and times, never a description, reason or participant id.

#include <string>

#include "absl/time/time.h"
#include "services/escalation/routing.h"

namespace peerpath::escalation {

struct Notification {
  std::string agency_id;
  std::string concern_id;
  std::string
      reason;  // "opened", "escalated", "realerted", "reassigned", "business_hours_started".
  Category category = common::v1::CONCERN_CATEGORY_UNSPECIFIED;
  Severity severity = common::v1::CONCERN_SEVERITY_UNSPECIFIED;
  int level = 0;
  Target target;
  absl::Time deadline;  // When the target must act.
};

// Delivers one notification, synchronously; true when it was accepted. Called by the
// NotificationOutbox's thread (never while routing), which retries what was not accepted.
class Notifier {
 public:
  virtual ~Notifier() = default;
  virtual bool Deliver(const Notification& notification) = 0;
};

// Writes a structured log line (ids and codes only); the default when no webhook is configured.
class LogNotifier final : public Notifier {
 public:
  bool Deliver(const Notification& notification) override;
};

}  // namespace peerpath::escalation
