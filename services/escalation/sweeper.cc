#include "services/escalation/sweeper.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/event_log.h"
#include "common/log.h"
#include "common/parallel.h"
#include "common/time_util.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "services/escalation/policy_codec.h"
#include "services/escalation/store.h"

namespace peerpath::escalation {
namespace {

constexpr char kSweeperActor[] = "system:sweeper";
constexpr int kBatch = 500;
// How often the open/overdue gauges are counted (after a sweep, once this has passed).
constexpr absl::Duration kGaugeInterval = absl::Seconds(5);

// Most concerns a chunk acts on in one transaction.
constexpr size_t kChunk = 50;

struct Chunk {
  std::string agency_id;
  std::vector<std::string> concern_ids;
};

// `due` (most overdue first) in chunks of one agency each, in the order of their first concern:
// as many chunks as `workers` at least while there are enough concerns, kChunk concerns at most.
std::vector<Chunk> ChunksOf(const std::vector<Store::DueConcern>& due, int workers) {
  const size_t size =
      std::clamp<size_t>((due.size() + static_cast<size_t>(std::max(1, workers)) - 1) /
                             static_cast<size_t>(std::max(1, workers)),
                         1, kChunk);
  std::vector<Chunk> chunks;
  std::map<std::string, size_t> open;  // Agency → its chunk still taking concerns.
  for (const Store::DueConcern& d : due) {
    auto it = open.find(d.agency_id);
    if (it == open.end() || chunks[it->second].concern_ids.size() == size) {
      chunks.push_back({d.agency_id, {}});
      it = open.insert_or_assign(d.agency_id, chunks.size() - 1).first;
    }
    chunks[it->second].concern_ids.push_back(d.concern_id);
  }
  return chunks;
}

google::protobuf::Duration ProtoDuration(absl::Duration d) {
  google::protobuf::Duration proto;
  proto.set_seconds(absl::ToInt64Seconds(d));
  proto.set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d % absl::Seconds(1))));
  return proto;
}

}  // namespace

DeadlineSweeper::DeadlineSweeper(Database& db, NotificationOutbox& outbox,
                                 prometheus::Registry* metrics, absl::Duration interval)
    : db_(db), outbox_(outbox), interval_(interval) {
  if (metrics != nullptr) {
    open_ = &prometheus::BuildGauge()
                 .Name("peerpath_open_concerns")
                 .Help("Concerns OPEN or ACKNOWLEDGED, by severity")
                 .Register(*metrics);
    overdue_ = &prometheus::BuildGauge()
                    .Name("peerpath_overdue_concerns")
                    .Help("Open or acknowledged concerns past their next deadline, by severity")
                    .Register(*metrics);
  }
}

DeadlineSweeper::~DeadlineSweeper() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void DeadlineSweeper::Start(const StopSignal& stopping) {
  thread_ = std::thread([this, &stopping] {
    absl::Time counted;  // The gauges' last refresh: never yet.
    while (!stop_.WaitFor(interval_) && !stopping.stopped()) {
      const absl::Time now = absl::Now();
      auto result = SweepOnce(now);
      if (!result.ok()) {
        log::Warn("deadline sweep failed",
                  {{"code", absl::StatusCodeToString(result.status().code())}});
      } else if (result->acted > 0) {
        log::Info("deadline sweep", {{"due", result->due}, {"acted", result->acted}});
      }
      // Counting reads every open concern (~50 ms at 100,000): not more often than every
      // kGaugeInterval, far below any scrape interval.
      if (now - counted >= kGaugeInterval) {
        counted = now;
        (void)RefreshGauges(now);
      }
    }
  });
}

absl::Status DeadlineSweeper::RefreshGauges(absl::Time now) {
  if (open_ == nullptr) return absl::OkStatus();
  auto counts = Store::CountOpen(db_, now);
  if (!counts.ok()) return counts.status();
  for (const char* severity : {"routine", "urgent", "critical"}) {
    open_->Add({{"severity", severity}}).Set(static_cast<double>(counts->open[severity]));
    overdue_->Add({{"severity", severity}}).Set(static_cast<double>(counts->overdue[severity]));
  }
  return absl::OkStatus();
}

