// ForEachRange and MapRanges: every item is visited exactly once, in contiguous ranges no smaller
// than asked, on more than one thread when there is enough work, results come back in range
// order, and a range's exception reaches the caller only after every range has finished.
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

}  // namespace
}  // namespace peerpath
