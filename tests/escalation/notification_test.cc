// Notifications and the watch hub without the service: the webhook POSTs a personal-data-free
// JSON document to a local HTTP server on loopback and retries until it answers 2xx; a watcher
// that falls behind never blocks publishing.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "services/escalation/watch_hub.h"
#include "services/escalation/webhook_notifier.h"

namespace peerpath::escalation {
namespace {

// A minimal HTTP/1.1 server on 127.0.0.1: answers the first `failures` requests with 503, then
// 200; records every request body.
class LocalHttpServer {
 public:
  explicit LocalHttpServer(int failures) : failures_(failures) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    listen(fd_, 16);
    thread_ = std::thread([this] { Serve(); });
  }
  ~LocalHttpServer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/page"; }
  std::vector<std::string> bodies() {
    std::lock_guard<std::mutex> lock(mu_);
    return bodies_;
  }
  int requests() const { return requests_; }

 private:
  void Serve() {
    while (!stop_) {
      int client = accept(fd_, nullptr, nullptr);
      if (client < 0) return;
      std::string data;
      char buffer[4096];
      size_t body_start = std::string::npos;
      size_t length = 0;
      while (true) {
        ssize_t n = read(client, buffer, sizeof(buffer));
        if (n <= 0) break;
        data.append(buffer, static_cast<size_t>(n));
        if (body_start == std::string::npos) {
          body_start = data.find("\r\n\r\n");
          if (body_start != std::string::npos) {
            body_start += 4;
            auto pos = data.find("Content-Length: ");
            if (pos != std::string::npos) length = std::stoul(data.substr(pos + 16));
          }
        }
        if (body_start != std::string::npos && data.size() >= body_start + length) break;
      }
      const bool fail = requests_++ < failures_;
      if (!fail && body_start != std::string::npos) {
        std::lock_guard<std::mutex> lock(mu_);
        bodies_.push_back(data.substr(body_start, length));
      }
      const std::string response = fail ? "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n"
                                          "Connection: close\r\n\r\n"
                                        : "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                          "Connection: close\r\n\r\n";
      (void)!write(client, response.data(), response.size());
      close(client);
    }
  }

  int fd_ = -1;
  int port_ = 0;
  const int failures_;
  std::atomic<int> requests_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::string> bodies_;
  std::thread thread_;
};

Notification Sample() {
  Notification n;
  n.agency_id = "agency-a";
  n.concern_id = "7a0c3d7e-9a8e-4c59-9a55-3d1c2b7f0e11";
  n.reason = "escalated";
  n.category = common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY;
  n.severity = common::v1::CONCERN_SEVERITY_CRITICAL;
  n.level = 1;
  n.target = Target{v1::TARGET_KIND_CLINICAL_ON_CALL, "clinical-on-call"};
  n.deadline = absl::FromUnixSeconds(1795000000);
  return n;
}

template <typename Pred>
bool WaitFor(Pred pred) {
  for (int i = 0; i < 200 && !pred(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  return pred();
}

TEST(Webhook, PostsPersonalDataFreePayloadAndRetriesUntilAccepted) {
  LocalHttpServer server(/*failures=*/2);
  WebhookNotifier notifier(WebhookOptions{.url = server.url(),
                                          .max_attempts = 5,
                                          .first_backoff = absl::Milliseconds(20),
                                          .max_backoff = absl::Milliseconds(100),
                                          .request_timeout = absl::Seconds(2),
                                          .max_queued = 100});
  notifier.Notify(Sample());
  ASSERT_TRUE(WaitFor([&] { return notifier.delivered() == 1; }));
  EXPECT_EQ(server.requests(), 3);
  ASSERT_EQ(server.bodies().size(), 1u);
  const auto body = nlohmann::json::parse(server.bodies()[0]);
  EXPECT_EQ(body["concern_id"], "7a0c3d7e-9a8e-4c59-9a55-3d1c2b7f0e11");
  EXPECT_EQ(body["severity"], "critical");
  EXPECT_EQ(body["target_kind"], "clinical_on_call");
  EXPECT_EQ(body["level"], 1);
  // Ids and codes only: no participant, no description.
  EXPECT_FALSE(body.contains("participant_id"));
  EXPECT_FALSE(body.contains("description"));
}

TEST(Webhook, GivesUpAfterMaxAttemptsAndCountsTheFailure) {
  LocalHttpServer server(/*failures=*/100);
  WebhookNotifier notifier(WebhookOptions{.url = server.url(),
                                          .max_attempts = 3,
                                          .first_backoff = absl::Milliseconds(10),
                                          .max_backoff = absl::Milliseconds(20),
                                          .request_timeout = absl::Seconds(2),
                                          .max_queued = 100});
  notifier.Notify(Sample());
  ASSERT_TRUE(WaitFor([&] { return notifier.failed() == 1; }));
  EXPECT_EQ(server.requests(), 3);
  EXPECT_EQ(notifier.delivered(), 0);
}

TEST(WatchHubTest, SlowWatcherFallsBehindWithoutBlockingPublishers) {
  WatchHub hub(/*buffer=*/10);
  const Target on_call{v1::TARGET_KIND_CLINICAL_ON_CALL, "clinical-on-call"};
  auto slow = hub.Add("agency-a", on_call, {});
  auto other_agency = hub.Add("agency-b", on_call, {});
  ConcernChangeNote note;
  note.kind = v1::CONCERN_CHANGE_KIND_OPENED;
  note.concern.set_agency_id("agency-a");
  note.concern.set_state(v1::CONCERN_STATE_OPEN);
  note.concern.mutable_current_target()->set_kind(on_call.kind);
  note.concern.mutable_current_target()->set_target_id(on_call.id);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 10000; ++i) hub.Publish(note);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_TRUE(slow->fell_behind);
  EXPECT_EQ(slow->queue.size(), 10u);
  EXPECT_TRUE(other_agency->queue.empty());
  EXPECT_TRUE(InScope(note.concern, on_call));
  note.concern.set_state(v1::CONCERN_STATE_RESOLVED);
  EXPECT_FALSE(InScope(note.concern, on_call));
}

}  // namespace
}  // namespace peerpath::escalation
