#include "services/escalation/concern_events.h"

#include "common/time_util.h"

namespace peerpath::escalation {

v1::ConcernOpenedEvent OpenedEvent(const v1::Concern& c) {
  v1::ConcernOpenedEvent e;
  e.set_concern_id(c.concern_id());
  e.set_participant_id(c.participant_id());
  e.set_enrollment_id(c.enrollment_id());
  e.set_category(c.category());
  e.set_severity(c.severity());
  e.set_source(c.source());
  e.set_source_event_id(c.source_event_id());
  e.set_source_check_in_id(c.source_check_in_id());
  e.set_raised_by(c.raised_by());
  e.set_raised_by_role(c.raised_by_role());
  e.set_policy_version(c.policy_version());
  *e.mutable_opened_at() = c.opened_at();
  return e;
}

v1::ConcernRoutedEvent RoutedEvent(const v1::Concern& c, v1::RoutingReason reason,
                                   const std::vector<int>& skipped, absl::Time notify_at,
                                   const std::string& routed_by, absl::Time routed_at) {
  v1::ConcernRoutedEvent e;
  e.set_concern_id(c.concern_id());
  e.set_reason(reason);
  e.set_level(c.current_level());
  *e.mutable_target() = c.current_target();
  for (int level : skipped) e.add_skipped_levels(level);
  *e.mutable_notify_at() = ToProtoTimestamp(notify_at);
  *e.mutable_ack_deadline() = c.ack_deadline();
  e.set_routed_by(routed_by);
  *e.mutable_routed_at() = ToProtoTimestamp(routed_at);
  return e;
}

v1::ConcernAcknowledgedEvent AcknowledgedEvent(const v1::Concern& c, const std::string& role) {
  v1::ConcernAcknowledgedEvent e;
  e.set_concern_id(c.concern_id());
  e.set_category(c.category());
  e.set_severity(c.severity());
  e.set_level(c.current_level());
  *e.mutable_target() = c.current_target();
  e.set_acknowledged_by(c.acknowledged_by());
  e.set_acknowledged_by_role(role);
  *e.mutable_acknowledged_at() = c.acknowledged_at();
  *e.mutable_opened_at() = c.opened_at();
  *e.mutable_ack_deadline() = c.ack_deadline();
  e.set_within_deadline(FromProtoTimestamp(c.acknowledged_at()) <=
                        FromProtoTimestamp(c.ack_deadline()));
  *e.mutable_resolution_deadline() = c.resolution_deadline();
  return e;
}

v1::ConcernResolvedEvent ResolvedEvent(const v1::Concern& c, const std::string& role) {
  v1::ConcernResolvedEvent e;
  e.set_concern_id(c.concern_id());
  e.set_participant_id(c.participant_id());
  e.set_enrollment_id(c.enrollment_id());
  e.set_category(c.category());
  e.set_severity(c.severity());
  e.set_outcome(c.outcome());
  e.set_level(c.current_level());
  e.set_resolved_by(c.resolved_by());
  e.set_resolved_by_role(role);
  *e.mutable_resolved_at() = c.resolved_at();
  *e.mutable_opened_at() = c.opened_at();
  e.set_breach_count(c.breach_count());
  return e;
}

v1::ConcernCancelledEvent CancelledEvent(const v1::Concern& c, v1::ConcernState from,
                                         const std::string& role) {
  v1::ConcernCancelledEvent e;
  e.set_concern_id(c.concern_id());
  e.set_participant_id(c.participant_id());
  e.set_enrollment_id(c.enrollment_id());
  e.set_category(c.category());
  e.set_severity(c.severity());
  e.set_from_state(from);
  e.set_level(c.current_level());
  e.set_cancelled_by(c.cancelled_by());
  e.set_cancelled_by_role(role);
  *e.mutable_cancelled_at() = c.cancelled_at();
  *e.mutable_opened_at() = c.opened_at();
  return e;
}

v1::RoutineEngagementStoppedEvent EngagementStoppedEvent(const v1::Concern& c) {
  v1::RoutineEngagementStoppedEvent e;
  e.set_concern_id(c.concern_id());
  e.set_participant_id(c.participant_id());
  e.set_enrollment_id(c.enrollment_id());
  e.set_category(c.category());
  e.set_severity(c.severity());
  *e.mutable_stopped_at() = c.opened_at();
  return e;
}

}  // namespace peerpath::escalation
