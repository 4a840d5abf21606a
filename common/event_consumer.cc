#include "common/event_consumer.h"

#include <map>
#include <optional>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/time_util.h"

namespace peerpath {
namespace {

bool IsPermanent(const absl::Status& status) {
  return status.code() == absl::StatusCode::kInvalidArgument ||
         status.code() == absl::StatusCode::kFailedPrecondition;
}

}  // namespace

EventConsumer::EventConsumer(Database& db, ConsumerOptions options, EventFetcher fetch,
                             EventHandler apply, prometheus::Registry* metrics)
    : db_(db), options_(std::move(options)), fetch_(std::move(fetch)), apply_(std::move(apply)) {
  if (metrics == nullptr) return;
  const std::map<std::string, std::string> labels{{"source", options_.source}};
  position_gauge_ = &prometheus::BuildGauge()
                         .Name("peerpath_event_consumer_position")
                         .Help("Position of the last event applied from the source's log")
                         .Register(*metrics)
                         .Add(labels);
  lag_events_ = &prometheus::BuildGauge()
                     .Name("peerpath_event_consumer_lag_events")
                     .Help("Events in the source's log not yet applied")
                     .Register(*metrics)
                     .Add(labels);
  lag_seconds_ = &prometheus::BuildGauge()
                      .Name("peerpath_event_consumer_lag_seconds")
                      .Help("Age of the oldest event not yet applied (0 when caught up)")
                      .Register(*metrics)
                      .Add(labels);
  applied_ = &prometheus::BuildCounter()
                  .Name("peerpath_event_consumer_applied_total")
                  .Help("Events applied from the source's log")
                  .Register(*metrics)
                  .Add(labels);
  failed_ = &prometheus::BuildCounter()
                 .Name("peerpath_event_consumer_failed_total")
                 .Help("Events that can never apply, set aside in consumer_failures")
                 .Register(*metrics)
                 .Add(labels);
  fetch_errors_ = &prometheus::BuildCounter()
                       .Name("peerpath_event_consumer_fetch_errors_total")
                       .Help("Failed fetches from the source (producer down or refusing)")
                       .Register(*metrics)
                       .Add(labels);
}

EventConsumer::~EventConsumer() { Stop(); }

void EventConsumer::Start() {
  thread_ = std::thread([this] { Run(); });
}

void EventConsumer::Stop() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<int64_t> EventConsumer::Position() {
  return db_.Transact([&](pqxx::work& tx) -> absl::StatusOr<int64_t> {
    const auto rows = tx.exec_params("SELECT position FROM consumer_positions WHERE source = $1",
                                     options_.source);
    return rows.empty() ? int64_t{0} : rows[0][0].as<int64_t>();
  });
}

absl::StatusOr<int> EventConsumer::PollOnce() { return Poll(nullptr); }

absl::StatusOr<int> EventConsumer::Poll(std::future<PageAhead>* ahead) {
  auto position = Position();
  if (!position.ok()) return position.status();
  std::optional<absl::StatusOr<EventPage>> fetched;
  if (ahead != nullptr && ahead->valid()) {
    PageAhead next = ahead->get();
    // Another replica may have moved the position meanwhile: then the page is fetched again.
    if (next.after == *position) fetched = std::move(next.page);
  }
  if (!fetched) fetched = fetch_(*position, options_.page_size);
  absl::StatusOr<EventPage>& page = *fetched;
  if (!page.ok()) {
    if (fetch_errors_ != nullptr) fetch_errors_->Increment();
    return page.status();
  }
  if (ahead != nullptr && !page->events.empty() &&
      page->head_position > page->events.back().position()) {
    const int64_t after = page->events.back().position();
    try {
      *ahead = std::async(std::launch::async, [this, after] {
        return PageAhead{after, fetch_(after, options_.page_size)};
      });
    } catch (const std::system_error&) {
      // No thread to spare: the next page is fetched after this one applies, as PollOnce does.
    }
  }
  auto applied = Apply(*page);
  if (applied.ok()) {
    const int64_t now_at =
        page->events.empty() ? *position : std::max(*position, page->events.back().position());
    ObserveLag(*page, now_at);
    if (*applied > 0 && options_.after_commit) options_.after_commit();
  }
  return applied;
}

absl::StatusOr<int> EventConsumer::Apply(const EventPage& page) {
  if (page.events.empty()) return 0;
  auto applied = ApplyInTransaction(page, /*isolate=*/false);
  if (applied.ok() || !IsPermanent(applied.status())) return applied;
  // One event of the page can never apply: redo the page one savepoint per event.
  return ApplyInTransaction(page, /*isolate=*/true);
}

absl::StatusOr<int> EventConsumer::ApplyInTransaction(const EventPage& page, bool isolate) {
  int failed = 0;
  auto applied = db_.Transact([&](pqxx::work& tx) -> absl::StatusOr<int> {
    failed = 0;
    tx.exec_params0("INSERT INTO consumer_positions (source) VALUES ($1) ON CONFLICT DO NOTHING",
                    options_.source);
    // The row lock makes replicas of this consumer take turns; the second sees the first's
    // position and skips what it already applied.
    int64_t position =
        tx.exec_params1("SELECT position FROM consumer_positions WHERE source = $1 FOR UPDATE",
                        options_.source)[0]
            .as<int64_t>();
    int count = 0;
    const common::v1::Event* last = nullptr;
    if (!isolate && options_.apply_batch) {
      // Runs of events of one agency, one handler call (and one scope) each: consecutive events,
      // or (runs_by_agency) every event of the agency in the page, agencies in the order they
      // first appear.
      std::vector<std::vector<const common::v1::Event*>> runs;
      std::map<std::string, size_t> run_of_agency;
      for (const common::v1::Event& event : page.events) {
        if (event.position() <= position) continue;  // Delivered before: already took effect.
        last = &event;
        if (options_.runs_by_agency) {
          const auto [at, added] = run_of_agency.try_emplace(event.agency_id(), runs.size());
          if (added) runs.emplace_back();
          runs[at->second].push_back(&event);
        } else {
          if (runs.empty() || runs.back().front()->agency_id() != event.agency_id()) {
            runs.emplace_back();
          }
          runs.back().push_back(&event);
        }
      }
      for (const std::vector<const common::v1::Event*>& run : runs) {
        ScopeToAgency(tx, run.front()->agency_id());
        absl::Status status;
        try {
          status = options_.apply_batch(tx, run);
        } catch (const std::exception& e) {
          status = StatusFromDatabaseException(e);
        }
        if (!status.ok()) return status;
        count += static_cast<int>(run.size());
      }
    } else {
      for (const common::v1::Event& event : page.events) {
        if (event.position() <= position) continue;  // Delivered before: already took effect.
        ScopeToAgency(tx, event.agency_id());
        if (isolate) tx.exec0("SAVEPOINT peerpath_event");
        absl::Status status;
        try {
          status = apply_(tx, event);
        } catch (const std::exception& e) {
          status = StatusFromDatabaseException(e);
        }
        if (!status.ok()) {
          if (!isolate || !IsPermanent(status)) return status;
          tx.exec0("ROLLBACK TO SAVEPOINT peerpath_event");
          log::Error("event set aside: it can never apply",
                     {{"source", options_.source},
                      {"position", event.position()},
                      {"event_type", event.type()},
                      {"error", std::string(status.message())}});
          tx.exec_params0(
              "INSERT INTO consumer_failures (source, position, event_id, event_type, error) "
              "VALUES ($1, $2, $3::uuid, $4, $5) ON CONFLICT DO NOTHING",
              options_.source, event.position(), event.event_id(), event.type(),
              std::string(status.message()));
          ++failed;
        } else {
          if (isolate) tx.exec0("RELEASE SAVEPOINT peerpath_event");
          ++count;
        }
        position = event.position();
        last = &event;
      }
    }
    if (last != nullptr) {
      tx.exec_params0(
          "UPDATE consumer_positions SET position = $2, "
          "last_event_at = to_timestamp($3::float8 / 1000000), updated_at = now() "
          "WHERE source = $1",
          options_.source, last->position(),
          absl::ToUnixMicros(FromProtoTimestamp(last->occurred_at())));
    }
    return count;
  });
  if (applied.ok()) {
    if (applied_ != nullptr) applied_->Increment(*applied);
    if (failed_ != nullptr) failed_->Increment(failed);
  }
  return applied;
}

void EventConsumer::ObserveLag(const EventPage& page, int64_t position) {
  if (position_gauge_ == nullptr) return;
  position_gauge_->Set(static_cast<double>(position));
  lag_events_->Set(static_cast<double>(std::max<int64_t>(0, page.head_position - position)));
  // Behind when the page was full or the head is further; the age of the first event not applied
  // is not known without another fetch, so the page's last event's age stands for it.
  if (page.head_position > position && !page.events.empty()) {
    lag_seconds_->Set(
        absl::ToDoubleSeconds(absl::Now() - FromProtoTimestamp(page.events.back().occurred_at())));
  } else {
    lag_seconds_->Set(0);
  }
}

void EventConsumer::Run() {
  absl::Duration backoff = options_.min_backoff;
  std::future<PageAhead> ahead;
  bool failed = false;
  while (!stop_.stopped()) {
    // After a failed round, each retry fetches only the page it retries, so what watches the
    // fetches (evaluation's pipeline status) sees the same page asked for again.
    auto applied = Poll(failed ? nullptr : &ahead);
    failed = !applied.ok();
    if (failed && ahead.valid()) ahead.get();  // Waits for it (within the fetch's deadline).
    absl::Duration wait;
    if (!applied.ok()) {
      log::Warn("event consumer: retrying",
                {{"source", options_.source},
                 {"code", absl::StatusCodeToString(applied.status().code())},
                 {"error", std::string(applied.status().message())},
                 {"retry_in_ms", absl::ToInt64Milliseconds(backoff)}});
      wait = backoff;
      backoff = std::min(backoff * 2, options_.max_backoff);
    } else {
      backoff = options_.min_backoff;
      // A full page means more is waiting: go on at once.
      wait = *applied > 0 ? absl::ZeroDuration() : options_.idle_poll;
    }
    if (wait > absl::ZeroDuration() && stop_.WaitFor(wait)) break;
  }
}

}  // namespace peerpath
