#pragma once

// The consuming side of the event log (DESIGN.md section 4): pulls a producer's log page by page
// and applies each event with the consumer's new position in the same transaction, so each event
// takes effect exactly once even though it may be delivered more than once (a retried page, two
// replicas of the consumer, a restart between apply and acknowledgement).
//
// The position lives in the consumer's own schema (consumer_positions); a restarted consumer
// resumes after the last event it applied. When the producer is down, polling backs off
// exponentially up to a limit and resumes by itself.

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <functional>
#include <future>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db.h"
#include "common/event_log.h"
#include "common/stop_signal.h"
#include "peerpath/common/v1/common.pb.h"

namespace peerpath {

// Applies a run of consecutive events of one agency inside `tx` (scoped to that agency), with the
// same contract as EventHandler below; the result must equal applying them one by one. It saves
// the round trips of a per-event handler for consumers that must keep up with a busy producer.
using EventBatchHandler = std::function<absl::Status(
    pqxx::work& tx, const std::vector<const common::v1::Event*>& events)>;

struct ConsumerOptions {
  std::string source;  // The producer's name ("checkin"): the key of the stored position.
  int page_size = 500;
  absl::Duration idle_poll = absl::Milliseconds(250);  // Wait when caught up.
  absl::Duration min_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(10);
  // Optional: applies a page's events in runs of one agency. When a run fails permanently the
  // page is redone one event at a time with the EventHandler, which sets the culprit aside.
  EventBatchHandler apply_batch = nullptr;
  // With apply_batch: a page's events are applied in one run per agency, each agency's in log
  // order, instead of runs of consecutive events. Only for a handler whose effect on one agency
  // never depends on another agency's events (each agency's result is then the same as in log
  // order); it keeps the runs long in a log where many agencies' events alternate.
  bool runs_by_agency = false;
  // Optional: called after a page's transaction committed with at least one event applied (for
  // work the effects start, such as delivering the notifications they wrote).
  std::function<void()> after_commit = nullptr;
};

// Fetches the producer's events after `after_position` (its ListEvents RPC, with a deadline).
using EventFetcher =
    std::function<absl::StatusOr<EventPage>(int64_t after_position, int page_size)>;

// Applies one event inside `tx`, which is scoped to the event's agency (row-level security).
// OK: applied. INVALID_ARGUMENT or FAILED_PRECONDITION: the event can never apply (unreadable
// payload, refused by a rule); it is recorded in consumer_failures and passed over so it does not
// block the log. Any other error: the page is retried later.
using EventHandler = std::function<absl::Status(pqxx::work& tx, const common::v1::Event& event)>;

class EventConsumer {
 public:
  EventConsumer(Database& db, ConsumerOptions options, EventFetcher fetch, EventHandler apply,
                prometheus::Registry* metrics = nullptr);
  EventConsumer(const EventConsumer&) = delete;
  EventConsumer& operator=(const EventConsumer&) = delete;
  ~EventConsumer();

  // Polls in a background thread until Stop() (which the destructor calls too). While a page
  // applies and the producer has more after it, the next page is fetched beside it; it is used
  // only if the stored position is then where that fetch started (never after a failed round).
  void Start();
  void Stop();

  // One round: fetches one page after the stored position and applies it. Returns how many
  // events took effect (duplicates and events at or below the stored position count 0).
  absl::StatusOr<int> PollOnce();

  // The stored position (0 before the first event).
  absl::StatusOr<int64_t> Position();

 private:
  // A page fetched while the one before it applied, and where it starts.
  struct PageAhead {
    int64_t after = 0;
    absl::StatusOr<EventPage> page;
  };

  // PollOnce; with `ahead`, takes the page in it when it starts at the stored position, and
  // fetches the next page into it while this one applies when the producer has more.
  absl::StatusOr<int> Poll(std::future<PageAhead>* ahead);
  absl::StatusOr<int> Apply(const EventPage& page);
  // Applies `events` in one transaction; with `isolate`, each in a savepoint so a permanent
  // failure of one is recorded and the rest still apply.
  absl::StatusOr<int> ApplyInTransaction(const EventPage& page, bool isolate);
  void Run();
  void ObserveLag(const EventPage& page, int64_t position);

  Database& db_;
  const ConsumerOptions options_;
  EventFetcher fetch_;
  EventHandler apply_;
  std::thread thread_;
  StopSignal stop_;
  prometheus::Gauge* position_gauge_ = nullptr;
  prometheus::Gauge* lag_events_ = nullptr;
  prometheus::Gauge* lag_seconds_ = nullptr;
  prometheus::Counter* applied_ = nullptr;
  prometheus::Counter* failed_ = nullptr;
  prometheus::Counter* fetch_errors_ = nullptr;
};

}  // namespace peerpath
