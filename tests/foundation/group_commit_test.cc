// GroupCommitter: which items share a batch, that every caller gets its own item's result, and
// that a failed batch fails exactly its own callers. Waits are on the committer's state (Queued,
// a batch reached), never on sleeps, so the outcomes do not depend on the machine's speed.
#include "common/group_commit.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace peerpath {
namespace {

using namespace std::chrono_literals;

struct Item {
  Item(int v, std::string g = "a", std::string k = "")
      : value(v), group(std::move(g)), key(std::move(k)) {}
  int value;
  std::string group;
  std::string key;  // Empty: conflicts with nothing.
};

// Records every batch's values; a batch may be held until the test releases it.
class Recorder {
 public:
  std::vector<int> Run(const std::vector<const Item*>& items) {
    std::vector<int> values;
    for (const Item* i : items) values.push_back(i->value);
    std::unique_lock lock(mu_);
    batches_.push_back(values);
    ++running_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return released_; });
    --running_;
    if (fail_values_containing_ != 0 &&
        std::find(values.begin(), values.end(), fail_values_containing_) != values.end()) {
      throw std::runtime_error("batch failed");
    }
    std::vector<int> results;
    for (int v : values) results.push_back(v * 10);
    return results;
  }
  void Hold() {
    std::lock_guard lock(mu_);
    released_ = false;
  }
  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    changed_.notify_all();
  }
  // Waits until `n` batches have started; false after 10 s.
  bool AwaitBatches(std::size_t n) {
    std::unique_lock lock(mu_);
    return changed_.wait_for(lock, 10s, [&] { return batches_.size() >= n; });
  }
  bool AwaitRunning(int n) {
    std::unique_lock lock(mu_);
    return changed_.wait_for(lock, 10s, [&] { return running_ >= n; });
  }
  std::vector<std::vector<int>> Batches() {
    std::lock_guard lock(mu_);
    return batches_;
  }
  void FailBatchesContaining(int value) {
    std::lock_guard lock(mu_);
    fail_values_containing_ = value;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  std::vector<std::vector<int>> batches_;
  bool released_ = true;
  int running_ = 0;
  int fail_values_containing_ = 0;
};

using Committer = GroupCommitter<Item, int>;

Committer MakeCommitter(Recorder& recorder, GroupCommitOptions options = {}) {
  return Committer(
      options, [&](const std::vector<const Item*>& items) { return recorder.Run(items); },
      [](const Item& i) { return i.group; },
      [](const Item& i) {
        return i.key.empty() ? std::vector<std::string>{} : std::vector<std::string>{i.key};
      });
}

bool AwaitQueued(const Committer& c, int n) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (c.Queued() < n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Starts the first item and holds its batch, queues the rest behind it, then releases: returns
// every item's result, by item.
std::vector<int> RunBehindAHeldBatch(Committer& c, Recorder& recorder,
                                     const std::vector<Item>& items) {
  std::vector<int> results(items.size(), -1);
  std::vector<std::thread> threads;
  recorder.Hold();
  threads.emplace_back([&] { results[0] = c.Submit(items[0]); });
  EXPECT_TRUE(recorder.AwaitBatches(1));
  for (std::size_t i = 1; i < items.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = c.Submit(items[i]); });
    // One at a time, so that the queue's order is the items' order.
    EXPECT_TRUE(AwaitQueued(c, static_cast<int>(i)));
  }
  recorder.Release();
  for (auto& t : threads) t.join();
  return results;
}

TEST(GroupCommitTest, ALoneCallerRunsAtOnceInABatchOfItsOwn) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder);
  EXPECT_EQ(c.Submit(Item{7}), 70);
  EXPECT_EQ(c.Submit(Item{8}), 80);
  EXPECT_EQ(recorder.Batches(), (std::vector<std::vector<int>>{{7}, {8}}));
  EXPECT_EQ(c.Counts(), (std::pair<long, long>{2, 2}));
}

TEST(GroupCommitTest, CallersQueuedWhileABatchRunsShareTheNextOneAndGetTheirOwnResults) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder);
  std::vector<Item> items;
  for (int i = 1; i <= 16; ++i) items.push_back(Item{i});
  const std::vector<int> results = RunBehindAHeldBatch(c, recorder, items);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(results[i], items[i].value * 10) << i;
  const auto batches = recorder.Batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0], std::vector<int>{1});
  EXPECT_EQ(batches[1], (std::vector<int>{2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}));
}

TEST(GroupCommitTest, ABatchHoldsAtMostMaxBatchItemsInQueueOrder) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder, {.max_batch = 4});
  std::vector<Item> items;
  for (int i = 1; i <= 10; ++i) items.push_back(Item{i});
  RunBehindAHeldBatch(c, recorder, items);
  EXPECT_EQ(recorder.Batches(),
            (std::vector<std::vector<int>>{{1}, {2, 3, 4, 5}, {6, 7, 8, 9}, {10}}));
}

