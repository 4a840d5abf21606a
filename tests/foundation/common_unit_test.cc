// Unit tests of the common library pieces that need no server or database.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "common/config.h"
#include "common/migrations.h"
#include "common/pagination.h"
#include "common/status.h"
#include "common/stop_signal.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace peerpath {
namespace {

TEST(PageSize, ZeroMeansDefaultAndLargeIsClamped) {
  EXPECT_EQ(*ResolvePageSize(0, {50, 500}), 50);
  EXPECT_EQ(*ResolvePageSize(7, {50, 500}), 7);
  EXPECT_EQ(*ResolvePageSize(100000, {50, 500}), 500);
}

TEST(PageSize, NegativeIsInvalidArgumentNamingTheField) {
  auto size = ResolvePageSize(-1);
  ASSERT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument);
  auto violations = FieldViolations(size.status());
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].field, "page_size");
}

TEST(PageToken, RoundTripsAndIsBoundToItsList) {
  const std::string token = EncodePageToken("consents", "42");
  EXPECT_EQ(*DecodePageToken("consents", token), "42");
  EXPECT_EQ(*DecodePageToken("consents", ""), "");
  auto other_list = DecodePageToken("disclosures", token);
  EXPECT_EQ(other_list.status().code(), absl::StatusCode::kInvalidArgument);
  auto garbage = DecodePageToken("consents", "not a token!");
  ASSERT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FieldViolations(garbage.status()).at(0).field, "page_token");
}

TEST(ToGrpc, ValidationFailureCarriesEveryFieldViolation) {
  grpc::Status status = ToGrpc(InvalidArgument("check-in does not match pathway",
                                               {{"answers.wellbeing", "must be 1 to 5; got 9"},
                                                {"answers.current_supports", "is required"}}));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "check-in does not match pathway");
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::BadRequest bad_request;
  ASSERT_TRUE(details.details(0).UnpackTo(&bad_request));
  ASSERT_EQ(bad_request.field_violations_size(), 2);
  EXPECT_EQ(bad_request.field_violations(0).field(), "answers.wellbeing");
  EXPECT_EQ(bad_request.field_violations(1).field(), "answers.current_supports");
}

TEST(ToGrpc, PlainErrorsHaveNoDetails) {
  grpc::Status status = ToGrpc(absl::NotFoundError("consent not found"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(status.error_details().empty());
  EXPECT_TRUE(ToGrpc(absl::OkStatus()).ok());
}

TEST(GrpcCodeName, UsesCanonicalUpperCaseNames) {
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::INVALID_ARGUMENT), "INVALID_ARGUMENT");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
}

TEST(Config, LoopbackDetection) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:7103"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:7103"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:7103"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:7100"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:7100"));
  EXPECT_FALSE(IsLoopbackAddress("10.1.2.3:7100"));
}

TEST(Config, EnvironmentVariableNames) {
  EXPECT_EQ(EnvironmentVariableFor("database_url"), "PEERPATH_DATABASE_URL");
  EXPECT_EQ(EnvironmentVariableFor("shutdown_grace"), "PEERPATH_SHUTDOWN_GRACE");
}

class ConfigFlags : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::FindCommandLineFlag("jwt_keys_file")->ParseFrom("/etc/peerpath/keys.pem", nullptr);
    absl::FindCommandLineFlag("jwt_issuer")->ParseFrom("https://idp.example.org", nullptr);
  }
  absl::FlagSaver saver_;
};

TEST_F(ConfigFlags, ReportsEveryProblemAtOnce) {
  absl::FindCommandLineFlag("database_url")->ParseFrom("", nullptr);
  absl::FindCommandLineFlag("tls_cert_file")->ParseFrom("/x/cert.pem", nullptr);
  absl::FindCommandLineFlag("db_pool_size")->ParseFrom("0", nullptr);
  auto config = ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"});
  ASSERT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(config.status().message());
  EXPECT_NE(message.find("--database_url"), std::string::npos) << message;
  EXPECT_NE(message.find("--tls_key_file"), std::string::npos) << message;
  EXPECT_NE(message.find("--db_pool_size"), std::string::npos) << message;
}

TEST_F(ConfigFlags, IdleHandlerThreadsDefaultTo64AndMustBeFrom1To1024) {
  absl::FindCommandLineFlag("database_url")->ParseFrom("postgresql://x@h/db", nullptr);
  auto config = ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->idle_handler_threads, 64);
  for (const char* bad : {"0", "1025"}) {
    absl::FindCommandLineFlag("idle_handler_threads")->ParseFrom(bad, nullptr);
    auto refused = ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"});
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_NE(refused.status().message().find("--idle_handler_threads"), absl::string_view::npos)
        << refused.status();
  }
  absl::FindCommandLineFlag("idle_handler_threads")->ParseFrom("1", nullptr);
  auto one = ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->idle_handler_threads, 1);
}

