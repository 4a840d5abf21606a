#pragma once

#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "common/authorization.h"
#include "common/event_consumer.h"
#include "common/event_log.h"
#include "common/group_commit.h"
#include "common/idempotency.h"
#include "common/server.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "services/escalation/notifier.h"
#include "services/escalation/opening_writes.h"
#include "services/escalation/routing.h"
#include "services/escalation/store.h"
#include "services/escalation/sweeper.h"
#include "services/escalation/watch_feed.h"
#include "services/escalation/watch_hub.h"

namespace peerpath::escalation {

using EscalationServiceBase =
    WithEventLogRpcs<v1::EscalationService::Service, v1::ListEventsRequest, v1::ListEventsResponse,
                     v1::SubscribeRequest, v1::SubscribeResponse>;

// RaiseConcern's read for a batch of calls of one agency ($1; the calls' idempotency keys,
// request fingerprints in hex, participants, callers and enrollments, '' for none, as the text
// arrays $2..$6): claims each key and reads what each call is decided on, a row per call in
// their order.
extern const char kRaiseContextsSql[];
// The check-in consumer's read for a run of ConcernRaisedEvents of one agency ($1; the events'
// ids and participants as the text arrays $2, $3): per event, whether it opened a concern already
// and its participant's active supporter, with the agency's newest routing policy; a row per
// event in their order.
extern const char kRaisedContextsSql[];

// The service's own settings (main.cc reads them from flags and the environment).
struct EscalationOptions {
  std::string time_zone = "UTC";  // Of the built-in routing policy (IANA name, loaded).
  absl::TimeZone zone = absl::UTCTimeZone();
  absl::Duration sweep_interval = absl::Seconds(1);
  std::string webhook_url;      // Empty: notifications are only logged.
  std::string checkin_address;  // Empty: check-in ConcernRaisedEvents are not consumed.
  // Empty: the peer relationship is not known (no supporter's supervisor to route to, and only
  // staff other than peer supporters and supervisors may raise concerns).
  std::string matching_address;
  // Group commit: most concurrent RaiseConcern calls of one agency per write transaction; 1
  // writes each call alone.
  int max_raise_batch = 16;
  // RaiseConcern write transactions at once, of all agencies together (of them at most two of
  // one agency). About the database server's processors and one more: beyond that they only
  // take turns on its processors, and calls wait longer (16 agencies at once on 2 processors: p99
  // 27-31 ms with 8, 17-22 ms with 3, at the same rate).
  int raise_writes = 3;
};

// peerpath.escalation.v1.EscalationService: concerns, routing policies, the deadline sweeper and
// the consumer of the check-in service's concern events.
class EscalationService final : public EscalationServiceBase {
 public:
  // Starts the deadline sweeper and, with a check-in address, the check-in consumer.
  explicit EscalationService(ServiceContext& context, EscalationOptions options = {});
  ~EscalationService() override;

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

  grpc::Status RaiseConcern(grpc::ServerContext* context, const v1::RaiseConcernRequest* request,
                            v1::RaiseConcernResponse* response) override;
  grpc::Status GetConcern(grpc::ServerContext* context, const v1::GetConcernRequest* request,
                          v1::GetConcernResponse* response) override;
  grpc::Status ListConcerns(grpc::ServerContext* context, const v1::ListConcernsRequest* request,
                            v1::ListConcernsResponse* response) override;
  grpc::Status AcknowledgeConcern(grpc::ServerContext* context,
                                  const v1::AcknowledgeConcernRequest* request,
                                  v1::AcknowledgeConcernResponse* response) override;
  grpc::Status ResolveConcern(grpc::ServerContext* context,
                              const v1::ResolveConcernRequest* request,
                              v1::ResolveConcernResponse* response) override;
  grpc::Status CancelConcern(grpc::ServerContext* context, const v1::CancelConcernRequest* request,
                             v1::CancelConcernResponse* response) override;
  grpc::Status ReassignConcern(grpc::ServerContext* context,
                               const v1::ReassignConcernRequest* request,
                               v1::ReassignConcernResponse* response) override;
  grpc::Status GetRoutingPolicy(grpc::ServerContext* context,
                                const v1::GetRoutingPolicyRequest* request,
                                v1::GetRoutingPolicyResponse* response) override;
  grpc::Status UpdateRoutingPolicy(grpc::ServerContext* context,
                                   const v1::UpdateRoutingPolicyRequest* request,
                                   v1::UpdateRoutingPolicyResponse* response) override;

  grpc::Status WatchConcerns(grpc::ServerContext* context, const v1::WatchConcernsRequest* request,
                             grpc::ServerWriter<v1::WatchConcernsResponse>* writer) override;

