#include "services/escalation/webhook_notifier.h"

#include <curl/curl.h>

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
}

WebhookNotifier::~WebhookNotifier() {
  for (CURL* curl : idle_) curl_easy_cleanup(curl);
}

bool WebhookNotifier::Deliver(const Notification& notification) {
  const std::string body = WebhookPayload(notification);
  CURL* curl = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      curl = idle_.back();
      idle_.pop_back();
    }
  }
  if (curl == nullptr) {
    curl = curl_easy_init();
    if (curl == nullptr) return false;
  } else {
    curl_easy_reset(curl);  // Options as new; its open connection stays for reuse.
  }
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleHandles) {
      idle_.push_back(curl);
      curl = nullptr;
    }
  }
  if (curl != nullptr) curl_easy_cleanup(curl);
  return code == CURLE_OK && http_status >= 200 && http_status < 300;
}

}  // namespace peerpath::escalation
