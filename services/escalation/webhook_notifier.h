#pragma once

// Notifications as an HTTP POST of a small JSON document to the agency's paging or messaging
// endpoint. Deliveries run on a background thread from a bounded queue, so routing never waits
// for the endpoint; a failed POST (connection error, timeout, non-2xx) is retried with backoff.

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "services/escalation/notifier.h"

namespace peerpath::escalation {

struct WebhookOptions {
  std::string url;
  int max_attempts = 5;
  absl::Duration first_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(10);
  absl::Duration request_timeout = absl::Seconds(5);
  size_t max_queued = 10000;
};

// The JSON body sent for `notification`: ids, codes and times only.
std::string WebhookPayload(const Notification& notification);

class WebhookNotifier final : public Notifier {
 public:
  explicit WebhookNotifier(WebhookOptions options);
  ~WebhookNotifier() override;  // Delivers what is queued (within the retries), then stops.

  void Notify(const Notification& notification) override;

  // Delivery counters (for tests and logs).
  int delivered() const;
  int failed() const;

 private:
  void Run();
  bool PostOnce(const std::string& body);

  const WebhookOptions options_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::string> queue_;
  bool stopping_ = false;
  int delivered_ = 0;
  int failed_ = 0;
  std::thread thread_;
};

}  // namespace peerpath::escalation
