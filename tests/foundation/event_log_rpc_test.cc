// The event log as consumers see it: a producing service's ListEvents and Subscribe over real
// gRPC from the real binary, only for the `service` role, and a consumer that keeps polling with
// backoff while the producer is down and catches up when it is back.
#include <gtest/gtest.h>

#include <mutex>
#include <thread>

#include "common/event_consumer.h"
#include "common/event_source.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"
#include "peerpath/consent/v1/events.pb.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"
#include "tests/support/test_tokens.h"

namespace peerpath::testing {
namespace {

using namespace std::chrono_literals;
using peerpath::consent::v1::ConsentGrantedEvent;
using peerpath::consent::v1::ConsentService;
using peerpath::consent::v1::ListEventsRequest;
using peerpath::consent::v1::ListEventsResponse;
using peerpath::consent::v1::SubscribeRequest;
using peerpath::consent::v1::SubscribeResponse;

class EventLogRpc : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    producer_ = Start();
  }

  std::unique_ptr<ServiceProcess> Start() {
    auto process = std::make_unique<ServiceProcess>("consent", db_->UrlFor("consent"));
    EXPECT_TRUE(process->WaitListening()) << process->Log();
    EXPECT_TRUE(process->WaitHealth(true)) << process->Log();
    return process;
  }

  // Writes a committed event the way the consent service's own transactions do.
  void Emit(const std::string& agency, const std::string& consent_id) {
    ConsentGrantedEvent payload;
    payload.set_consent_id(consent_id);
    payload.set_participant_id("p-1");
    db_->WriteOutboxEvent("consent", agency, payload, consent_id);
  }

  static std::unique_ptr<grpc::ClientContext> As(const std::vector<std::string>& roles) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + 10s);
    if (!roles.empty()) {
      context->AddMetadata("authorization", "Bearer " + TokenFor("platform", roles, "svc-test"));
    }
    return context;
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<ServiceProcess> producer_;
};

TEST_F(EventLogRpc, ServiceRoleListsEveryAgencysEventsInOrder) {
  Emit("agency-a", "c-1");
  Emit("agency-b", "c-2");
  auto stub = ConsentService::NewStub(producer_->Channel());
  ListEventsRequest request;
  ListEventsResponse response;
  grpc::Status status = stub->ListEvents(As({"service"}).get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.events_size(), 2);
  EXPECT_EQ(response.head_position(), 2);
  EXPECT_EQ(response.events(0).position(), 1);
  EXPECT_EQ(response.events(0).agency_id(), "agency-a");
  EXPECT_EQ(response.events(1).agency_id(), "agency-b");
  ConsentGrantedEvent payload;
  ASSERT_TRUE(response.events(1).payload().UnpackTo(&payload));
  EXPECT_EQ(payload.consent_id(), "c-2");

  request.set_after_position(1);
  response.Clear();
  ASSERT_TRUE(stub->ListEvents(As({"service"}).get(), request, &response).ok());
  ASSERT_EQ(response.events_size(), 1);
  EXPECT_EQ(response.events(0).aggregate_id(), "c-2");
}

