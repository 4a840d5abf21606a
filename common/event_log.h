#pragma once

// The producing side of the event log (DESIGN.md section 4).
//
// AppendEvent writes an event into the service's outbox in the same transaction as the change it
// describes: no change without its event, no event without its change. Positions are assigned
// after commit by one assigner at a time (AssignPositions), so a consumer that has seen position
// N will never later find an event below N: transactions may commit in any order, but an event
// only gets its position once it is visible. ListEventsImpl / SubscribeImpl serve the log through
// each producing service's ListEvents / Subscribe RPCs.

#include <grpcpp/server_context.h>
#include <grpcpp/support/sync_stream.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/authorization.h"
#include "common/db.h"
#include "common/status.h"
#include "common/stop_signal.h"
#include "peerpath/common/v1/common.pb.h"

namespace peerpath {

// Writes `payload` as an event of type payload.GetDescriptor()->full_name() for `agency_id`
// about `aggregate_id`, inside `tx`. Payloads carry ids and codes only (never free text).
absl::Status AppendEvent(pqxx::work& tx, const std::string& agency_id,
                         absl::string_view aggregate_id, const google::protobuf::Message& payload);

// Many events, each (aggregate_id, payload), encoded as AppendEvents sends them. Encoding needs no
// transaction, so a batch writer may encode while its transaction runs another statement.
struct EncodedEvents {
  size_t count = 0;
  std::string types;  // text[] literals, one element per event, in order.
  std::string aggregate_ids;
  std::string payloads;         // The serialized payloads one after another (sent as bytea)…
  std::string payload_offsets;  // …and where each starts and how long it is: int[] literals.
  std::string payload_lengths;
};
EncodedEvents EncodeEvents(
    const std::vector<std::pair<std::string, const google::protobuf::Message*>>& events);

// Events gathered one at a time for one AppendEvents (a group commit's calls add theirs in turn):
// each payload is serialised as it is added, so it need not outlive the call.
class EventBatch {
 public:
  void Add(const std::string& aggregate_id, const google::protobuf::Message& payload);
  size_t size() const { return types_.size(); }
  // In the order added.
  EncodedEvents Encode() const;

 private:
  std::vector<std::string> types_;
  std::vector<std::string> aggregate_ids_;
  std::string payloads_;
  std::vector<int64_t> offsets_;
  std::vector<int64_t> lengths_;
};

// AppendEvent for many events in one round trip (batch writers such as matching's AssignBatch),
// in the order they were encoded.
absl::Status AppendEvents(pqxx::work& tx, const std::string& agency_id,
                          const EncodedEvents& events);

// The same, sent with the caller's other deferred writes (DeferredWrites::Flush).
void AppendEvents(
    DeferredWrites& writes, const std::string& agency_id,
    const std::vector<std::pair<std::string, const google::protobuf::Message*>>& events);
void AppendEvents(DeferredWrites& writes, const std::string& agency_id, const EventBatch& events);

// Gives the committed rows of `table` (columns id, position) that have no position yet the next
// values of `sequence`, in id order, setting `also_set` (", col = expr…") too. Assigners of one
// table share the advisory lock `lock_prefix` + schema. Returns how many, or nullopt at once when
// another assigner is busy (its work shows on the next read). Positions are thus handed out after
// commit by one assigner at a time: a reader that has seen position N never later finds one below
// N, whatever order transactions commit in.
std::optional<int64_t> AssignPositionsAfterCommit(pqxx::work& tx, const std::string& table,
                                                  const std::string& sequence,
                                                  const std::string& lock_prefix,
                                                  const std::string& also_set = "");

struct EventPage {
  std::vector<peerpath::common::v1::Event> events;  // In position order.
  int64_t head_position = 0;                        // Highest position in the log when read.
};

struct EventLogLimits {
  int default_page_size = 100;
  int max_page_size = 1000;
  int max_subscribers = 64;  // Concurrent Subscribe streams per server.
  absl::Duration poll_interval = absl::Milliseconds(100);
  absl::Duration heartbeat_interval = absl::Seconds(5);
};

class EventLog {
 public:
  explicit EventLog(Database& db, EventLogLimits limits = {}) : db_(db), limits_(limits) {}

  // Gives positions, in insertion order, to committed events that have none. When another
  // assigner is busy, returns 0 at once (its work will show on the next read).
  absl::StatusOr<int64_t> AssignPositions();

  // Assigns, then reads up to `limit` events with position > after_position (of the given types;
  // all when empty).
  absl::StatusOr<EventPage> Read(int64_t after_position, int limit,
                                 const std::vector<std::string>& types);

  const EventLogLimits& limits() const { return limits_; }