TEST_F(ConfigFlags, RefusesPlaintextOnNonLoopbackUnlessAllowed) {
  absl::FindCommandLineFlag("database_url")->ParseFrom("postgresql://x@h/db", nullptr);
  absl::FindCommandLineFlag("listen_address")->ParseFrom("0.0.0.0:7100", nullptr);
  auto refused = ServerConfigFromFlags({"", "127.0.0.1:2"});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("plaintext"), absl::string_view::npos);
  absl::FindCommandLineFlag("allow_plaintext")->ParseFrom("true", nullptr);
  auto allowed = ServerConfigFromFlags({"", "127.0.0.1:2"});
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_EQ(allowed->listen_address, "0.0.0.0:7100");
}

TEST_F(ConfigFlags, TokenSettingsAreRequiredToServeButNotToMigrate) {
  absl::FindCommandLineFlag("database_url")->ParseFrom("postgresql://x@h/db", nullptr);
  absl::FindCommandLineFlag("jwt_keys_file")->ParseFrom("", nullptr);
  auto serve = ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"}, /*serving=*/true);
  ASSERT_FALSE(serve.ok());
  EXPECT_NE(serve.status().message().find("--jwt_keys_file"), absl::string_view::npos);
  EXPECT_TRUE(ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"}, /*serving=*/false).ok());
}

TEST_F(ConfigFlags, DevelopmentIssuerNeedsExplicitPermission) {
  absl::FindCommandLineFlag("database_url")->ParseFrom("postgresql://x@h/db", nullptr);
  absl::FindCommandLineFlag("jwt_issuer")->ParseFrom("peerpath-dev", nullptr);
  auto refused = ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("--allow_dev_tokens"), absl::string_view::npos);
  absl::FindCommandLineFlag("allow_dev_tokens")->ParseFrom("true", nullptr);
  EXPECT_TRUE(ServerConfigFromFlags({"127.0.0.1:1", "127.0.0.1:2"}).ok());
}

TEST_F(ConfigFlags, DefaultsFillEmptyAddresses) {
  absl::FindCommandLineFlag("database_url")->ParseFrom("postgresql://x@h/db", nullptr);
  auto config = ServerConfigFromFlags({"127.0.0.1:7103", "127.0.0.1:9103"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen_address, "127.0.0.1:7103");
  EXPECT_EQ(config->metrics_address, "127.0.0.1:9103");
  EXPECT_EQ(config->shutdown_grace, absl::Seconds(10));
}

TEST(Migrations, ChecksumIsSha256OfTheText) {
  Migration m{1, "initial", "CREATE TABLE t (id int);"};
  const std::string checksum = MigrationChecksum(m);
  EXPECT_EQ(checksum.size(), 64u);
  EXPECT_EQ(checksum, MigrationChecksum(m));
  m.sql += " ";
  EXPECT_NE(checksum, MigrationChecksum(m));
  // Known vector: SHA-256("abc").
  EXPECT_EQ(MigrationChecksum({1, "x", "abc"}),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// A loop settling after a pass is not woken by the wakes that come meanwhile (a context switch
// each, for nothing: a busy service wakes its loops after every commit); they are kept, and the
// loop's next wait returns at once. A wake while it waits for one ends the wait.
TEST(WakeSignal, WakesDuringTheSettleAreKeptNotDelivered) {
  WakeSignal signal;
  std::atomic<bool> returned{false};
  std::thread loop([&] {
    EXPECT_TRUE(signal.WaitForWake(absl::Seconds(30), absl::Milliseconds(500)));
    returned = true;
  });
  // Most of these land during the settle (those before it are kept the same way).
  for (int i = 0; i < 100; ++i) {
    signal.Wake();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  loop.join();  // Ends once the settle is over: a wake is pending.
  EXPECT_TRUE(returned);
  // Waking the loop at each of them gave some hundred idle wake-ups.
  EXPECT_LE(signal.IdleWakeups(), 2);

  // A wake, whether it comes before the wait or during it, ends it long before the poll.
  const absl::Time start = absl::Now();
  std::thread waiter([&] { EXPECT_TRUE(signal.WaitForWake(absl::Seconds(30))); });
  signal.Wake();
  waiter.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  signal.Stop();
  EXPECT_FALSE(signal.WaitForWake(absl::Seconds(30)));
}

}  // namespace
}  // namespace peerpath
