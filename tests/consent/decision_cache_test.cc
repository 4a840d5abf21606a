// The consent replicas' decision cache against a real PostgreSQL: what it promises (no answer
// from before a committed change, no stale fill, nothing vouched for while deaf), each shown by
// committing a change whose notification cannot have arrived yet, or holding back what would
// otherwise usually arrive in time anyway.
#include "services/consent/decision_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::consent {
namespace {

using namespace std::chrono_literals;
using peerpath::testing::ServiceProcess;
using peerpath::testing::TestDatabase;

store::DecisionInputs OneConsent(const std::string& id) {
  store::DecisionInputs inputs;
  ConsentFacts c;
  c.id = id;
  inputs.consents.push_back(c);
  return inputs;
}

class DecisionCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    // The real binary applies the consent migrations (the triggers the cache relies on).
    migrated_ = std::make_unique<ServiceProcess>("consent", db_->UrlFor("consent"));
    ASSERT_TRUE(migrated_->WaitHealth(true)) << migrated_->Log();
  }

  std::unique_ptr<DecisionCache> Cache(const std::string& schema = "consent") {
    DecisionCacheOptions options;
    options.database.url = db_->UrlFor("consent");
    options.database.schema = schema;
    options.database.application_name = "decision-cache-test";
    options.reconnect_delay = absl::Milliseconds(50);
    options.before_barrier = [this] {
      if (!late_change_.empty()) CommitChange(std::exchange(late_change_, ""));
    };
    return std::make_unique<DecisionCache>(std::move(options));
  }

  // Waits for the barrier; true when the cache vouched for itself.
  static bool Barrier(DecisionCache& cache) {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<bool> result;
    cache.AfterBarrier([&](bool current) {
      std::lock_guard<std::mutex> lock(mu);
      result = current;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return result.has_value(); });
    return *result;
  }

  static bool EventuallyVouches(DecisionCache& cache) {
    for (int i = 0; i < 100; ++i) {
      if (Barrier(cache)) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // A change committed by another session, announced the way the triggers announce it.
  void CommitChange(const std::string& participant) {
    db_->AdminQuery(
        absl::StrCat("SELECT pg_notify('consent_decision_inputs', '", participant, "')"));
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<ServiceProcess> migrated_;
  // A participant whose change commits just before the listener's next barrier (read and
  // cleared on the listener thread; set while no barrier is due).
  std::string late_change_;
};

TEST_F(DecisionCacheTest, NoAnswerAfterACommittedChangeComesFromBeforeIt) {
  auto cache = Cache();
  ASSERT_TRUE(EventuallyVouches(*cache));
  cache->Fill(cache->Generation(), "agency-a", "p-1", "dr-1", OneConsent("c-1"));
  cache->Fill(cache->Generation(), "agency-a", "p-2", "dr-1", OneConsent("c-2"));
  ASSERT_NE(cache->Find("agency-a", "p-1", "dr-1"), nullptr);

  // The change commits while its notification cannot have been read yet: after the listener
  // last read its connection, before the barrier. The barrier still brings it (without the
  // barrier the call is answered from c-1).
  late_change_ = "p-1";
  std::shared_ptr<const store::DecisionInputs> p1, p2;
  std::mutex mu;
  std::condition_variable cv;
  bool answered = false;
  cache->AfterBarrier([&](bool current) {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(current);
    p1 = cache->Find("agency-a", "p-1", "dr-1");
    p2 = cache->Find("agency-a", "p-2", "dr-1");
    answered = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return answered; });
  EXPECT_EQ(p1, nullptr) << "answered from inputs older than a committed change";
  ASSERT_NE(p2, nullptr) << "a change to one participant dropped another";
  EXPECT_EQ(p2->consents.front().id, "c-2");
  EXPECT_EQ(cache->Find("agency-b", "p-2", "dr-1"), nullptr);
  EXPECT_EQ(cache->Find("agency-a", "p-2", "dr-2"), nullptr);
}

TEST_F(DecisionCacheTest, InputsReadBeforeAChangeAreNotKept) {
  auto cache = Cache();
  ASSERT_TRUE(EventuallyVouches(*cache));
  const uint64_t before_read = cache->Generation();
  CommitChange("p-1");  // Commits while the inputs are "being read".
  ASSERT_TRUE(Barrier(*cache));
  cache->Fill(before_read, "agency-a", "p-1", "dr-1", OneConsent("stale"));
  EXPECT_EQ(cache->Find("agency-a", "p-1", "dr-1"), nullptr);

  cache->Fill(cache->Generation(), "agency-a", "p-1", "dr-1", OneConsent("fresh"));
  auto found = cache->Find("agency-a", "p-1", "dr-1");
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->consents.front().id, "fresh");

  // A TRUNCATE announces an empty payload: everything goes.
  CommitChange("");
  ASSERT_TRUE(Barrier(*cache));
  EXPECT_EQ(cache->Find("agency-a", "p-1", "dr-1"), nullptr);
}

TEST_F(DecisionCacheTest, VouchesForNothingWithoutTheTriggers) {
  auto cache = Cache("no_such_schema");
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(Barrier(*cache));
  cache->Fill(cache->Generation(), "agency-a", "p-1", "dr-1", OneConsent("c-1"));
  EXPECT_EQ(cache->Find("agency-a", "p-1", "dr-1"), nullptr);
}

TEST_F(DecisionCacheTest, ALostConnectionEmptiesTheCacheAndItListensAgain) {
  auto cache = Cache();
  ASSERT_TRUE(EventuallyVouches(*cache));
  cache->Fill(cache->Generation(), "agency-a", "p-1", "dr-1", OneConsent("c-1"));
  ASSERT_NE(cache->Find("agency-a", "p-1", "dr-1"), nullptr);
  // Changes made while it is gone are never heard of: it must forget what it had.
  db_->AdminQuery(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
      "WHERE application_name = 'decision-cache-test-decision-cache'");
  CommitChange("p-1");
  bool refused = false;
  for (int i = 0; i < 100 && !refused; ++i) {
    refused = !Barrier(*cache) || cache->Find("agency-a", "p-1", "dr-1") == nullptr;
    if (!refused) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(refused);
  EXPECT_EQ(cache->Find("agency-a", "p-1", "dr-1"), nullptr);
  ASSERT_TRUE(EventuallyVouches(*cache));
  cache->Fill(cache->Generation(), "agency-a", "p-1", "dr-1", OneConsent("c-2"));
  EXPECT_NE(cache->Find("agency-a", "p-1", "dr-1"), nullptr);
}

TEST_F(DecisionCacheTest, KeepsAtMostTheConfiguredNumberOfParticipants) {
  DecisionCacheOptions options;
  options.database.url = db_->UrlFor("consent");
  options.database.schema = "consent";
  options.max_participants = 2;
  DecisionCache cache(std::move(options));
  ASSERT_TRUE(EventuallyVouches(cache));
  for (int i = 0; i < 5; ++i) {
    cache.Fill(cache.Generation(), "agency-a", absl::StrCat("p-", i), "", OneConsent("c"));
  }
  // The oldest go first.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(cache.Find("agency-a", absl::StrCat("p-", i), ""), nullptr);
  EXPECT_NE(cache.Find("agency-a", "p-3", ""), nullptr);
  EXPECT_NE(cache.Find("agency-a", "p-4", ""), nullptr);

  // A participant dropped by a change frees its place: nothing else is evicted for the next one.
  CommitChange("p-3");
  ASSERT_TRUE(Barrier(cache));
  cache.Fill(cache.Generation(), "agency-a", "p-5", "", OneConsent("c"));
  EXPECT_NE(cache.Find("agency-a", "p-4", ""), nullptr);
  EXPECT_NE(cache.Find("agency-a", "p-5", ""), nullptr);
  cache.Fill(cache.Generation(), "agency-a", "p-6", "", OneConsent("c"));
  EXPECT_EQ(cache.Find("agency-a", "p-4", ""), nullptr);
  EXPECT_NE(cache.Find("agency-a", "p-5", ""), nullptr);
  EXPECT_NE(cache.Find("agency-a", "p-6", ""), nullptr);
}

}  // namespace
}  // namespace peerpath::consent
