#pragma once

// A producer's event log held in memory, for tests and benchmarks of consumers.

#include <vector>

#include "common/event_consumer.h"
#include "peerpath/common/v1/common.pb.h"

namespace peerpath::testing {

// Serves `log` (its events at positions 1..n, in order) as the producer's ListEvents would: the
// events after a position, a page at a time, with the log's head. `log` must outlive the fetcher.
inline EventFetcher FetcherOver(const std::vector<common::v1::Event>& log) {
  return [&log](int64_t after, int page_size) -> absl::StatusOr<EventPage> {
    EventPage page;
    page.head_position = std::ssize(log);
    for (int64_t i = after; i < std::ssize(log) && std::ssize(page.events) < page_size; ++i) {
      page.events.push_back(log[static_cast<size_t>(i)]);
    }
    return page;
  };
}

}  // namespace peerpath::testing