  // Counts live Subscribe streams; false when the cap is reached.
  bool TryAddSubscriber();
  void RemoveSubscriber() { --subscribers_; }

 private:
  Database& db_;
  const EventLogLimits limits_;
  std::atomic<int> subscribers_{0};
};

// INVALID_ARGUMENT naming the bad fields of a ListEvents / Subscribe request.
absl::Status ValidateEventLogRequest(int64_t after_position, int page_size,
                                     const std::vector<std::string>& types);

// The body of every producing service's ListEvents (after authorization).
template <typename Request, typename Response>
absl::Status ListEventsImpl(EventLog& log, const Request& request, Response& response) {
  const std::vector<std::string> types(request.event_types().begin(), request.event_types().end());
  if (absl::Status valid =
          ValidateEventLogRequest(request.after_position(), request.page_size(), types);
      !valid.ok()) {
    return valid;
  }
  const int limit = request.page_size() == 0
                        ? log.limits().default_page_size
                        : std::min(request.page_size(), log.limits().max_page_size);
  auto page = log.Read(request.after_position(), limit, types);
  if (!page.ok()) return page.status();
  for (auto& event : page->events) *response.add_events() = std::move(event);
  response.set_head_position(page->head_position);
  return absl::OkStatus();
}

// The body of every producing service's Subscribe (after authorization): the backlog, then new
// events as they commit, with a heartbeat when idle, until the client goes away or the server
// stops (UNAVAILABLE: reconnect).
template <typename Request, typename Response>
absl::Status SubscribeImpl(EventLog& log, const StopSignal& stopping, grpc::ServerContext& context,
                           const Request& request, grpc::ServerWriter<Response>& writer) {
  const std::vector<std::string> types(request.event_types().begin(), request.event_types().end());
  if (absl::Status valid = ValidateEventLogRequest(request.after_position(), 0, types);
      !valid.ok()) {
    return valid;
  }
  if (!log.TryAddSubscriber()) {
    return absl::ResourceExhaustedError(absl::StrCat("too many event subscribers (at most ",
                                                     log.limits().max_subscribers,
                                                     "); retry later or use ListEvents"));
  }
  struct Release {
    EventLog& log;
    ~Release() { log.RemoveSubscriber(); }
  } release{log};

  int64_t position = request.after_position();
  absl::Time last_sent = absl::InfinitePast();
  while (!context.IsCancelled()) {
    if (stopping.stopped()) return absl::UnavailableError("server shutting down; reconnect");
    auto page = log.Read(position, log.limits().max_page_size, types);
    if (!page.ok()) return page.status();
    for (auto& event : page->events) {
      position = event.position();
      Response message;
      *message.mutable_event() = std::move(event);
      message.set_head_position(page->head_position);
      if (!writer.Write(message)) return absl::CancelledError("subscriber went away");
      last_sent = absl::Now();
    }
    if (static_cast<int>(page->events.size()) == log.limits().max_page_size) continue;
    if (absl::Now() - last_sent >= log.limits().heartbeat_interval) {
      Response heartbeat;
      heartbeat.set_head_position(page->head_position);
      if (!writer.Write(heartbeat)) return absl::CancelledError("subscriber went away");
      last_sent = absl::Now();
    }
    stopping.WaitFor(log.limits().poll_interval);
  }
  return absl::CancelledError("subscriber cancelled");
}

// The ListEvents and Subscribe RPCs of a producing service, over its generated base class. The
// service derives from this instead of its generated Service, and passes its Authorizer (whose
// rule table lets only the `service` role read the log: it holds every agency's events).
template <typename Base, typename ListRequest, typename ListResponse, typename SubscribeRequest,
          typename SubscribeResponse>
class WithEventLogRpcs : public Base {
 public:
  WithEventLogRpcs(const Authorizer& authorizer, EventLog& log, const StopSignal& stopping)
      : authorizer_(authorizer), log_(log), stopping_(stopping) {}

  grpc::Status ListEvents(grpc::ServerContext* context, const ListRequest* request,
                          ListResponse* response) override {
    auto caller = authorizer_.Authorize(*context, "ListEvents");
    if (!caller.ok()) return ToGrpc(caller.status());
    return ToGrpc(ListEventsImpl(log_, *request, *response));
  }

  grpc::Status Subscribe(grpc::ServerContext* context, const SubscribeRequest* request,
                         grpc::ServerWriter<SubscribeResponse>* writer) override {
    auto caller = authorizer_.Authorize(*context, "Subscribe");
    if (!caller.ok()) return ToGrpc(caller.status());
    return ToGrpc(SubscribeImpl(log_, stopping_, *context, *request, *writer));
  }

 private:
  const Authorizer& authorizer_;
  EventLog& log_;
  const StopSignal& stopping_;
};

}  // namespace peerpath
