#pragma once

// Live changes of concerns for WatchConcerns streams. Every committed change of a concern, made
// through any replica, is published here by this replica's WatchFeed relay (watch_feed.h); each
// stream has its own bounded queue, so publishing never waits for a watcher (a slow or gone client
// never blocks routing): a full queue marks the stream as fallen behind and it ends with ABORTED
// (the client reconnects for a fresh snapshot).

#include <condition_variable>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <set>

#include "absl/time/time.h"
#include "peerpath/escalation/v1/escalation.pb.h"
#include "services/escalation/routing.h"

namespace peerpath::escalation {

// One committed change, as published.
struct ConcernChangeNote {
  v1::ConcernChangeKind kind = v1::CONCERN_CHANGE_KIND_UNSPECIFIED;
  v1::Concern concern;     // After the change (no transitions, no description).
  Target previous_target;  // Before the change (differs on reassignment and escalation).
  absl::Time occurred_at;
};

class WatchHub {
 public:
  struct Watcher {
    std::string agency_id;
    Target target;
    std::set<int> severities;  // Empty: all.
    std::mutex mu;
    std::condition_variable wake;
    std::deque<ConcernChangeNote> queue;
    bool fell_behind = false;
  };

  explicit WatchHub(size_t buffer = 1000, int max_watchers = 256)
      : buffer_(buffer), max_watchers_(max_watchers) {}

  // nullptr when the server's limit of concurrent streams is reached.
  std::shared_ptr<Watcher> Add(const std::string& agency_id, const Target& target,
                               std::set<int> severities);
  void Remove(const std::shared_ptr<Watcher>& watcher);

  // Queues the change for every stream watching its current or previous target; never blocks
  // on a stream.
  void Publish(const ConcernChangeNote& note);

 private:
  const size_t buffer_;
  const int max_watchers_;
  std::mutex mu_;
  std::list<std::shared_ptr<Watcher>> watchers_;
};

// True when `concern` belongs on the dashboard of `target` (OPEN or ACKNOWLEDGED there).
bool InScope(const v1::Concern& concern, const Target& target);

}  // namespace peerpath::escalation
