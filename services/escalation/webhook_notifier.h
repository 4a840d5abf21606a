#pragma once

// Notifications as an HTTP POST of a small JSON document to the agency's paging or messaging
// endpoint: 2xx is delivered; a connection error, a timeout or any other status is not (the
// NotificationOutbox retries it with backoff).

#include <string>

#include "absl/time/time.h"
#include "services/escalation/notifier.h"

namespace peerpath::escalation {

struct WebhookOptions {
  std::string url;
  absl::Duration request_timeout = absl::Seconds(5);
};

// The JSON body sent for `notification`: ids, codes and times only.
std::string WebhookPayload(const Notification& notification);

class WebhookNotifier final : public Notifier {
 public:
  explicit WebhookNotifier(WebhookOptions options);

  bool Deliver(const Notification& notification) override;

 private:
  const WebhookOptions options_;
};

}  // namespace peerpath::escalation
