#include "services/escalation/webhook_notifier.h"

#include <curl/curl.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/log.h"
#include "services/escalation/store.h"

namespace peerpath::escalation {
namespace {

size_t Discard(char*, size_t size, size_t count, void*) { return size * count; }

}  // namespace

std::string WebhookPayload(const Notification& n) {
  nlohmann::json body = {
      {"type", "peerpath.escalation.concern_notification"},
      {"agency_id", n.agency_id},
      {"concern_id", n.concern_id},
      {"reason", n.reason},
      {"category", CategoryCode(n.category)},
      {"severity", SeverityCode(n.severity)},
      {"level", n.level},
      {"target_kind", TargetKindCode(n.target.kind)},
      {"target_id", n.target.id},
      {"deadline", absl::FormatTime(absl::RFC3339_sec, n.deadline, absl::UTCTimeZone())},
  };
  return body.dump();
}

WebhookNotifier::WebhookNotifier(WebhookOptions options) : options_(std::move(options)) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  thread_ = std::thread([this] { Run(); });
}

WebhookNotifier::~WebhookNotifier() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void WebhookNotifier::Notify(const Notification& notification) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= options_.max_queued) {
      ++failed_;
      log::Error("notification dropped: webhook queue full",
                 {{"concern_id", notification.concern_id}});
      return;
    }
    queue_.push_back(WebhookPayload(notification));
  }
  wake_.notify_one();
}

int WebhookNotifier::delivered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return delivered_;
}

int WebhookNotifier::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

bool WebhookNotifier::PostOnce(const std::string& body) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return false;
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, options_.url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout)));
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Discard);
  const CURLcode code = curl_easy_perform(curl);
  long http_status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http_status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return code == CURLE_OK && http_status >= 200 && http_status < 300;
}

void WebhookNotifier::Run() {
  while (true) {
    std::string body;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      body = std::move(queue_.front());
      queue_.pop_front();
    }
    absl::Duration backoff = options_.first_backoff;
    bool ok = false;
    for (int attempt = 1; attempt <= options_.max_attempts; ++attempt) {
      if (PostOnce(body)) {
        ok = true;
        break;
      }
      if (attempt == options_.max_attempts) break;
      std::unique_lock<std::mutex> lock(mu_);
      // While stopping, retries still run (a lost page is a real harm), without waiting long.
      wake_.wait_for(lock, absl::ToChronoNanoseconds(stopping_ ? absl::Milliseconds(50) : backoff));
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (ok) {
      ++delivered_;
    } else {
      ++failed_;
      log::Error("notification not delivered after retries", {{"attempts", options_.max_attempts}});
    }
  }
}

}  // namespace peerpath::escalation