TEST(GroupCommitTest, ItemsOfDifferentGroupsNeverShareABatch) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder);
  std::vector<Item> items;
  for (int i = 1; i <= 9; ++i) items.push_back(Item{i, i % 2 == 0 ? "even" : "odd"});
  const std::vector<int> results = RunBehindAHeldBatch(c, recorder, items);
  for (int i = 0; i < 9; ++i) EXPECT_EQ(results[i], items[i].value * 10);
  // 1 alone; then the head (2, even) takes the evens; then the odds that waited.
  EXPECT_EQ(recorder.Batches(), (std::vector<std::vector<int>>{{1}, {2, 4, 6, 8}, {3, 5, 7, 9}}));
}

TEST(GroupCommitTest, ItemsSharingAConflictKeyRunInSeparateBatchesInQueueOrder) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder);
  const std::vector<Item> items = {{1, "a", "x"},  {2, "a", "e1"}, {3, "a", "e1"},
                                   {4, "a", "e2"}, {5, "a", "e1"}, {6, "a", ""}};
  const std::vector<int> results = RunBehindAHeldBatch(c, recorder, items);
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(results[i], items[i].value * 10);
  EXPECT_EQ(recorder.Batches(), (std::vector<std::vector<int>>{{1}, {2, 4, 6}, {3}, {5}}));
}

// Each batch's end wakes the caller that leads next, not every caller queued: the others would
// only find it is not their turn (a context switch each, for nothing).
TEST(GroupCommitTest, ABatchsEndWakesOnlyTheNextLeader) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder);
  // Twelve items of one key: each runs in a batch of its own, one after another.
  std::vector<Item> items;
  for (int i = 1; i <= 12; ++i) items.push_back(Item{i, "a", "k"});
  const std::vector<int> results = RunBehindAHeldBatch(c, recorder, items);
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(results[i], items[i].value * 10);
  EXPECT_EQ(recorder.Batches().size(), 12u);
  // Waking every queued caller at each change gave 39 idle wake-ups here. A condition variable
  // may still wake a caller spuriously, rarely.
  EXPECT_LE(c.IdleWakeups(), 5);
}

TEST(GroupCommitTest, AFailedBatchFailsItsOwnCallersOnly) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder, {.max_batch = 2});
  recorder.FailBatchesContaining(3);
  std::vector<Item> items;
  for (int i = 1; i <= 5; ++i) items.push_back(Item{i});
  std::vector<int> results(items.size(), -1);
  std::vector<bool> threw(items.size(), false);
  std::vector<std::thread> threads;
  recorder.Hold();
  auto submit = [&](std::size_t i) {
    try {
      results[i] = c.Submit(items[i]);
    } catch (const std::runtime_error&) {
      threw[i] = true;
    }
  };
  threads.emplace_back(submit, 0);
  ASSERT_TRUE(recorder.AwaitBatches(1));
  for (std::size_t i = 1; i < items.size(); ++i) {
    threads.emplace_back(submit, i);
    ASSERT_TRUE(AwaitQueued(c, static_cast<int>(i)));
  }
  recorder.Release();
  for (auto& t : threads) t.join();
  // Batches {1}, {2, 3}, {4, 5}: the second one failed.
  EXPECT_EQ(threw, (std::vector<bool>{false, true, true, false, false}));
  EXPECT_EQ(results[0], 10);
  EXPECT_EQ(results[3], 40);
  EXPECT_EQ(results[4], 50);
}

TEST(GroupCommitTest, UpToMaxConcurrentBatchesRunAtOnce) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder, {.max_batch = 64, .max_concurrent = 2});
  recorder.Hold();
  std::vector<std::thread> threads;
  std::atomic<int> answered{0};
  for (int i = 1; i <= 2; ++i) {
    threads.emplace_back([&, i] {
      if (c.Submit(Item{i}) == i * 10) ++answered;
    });
    // Both run at once although the first is held.
    ASSERT_TRUE(recorder.AwaitRunning(i));
  }
  threads.emplace_back([&] {
    if (c.Submit(Item{3}) == 30) ++answered;
  });
  ASSERT_TRUE(AwaitQueued(c, 1));
  EXPECT_EQ(recorder.Batches().size(), 2u);  // The third waits for a running batch to end.
  recorder.Release();
  for (auto& t : threads) t.join();
  EXPECT_EQ(answered.load(), 3);
  EXPECT_EQ(recorder.Batches().size(), 3u);
}