absl::StatusOr<SweepResult> DeadlineSweeper::SweepOnce(absl::Time now) {
  SweepResult result;
  while (true) {
    auto due = Store::DueConcerns(db_, now, kBatch);
    if (!due.ok()) return due.status();
    // In chunks of one agency's concerns, most overdue first. A chunk is one transaction: one
    // locking read, one round trip of writes and one commit for all its concerns. A backlog
    // (after an outage, or a burst of concerns raised together) is worked off by a few
    // connections at once, leaving one to the calls. A chunk the database refuses (one concern
    // whose writes fail) is retried a concern at a time, so that one concern never holds back the
    // others.
    const int workers = db_.BackgroundWorkers();
    const std::vector<Chunk> chunks = ChunksOf(*due, workers);
    std::atomic<int> acted_in_batch{0};
    ForEachInOrder(chunks.size(), workers, [&](size_t i) {
      const Chunk& chunk = chunks[i];
      auto acted = ActOnChunk(chunk.agency_id, chunk.concern_ids, now);
      if (acted.ok()) {
        acted_in_batch += *acted;
        return;
      }
      for (const std::string& concern_id : chunk.concern_ids) {
        auto one = ActOnChunk(chunk.agency_id, {concern_id}, now);
        if (!one.ok()) {
          log::Warn("deadline not processed; retried on the next sweep",
                    {{"concern_id", concern_id},
                     {"code", absl::StatusCodeToString(one.status().code())}});
        } else {
          acted_in_batch += *one;
        }
      }
    });
    result.due += static_cast<int>(due->size());
    result.acted += acted_in_batch.load();
    // A concern acted on gets a later deadline; stop when a batch moved nothing (only failures
    // or races remain) or was not full.
    if (static_cast<int>(due->size()) < kBatch || acted_in_batch.load() == 0) break;
  }
  // Targets whose notification waited for business hours.
  auto pending = Store::PendingNotifications(db_, now, kBatch);
  if (!pending.ok()) return pending.status();
  std::atomic<int> notified{0};
  ForEachInOrder(pending->size(), db_.BackgroundWorkers(), [&](size_t i) {
    const Store::DueConcern& concern = (*pending)[i];
    auto marked = db_.TransactForAgency(
        concern.agency_id,
        [&](pqxx::work& tx) -> absl::StatusOr<std::optional<ConcernRecord>> {
          auto record = Store::MarkNotified(tx, concern.agency_id, concern.concern_id, now);
          if (record.ok() && record->has_value()) {
            const v1::Concern& c = (*record)->concern;
            NotificationOutbox::Enqueue(
                tx, {{concern.agency_id, concern.concern_id, "business_hours_started", c.category(),
                      c.severity(), c.current_level(), TargetFromProto(c.current_target()),
                      FromProtoTimestamp(c.next_deadline())}});
          }
          return record;
        },
        Plans::kIndexScans);
    if (!marked.ok() || !marked->has_value()) return;
    outbox_.Wake();
    ++notified;
  });
  result.notified = notified.load();
  return result;
}

struct DeadlineSweeper::SweepWrites {
  std::vector<Store::Breach> breaches;
  std::vector<std::pair<std::string, TransitionRecord>> transitions;
  std::vector<std::pair<std::string, std::unique_ptr<google::protobuf::Message>>> events;
  std::vector<Notification> notifications;

  // Adds them to `writes`, after the concerns' own updates.
  void AddTo(DeferredWrites& writes, const std::string& agency_id) const {
    Store::InsertBreaches(writes, agency_id, breaches);
    Store::AppendTransitions(writes, agency_id, transitions);
    std::vector<std::pair<std::string, const google::protobuf::Message*>> payloads;
    payloads.reserve(events.size());
    for (const auto& [concern_id, event] : events) payloads.emplace_back(concern_id, event.get());
    if (!payloads.empty()) AppendEvents(writes, agency_id, payloads);
    NotificationOutbox::Enqueue(writes, notifications);
  }
};

