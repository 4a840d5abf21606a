#pragma once

// Runs a CPU-bound loop over thousands of independent items on several cores at once: AssignBatch
// parses, screens, solves and encodes a batch this way while PostgreSQL has nothing to do. And
// shares a queue of items that each wait on the database among a few workers (ForEachInOrder):
// the deadline sweeper acts on a backlog of missed deadlines this way.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <future>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace peerpath {

// Threads worth using for such loops on this machine: its cores, at most 4.
inline int LoopThreads() {
  return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
}

// [0, n) as up to `parts` contiguous ranges [begin, end) of at least `min_per_part` items each
// (one range when there are fewer), in order; none when n is 0.
inline std::vector<std::pair<size_t, size_t>> SplitRanges(size_t n, int parts,
                                                          size_t min_per_part) {
  std::vector<std::pair<size_t, size_t>> ranges;
  if (n == 0) return ranges;
  const size_t most = std::max<size_t>(1, n / std::max<size_t>(1, min_per_part));
  const size_t count = std::clamp<size_t>(static_cast<size_t>(std::max(1, parts)), 1, most);
  const size_t step = (n + count - 1) / count;
  for (size_t begin = 0; begin < n; begin += step)
    ranges.emplace_back(begin, std::min(n, begin + step));
  return ranges;
}

namespace parallel_internal {

// work(i) for every i in [0, count) at once: 0 on the calling thread, each other on a thread of
// its own. Returns when all have finished; if any threw, rethrows the lowest i's exception.
template <typename Work>
void RunEach(size_t count, const Work& work) {
  std::vector<std::future<void>> others;
  for (size_t i = 1; i < count; ++i) {
    others.push_back(std::async(std::launch::async, [&work, i] { work(i); }));
  }
  std::exception_ptr failure;
  if (count > 0) {
    try {
      work(0);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  for (auto& other : others) {
    try {
      other.get();
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace parallel_internal

// Runs fn(begin, end) on each of SplitRanges(n, parts, min_per_part) at once (see RunEach: the
// first range on the calling thread; the first range's exception, in range order, rethrown after
// all finished). `fn` must be safe to run concurrently on disjoint ranges.
template <typename Fn>
void ForEachRange(size_t n, int parts, size_t min_per_part, const Fn& fn) {
  const auto ranges = SplitRanges(n, parts, min_per_part);
  parallel_internal::RunEach(ranges.size(),
                             [&](size_t i) { fn(ranges[i].first, ranges[i].second); });
}

// ForEachRange that keeps what each range returns: the results in range order, so joining them
// gives what one loop over [0, n) would have built.
template <typename Fn>
auto MapRanges(size_t n, int parts, size_t min_per_part, const Fn& fn) {
  using Result = std::decay_t<std::invoke_result_t<const Fn&, size_t, size_t>>;
  const auto ranges = SplitRanges(n, parts, min_per_part);
  std::vector<Result> results(ranges.size());
  parallel_internal::RunEach(ranges.size(),
                             [&](size_t i) { results[i] = fn(ranges[i].first, ranges[i].second); });
  return results;
}

// Runs fn(i) for every i in [0, n) on up to `workers` threads (the caller is one), each taking the
// next item not yet taken, so items start in index order: for items that each wait (a transaction
// of their own), where the first should be acted on first. `fn` must be safe to run
// concurrently on different items. Returns when all have finished; an exception stops the thread
// that threw from taking more and is rethrown after all finished (the first worker's, in order).
template <typename Fn>
void ForEachInOrder(size_t n, int workers, const Fn& fn) {
  std::atomic<size_t> next{0};
  const size_t count = std::min(n, static_cast<size_t>(std::max(1, workers)));
  parallel_internal::RunEach(count, [&](size_t) {
    for (size_t i = next++; i < n; i = next++) fn(i);
  });
}

}  // namespace peerpath
