#include "services/escalation/watch_feed.h"

#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "common/event_log.h"
#include "common/log.h"

namespace peerpath::escalation {

WatchFeed::WatchFeed(Database& db, WatchHub& hub, WatchFeedOptions options)
    : db_(db), hub_(hub), options_(options) {}

WatchFeed::~WatchFeed() {
  wake_.Stop();
  if (thread_.joinable()) thread_.join();
}

namespace {

template <typename Writes>
void RecordTo(Writes& writes, const std::vector<ConcernChangeNote>& notes) {
  if (notes.empty()) return;
  std::vector<std::string> agencies, concerns, previous_target_ids;
  std::vector<int64_t> kinds, previous_target_kinds, occurred, revisions;
  for (const ConcernChangeNote& note : notes) {
    v1::Concern concern = note.concern;
    concern.clear_description();
    concern.clear_cancel_reason();
    concern.clear_transitions();
    agencies.push_back(concern.agency_id());
    kinds.push_back(static_cast<int>(note.kind));
    concerns.push_back(absl::BytesToHexString(concern.SerializeAsString()));
    previous_target_kinds.push_back(static_cast<int>(note.previous_target.kind));
    previous_target_ids.push_back(note.previous_target.id);
    occurred.push_back(absl::ToUnixMicros(note.occurred_at));
    // The revision the change left: every change is made to a concern read under its row lock
    // (or just inserted), and counts up the revision it read (Store::UpdateConcern).
    revisions.push_back(concern.revision());
  }
  writes.Exec("escalation_watch_feed_record_rows",
              "INSERT INTO watch_feed (agency_id, kind, concern, previous_target_kind, "
              "previous_target_id, occurred_at, revision) SELECT f.agency, f.kind, "
              "decode(f.concern, 'hex'), f.previous_target_kind, f.previous_target_id, "
              "ts_from_us(f.occurred), f.revision FROM unnest($1::text[], $2::integer[], "
              "$3::text[], $4::integer[], $5::text[], $6::bigint[], $7::integer[]) WITH "
              "ORDINALITY AS f(agency, kind, concern, previous_target_kind, previous_target_id, "
              "occurred, revision, n) ORDER BY f.n",
              TextArrayLiteral(agencies), IntegerArrayLiteral(kinds), TextArrayLiteral(concerns),
              IntegerArrayLiteral(previous_target_kinds), TextArrayLiteral(previous_target_ids),
              IntegerArrayLiteral(occurred), IntegerArrayLiteral(revisions));
}

}  // namespace

void WatchFeed::Record(pqxx::work& tx, const ConcernChangeNote& note) {
  ImmediateWrites writes{tx};
  RecordTo(writes, std::vector<ConcernChangeNote>{note});
}

void WatchFeed::Record(DeferredWrites& writes, const ConcernChangeNote& note) {
  RecordTo(writes, std::vector<ConcernChangeNote>{note});
}

void WatchFeed::Record(DeferredWrites& writes, const std::vector<ConcernChangeNote>& notes) {
  RecordTo(writes, notes);
}

void WatchFeed::Start(const StopSignal& stopping) {
  thread_ = std::thread([this, &stopping] {
    while (!stopping.stopped()) {
      auto relayed = RelayOnce();
      if (!relayed.ok()) {
        log::Warn("watch feed relay pass failed",
                  {{"code", absl::StatusCodeToString(relayed.status().code())}});
      }
      // A burst of local commits shares the next pass.
      if (!wake_.WaitForWake(options_.poll, options_.min_gap)) return;
    }
  });
}

void WatchFeed::Wake() { wake_.Wake(); }

absl::StatusOr<int> WatchFeed::RelayOnce() {
  // Positions first, in a transaction of their own that commits before anything is read: one
  // assigner per schema at a time, so positions grow in the order they become visible.
  auto assigned =
      db_.TransactWithSetting("app.watch_feed", "on", [&](pqxx::work& tx) -> absl::StatusOr<bool> {
        if (!AssignPositionsAfterCommit(tx, "watch_feed", "watch_feed_position",
                                        "peerpath.watch_feed."))
          return false;
        if (absl::Now() >= next_prune_) {
          tx.exec0(
              "DELETE FROM watch_feed WHERE position IS NOT NULL AND created_at < now() - "
              "interval '1 hour'");
          next_prune_ = absl::Now() + absl::Minutes(1);
        }
        return true;
      });
  if (!assigned.ok()) return assigned.status();
  std::vector<ConcernChangeNote> notes;
  auto read = db_.TransactWithSetting(
      "app.watch_feed", "on", [&](pqxx::work& tx) -> absl::StatusOr<int64_t> {
        if (last_position_ < 0) {
          return tx.exec1("SELECT coalesce(max(position), 0) FROM watch_feed")[0].as<int64_t>();
        }
        int64_t last = last_position_;
        for (const auto& row :
             ExecPrepared(tx, "escalation_watch_feed_read",
                          "SELECT position, kind, encode(concern, 'hex'), previous_target_kind, "
                          "previous_target_id, " PEERPATH_SQL_MICROS(
                              "occurred_at") ", coalesce(revision, 0) FROM watch_feed "
                                             "WHERE position > $1 ORDER BY position LIMIT $2",
                          last_position_, options_.batch)) {
          last = row[0].as<int64_t>();
          ConcernChangeNote note;
          note.kind = static_cast<v1::ConcernChangeKind>(row[1].as<int>());
          if (!note.concern.ParseFromString(absl::HexStringToBytes(row[2].as<std::string>()))) {
            log::Error("watch feed row does not parse; skipped", {{"position", last}});
            continue;
          }
          note.previous_target =
              Target{static_cast<TargetKind>(row[3].as<int>()), row[4].as<std::string>()};
          note.occurred_at = absl::FromUnixMicros(row[5].as<int64_t>());
          // 0: written before concerns had revisions (WatchConcerns compares the state then).
          note.concern.set_revision(row[6].as<int>());
          notes.push_back(std::move(note));
        }
        return last;
      });
  if (!read.ok()) return read.status();
  const bool first = last_position_ < 0;
  last_position_ = *read;
  if (first) return 0;
  for (const ConcernChangeNote& note : notes) hub_.Publish(note);
  return static_cast<int>(notes.size());
}

}  // namespace peerpath::escalation
