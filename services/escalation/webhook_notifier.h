#pragma once

// Notifications as an HTTP POST of a small JSON document to the agency's paging or messaging
// endpoint: 2xx is delivered; a connection error, a timeout or any other status is not (the
// NotificationOutbox retries it with backoff).

#include <curl/curl.h>

#include <mutex>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "services/escalation/notifier.h"

namespace peerpath::escalation {

struct WebhookOptions {
  std::string url;
  absl::Duration request_timeout = absl::Seconds(5);
};

// The JSON body sent for `notification`: ids, codes and times only.
std::string WebhookPayload(const Notification& notification);

// Keeps the connections it opened (HTTP keep-alive, and for https the TLS session) for the next
// POST: each delivery takes an idle libcurl handle, which holds its connection, and gives it back
// when done. Deliveries on several threads at once each use a handle of their own.
class WebhookNotifier final : public Notifier {
 public:
  explicit WebhookNotifier(WebhookOptions options);
  ~WebhookNotifier() override;
  WebhookNotifier(const WebhookNotifier&) = delete;
  WebhookNotifier& operator=(const WebhookNotifier&) = delete;

  bool Deliver(const Notification& notification) override;

 private:
  // More idle handles than this are closed (the notification outbox uses at most four workers).
  static constexpr size_t kMaxIdleHandles = 8;

  const WebhookOptions options_;
  std::mutex mu_;
  std::vector<CURL*> idle_;  // Guarded by mu_.
};

}  // namespace peerpath::escalation