  // Applies one check-in event inside the consumer's transaction (public for tests): a
  // ConcernRaisedEvent opens its concern (once, whatever the delivery count), the enrollment and
  // program-policy events keep what RaiseConcern and routing read of them.
  absl::Status ApplyCheckInEvent(pqxx::work& tx, const common::v1::Event& event);
  // The same for a run of consecutive events of one agency (the consumer's batch handler), with
  // the same effect as applying them one by one: consecutive ConcernRaisedEvents take one read
  // and one write of every table for all of them.
  absl::Status ApplyCheckInEvents(pqxx::work& tx,
                                  const std::vector<const common::v1::Event*>& events);

 private:
  struct Change;  // A concern changed by a person, for the shared lock-check-write path.

  // One validated RaiseConcern call, as the group commit takes it.
  struct RaiseCall {
    const Identity* caller = nullptr;
    const v1::RaiseConcernRequest* request = nullptr;
    IdempotentCall idempotent;
  };
  // Its answer: the status and response, and what to do once its transaction committed.
  struct RaiseOutcome {
    absl::Status status;
    v1::RaiseConcernResponse response;
    bool refused_participant = false;  // Audit the refusal (outside the batch's transaction).
    bool wake_outbox = false;
    bool wake_feed = false;
  };
  // Writes the calls (one agency's) in one transaction: one read of every call's key claim and
  // context, each call decided alone (a refusal releases its key and writes nothing), the
  // writes of all in one round trip, one commit. A transaction the database fails is run again
  // a call at a time, so that one call never fails another.
  std::vector<RaiseOutcome> RaiseBatch(const std::vector<const RaiseCall*>& calls);

  absl::Status RaiseConcernImpl(const grpc::ServerContext& context, const Identity& caller,
                                const v1::RaiseConcernRequest& request,
                                v1::RaiseConcernResponse& response);
  absl::Status GetConcernImpl(const grpc::ServerContext& context, const Identity& caller,
                              const v1::GetConcernRequest& request,
                              v1::GetConcernResponse& response);
  absl::Status ListConcernsImpl(const Identity& caller, const v1::ListConcernsRequest& request,
                                v1::ListConcernsResponse& response);
  // The body of Acknowledge/Resolve/Cancel/Reassign: locks the concern, checks visibility, runs
  // `act` (which decides and writes), audits; NOT_FOUND is audited as a refusal.
  absl::Status ChangeConcern(
      const grpc::ServerContext& context, const Identity& caller, const std::string& method,
      const std::string& concern_id, v1::ConcernChangeKind change_kind,
      const std::function<absl::Status(pqxx::work&, ConcernRecord&, const RoutingPolicy&)>& act,
      v1::Concern& out);
  absl::Status WatchConcernsImpl(grpc::ServerContext& context, const Identity& caller,
                                 const v1::WatchConcernsRequest& request,
                                 grpc::ServerWriter<v1::WatchConcernsResponse>& writer);
  absl::Status UpdateRoutingPolicyImpl(const Identity& caller,
                                       const v1::UpdateRoutingPolicyRequest& request,
                                       v1::UpdateRoutingPolicyResponse& response);

  // Opens and routes a concern: its row, transitions and events, and its target's notification
  // when it goes out at once, into `writes`. Adds nothing when it fails.
  // `latest_policy_id`: the agency's newest routing policy when the caller read it already
  // (empty: read here, and the built-in version 1 stored when there is none).
  absl::StatusOr<ConcernRecord> OpenConcern(pqxx::work& tx, ConcernRecord record,
                                            const PersonDirectory& people, absl::Time now,
                                            OpeningWrites& writes,
                                            const std::string& latest_policy_id = "");

  RoutingPolicy DefaultPolicyFor() const;

  // Opens the concerns of ConcernRaisedEvents of one agency (consecutive in the log), each event
  // at most once; INVALID_ARGUMENT for an unreadable payload, OpenConcern's error for a concern
  // that cannot be routed (the consumer then applies the events one by one and sets it aside).
  absl::Status ApplyConcernsRaised(pqxx::work& tx,
                                   const std::vector<const common::v1::Event*>& events);

  ServiceContext& context_;
  Authorizer authorizer_;
  EventLog events_;
  std::string time_zone_name_;
  absl::TimeZone time_zone_;
  std::function<absl::Time()> now_ = [] { return absl::Now(); };
  WatchHub hub_;
  std::unique_ptr<WatchFeed> feed_;  // Relays every replica's committed changes to hub_.
  std::unique_ptr<Notifier> notifier_;
  std::unique_ptr<NotificationOutbox> outbox_;
  std::unique_ptr<DeadlineSweeper> sweeper_;
  std::unique_ptr<EventConsumer> checkin_consumer_;
  std::unique_ptr<EventConsumer> matching_consumer_;
  GroupCommitter<RaiseCall, RaiseOutcome> raises_;
  prometheus::Histogram* raise_batch_sizes_ = nullptr;
  prometheus::Gauge* raise_calls_in_flight_ = nullptr;
};

}  // namespace peerpath::escalation