TEST_F(EventLogRpc, OtherRolesAndAnonymousCallersAreRefused) {
  Emit("agency-a", "c-1");
  auto stub = ConsentService::NewStub(producer_->Channel());
  ListEventsResponse response;
  EXPECT_EQ(stub->ListEvents(As({}).get(), ListEventsRequest(), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  for (const char* role : {"clinician", "program_admin", "operations", "integration"}) {
    grpc::Status status = stub->ListEvents(As({role}).get(), ListEventsRequest(), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << role;
  }
  EXPECT_EQ(response.events_size(), 0);
  // Each refusal is audited in the caller's agency's chain.
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.audit_log WHERE decision = 'denied' "
                            "AND action = 'peerpath.consent.v1.ConsentService.ListEvents'")[0][0]
                .as<int>(),
            4);
}

TEST_F(EventLogRpc, OnlyAServiceIdentityMayActForAnAgency) {
  auto stub = ConsentService::NewStub(producer_->Channel());
  // A service acting for agency-x: refused by the role table, and audited in agency-x's chain.
  auto as_service = As({"service"});
  as_service->AddMetadata("x-peerpath-agency-id", "agency-x");
  peerpath::consent::v1::ReviewEmergencyAccessResponse review;
  EXPECT_EQ(stub->ReviewEmergencyAccess(as_service.get(), {}, &review).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(db_->AdminQuery("SELECT count(*) FROM consent.audit_log WHERE agency_id = 'agency-x' "
                            "AND decision = 'denied'")[0][0]
                .as<int>(),
            1);
  // Anyone else naming an agency is refused outright.
  auto as_admin = As({"program_admin"});
  as_admin->AddMetadata("x-peerpath-agency-id", "agency-x");
  grpc::Status status = stub->ReviewEmergencyAccess(as_admin.get(), {}, &review);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(status.error_message().find("only accepted from a service identity"),
            std::string::npos);
}

TEST_F(EventLogRpc, SubscribeIsRefusedToOtherRolesBeforeAnyEventIsSent) {
  Emit("agency-a", "c-1");
  auto stub = ConsentService::NewStub(producer_->Channel());
  for (const std::vector<std::string>& roles :
       {std::vector<std::string>{}, std::vector<std::string>{"clinician"}}) {
    auto context = As(roles);
    auto stream = stub->Subscribe(context.get(), SubscribeRequest());
    SubscribeResponse message;
    EXPECT_FALSE(stream->Read(&message));
    EXPECT_EQ(stream->Finish().error_code(), roles.empty() ? grpc::StatusCode::UNAUTHENTICATED
                                                           : grpc::StatusCode::PERMISSION_DENIED);
  }
}

TEST_F(EventLogRpc, BadRequestNamesEachField) {
  auto stub = ConsentService::NewStub(producer_->Channel());
  ListEventsRequest request;
  request.set_after_position(-1);
  request.set_page_size(-2);
  ListEventsResponse response;
  grpc::Status status = stub->ListEvents(As({"service"}).get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_details().find("after_position"), std::string::npos);
  EXPECT_NE(status.error_details().find("page_size"), std::string::npos);
}

TEST_F(EventLogRpc, SubscribeStreamsTheBacklogThenNewEvents) {
  Emit("agency-a", "c-1");
  auto stub = ConsentService::NewStub(producer_->Channel());
  auto context = As({"service"});
  context->set_deadline(std::chrono::system_clock::now() + 20s);
  SubscribeRequest request;
  auto stream = stub->Subscribe(context.get(), request);
  std::vector<std::string> seen;
  SubscribeResponse message;
  bool emitted_second = false;
  while (seen.size() < 2 && stream->Read(&message)) {
    if (message.has_event()) {
      seen.push_back(message.event().aggregate_id());
    } else if (!emitted_second) {
      Emit("agency-b", "c-2");  // Committed while the stream is open.
      emitted_second = true;
    }
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"c-1", "c-2"}));
  context->TryCancel();
}

TEST_F(EventLogRpc, ConsumerWaitsOutAProducerOutageAndCatchesUp) {
  // The consumer's own database: a second schema of the same cluster, as another service would
  // have. The evaluation role keeps positions in the evaluation schema.
  ASSERT_EQ(RunToExit("evaluation", {"migrate", "--database_url=" + db_->OwnerUrlFor("evaluation")})
                .exit_code,
            0);
  Database consumer_db({db_->UrlFor("evaluation"), "evaluation", 2});
  const TokenFile token_file("platform", {"service"}, "svc-evaluation");
  const int port = producer_->grpc_port();
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  std::shared_ptr<ConsentService::Stub> stub = ConsentService::NewStub(channel);
  std::vector<std::string> applied;
  std::mutex mu;
  EventConsumer consumer(
      consumer_db,
      ConsumerOptions{.source = "consent",
                      .idle_poll = absl::Milliseconds(50),
                      .min_backoff = absl::Milliseconds(50),
                      .max_backoff = absl::Milliseconds(400)},
      ListEventsFetcher<ListEventsRequest, ListEventsResponse>(
          stub, std::make_shared<ServiceToken>(token_file.path()), absl::Seconds(2)),
      [&](pqxx::work&, const common::v1::Event& event) {
        std::lock_guard<std::mutex> lock(mu);
        applied.push_back(event.aggregate_id());
        return absl::OkStatus();
      });
  Emit("agency-a", "c-1");
  ASSERT_EQ(consumer.PollOnce().value_or(-1), 1);

  // The producer goes away: polls fail (and are retried), nothing is lost or skipped.
  producer_->Signal(SIGTERM);
  ASSERT_TRUE(producer_->WaitExit(15s).has_value());
  Emit("agency-a", "c-2");
  auto down = consumer.PollOnce();
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  consumer.Start();
  std::this_thread::sleep_for(500ms);

  // Back on the same port: the background loop picks up where it stopped.
  ServiceProcess again("consent", db_->UrlFor("consent"),
                       {"--listen_address=127.0.0.1:" + std::to_string(port)});
  ASSERT_TRUE(again.WaitHealth(true)) << again.Log();
  for (int i = 0; i < 200; ++i) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (applied.size() >= 2) break;
    }
    std::this_thread::sleep_for(50ms);
  }
  consumer.Stop();
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(applied, (std::vector<std::string>{"c-1", "c-2"}));
  EXPECT_EQ(consumer.Position().value_or(-1), 2);
}

}  // namespace
}  // namespace peerpath::testing
