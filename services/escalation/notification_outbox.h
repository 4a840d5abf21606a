#pragma once

// Durable notifications (migrations/0005): Enqueue writes them in the transaction of the change
// they announce; a background thread delivers what is due through the Notifier (webhook or log),
// up to 16 per transaction under row locks (SKIP LOCKED, so replicas share the work),
// and retries a failed delivery with backoff until it succeeds or `give_up_after` has passed.
// Wake() after a commit delivers at once, or `min_gap` after the last pass; otherwise the thread
// looks every `poll`. The pages a pass delivered are marked in one statement. A backlog is
// delivered a transaction at a time, through up to four connections at once when the receiver
// takes most of a transaction's time (a webhook), on one when the database does, in passes of up
// to 1,024 pages that follow each other `min_gap` apart. Delivered notifications are kept 30
// days, then deleted.

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <condition_variable>
#include <mutex>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db.h"
#include "common/stop_signal.h"
#include "services/escalation/notifier.h"

namespace peerpath::escalation {

struct NotificationOutboxOptions {
  absl::Duration poll = absl::Milliseconds(500);
  // Wake-ups closer together than this share one pass (a burst of commits, one transaction).
  absl::Duration min_gap = absl::Milliseconds(5);
  absl::Duration first_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Minutes(5);
  absl::Duration give_up_after = absl::Hours(24);
};

// The dispatcher's read of due notifications ($1 the give-up age in microseconds, $2 how many):
// in delivery order, each locked, skipping those another dispatcher holds. Read from the front of
// notifications_due_in_order (migration 0014), never sorted whole.
extern const char kDueNotificationsSql[];
// The delivered ones of a pass, marked in one statement ($1 their ids; locked by the pass since
// its read, so each one's attempts is as read).
extern const char kMarkDeliveredSql[];
// The setting of a dispatcher transaction: every agency's notifications (the dispatch policies).
// Its transactions also turn sequential scans off (Plans::kIndexScans): the table grows by a page
// every few seconds under load, faster than autovacuum analyses it, and a plan cached while it was
// small (a sequential scan of a few pages, cheaper on paper than an index lookup for each id) read
// the whole table at every pass. Its statements look notifications up by index only.
extern const char kDispatchSetting[];

class NotificationOutbox {
 public:
  NotificationOutbox(Database& db, Notifier& notifier, prometheus::Registry* metrics,
                     NotificationOutboxOptions options = {});
  NotificationOutbox(const NotificationOutbox&) = delete;
  NotificationOutbox& operator=(const NotificationOutbox&) = delete;
  ~NotificationOutbox();  // Stops the thread (what is not delivered stays for the next start).

  // Writes the notifications in `tx` (the transaction of the change; scoped to their agency).
  static void Enqueue(pqxx::work& tx, const std::vector<Notification>& notifications);
  // The same, sent with the caller's other deferred writes (DeferredWrites::Flush).
  static void Enqueue(DeferredWrites& writes, const std::vector<Notification>& notifications);

  void Start(const StopSignal& stopping);
  // Asks the thread to look now (after a commit that enqueued).
  void Wake();

  // Delivers what is due now, up to 16 per transaction, until nothing is due or `max` were
  // tried; returns how many were delivered. After a failed delivery the rest of its transaction's
  // batch waits for the next transaction.
  absl::StatusOr<int> DeliverDue(int max = 100);

  // Deletes notifications delivered or given up more than 30 days ago (the policy of migration
  // 0006 says which); returns how many. The thread does it at start and then hourly.
  absl::StatusOr<int64_t> DeleteOld();

 private:
  // DeliverDue, adding the time the notifier took to `receiving` (when set).
  absl::StatusOr<int> DeliverDue(int max, absl::Duration* receiving);

  Database& db_;
  Notifier& notifier_;
  const NotificationOutboxOptions options_;
  prometheus::Counter* delivered_ = nullptr;
  prometheus::Counter* failed_attempts_ = nullptr;
  prometheus::Counter* given_up_ = nullptr;
  WakeSignal wake_;
  std::thread thread_;
};

}  // namespace peerpath::escalation
