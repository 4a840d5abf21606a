#pragma once

// The deadline sweeper: finds concerns whose stored next deadline has passed (through the
// partial index on next_deadline) and escalates, re-alerts or records the breach under each
// concern's row lock, so a missed deadline takes effect exactly once, also across restarts and
// with several replicas. The concerns due are acted on in chunks of one agency's (one
// transaction each; one concern at a time when a chunk fails), through up to four connections at
// once, most overdue first. Also refreshes the open/overdue gauges (every 5 s).

#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db.h"
#include "common/stop_signal.h"
#include "services/escalation/notification_outbox.h"
#include "services/escalation/store.h"
#include "services/escalation/watch_feed.h"

namespace peerpath::escalation {

struct SweepResult {
  int due = 0;       // Concerns found due.
  int acted = 0;     // Escalations and re-alerts written.
  int notified = 0;  // Notifications that waited for business hours, sent.
};

class DeadlineSweeper {
 public:
  DeadlineSweeper(Database& db, NotificationOutbox& outbox, prometheus::Registry* metrics,
                  absl::Duration interval = absl::Seconds(1));
  DeadlineSweeper(const DeadlineSweeper&) = delete;
  DeadlineSweeper& operator=(const DeadlineSweeper&) = delete;
  ~DeadlineSweeper();

  // Where its changes are recorded for WatchConcerns (in their transactions); optional.
  void set_watch_feed(WatchFeed* feed) { feed_ = feed; }

  // Runs sweeps every `interval` in a background thread until `stopping` or destruction.
  void Start(const StopSignal& stopping);

  // One sweep at `now`: acts on every concern due by then (in batches).
  absl::StatusOr<SweepResult> SweepOnce(absl::Time now);

  // Sets the gauges from the database.
  absl::Status RefreshGauges(absl::Time now);

 private:
  // Acts on due concerns of one agency (one or a chunk) in one transaction; how many were still
  // due (someone may have acted first). An error writes nothing for any of them.
  absl::StatusOr<int> ActOnChunk(const std::string& agency_id,
                                 const std::vector<std::string>& concern_ids, absl::Time now);
  // A transaction's breaches, transitions, events and notifications, sent as one statement per
  // table (defined in sweeper.cc).
  struct SweepWrites;
  // Under the concern's row lock: adds the writes of its escalation or re-alert to `writes` (the
  // concern's row and watch-feed note) and `more` (the rest); false when it is no longer due
  // (another sweeper, an acknowledgement or a resolution came first).
  absl::StatusOr<bool> Apply(pqxx::work& tx, DeferredWrites& writes, SweepWrites& more,
                             ConcernRecord record, absl::Time now);
  // Wakes the notification outbox (when `notify`) and the watch feed once a transaction with
  // changes committed.
  void AfterCommit(bool notify);

  Database& db_;
  NotificationOutbox& outbox_;
  WatchFeed* feed_ = nullptr;
  const absl::Duration interval_;
  prometheus::Family<prometheus::Gauge>* open_ = nullptr;
  prometheus::Family<prometheus::Gauge>* overdue_ = nullptr;
  StopSignal stop_;
  std::thread thread_;
};

}  // namespace peerpath::escalation
