#pragma once

// WatchConcerns across replicas. Every change a dashboard stream shows is written to the
// `watch_feed` table in the transaction of the change (Record), so a change that rolls back is
// never shown and one that commits is shown on every replica: each replica's relay thread gives
// committed rows their positions (one assigner at a time, after commit, as the event log does),
// reads what is new in position order, and publishes it to its own WatchHub. A local commit
// wakes the relay at once; other replicas' changes arrive within the poll interval.

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <pqxx/pqxx>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db.h"
#include "common/stop_signal.h"
#include "services/escalation/watch_hub.h"

namespace peerpath::escalation {

struct WatchFeedOptions {
  absl::Duration poll = absl::Milliseconds(200);  // For other replicas' changes.
  // Wake-ups closer together than this share one pass (a burst of commits, one read).
  absl::Duration min_gap = absl::Milliseconds(10);
  int batch = 500;
};

class WatchFeed {
 public:
  WatchFeed(Database& db, WatchHub& hub, WatchFeedOptions options = {});
  WatchFeed(const WatchFeed&) = delete;
  WatchFeed& operator=(const WatchFeed&) = delete;
  ~WatchFeed();

  // Writes `note` in the change's own transaction (scoped to the note's agency).
  static void Record(pqxx::work& tx, const ConcernChangeNote& note);
  // The same, sent with the caller's other deferred writes (DeferredWrites::Flush).
  static void Record(DeferredWrites& writes, const ConcernChangeNote& note);
  // Several changes (concerns opened together), in order, in one statement.
  static void Record(DeferredWrites& writes, const std::vector<ConcernChangeNote>& notes);

  // Starts the relay thread; it stops with `stopping` or the destructor.
  void Start(const StopSignal& stopping);
  // After a commit that recorded notes.
  void Wake();

  // One pass: positions what has committed, publishes what is new; returns how many notes.
  // The first pass only learns where the feed ends (streams start from a snapshot).
  absl::StatusOr<int> RelayOnce();

 private:
  Database& db_;
  WatchHub& hub_;
  const WatchFeedOptions options_;
  int64_t last_position_ = -1;  // -1: not read yet.
  absl::Time next_prune_ = absl::InfinitePast();
  WakeSignal wake_;
  std::thread thread_;
};

}  // namespace peerpath::escalation