// A group whose batches fill its share waits, and the groups queued behind it lead batches of
// their own meanwhile, up to max_concurrent in all.
TEST(GroupCommitTest, AGroupAtItsShareHoldsBackNoOtherGroup) {
  Recorder recorder;
  Committer c = MakeCommitter(
      recorder, {.max_batch = 64, .max_concurrent = 3, .max_concurrent_per_group = 1});
  recorder.Hold();
  std::vector<std::thread> threads;
  std::vector<int> results(5, -1);
  const std::vector<Item> items = {Item{1, "a"}, Item{2, "a"}, Item{11, "b"}, Item{21, "c"},
                                   Item{12, "b"}};
  auto submit = [&](std::size_t i) {
    threads.emplace_back([&, i] { results[i] = c.Submit(items[i]); });
  };
  submit(0);
  ASSERT_TRUE(recorder.AwaitRunning(1));
  submit(1);  // Group a has its one batch running: 2 waits at the head of the queue.
  ASSERT_TRUE(AwaitQueued(c, 1));
  submit(2);  // Group b leads from behind it.
  ASSERT_TRUE(recorder.AwaitRunning(2));
  submit(3);
  ASSERT_TRUE(recorder.AwaitRunning(3));
  submit(4);  // Three running in all (and group b has its one): 12 waits.
  ASSERT_TRUE(AwaitQueued(c, 2));
  EXPECT_EQ(recorder.Batches(), (std::vector<std::vector<int>>{{1}, {11}, {21}}));
  recorder.Release();
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(results[i], items[i].value * 10);
  std::vector<std::vector<int>> batches = recorder.Batches();
  ASSERT_EQ(batches.size(), 5u);
  std::sort(batches.begin() + 3, batches.end());
  EXPECT_EQ(batches[3], std::vector<int>{2});
  EXPECT_EQ(batches[4], std::vector<int>{12});
}

TEST(GroupCommitTest, RefusesAnEmptyBatchSize) {
  Recorder recorder;
  EXPECT_THROW(MakeCommitter(recorder, {.max_batch = 0}), std::invalid_argument);
  EXPECT_THROW(MakeCommitter(recorder, {.max_batch = 4, .max_concurrent = 0}),
               std::invalid_argument);
  EXPECT_THROW(MakeCommitter(recorder,
                             {.max_batch = 4, .max_concurrent = 2, .max_concurrent_per_group = -1}),
               std::invalid_argument);
}

TEST(GroupCommitTest, ManyThreadsEachGetTheirOwnResult) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder, {.max_batch = 8, .max_concurrent = 2});
  constexpr int kThreads = 16;
  constexpr int kEach = 200;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const int v = t * kEach + i + 1;
        Item item{v, t % 3 == 0 ? "g1" : "g2", t % 4 == 0 ? "shared" : ""};
        if (c.Submit(item) != v * 10) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  const auto [batches, items] = c.Counts();
  EXPECT_EQ(items, kThreads * kEach);
  for (const auto& b : recorder.Batches()) EXPECT_LE(b.size(), 8u);
}

// A leader waits for the items announced for its group: the announced ones that arrive while
// it waits share its batch. Without the wait the first would run alone.
TEST(GroupCommitTest, ALeaderWaitsForTheAnnouncedItemsOfItsGroup) {
  Recorder recorder;
  Committer c = MakeCommitter(recorder, {.max_batch = 64, .gather = std::chrono::seconds(30)});
  c.Announce("a", 2);
  std::vector<int> results(3, -1);
  std::vector<std::thread> threads;
  threads.emplace_back([&] { results[0] = c.Submit(Item{1}); });
  ASSERT_TRUE(AwaitQueued(c, 1));  // The leader, waiting.
  threads.emplace_back([&] { results[1] = c.Submit(Item{2}, /*announced=*/true); });
  ASSERT_TRUE(AwaitQueued(c, 2));
  EXPECT_TRUE(recorder.Batches().empty());
  threads.emplace_back([&] { results[2] = c.Submit(Item{3}, /*announced=*/true); });
  for (auto& t : threads) t.join();
  EXPECT_EQ(recorder.Batches(), (std::vector<std::vector<int>>{{1, 2, 3}}));
  EXPECT_EQ(results, (std::vector<int>{10, 20, 30}));
}

// A withdrawn announcement ends the wait; announcements of another group never start one; an
// announced item that never comes holds the leader no longer than `gather`.
TEST(GroupCommitTest, WithdrawalsOtherGroupsAndTheGatherLimitEndTheWait) {
  Recorder recorder;
  Committer patient = MakeCommitter(recorder, {.gather = std::chrono::seconds(30)});
  patient.Announce("a");
  int result = -1;
  std::thread leader([&] { result = patient.Submit(Item{1}); });
  ASSERT_TRUE(AwaitQueued(patient, 1));
  patient.Withdraw("a");
  leader.join();
  EXPECT_EQ(result, 10);

  patient.Announce("b");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(patient.Submit(Item{2, "a"}), 20);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);  // Not the 30 s it waits for "a".
  patient.Withdraw("b");

  Committer brief = MakeCommitter(recorder, {.gather = std::chrono::milliseconds(20)});
  brief.Announce("a");
  EXPECT_EQ(brief.Submit(Item{3}), 30);
  EXPECT_EQ(recorder.Batches(), (std::vector<std::vector<int>>{{1}, {2}, {3}}));
}

}  // namespace
}  // namespace peerpath
