// Notifications and the watch hub without the service: the webhook POSTs a personal-data-free
// JSON document to a local HTTP server on loopback and says whether it answered 2xx (the
// NotificationOutbox retries; escalation_service_test); a watcher that falls behind never blocks
// publishing.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "services/escalation/watch_hub.h"
#include "services/escalation/webhook_notifier.h"
#include "tests/support/local_http_server.h"

namespace peerpath::escalation {
namespace {

using testing::LocalHttpServer;

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

TEST(Webhook, PostsPersonalDataFreePayloadAndSaysWhetherItWasAccepted) {
  LocalHttpServer server(/*failures=*/1);
  WebhookNotifier notifier(
      WebhookOptions{.url = server.url(), .request_timeout = absl::Seconds(2)});
  EXPECT_FALSE(notifier.Deliver(Sample()));  // 503: the outbox retries it later.
  EXPECT_TRUE(notifier.Deliver(Sample()));
  EXPECT_EQ(server.requests(), 2);
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

TEST(Webhook, SuccessivePagesReuseTheOpenConnection) {
  LocalHttpServer server(/*failures=*/1);
  WebhookNotifier notifier(
      WebhookOptions{.url = server.url(), .request_timeout = absl::Seconds(2)});
  EXPECT_FALSE(notifier.Deliver(Sample()));  // A 503 keeps the connection too.
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(notifier.Deliver(Sample()));
  EXPECT_EQ(server.requests(), 6);
  EXPECT_EQ(server.bodies().size(), 5u);
  EXPECT_EQ(server.connections(), 1) << "one connection for six POSTs";

  // Two at once take a handle, and so a connection, each; both stay for later pages.
  std::thread other([&] { EXPECT_TRUE(notifier.Deliver(Sample())); });
  EXPECT_TRUE(notifier.Deliver(Sample()));
  other.join();
  EXPECT_EQ(server.requests(), 8);
  EXPECT_LE(server.connections(), 2);
}

TEST(Webhook, AConnectionTheEndpointClosedIsOpenedAnew) {
  auto first = std::make_unique<LocalHttpServer>(/*failures=*/0);
  const int port = first->port();
  WebhookNotifier notifier(
      WebhookOptions{.url = first->url(), .request_timeout = absl::Seconds(2)});
  EXPECT_TRUE(notifier.Deliver(Sample()));
  first.reset();  // Closes the connection the notifier kept.
  LocalHttpServer restarted(/*failures=*/0, port);
  EXPECT_TRUE(notifier.Deliver(Sample()));
  EXPECT_EQ(restarted.requests(), 1);
  EXPECT_EQ(restarted.connections(), 1);
}

TEST(Webhook, AnUnreachableEndpointIsNotAccepted) {
  int port = 0;
  { port = LocalHttpServer(0).port(); }  // Free again: nothing listens there now.
  WebhookNotifier notifier(WebhookOptions{.url = "http://127.0.0.1:" + std::to_string(port),
                                          .request_timeout = absl::Seconds(2)});
  EXPECT_FALSE(notifier.Deliver(Sample()));
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
