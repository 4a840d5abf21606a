// ForEachRange and MapRanges: every item is visited exactly once, in contiguous ranges no smaller
// than asked, on more than one thread when there is enough work, results come back in range
// order, and a range's exception reaches the caller only after every range has finished.
// ForEachInOrder: every item once, on several workers at once, in order on one.
#include "common/parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace peerpath {
namespace {

std::vector<std::pair<size_t, size_t>> Ranges(size_t n, int parts, size_t min_per_part) {
  std::mutex mu;
  std::vector<std::pair<size_t, size_t>> ranges;
  ForEachRange(n, parts, min_per_part, [&](size_t begin, size_t end) {
    std::lock_guard lock(mu);
    ranges.emplace_back(begin, end);
  });
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

TEST(ForEachRange, CoversEveryItemOnceInContiguousRanges) {
  for (const size_t n : {1u, 7u, 1000u, 1001u}) {
    for (const int parts : {1, 2, 3, 4}) {
      const auto ranges = Ranges(n, parts, 1);
      ASSERT_FALSE(ranges.empty());
      EXPECT_LE(ranges.size(), static_cast<size_t>(parts)) << n << " items, " << parts;
      size_t next = 0;
      for (const auto& [begin, end] : ranges) {
        EXPECT_EQ(begin, next) << n << " items, " << parts << " parts";
        EXPECT_LT(begin, end);
        next = end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(ForEachRange, KeepsRangesAtLeastTheMinimumAndRunsNothingForNoItems) {
  EXPECT_EQ(Ranges(999, 4, 500).size(), 1u) << "two ranges would be under 500 items";
  EXPECT_EQ(Ranges(1000, 4, 500).size(), 2u);
  EXPECT_EQ(Ranges(5, 0, 0).size(), 1u) << "no parts asked: one range, on the caller";
  EXPECT_TRUE(Ranges(0, 4, 1).empty());
}

TEST(ForEachRange, RunsRangesOnSeveralThreadsAtOnce) {
  // Each range waits until both have started: this returns only if they ran concurrently.
  std::atomic<int> started{0};
  std::set<std::thread::id> threads;
  std::mutex mu;
  ForEachRange(2, 2, 1, [&](size_t, size_t) {
    {
      std::lock_guard lock(mu);
      threads.insert(std::this_thread::get_id());
    }
    ++started;
    while (started.load() < 2) std::this_thread::yield();
  });
  EXPECT_EQ(threads.size(), 2u);
  EXPECT_TRUE(threads.contains(std::this_thread::get_id())) << "the first range is the caller's";
}

TEST(ForEachRange, RethrowsTheFirstFailureAfterEveryRangeFinished) {
  std::atomic<int> finished{0};
  try {
    ForEachRange(4, 4, 1, [&](size_t begin, size_t) {
      if (begin == 1) throw std::runtime_error("range 1");
      if (begin == 3) throw std::logic_error("range 3");
      ++finished;
    });
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "range 1") << "the first failing range's, in range order";
  }
  EXPECT_EQ(finished.load(), 2) << "ranges 0 and 2 still ran to the end";
}

TEST(MapRanges, GivesEachRangesResultInRangeOrder) {
  const auto parts = MapRanges(1000, 3, 1, [](size_t begin, size_t end) {
    std::vector<size_t> items;
    for (size_t i = begin; i < end; ++i) items.push_back(i);
    return items;
  });
  ASSERT_EQ(parts.size(), 3u);
  std::vector<size_t> joined;
  for (const auto& part : parts) joined.insert(joined.end(), part.begin(), part.end());
  ASSERT_EQ(joined.size(), 1000u);
  for (size_t i = 0; i < joined.size(); ++i) ASSERT_EQ(joined[i], i);
  EXPECT_TRUE(MapRanges(0, 3, 1, [](size_t, size_t) { return 1; }).empty());
}

TEST(ForEachInOrder, VisitsEveryItemOnceOnSeveralWorkersAtOnce) {
  // Items 0 and 1 each wait until both have started: this returns only if two workers ran.
  std::atomic<int> started{0};
  std::mutex mu;
  std::vector<size_t> seen;
  std::set<std::thread::id> threads;
  ForEachInOrder(500, 3, [&](size_t i) {
    if (i < 2) {
      ++started;
      while (started.load() < 2) std::this_thread::yield();
    }
    std::lock_guard lock(mu);
    seen.push_back(i);
    threads.insert(std::this_thread::get_id());
  });
  std::sort(seen.begin(), seen.end());
  ASSERT_EQ(seen.size(), 500u);
  for (size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], i);
  EXPECT_GE(threads.size(), 2u);
  EXPECT_LE(threads.size(), 3u);
}

TEST(ForEachInOrder, OneWorkerTakesItemsInOrderOnTheCallersThread) {
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<size_t> order;
  ForEachInOrder(5, 1, [&](size_t i) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    order.push_back(i);
  });
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4}));
  ForEachInOrder(0, 4, [&](size_t) { ADD_FAILURE() << "no items, no calls"; });
}

TEST(ForEachInOrder, AFailureStopsItsWorkerAndReachesTheCallerAfterTheOthersFinish) {
  std::atomic<int> done{0};
  try {
    ForEachInOrder(100, 2, [&](size_t i) {
      if (i == 10) throw std::runtime_error("item 10");
      ++done;
    });
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "item 10");
  }
  // The other worker went on to the end: only the item that threw was not done.
  EXPECT_EQ(done.load(), 99);
}

}  // namespace
}  // namespace peerpath
