#pragma once

// Conversions of a routing policy between the API (v1::RoutingPolicy), the domain struct and its
// stored form (rules and business hours as JSON, holidays as dates).

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/status.h"
#include "peerpath/escalation/v1/escalation.pb.h"
#include "services/escalation/routing.h"

namespace peerpath::escalation {

v1::Target TargetToProto(const Target& target);
Target TargetFromProto(const v1::Target& target);

v1::RoutingPolicy PolicyToProto(const RoutingPolicy& policy, const std::string& agency_id);

// Reads the API form; each unreadable field (unknown time zone, malformed business hours or
// holiday, time limit without a value) becomes a violation naming it.
RoutingPolicy PolicyFromProto(const v1::RoutingPolicy& proto,
                              std::vector<FieldViolation>& problems);

// Stored form.
struct StoredPolicyText {
  std::string rules_json;           // JSON array of v1.RoutingRule in proto JSON.
  std::string business_hours_json;  // [{"weekday": 1, "start": "09:00", "end": "17:00"}, ...]
  std::string holidays;             // PostgreSQL date[] literal.
};
StoredPolicyText PolicyToStored(const RoutingPolicy& policy);
absl::StatusOr<RoutingPolicy> PolicyFromStored(const std::string& rules_json,
                                               const std::string& time_zone,
                                               const std::string& business_hours_json,
                                               const std::string& holidays_csv);

}  // namespace peerpath::escalation