absl::StatusOr<int> DeadlineSweeper::ActOnChunk(const std::string& agency_id,
                                                const std::vector<std::string>& concern_ids,
                                                absl::Time now) {
  bool notify = false;
  auto acted = db_.TransactForAgency(
      agency_id,
      [&](pqxx::work& tx) -> absl::StatusOr<int> {
        DeferredWrites writes(tx);
        SweepWrites more;
        int count = 0;
        for (ConcernRecord& record : Store::LockConcerns(tx, agency_id, concern_ids)) {
          auto applied = Apply(tx, writes, more, std::move(record), now);
          if (!applied.ok()) return applied.status();
          if (*applied) ++count;
        }
        more.AddTo(writes, agency_id);
        writes.Flush();
        notify = !more.notifications.empty();
        return count;
      },
      Plans::kIndexScans);
  if (acted.ok() && *acted > 0) AfterCommit(notify);
  return acted;
}

void DeadlineSweeper::AfterCommit(bool notify) {
  // After commit: a notification never announces a change that rolled back.
  if (notify) outbox_.Wake();
  if (feed_ != nullptr) feed_->Wake();
}

absl::StatusOr<bool> DeadlineSweeper::Apply(pqxx::work& tx, DeferredWrites& writes,
                                            SweepWrites& more, ConcernRecord record,
                                            absl::Time now) {
  const std::string agency_id = record.concern.agency_id();
  const std::string concern_id = record.concern.concern_id();
  std::vector<Notification>& notifications = more.notifications;
  ConcernChangeNote note;
  v1::Concern& c = record.concern;
  // Re-checked under the row lock: another sweeper, an acknowledgement or a resolution may
  // have come first.
  if ((c.state() != v1::CONCERN_STATE_OPEN && c.state() != v1::CONCERN_STATE_ACKNOWLEDGED) ||
      !c.has_next_deadline() || FromProtoTimestamp(c.next_deadline()) > now) {
    return false;
  }
  auto policy = Store::PolicyById(tx, agency_id, record.policy_id);
  if (!policy.ok()) return policy.status();
  const RoutingRule* rule = RuleFor(*policy, c.category(), c.severity());
  if (rule == nullptr) return absl::InternalError("concern's rule missing from its policy");
  const BusinessCalendar& calendar = policy->calendar;

  const int level = c.current_level();
  const absl::Time missed = FromProtoTimestamp(c.next_deadline());
  const std::string kind = record.next_deadline_kind;
  const v1::ConcernState from_state = c.state();
  PersonDirectory people;
  if (c.raised_by_role() == "peer_supporter") people.peer_supporters.insert(c.raised_by());
  const Target current = TargetFromProto(c.current_target());
  const absl::Time repeat_deadline =
      DeadlineAfter(rule->AckLimitAt(level), now, rule->business_hours_only, calendar);

  // The sweep's transition, from the state read to the concern's state now.
  auto append_transition = [&](const char* transition, const std::string& missed_kind) {
    TransitionRecord t;
    t.kind = transition;
    t.from_status = StateCode(from_state);
    t.to_status = StateCode(c.state());
    t.level = c.current_level();
    t.target = TargetFromProto(c.current_target());
    t.actor = kSweeperActor;
    t.missed_deadline_kind = missed_kind;
    t.missed_deadline = missed;
    more.transitions.emplace_back(concern_id, std::move(t));
  };
  auto realert = [&](v1::ReAlertReason reason, const std::string& missed_kind) {
    append_transition("realerted", missed_kind);
    auto event = std::make_unique<v1::ConcernReAlertedEvent>();
    v1::ConcernReAlertedEvent& e = *event;
    e.set_concern_id(concern_id);
    e.set_category(c.category());
    e.set_severity(c.severity());
    e.set_reason(reason);
    e.set_level(c.current_level());
    *e.mutable_target() = c.current_target();
    *e.mutable_missed_deadline() = ToProtoTimestamp(missed);
    *e.mutable_missed_by() = ProtoDuration(now - missed);
    *e.mutable_realerted_at() = ToProtoTimestamp(now);
    *e.mutable_next_deadline() = c.next_deadline();
    notifications.push_back({agency_id, concern_id, "realerted", c.category(), c.severity(),
                             c.current_level(), TargetFromProto(c.current_target()),
                             FromProtoTimestamp(c.next_deadline())});
    more.events.emplace_back(concern_id, std::move(event));
  };

  if (kind == "resolution") {
    // Acknowledged but not resolved in the window: re-alert the owner, escalate if it is still
    // unresolved when the level's acknowledgement limit has passed again.
    more.breaches.push_back({concern_id, "resolution", level, missed, std::nullopt});
    c.set_breach_count(c.breach_count() + 1);
    *c.mutable_next_deadline() = ToProtoTimestamp(repeat_deadline);
    record.next_deadline_kind = "resolution_after_realert";
    Store::UpdateConcern(writes, record, now);
    realert(v1::RE_ALERT_REASON_RESOLUTION_OVERDUE, "resolution");
  } else if (kind == "chain_exhausted") {
    c.set_breach_count(c.breach_count() + 1);
    *c.mutable_next_deadline() = ToProtoTimestamp(repeat_deadline);
    Store::UpdateConcern(writes, record, now);
    realert(v1::RE_ALERT_REASON_CHAIN_EXHAUSTED, "");
  } else {
    // "acknowledgement" or "resolution_after_realert": escalate one level.
    auto next = RouteFrom(*rule, level + 1, people, calendar, now);
    const bool exhausted = !next.ok();
    if (exhausted && next.status().code() != absl::StatusCode::kNotFound) return next.status();
    std::optional<Target> to;
    if (!exhausted) to = next->target;
    more.breaches.push_back({concern_id, kind, level, missed, to});
    c.set_breach_count(c.breach_count() + 1);
    auto event = std::make_unique<v1::ConcernEscalatedEvent>();
    v1::ConcernEscalatedEvent& e = *event;
    e.set_concern_id(concern_id);
    e.set_category(c.category());
    e.set_severity(c.severity());
    e.set_deadline_kind(kind == "acknowledgement" ? v1::DEADLINE_KIND_ACKNOWLEDGEMENT
                                                  : v1::DEADLINE_KIND_RESOLUTION_AFTER_REALERT);
    e.set_from_level(level);
    *e.mutable_missed_deadline() = ToProtoTimestamp(missed);
    *e.mutable_missed_by() = ProtoDuration(now - missed);
    *e.mutable_detected_at() = ToProtoTimestamp(now);
    e.set_chain_exhausted(exhausted);
    if (!exhausted) {
      c.set_state(v1::CONCERN_STATE_OPEN);
      c.set_current_level(next->level);
      *c.mutable_current_target() = TargetToProto(next->target);
      *c.mutable_ack_deadline() = ToProtoTimestamp(next->ack_deadline);
      *c.mutable_next_deadline() = ToProtoTimestamp(next->ack_deadline);
      c.clear_resolution_deadline();
      record.next_deadline_kind = "acknowledgement";
      record.notify_at = next->notify_at;
      e.set_to_level(next->level);
      *e.mutable_to_target() = c.current_target();
      for (int skipped : next->skipped_levels) e.add_skipped_levels(skipped);
      *e.mutable_ack_deadline() = c.ack_deadline();
      // A business-hours-only level is told when business hours begin (pending notification).
      if (next->notify_at <= now) {
        notifications.push_back({agency_id, concern_id, "escalated", c.category(), c.severity(),
                                 next->level, next->target, next->ack_deadline});
      }
    } else {
      e.set_to_level(level);
      *c.mutable_next_deadline() = ToProtoTimestamp(repeat_deadline);
      record.next_deadline_kind = "chain_exhausted";
    }
    Store::UpdateConcern(writes, record, now);
    append_transition("escalated", kind);
    more.events.emplace_back(concern_id, std::move(event));
    if (exhausted) {
      realert(v1::RE_ALERT_REASON_CHAIN_EXHAUSTED, "");
    }
  }
  // Escalations (also a breach at an exhausted chain) and re-alerts.
  note.kind = kind == "resolution" || kind == "chain_exhausted" ? v1::CONCERN_CHANGE_KIND_REALERTED
                                                                : v1::CONCERN_CHANGE_KIND_ESCALATED;
  note.concern = c;
  note.concern.clear_description();
  note.previous_target = current;
  note.occurred_at = now;
  if (feed_ != nullptr) WatchFeed::Record(writes, note);
  return true;
}

}  // namespace peerpath::escalation
