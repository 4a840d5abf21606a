#pragma once

// What access decisions read (a participant's consents and a clinician's emergency accesses),
// kept in each consent replica's memory so that a CheckAccess needs no database read of its
// own, and never trusted stale.
//
// Every write to `consents` or `emergency_accesses`, by any path and any replica, notifies the
// channel '<schema>_decision_inputs' with the participant's id when it commits (migration 0006).
// The cache LISTENs on one connection of its own and drops what a notification names.
// Notifications arrive asynchronously, so a cached entry is used only after a *barrier*: a round
// trip on the listening connection that started after the call arrived. PostgreSQL delivers a
// committed transaction's notifications to a listener before answering any query the listener
// sent after that commit, so once the barrier is back every change committed before the call has
// been applied. A RevokeConsent that returned (on this replica or another) is therefore seen by
// every CheckAccess that starts afterwards. One barrier serves every call waiting when it is
// sent, so under load the cost is a fraction of a round trip per call.
//
// A database read racing with a change cannot leave a stale entry behind: Fill() refuses inputs
// read before an invalidation that happened after Generation() was taken. While the listening
// connection is down, or the triggers are not installed yet, the cache vouches for nothing and
// every call reads the database; it is emptied whenever it starts listening again.

#include <prometheus/gauge.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "common/db.h"
#include "common/stop_signal.h"
#include "services/consent/store.h"

namespace peerpath::consent {

struct DecisionCacheOptions {
  DatabaseOptions database;  // The service's own database settings (schema included).
  // Participants kept at most; beyond it an arbitrary one is dropped.
  size_t max_participants = 100000;
  absl::Duration reconnect_delay = absl::Seconds(1);
  prometheus::Gauge* listening = nullptr;  // Optional: 1 while the cache can be used, else 0.
  // Tests: called on the listener thread once it has applied the notifications already arrived
  // and taken the waiting calls, just before it sends their barrier. A change committed here is
  // one whose notification was still on its way (a slow network, a busy replica): only the
  // barrier brings it before the calls are answered.
  std::function<void()> before_barrier;
};

class DecisionCache {
 public:
  explicit DecisionCache(DecisionCacheOptions options);
  DecisionCache(const DecisionCache&) = delete;
  DecisionCache& operator=(const DecisionCache&) = delete;
  // Stops listening; calls still waiting get done(false).
  ~DecisionCache();

  // Calls done(true) on the cache's thread once every change committed before this call has been
  // applied to the cache. Calls done(false), possibly at once on this thread, when the cache
  // cannot vouch for itself: the caller then reads the database.
  void AfterBarrier(std::function<void(bool current)> done);

  // The inputs cached for a participant of an agency, with the live emergency accesses of
  // `clinician_subject` (may be empty); null when not cached. Current only after a done(true).
  std::shared_ptr<const store::DecisionInputs> Find(const std::string& agency_id,
                                                    const std::string& participant_id,
                                                    const std::string& clinician_subject) const;

  // What a lookup found and the generation it found it at: while Generation() still returns that
  // generation, nothing was invalidated since (a caller need not look again after its barrier).
  struct Found {
    std::shared_ptr<const store::DecisionInputs> inputs;
    uint64_t generation = 0;
  };
  using FoundCallback = std::function<void(bool current, Found found)>;
  // AfterBarrier for a call that can be answered from the cache: under one lock, looks the inputs
  // up and, when they are cached, queues `done`, which then gets them with done(current, found).
  // False, leaving `done` untouched, when they are not cached or the cache does not vouch: the
  // caller reads the database (at once: that read needs no barrier).
  bool AfterBarrierIfCached(const std::string& agency_id, const std::string& participant_id,
                            const std::string& clinician_subject, FoundCallback& done);

  // Take before reading the database; Fill() keeps the inputs only if nothing was invalidated in
  // between (the read may predate a change whose notification has been applied since). Lock-free.
  uint64_t Generation() const;
  void Fill(uint64_t generation, const std::string& agency_id, const std::string& participant_id,
            const std::string& clinician_subject, store::DecisionInputs inputs);

  // The channel the triggers of migration 0006 notify for `schema`.
  static std::string Channel(const std::string& schema) { return schema + "_decision_inputs"; }

 private:
  class Receiver;
  struct Slot {
    std::string agency_id;
    std::string clinician_subject;
    std::shared_ptr<const store::DecisionInputs> inputs;
  };

  void Run();
  // Answers the queued calls and the one in flight with done(false), forgets everything and
  // stops vouching.
  void GoDeaf();
  // Forgets everything and starts vouching: the connection listens and the triggers exist.
  void StartVouching();
  void Invalidate(const std::string& participant_id);
  Found FindLocked(const std::string& agency_id, const std::string& participant_id,
                   const std::string& clinician_subject) const;  // With mu_ held.
  void CompactFillOrder();                                       // With mu_ held.
  void Wake();

  const DecisionCacheOptions options_;
  StopSignal stop_;
  int wake_fd_ = -1;

  mutable std::mutex mu_;
  bool vouching_ = false;
  std::atomic<uint64_t> generation_{0};  // Changed with mu_ held; read with or without it.
  struct Waiting {
    FoundCallback done;
    Found found;  // Empty for AfterBarrier's calls.
  };
  std::vector<Waiting> waiting_;
  absl::flat_hash_map<std::string, std::vector<Slot>> participants_;
  // Participants in the order they were cached, for eviction; may name ones since dropped
  // (invalidated) or cached again, which eviction skips. Compacted when it outgrows the cache.
  std::deque<std::string> fill_order_;

  std::vector<Waiting> in_flight_;  // Only the listener thread touches it.
  std::thread listener_;
};

}  // namespace peerpath::consent
