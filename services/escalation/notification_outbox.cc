#include "services/escalation/notification_outbox.h"

#include <algorithm>

#include "absl/time/clock.h"
#include "common/log.h"
#include "common/parallel.h"

namespace peerpath::escalation {

const char kDueNotificationsSql[] =
    "SELECT id, agency_id, concern_id::text, reason, category, severity, level, target_kind, "
    "target_id, (date_part('epoch', deadline) * 1000000)::bigint, attempts, now() - created_at > "
    "$1::bigint * interval '1 microsecond' FROM notifications WHERE delivered_at IS NULL AND "
    "gave_up_at IS NULL AND next_attempt_at <= now() ORDER BY next_attempt_at, id LIMIT $2 FOR "
    "UPDATE SKIP LOCKED";

const char kMarkDeliveredSql[] =
    "UPDATE notifications SET delivered_at = now(), attempts = attempts + 1 WHERE id = "
    "ANY($1::bigint[])";

const char kDispatchSetting[] = "app.notification_dispatch";

namespace {

// Up to this many due notifications per transaction, locked while they are delivered (another
// replica, or another worker, skips them): one scan and one commit for a burst of pages rather
// than one each.
constexpr int kPerTransaction = 16;
// A pass on the dispatcher's own thread ends after this many pages, and the next follows after
// `min_gap` (a wake of its own), so that a long backlog still lets the hourly clean-up run.
constexpr int kPerPass = 1024;

}  // namespace

NotificationOutbox::NotificationOutbox(Database& db, Notifier& notifier,
                                       prometheus::Registry* metrics,
                                       NotificationOutboxOptions options)
    : db_(db), notifier_(notifier), options_(options) {
  if (metrics != nullptr) {
    auto& family = prometheus::BuildCounter()
                       .Name("peerpath_escalation_notifications_total")
                       .Help(
                           "Concern notifications by outcome: delivered, failed_attempt (retried "
                           "later), gave_up (not delivered within the give-up time)")
                       .Register(*metrics);
    delivered_ = &family.Add({{"outcome", "delivered"}});
    failed_attempts_ = &family.Add({{"outcome", "failed_attempt"}});
    given_up_ = &family.Add({{"outcome", "gave_up"}});
  }
}

NotificationOutbox::~NotificationOutbox() {
  wake_.Stop();
  if (thread_.joinable()) thread_.join();
}

namespace {

// One statement for all of them, in order.
template <typename Writes>
void EnqueueTo(Writes& writes, const std::vector<Notification>& notifications) {
  if (notifications.empty()) return;
  std::vector<std::string> agencies, concerns, reasons, target_ids;
  std::vector<int64_t> categories, severities, levels, target_kinds, deadlines;
  for (const Notification& n : notifications) {
    agencies.push_back(n.agency_id);
    concerns.push_back(n.concern_id);
    reasons.push_back(n.reason);
    categories.push_back(static_cast<int>(n.category));
    severities.push_back(static_cast<int>(n.severity));
    levels.push_back(n.level);
    target_kinds.push_back(static_cast<int>(n.target.kind));
    target_ids.push_back(n.target.id);
    deadlines.push_back(absl::ToUnixMicros(n.deadline));
  }
  writes.Exec("escalation_enqueue_notifications",
              "INSERT INTO notifications (agency_id, concern_id, reason, category, severity, "
              "level, target_kind, target_id, deadline) SELECT n.agency, n.concern::uuid, "
              "n.reason, n.category, n.severity, n.level, n.target_kind, n.target_id, "
              "ts_from_us(n.deadline) FROM unnest($1::text[], $2::text[], $3::text[], "
              "$4::integer[], $5::integer[], $6::integer[], $7::integer[], $8::text[], "
              "$9::bigint[]) WITH ORDINALITY AS n(agency, concern, reason, category, severity, "
              "level, target_kind, target_id, deadline, i) ORDER BY n.i",
              TextArrayLiteral(agencies), TextArrayLiteral(concerns), TextArrayLiteral(reasons),
              IntegerArrayLiteral(categories), IntegerArrayLiteral(severities),
              IntegerArrayLiteral(levels), IntegerArrayLiteral(target_kinds),
              TextArrayLiteral(target_ids), IntegerArrayLiteral(deadlines));
}

}  // namespace

void NotificationOutbox::Enqueue(pqxx::work& tx, const std::vector<Notification>& notifications) {
  ImmediateWrites writes{tx};
  EnqueueTo(writes, notifications);
}

void NotificationOutbox::Enqueue(DeferredWrites& writes,
                                 const std::vector<Notification>& notifications) {
  EnqueueTo(writes, notifications);
}

void NotificationOutbox::Start(const StopSignal& stopping) {
  thread_ = std::thread([this, &stopping] {
    absl::Time next_clean_up = absl::InfinitePast();
    while (!stopping.stopped()) {
      if (absl::Now() >= next_clean_up) {
        auto deleted = DeleteOld();
        if (!deleted.ok()) {
          log::Warn("notification clean-up failed",
                    {{"code", absl::StatusCodeToString(deleted.status().code())}});
        }
        next_clean_up = absl::Now() + absl::Hours(1);
      }
      // A transaction's worth at a time on this thread while each delivers all it found (more
      // may be due: a burst of escalations). When the receiver took most of such a transaction's
      // time (a webhook answering in milliseconds), the rest goes through several connections at
      // once, each waiting on the receiver beside the others (SKIP LOCKED gives each worker its
      // own notifications). When the database's part was the larger (a receiver that answers at
      // once, as the log), more connections would only take turns on it, and those finding the
      // others' rows locked would read nothing.
      int passed = 0;
      for (bool more = true; more && !stopping.stopped();) {
        if (passed >= kPerPass) {
          wake_.Wake();
          break;
        }
        const absl::Time start = absl::Now();
        absl::Duration receiving;
        auto delivered = DeliverDue(kPerTransaction, &receiving);
        if (!delivered.ok()) {
          log::Warn("notification delivery pass failed",
                    {{"code", absl::StatusCodeToString(delivered.status().code())}});
          break;
        }
        passed += *delivered;
        more = *delivered == kPerTransaction;
        if (more && receiving > (absl::Now() - start) / 2) {
          const int workers = db_.BackgroundWorkers();
          ForEachInOrder(workers, workers, [&](size_t) {
            auto rest = DeliverDue();
            if (!rest.ok()) {
              log::Warn("notification delivery pass failed",
                        {{"code", absl::StatusCodeToString(rest.status().code())}});
            }
          });
          more = false;
        }
      }
      if (!wake_.WaitForWake(options_.poll, options_.min_gap)) return;
    }
  });
}

void NotificationOutbox::Wake() { wake_.Wake(); }

absl::StatusOr<int64_t> NotificationOutbox::DeleteOld() {
  return db_.TransactWithSetting(
      kDispatchSetting, "on", [](pqxx::work& tx) -> absl::StatusOr<int64_t> {
        return static_cast<int64_t>(
            tx.exec0("DELETE FROM notifications WHERE coalesce(delivered_at, gave_up_at) < now() - "
                     "interval '30 days'")
                .affected_rows());
      });
}

absl::StatusOr<int> NotificationOutbox::DeliverDue(int max) { return DeliverDue(max, nullptr); }

absl::StatusOr<int> NotificationOutbox::DeliverDue(int max, absl::Duration* receiving) {
  int delivered = 0;
  int handled = 0;
  while (handled < max) {
    const int limit = std::min(kPerTransaction, max - handled);
    auto tried = db_.TransactWithSetting(
        kDispatchSetting, "on",
        [&](pqxx::work& tx) -> absl::StatusOr<int> {
          const pqxx::result due =
              ExecPrepared(tx, "escalation_due_notifications", kDueNotificationsSql,
                           absl::ToInt64Microseconds(options_.give_up_after), limit);
          int done = 0;
          std::vector<int64_t> delivered_ids;  // Marked together at the end.
          for (const pqxx::row& r : due) {
            ++done;
            Notification n;
            n.agency_id = r[1].as<std::string>();
            n.concern_id = r[2].as<std::string>();
            n.reason = r[3].as<std::string>();
            n.category = static_cast<Category>(r[4].as<int>());
            n.severity = static_cast<Severity>(r[5].as<int>());
            n.level = r[6].as<int>();
            n.target = Target{static_cast<TargetKind>(r[7].as<int>()), r[8].as<std::string>()};
            n.deadline = absl::FromUnixMicros(r[9].as<int64_t>());
            const int attempts = r[10].as<int>() + 1;
            const absl::Time posted = absl::Now();
            const bool accepted = notifier_.Deliver(n);
            if (receiving != nullptr) *receiving += absl::Now() - posted;
            if (accepted) {
              delivered_ids.push_back(r[0].as<int64_t>());
              ++delivered;
              if (delivered_ != nullptr) delivered_->Increment();
              continue;
            }
            if (r[11].as<bool>()) {
              ExecPrepared(tx, "escalation_notification_given_up",
                           "UPDATE notifications SET gave_up_at = now(), attempts = $2 WHERE id = "
                           "$1",
                           r[0].as<int64_t>(), attempts);
              if (given_up_ != nullptr) given_up_->Increment();
              log::Error("concern notification not delivered; giving up",
                         {{"concern_id", n.concern_id}, {"attempts", attempts}});
            } else {
              const absl::Duration backoff = std::min(
                  options_.max_backoff,
                  options_.first_backoff * static_cast<double>(1 << std::min(attempts - 1, 16)));
              ExecPrepared(tx, "escalation_notification_retry",
                           "UPDATE notifications SET attempts = $2, next_attempt_at = now() + "
                           "$3::bigint * interval '1 microsecond' WHERE id = $1",
                           r[0].as<int64_t>(), attempts, absl::ToInt64Microseconds(backoff));
              if (failed_attempts_ != nullptr) failed_attempts_->Increment();
              log::Warn("concern notification not accepted; will retry",
                        {{"concern_id", n.concern_id}, {"attempts", attempts}});
            }
            // The receiver is failing: the rest of the batch waits for the next pass rather
            // than for one timeout after another inside this transaction.
            break;
          }
          if (!delivered_ids.empty()) {
            ExecPrepared(tx, "escalation_notifications_delivered", kMarkDeliveredSql,
                         IntegerArrayLiteral(delivered_ids));
          }
          return done;
        },
        Plans::kIndexScans);
    if (!tried.ok()) return tried.status();
    handled += *tried;
    // Fewer than asked: nothing else was due (or the receiver failed); no empty transaction to
    // find that out.
    if (*tried < limit) break;
  }
  return delivered;
}

}  // namespace peerpath::escalation
